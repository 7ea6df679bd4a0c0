//! Integration tests: the exporter against the sandbox Graph API on port 0,
//! checked through its public surface (Graph JSON in, exposition text out).

mod backfill;
mod config;
mod discovery;
mod errors;
mod exposition;
mod lifecycle;
mod server;
mod support;
