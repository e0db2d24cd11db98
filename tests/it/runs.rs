//! Runs that survive: resume (live and finished, also after a restart), detach grace, cancel on
//! disconnect, lagging clients, shutdown.

use std::time::Duration;

use flowgate::engine::EngineConfig;
use flowgate::runlog::RunState;
use serde_json::{Value, json};

use crate::common::*;

fn slow_engine(tokens: usize, delay_ms: u64) -> EngineConfig {
    let mut e = EngineConfig::for_tests();
    e.llm_tokens = tokens;
    e.llm_token_delay = Duration::from_millis(delay_ms);
    e
}

/// Read frames until one with `seq >= n`.
async fn read_until_seq(c: &mut Client, n: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let f = c.next().await.expect("frame");
        let seq = f["seq"].as_u64().unwrap_or(0);
        frames.push(f);
        if seq >= n {
            return frames;
        }
    }
}

#[tokio::test]
async fn resume_of_a_live_run_continues_without_gap_or_duplicate() {
    let app = spawn_app_with(slow_engine(60, 15), |_| {}).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "stream please"})).await;
    let mut frames = read_until_seq(&mut c, 22).await;
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    drop(c); // the connection is lost without a cancel
    let mut c2 = app.connect("assistant", "alice").await;
    c2.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 22}))
        .await;
    frames.extend(c2.collect_run().await);
    assert_run_stamps(&frames);
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "flow_completed", "{last}");
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(
        final_output["data"]["text_output"].as_str(),
        Some(streamed_text(&frames).as_str())
    );
}

#[tokio::test]
async fn a_finished_run_is_replayed_to_its_terminal_event() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "replay me"})).await;
    let original = c.collect_run().await;
    let run_id = original[0]["run_id"].as_str().unwrap().to_owned();
    let mut c2 = app.connect("echo", "alice").await;
    c2.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 5}))
        .await;
    let replay = c2.collect_run().await;
    assert_eq!(replay, original[5..].to_vec());
}

#[tokio::test]
async fn resuming_another_users_run_is_forbidden_and_an_unknown_run_is_invalid() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "mine"})).await;
    let frames = c.collect_run().await;
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    let mut thief = app.connect("echo", "mallory").await;
    thief
        .send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    let f = thief.next().await.unwrap();
    assert_eq!(f["data"]["code"], "forbidden", "{f}");
    thief
        .send_json(
            json!({"type": "resume", "run_id": uuid::Uuid::new_v4().to_string(), "after_seq": 0}),
        )
        .await;
    let f = thief.next().await.unwrap();
    assert_eq!(f["data"]["code"], "invalid_request", "{f}");
}

#[tokio::test]
async fn a_detached_run_is_cancelled_when_nobody_resumes_it_within_the_grace() {
    let app = spawn_app_with(slow_engine(400, 10), |c| {
        c.detach_grace = Duration::from_millis(300)
    })
    .await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "long"})).await;
    let frames = read_until_seq(&mut c, 20).await;
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    drop(c);
    // The whole run would take 4 s; the grace is 0.3 s: it ends on its own, cancelled.
    let ended = app.ended_run(&run_id).await;
    assert_eq!(ended.status, RunState::Cancelled, "{ended:?}");
    let mut c2 = app.connect("assistant", "alice").await;
    c2.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    let replay = c2.collect_run().await;
    assert_eq!(
        replay.last().unwrap()["type"],
        "flow_cancelled",
        "{:#?}",
        replay.last()
    );
    assert_eq!(
        replay.last().unwrap()["data"]["reason"],
        "the client disconnected and did not resume within --detach-grace"
    );
    let chunks = replay.iter().filter(|f| f["type"] == "llm_chunk").count();
    assert!(chunks < 400, "the run streamed to its end: {chunks} chunks");
}

#[tokio::test]
async fn a_detached_run_keeps_going_within_the_grace() {
    let app = spawn_app_with(slow_engine(40, 10), |c| {
        c.detach_grace = Duration::from_secs(20)
    })
    .await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "keep going"})).await;
    let frames = read_until_seq(&mut c, 20).await;
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    drop(c);
    // Nobody is attached, and the run goes on to its end within the grace.
    let ended = app.ended_run(&run_id).await;
    assert_eq!(ended.status, RunState::Completed, "{ended:?}");
    let mut c2 = app.connect("assistant", "alice").await;
    c2.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    let replay = c2.collect_run().await;
    assert_run_stamps(&replay);
    assert_eq!(replay.last().unwrap()["type"], "flow_completed");
}

#[tokio::test]
async fn cancel_on_disconnect_stops_the_run_at_once() {
    let app = spawn_app_with(slow_engine(400, 10), |c| c.cancel_on_disconnect = true).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "long"})).await;
    let frames = read_until_seq(&mut c, 20).await;
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    drop(c);
    let ended = app.ended_run(&run_id).await;
    assert_eq!(ended.status, RunState::Cancelled, "{ended:?}");
    let mut c2 = app.connect("assistant", "alice").await;
    c2.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    let replay = c2.collect_run().await;
    let last = replay.last().unwrap();
    assert_eq!(last["type"], "flow_cancelled", "{last}");
    assert_eq!(
        last["data"]["reason"],
        "the client disconnected (--cancel-on-disconnect)"
    );
    let chunks = replay.iter().filter(|f| f["type"] == "llm_chunk").count();
    assert!(
        chunks < 100,
        "the run went on after the disconnect: {chunks} chunks"
    );
}

#[tokio::test]
async fn merged_chunks_keep_seq_coverage_exact() {
    // merge_lag 0: every batch that holds several chunks of one element is merged.
    let app = spawn_app_with(slow_engine(300, 0), |c| c.merge_lag = 0).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "fast"})).await;
    let frames = c.collect_run().await;
    let merged = frames
        .iter()
        .filter(|f| f.get("merged_seqs").is_some())
        .count();
    assert!(
        merged > 0,
        "no merge happened: the test would check nothing"
    );
    let mut expected = 1;
    for f in &frames {
        let seq = f["seq"].as_u64().unwrap();
        match f.get("merged_seqs") {
            Some(m) => {
                assert_eq!(
                    m[0].as_u64(),
                    Some(expected),
                    "merged range starts right after: {f}"
                );
                assert_eq!(m[1].as_u64(), Some(seq));
                assert_eq!(f["type"], "llm_chunk");
            }
            None => assert_eq!(seq, expected, "{f}"),
        }
        expected = seq + 1;
    }
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(
        final_output["data"]["text_output"].as_str(),
        Some(streamed_text(&frames).as_str())
    );
}

#[tokio::test]
async fn too_many_runs_per_user_is_refused() {
    let app = spawn_app_with(slow_engine(200, 10), |c| c.max_runs_per_user = 1).await;
    let mut a = app.connect("assistant", "alice").await;
    a.send_json(json!({"message": "one"})).await;
    read_until_seq(&mut a, 3).await;
    let mut b = app.connect("assistant", "alice").await;
    b.send_json(json!({"message": "two"})).await;
    let f = b.next().await.unwrap();
    assert_eq!(f["data"]["code"], "too_many_runs", "{f}");
    // Another user is not affected.
    let mut other = app.connect("echo", "bob").await;
    other.send_json(json!({"message": "x"})).await;
    assert_eq!(
        other.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
}

#[tokio::test]
async fn shutdown_lets_a_running_run_finish_then_closes_with_1012() {
    let app = spawn_app_with(slow_engine(30, 10), |c| {
        c.shutdown_grace = Duration::from_secs(5)
    })
    .await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "finish me"})).await;
    read_until_seq(&mut c, 10).await;
    app.shutdown.cancel();
    let rest = c.collect_run().await;
    assert_eq!(rest.last().unwrap()["type"], "flow_completed");
    assert_eq!(c.close_code().await, Some(1012));
}

#[tokio::test]
async fn shutdown_closes_a_run_that_outlives_the_grace_with_1012() {
    let app = spawn_app_with(slow_engine(1000, 10), |c| {
        c.shutdown_grace = Duration::from_millis(300)
    })
    .await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "too long"})).await;
    read_until_seq(&mut c, 10).await;
    app.shutdown.cancel();
    let _ = c.collect_run().await;
    assert_eq!(c.close_code().await, Some(1012));
}

#[sqlx::test]
async fn a_finished_run_is_replayed_after_a_gateway_restart(pool: sqlx::PgPool) {
    let app = spawn_app_pg(pool.clone()).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "persist me"})).await;
    let original = c.collect_run().await;
    let run_id = original[0]["run_id"].as_str().unwrap().to_owned();
    drop(c);
    app.stop().await;

    let app2 = spawn_app_pg(pool.clone()).await;
    let mut c2 = app2.connect("echo", "alice").await;
    c2.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    let replay = c2.collect_run().await;
    assert_eq!(replay, original);
    let row: (String, i64) =
        sqlx::query_as("SELECT status, last_seq::bigint FROM flowgate_run WHERE run_id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row.0, "completed");
    assert_eq!(row.1 as usize, original.len());
    let (version, hash): (String, Option<String>) =
        sqlx::query_as("SELECT version, workflow_hash FROM flowgate_run WHERE run_id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(version, "published");
    assert_eq!(
        hash.as_deref(),
        original[3]["data"]["workflow"]["hash"].as_str(),
        "the hash the client saw is recorded"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4408_and_can_resume_from_the_log() {
    // 40k chunks (~12 MB) overflow the loopback socket buffers of a client that does not read.
    let mut engine = slow_engine(40_000, 0);
    engine.max_elements = 500;
    let app = spawn_app_with(engine, |c| {
        c.max_client_lag = 200;
        c.merge_lag = usize::MAX;
        c.client_write_timeout = Duration::from_millis(500);
    })
    .await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "flood me"})).await;
    // Not reading for 2 s is the behaviour under test (time is the stimulus, there is no state
    // to wait on without reading): the gateway gives up on the client within 0.5 s (its lag
    // passes max_client_lag, or a write blocks for client_write_timeout) and closes with 4408,
    // holding the close for up to client_close_timeout (5 s). What it did is asserted below.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut frames = Vec::new();
    while let Some(f) = c.next().await {
        frames.push(f);
    }
    assert_eq!(
        c.closed.clone().flatten().map(|f| u16::from(f.code)),
        Some(4408)
    );
    assert!(
        !frames.iter().any(is_terminal),
        "closed before the end of the run"
    );
    let last = frames.last().unwrap()["seq"].as_u64().unwrap();
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    // The run goes on without the client; once it has ended, the rest comes from the log (a
    // resume while it still streams would race max_client_lag again).
    let ended = app.ended_run(&run_id).await;
    assert_eq!(ended.status, RunState::Completed, "{ended:?}");
    assert!(ended.last_seq > last, "the run went on after the close");
    // The gateway writes a replay within client_write_timeout (0.5 s here) or drops the socket;
    // a client too slow for that (this one checks every frame against the schema) resumes again
    // from its last frame, and every resume must bring frames.
    for resumes in 1.. {
        let after = frames.last().unwrap()["seq"].as_u64().unwrap();
        let mut c2 = app.connect("assistant", "alice").await;
        c2.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": after}))
            .await;
        let more = c2.collect_run().await;
        assert!(
            !more.is_empty(),
            "resume {resumes} after seq {after} brought nothing"
        );
        frames.extend(more);
        if frames.last().is_some_and(is_terminal) {
            break;
        }
        assert!(
            resumes < 20,
            "still no terminal event after {resumes} resumes"
        );
    }
    assert_run_stamps(&frames);
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
}

/// An engine that accepts TCP and the WebSocket upgrade, then never says anything.
async fn silent_engine() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                held.push(ws);
            }
        }
    });
    addr
}

#[tokio::test]
async fn cancel_before_the_engine_handshake_finishes_is_flow_cancelled_at_once() {
    let engine = silent_engine().await;
    let app = spawn_gateway_files(flowgate::config::GatewayConfig::for_tests(format!(
        "ws://{engine}"
    )))
    .await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "never starts"})).await;
    let first = c.next().await.unwrap();
    assert_eq!(first["type"], "status");
    let t0 = std::time::Instant::now();
    c.send_json(json!({"type": "cancel"})).await;
    let mut frames = vec![first];
    frames.extend(c.collect_run().await);
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_cancelled",
        "{frames:#?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "not waiting for the handshake timeout"
    );
    assert_run_stamps(&frames);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_with_4408() {
    let ping = Duration::from_millis(200);
    let app = spawn_app_with(EngineConfig::for_tests(), |c| c.ping_interval = ping).await;
    let mut c = app.connect("echo", "alice").await;
    // Not reading (tungstenite only answers pings while the socket is read) for 6 ping intervals
    // is the behaviour under test; reading would answer them, so there is no state to wait on.
    // The gateway closes once nothing came for 2 intervals (checked at each ping, so within 3)
    // and then waits client_write_timeout (5 s) for the reply: the close frame is there to read.
    tokio::time::sleep(ping * 6).await;
    assert_eq!(c.close_code().await, Some(4408));
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.ping_interval = Duration::from_millis(100)
    })
    .await;
    let mut c = app.connect("echo", "alice").await;
    // Reading (so pongs go out) for a while, with no traffic of our own.
    let quiet = tokio::time::timeout(Duration::from_millis(800), c.next()).await;
    assert!(
        quiet.is_err(),
        "the socket was closed or sent a frame: {quiet:?}"
    );
    c.send_json(json!({"message": "still here"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
}

#[tokio::test]
async fn an_engine_that_stops_answering_pings_is_engine_lost() {
    // Completes the handshake, then neither reads (so no pongs) nor sends events.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            for status in ["ready", "received_flow", "received_inputs", "starting"] {
                if status != "ready" {
                    ws.next().await;
                }
                ws.send(Message::text(json!({"status": status}).to_string()))
                    .await
                    .unwrap();
            }
            held.push(ws);
        }
    });
    let mut config = flowgate::config::GatewayConfig::for_tests(format!("ws://{addr}"));
    config.ping_interval = Duration::from_millis(150);
    config.engine_idle_timeout = Duration::from_secs(30);
    let app = spawn_gateway_files(config).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hello?"})).await;
    let frames = c.collect_run().await;
    let last = frames.last().unwrap();
    assert_eq!(last["data"]["code"], "engine_lost", "{last}");
    assert!(
        last["data"]["error"].as_str().unwrap().contains("ping"),
        "{last}"
    );
}

#[tokio::test]
async fn a_run_request_right_after_the_terminal_event_is_accepted_every_time() {
    // The next request is sent the moment the terminal frame arrives, 40 times, with one run
    // allowed per user: neither "a run is already in progress" nor too_many_runs may appear.
    let app = spawn_app_with(EngineConfig::for_tests(), |c| c.max_runs_per_user = 1).await;
    let mut c = app.connect("echo", "alice").await;
    for i in 0..40 {
        c.send_json(json!({"message": format!("run {i}")})).await;
        let frames = c.collect_run().await;
        assert_eq!(frames[0]["type"], "status", "run {i}: {:?}", frames[0]);
        assert_eq!(frames.last().unwrap()["type"], "flow_completed", "run {i}");
    }
}
