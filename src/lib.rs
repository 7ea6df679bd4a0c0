//! flows-exporter: a Prometheus exporter for Meta's WhatsApp Flows Metrics API.
//!
//! How data flows:
//!
//! ```text
//! config ──► app ──► exporter ──► graph (HTTP to Graph) ──► graph::wire (JSON → model)
//!                        │                                          │
//!                        │◄──────────── poll (pure decisions) ◄─────┘
//!                        ▼
//!                    snapshot ──► exposition (render once per poll) ──► server (/metrics)
//!                                                 telemetry (live self-metrics) ──┘
//! ```
//!
//! - [`config`]: TOML → validated [`config::Config`]; errors name the key.
//! - [`error`]: the error taxonomy of Graph calls (classes, errors, envelopes); pure.
//! - [`model`]: domain types (flows, metrics, granularities, data points, clock).
//! - [`graph`]: the only module that talks to Graph; [`graph::wire`] parses its JSON.
//! - [`ratelimit`]: the Graph client's governor (pure decisions): pacing, usage
//!   slowdown and stop, throttle pause, per-WABA call budget.
//! - [`poll`]: pure decisions: query window, which period to show, cell transitions,
//!   and [`poll::PollPolicy`]: what one call's result means for the rest of a poll.
//! - [`snapshot`]: the exporter's state as plain data.
//! - [`exposition`]: snapshot → Prometheus text (the `prometheus` crate's model and encoder).
//! - [`telemetry`]: the exporter's own live metrics, in an app-owned registry.
//! - [`exporter`]: discovery and polls; swaps in fresh snapshots; skip-if-running.
//! - [`server`]: the only module that serves HTTP.
//! - [`web`]: the web config file (TLS, basic auth, headers) the server applies,
//!   swapped whole by a reload ([`server::reload`]: config and web config, both or neither).
//! - [`app`]: scheduler, server and signals wired together; `serve` and `demo`.
//! - [`sandbox`]: a fake Graph API for the demo, tests and benchmarks.
//! - [`version`]: what build this is (`--version`, `build_info`).

pub mod app;
pub mod backfill;
pub mod callmetrics;
pub mod config;
pub mod error;
pub mod exporter;
pub mod exposition;
pub mod flowdata;
pub mod graph;
pub mod logfmt;
pub mod model;
pub mod poll;
pub mod ratelimit;
pub mod relay;
pub mod sandbox;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod version;
pub mod web;
pub mod webhook;
