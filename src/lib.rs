//! flowgate: a streaming-chain orchestrator.
//!
//! ```text
//! browser / CLI ──WS──> gateway (http, relay) ──WS──> execution engine (engine)
//!                         │ auth: JWT            │ 4-step handshake, events
//!                         │ store: Postgres | files
//!                         │ workflow: stored JSON → normalized flow → YAML
//! ```
//!
//! The binary (`src/main.rs`) only parses [`cli::Cli`], starts [`telemetry`] and calls into this
//! library, so every part can be started in-process by the tests.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod close;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod engine;
pub mod http;
pub mod logfmt;
pub mod metrics;
pub mod relay;
pub mod runlog;
pub mod secret;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod workflow;
