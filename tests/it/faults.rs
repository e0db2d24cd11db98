//! Engine faults through the misbehaving reference engine: each ends the run with exactly one
//! terminal event of the right code, and nothing of that run follows it.

use std::time::Duration;

use flowgate::engine::EngineConfig;
use flowgate::engine::fault::Fault;
use serde_json::{Value, json};

use crate::common::*;

async fn run_with_fault(
    fault: &str,
    agent: &str,
    tweak: impl FnOnce(&mut flowgate::config::GatewayConfig),
) -> (Vec<Value>, Client) {
    let mut engine = EngineConfig::for_tests();
    engine.fault = Some(fault.parse::<Fault>().expect("fault spec"));
    engine.llm_tokens = 20;
    let app = spawn_app_with(engine, tweak).await;
    let mut c = app.connect(agent, "alice").await;
    c.send_json(json!({"message": "hello"})).await;
    let frames = c.collect_run().await;
    // Keep the app alive while the caller inspects the socket.
    std::mem::forget(app);
    (frames, c)
}

/// After the terminal event the same socket starts a fresh run: its first frame is `seq` 1 of a
/// new run id, so nothing of the old run was sent after its terminal event.
async fn assert_nothing_after_terminal(c: &mut Client, old: &[Value]) {
    c.send_json(json!({"message": "next"})).await;
    let f = c.next().await.expect("a frame of the next run");
    assert_eq!(f["seq"], 1, "a late frame of the previous run: {f}");
    assert_ne!(f["run_id"], old[0]["run_id"]);
}

fn terminal(frames: &[Value]) -> &Value {
    let t: Vec<&Value> = frames.iter().filter(|f| is_terminal(f)).collect();
    assert_eq!(t.len(), 1, "exactly one terminal event: {frames:#?}");
    assert!(is_terminal(frames.last().unwrap()));
    t[0]
}

#[tokio::test]
async fn engine_crash_mid_run_is_engine_lost_with_the_partial_output() {
    // Echo of the assistant: crash after a few llm_chunks.
    let (frames, mut c) = run_with_fault("crash-after=20", "assistant", |_| {}).await;
    assert_run_stamps(&frames);
    let t = terminal(&frames);
    assert_eq!(t["type"], "flow_error");
    assert_eq!(t["data"]["code"], "engine_lost", "{t}");
    let streamed = streamed_text(&frames);
    assert!(
        !streamed.is_empty(),
        "the crash should come after some chunks: {frames:#?}"
    );
    assert_eq!(
        t["data"]["partial_output"].as_str(),
        Some(streamed.as_str())
    );
    assert_nothing_after_terminal(&mut c, &frames).await;
}

#[tokio::test]
async fn a_stalled_engine_is_engine_timeout() {
    let (frames, mut c) = run_with_fault("stall-after=3", "echo", |c| {
        c.engine_idle_timeout = Duration::from_millis(400)
    })
    .await;
    let t = terminal(&frames);
    assert_eq!(t["data"]["code"], "engine_timeout", "{t}");
    assert_nothing_after_terminal(&mut c, &frames).await;
}

#[tokio::test]
async fn a_non_json_frame_is_engine_protocol_error() {
    let (frames, mut c) = run_with_fault("non-json-after=2", "echo", |_| {}).await;
    let t = terminal(&frames);
    assert_eq!(t["data"]["code"], "engine_protocol_error", "{t}");
    assert_nothing_after_terminal(&mut c, &frames).await;
}

#[tokio::test]
async fn an_oversize_frame_is_engine_protocol_error() {
    let (frames, mut c) = run_with_fault("oversize-after=2", "echo", |c| {
        c.max_engine_frame_bytes = 256 * 1024
    })
    .await;
    let t = terminal(&frames);
    assert_eq!(t["data"]["code"], "engine_protocol_error", "{t}");
    assert_nothing_after_terminal(&mut c, &frames).await;
}

#[tokio::test]
async fn an_engine_that_ends_without_a_close_frame_still_completes() {
    let (frames, mut c) = run_with_fault("no-close", "echo", |_| {}).await;
    let t = terminal(&frames);
    assert_eq!(t["type"], "flow_completed", "{t}");
    assert_nothing_after_terminal(&mut c, &frames).await;
}

#[tokio::test]
async fn a_refused_handshake_is_engine_protocol_error() {
    let (frames, mut c) = run_with_fault("refuse-handshake", "echo", |_| {}).await;
    let t = terminal(&frames);
    assert_eq!(t["data"]["code"], "engine_protocol_error", "{t}");
    assert_nothing_after_terminal(&mut c, &frames).await;
}

#[tokio::test]
async fn a_wrong_handshake_is_engine_protocol_error() {
    let (frames, mut c) = run_with_fault("bad-handshake", "echo", |_| {}).await;
    let t = terminal(&frames);
    assert_eq!(t["data"]["code"], "engine_protocol_error", "{t}");
    assert!(t["data"]["error"].as_str().unwrap().contains("handshake"));
    assert_nothing_after_terminal(&mut c, &frames).await;
}

#[tokio::test]
async fn an_engine_handshake_that_never_comes_is_engine_timeout() {
    // A TCP server that accepts and never answers the WebSocket upgrade.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut config = flowgate::config::GatewayConfig::for_tests(format!("ws://{addr}"));
    config.engine_connect_timeout = Duration::from_millis(500);
    let app = spawn_gateway_files(config).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    let t = terminal(&frames);
    assert_eq!(t["data"]["code"], "engine_unavailable", "{t}");
}

#[sqlx::test]
async fn the_run_log_agrees_with_what_the_client_saw_after_an_engine_crash(pool: sqlx::PgPool) {
    let mut engine = EngineConfig::for_tests();
    engine.fault = Some("crash-after=20".parse::<Fault>().unwrap());
    engine.llm_tokens = 20;
    let app = spawn_app_pg_with(pool.clone(), engine, |_| {}).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "crash"})).await;
    let frames = c.collect_run().await;
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    app.stop().await; // flushes the run log
    let (status, code): (String, Option<String>) =
        sqlx::query_as("SELECT status, error_code FROM flowgate_run WHERE run_id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert_eq!(code.as_deref(), Some("engine_lost"));
    let logged: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq::bigint, frame::text FROM flowgate_run_event WHERE run_id = $1::uuid ORDER BY seq",
    )
    .bind(&run_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(logged.len(), frames.len());
    for ((seq, text), seen) in logged.iter().zip(&frames) {
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(&v, seen, "seq {seq}");
    }
}
