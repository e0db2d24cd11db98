//! The integration test suite: one test binary (faster to link), one module per topic.
//! Each module starts the real parts in-process on port 0 (see `common`).

mod common;
mod runlog;
mod store;
mod chat_client;
mod chain;
mod chain_pg;
mod readme;
mod page;
mod workflow;
mod deploy;
mod faults;
mod engine;
mod runs;
mod security;
mod outage;
mod binary;
mod auth;
mod ops;
mod schema_check;
mod bench_smoke;
