//! The integration test suite: one test binary (faster to link), one module per topic.
//! Each module starts the real parts in-process on port 0 (see `common`).

mod adk;
mod adk_http;
mod agui;
mod auth;
mod bench_smoke;
mod binary;
mod chain;
mod chain_pg;
mod chat_client;
mod citizen;
mod closing;
mod cluster;
mod common;
mod copilot;
mod deploy;
mod dialect_faults;
mod dialect_rules;
mod engine;
mod engine_https;
mod engine_llm;
mod fake_llm;
mod faults;
mod first_contact;
mod hardening;
mod hop;
mod layout;
mod omni2;
mod openai;
mod ops;
mod outage;
mod outbound_tls;
mod page;
mod readme;
mod runlog;
mod runs;
mod schema_check;
mod security;
mod slow_database;
mod store;
mod testca;
mod vercel;
mod workflow;

/// The tests' database server when none is configured. Only this test process gets it: the
/// `flowgate` binary has no database default (`cargo run -- serve` without `--database-url` or
/// `DATABASE_URL` asks for a store instead of creating tables somewhere).
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `#[sqlx::test]` reads its server from `DATABASE_URL`. Before the harness starts any thread,
/// set it from `FLOWGATE_TEST_DATABASE_URL`, else keep the caller's `DATABASE_URL`, else use
/// [`DEFAULT_TEST_DATABASE_URL`].
#[ctor::ctor(unsafe)]
fn test_database_url() {
    let url = std::env::var("FLOWGATE_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
    // SAFETY: a constructor runs before `main`, while the process has a single thread.
    unsafe { std::env::set_var("DATABASE_URL", url) };
}
