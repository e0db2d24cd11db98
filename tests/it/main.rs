//! The integration test suite: one test binary (faster to link), one module per topic.
//! Each module starts the real parts in-process on port 0 (see `common`).

mod auth;
mod bench_smoke;
mod binary;
mod chain;
mod chain_pg;
mod chat_client;
mod common;
mod deploy;
mod engine;
mod engine_llm;
mod faults;
mod ops;
mod outage;
mod page;
mod readme;
mod runlog;
mod runs;
mod schema_check;
mod security;
mod store;
mod workflow;
