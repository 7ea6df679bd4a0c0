//! Integration tests: the exporter against the sandbox Graph API on port 0,
//! checked through its public surface (Graph JSON in, exposition text out).

mod backfill;
mod calls;
mod cluster;
mod config;
mod dashboards;
mod discovery;
mod edge;
mod errors;
mod exposition;
mod faults;
mod flags;
mod fuzz_corpus;
mod hostile;
mod lifecycle;
mod prometheus;
mod prometheus_e2e;
mod ratelimit;
mod reload;
mod rules;
mod server;
mod shards;
mod shared_state;
mod support;
mod web;
mod webhooks;
