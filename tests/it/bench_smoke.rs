//! Smoke runs of `flowgate bench` (tiny configurations, real child processes of the built
//! binary) so the harness cannot rot. The numbers themselves are never asserted; only that the
//! report is well-formed and that nothing failed.

use flowgate::bench::{self, BenchArgs};
use serde_json::Value;

use crate::common::child_database_url;

fn args(extra: &[&str]) -> BenchArgs {
    let flows = concat!(env!("CARGO_MANIFEST_DIR"), "/flows");
    let mut argv = vec![
        "--flowgate-bin",
        env!("CARGO_BIN_EXE_flowgate"),
        "--flows-dir",
        flows,
        "--sessions",
        "3",
        "--events",
        "5",
        "--interval",
        "10",
        "--warmup",
        "0.3",
    ];
    argv.extend_from_slice(extra);
    BenchArgs::parse_from(argv).expect("valid bench arguments")
}

fn summary_is_ordered(s: &Value) {
    let (p50, p99, max) = (s["p50"].as_u64(), s["p99"].as_u64(), s["max"].as_u64());
    assert!(s["count"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(p50 <= p99 && p99 <= max && p50.is_some(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_bench_reports_both_paths_without_errors() {
    let report = bench::execute(&args(&["--duration", "1.5"]))
        .await
        .expect("the bench runs");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["errors"], 0, "{:#}", json);
    assert_eq!(json["lost_runs"], 0, "{:#}", json);
    // Read from the gateway's /metrics: a number, not "not measured".
    assert_eq!(json["runs_log_incomplete"], 0, "{:#}", json);
    for path in ["gateway", "direct"] {
        let p = &json[path];
        assert!(p["runs_ok"].as_u64().unwrap() >= 3, "{path}: {p:#}");
        summary_is_ordered(&p["setup_us"]);
        summary_is_ordered(&p["event_latency_us"]);
        assert!(
            p["events_per_second"].as_f64().unwrap() > 0.0,
            "{path}: {p:#}"
        );
    }
    assert!(
        json["added"]["event_p50_us"].is_i64(),
        "{:#}",
        json["added"]
    );
    assert!(
        json["rss"]["rss_kib"].as_u64().unwrap() > 0,
        "{:#}",
        json["rss"]
    );
    assert!(json["gateway_cpu"]["cpu_seconds_per_million_events"].is_f64());
    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 6, "{targets:#?}");
    for t in targets {
        assert!(
            matches!(t["status"].as_str(), Some("met" | "MISSED")),
            "every streaming target is measured: {t}"
        );
    }
    let table = report.markdown();
    eprintln!("{table}");
    assert!(table.contains("| metric | gateway | direct | added | target | status |"));
    assert!(table.contains("event latency p99"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_bench_holds_every_session_and_reports_rss_per_session() {
    let report = bench::execute(&args(&["--idle", "--duration", "0.5"]))
        .await
        .expect("the bench runs");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "idle");
    assert_eq!(json["errors"], 0, "{:#}", json);
    assert_eq!(json["gateway"]["runs_ok"], 3, "{:#}", json["gateway"]);
    assert_eq!(json["rss"]["open_sessions"], 3, "{:#}", json["rss"]);
    assert!(json["rss"]["rss_per_session_kib"].as_f64().unwrap() > 0.0);
    assert!(json["direct"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_reference_path_relays_the_direct_clients_frames() {
    if let Err(e) = bench::procs::find_nginx(None) {
        eprintln!("SKIPPED: no nginx to run the --nginx smoke test against: {e}");
        return;
    }
    let report = bench::execute(&args(&["--duration", "1", "--nginx"]))
        .await
        .expect("the bench runs with --nginx");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["errors"], 0, "{:#}", json);
    assert_eq!(json["lost_runs"], 0, "{:#}", json);
    let n = &json["nginx"];
    assert!(n["frames"].as_u64().unwrap() > 0, "{n:#}");
    assert_eq!(n["errors"], 0, "{n:#}");
    assert_eq!(n["lost_runs"], 0, "{n:#}");
    summary_is_ordered(&n["event_latency_us"]);
    assert!(json["nginx_added"]["event_p50_us"].is_i64(), "{json:#}");
    let cpu = &json["nginx_cpu"];
    assert!(cpu["cpu_seconds_per_million_events"].is_f64(), "{cpu:#}");
    assert!(cpu["pid"].as_u64().unwrap() > 0, "{cpu:#}");
    assert!(
        json["nginx_rss"]["rss_kib"].as_u64().unwrap() > 0,
        "{json:#}"
    );
    let table = report.markdown();
    eprintln!("{table}");
    assert!(
        table.contains("| reference: nginx relaying opaque bytes | nginx | direct | added |"),
        "{table}"
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("relaying the same frames as opaque bytes, one worker process")),
        "{:?}",
        report.notes
    );
}

#[sqlx::test]
async fn streaming_bench_on_postgres_writes_the_run_log_there(pool: sqlx::PgPool) {
    let url = child_database_url(&pool);
    let report = bench::execute(&args(&["--duration", "1.5", "--database-url", &url]))
        .await
        .expect("the bench runs on Postgres");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["errors"], 0, "{:#}", json);
    assert_eq!(json["lost_runs"], 0, "{:#}", json);
    assert_eq!(json["runs_log_incomplete"], 0, "{:#}", json);
    let gw = &json["gateway"];
    assert!(gw["frames"].as_u64().unwrap() > 0, "{gw:#}");
    assert!(json["direct"]["frames"].as_u64().unwrap() > 0, "{json:#}");
    assert_eq!(json["config"]["store"], "postgres", "{:#}", json["config"]);
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let shown = json["config"]["database"].as_str().unwrap();
    assert!(shown.ends_with(&format!("/{db}")), "{shown}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("gateway on Postgres (")
                && n.ends_with(&format!("/{db}): store and run log in the database"))),
        "{:?}",
        report.notes
    );

    // The agents were imported, and the gateway's Postgres run log recorded its runs (the
    // warm-up's too, so at least those completed in the window) with their frames.
    let agents: i64 = sqlx::query_scalar("SELECT count(*) FROM agent")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(agents >= 1, "{agents}");
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM flowgate_run WHERE status = 'completed' AND agent_id = 'assistant'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let runs_ok = gw["runs_ok"].as_i64().unwrap();
    assert!(
        runs_ok >= 3 && completed >= runs_ok,
        "{completed} completed runs logged, {runs_ok} ok"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM flowgate_run_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        events >= completed * 5,
        "{events} frames for {completed} runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_clear_setup_error() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/flowgate_bench");
    let err = bench::execute(&args(&["--duration", "1", "--database-url", &url]))
        .await
        .expect_err("no database, no bench")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "--database-url: cannot connect to postgres://postgres@127.0.0.1:{port}/flowgate_bench: "
        )) && err.ends_with("; start Postgres or pass a reachable URL"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[sqlx::test]
async fn cluster_bench_follows_every_run_on_a_second_gateway(pool: sqlx::PgPool) {
    let url = child_database_url(&pool);
    let report = bench::execute(&args(&[
        "--duration",
        "1.5",
        "--no-direct",
        "--cluster",
        "--database-url",
        &url,
    ]))
    .await
    .expect("the bench runs with --cluster");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["errors"], 0, "{:#}", json);
    assert_eq!(json["lost_runs"], 0, "{:#}", json);
    assert_eq!(json["runs_log_incomplete"], 0, "{:#}", json);
    let c = &json["cluster"];
    assert_eq!(c["errors"], 0, "{c:#}");
    assert_eq!(c["lost_runs"], 0, "{c:#}");
    assert_eq!(c["runs_mismatched"], 0, "{c:#}");
    assert_eq!(c["runs_log_incomplete"], 0, "{c:#}");
    assert!(c["runs_compared"].as_u64().unwrap() >= 3, "{c:#}");
    for side in ["owner", "follower"] {
        let p = &c[side];
        assert!(p["runs_ok"].as_u64().unwrap() >= 3, "{side}: {p:#}");
        assert!(p["frames"].as_u64().unwrap() > 0, "{side}: {p:#}");
        summary_is_ordered(&p["event_latency_us"]);
        let cpu = &c[format!("{side}_cpu")];
        assert!(cpu["cpu_seconds_per_million_events"].is_f64(), "{cpu:#}");
    }
    // Both clients of a run got the same frames; the owner's and the follower's counts agree.
    assert_eq!(c["owner"]["runs_ok"], c["follower"]["runs_ok"], "{c:#}");
    summary_is_ordered(&c["follow_added_us"]);
    summary_is_ordered(&c["follow_start_us"]);
    assert!(c["nats_cpu"]["cpu_seconds"].is_f64(), "{c:#}");
    assert!(
        c["nats_server"].as_str().unwrap().contains("nats-server"),
        "{c:#}"
    );
    // The single-gateway numbers of the same invocation stand next to them.
    assert!(
        json["gateway"]["runs_ok"].as_u64().unwrap() >= 3,
        "{json:#}"
    );
    assert!(json["gateway_cpu"]["cpu_seconds_per_million_events"].is_f64());
    let table = report.markdown();
    eprintln!("{table}");
    assert!(
        table.contains("| single gateway | owner | follower | the follow adds |"),
        "{table}"
    );
    assert!(
        table.contains("| nats-server CPU per 1M events |"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_needs_a_database_and_streaming() {
    let err = bench::execute(&args(&["--cluster", "--duration", "1"]))
        .await
        .expect_err("no database, no cluster")
        .to_string();
    assert!(err.contains("--cluster needs --database-url"), "{err}");
    for extra in [
        &["--cluster", "--idle"][..],
        &["--cluster", "--gateway-url", "ws://127.0.0.1:1"],
    ] {
        let err = BenchArgs::parse_from(extra.iter().copied()).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{extra:?}: {err}"
        );
    }
}
