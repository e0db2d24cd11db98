//! The `copilot` dialect (OmniTrack AI copilot hook, DIALECTS.md 2.2) end to end against the
//! reference engine, with a client that speaks exactly its frames (every frame checked against
//! `schemas/copilot-server-frame.schema.json`).

use std::time::{Duration, Instant};

use flowgate::config::{DialectId, GatewayConfig};
use flowgate::engine::EngineConfig;
use serde_json::{Value, json};

use crate::common::*;
use crate::schema_check::assert_copilot_frame;

fn copilot(c: &mut GatewayConfig) {
    c.dialects = vec![DialectId::Neuralabs, DialectId::Copilot];
    c.copilot_agent_id = Some("assistant".into());
}

/// Connect as the hook does: `?userId=…&token=…` (`userId` is not trusted).
async fn connect(app: &TestApp, user: &str) -> DialectSocket {
    let url = format!(
        "ws://{}/copilot?userId=someone-else&token={}",
        app.addr,
        token(user)
    );
    DialectSocket::connect(&url, assert_copilot_frame).await
}

fn terminal(f: &Value) -> bool {
    matches!(
        f["type"].as_str(),
        Some("stream_complete" | "stream_interrupted" | "complete" | "error")
    )
}

/// A turn's frames, with when each arrived.
async fn timed_turn(c: &mut DialectSocket) -> Vec<(Instant, Value)> {
    let mut out = Vec::new();
    while let Some(f) = c.next().await {
        let end = terminal(&f);
        out.push((Instant::now(), f));
        if end {
            return out;
        }
    }
    panic!("closed mid-turn: {out:#?}");
}

fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_streaming_turn_then_the_same_conversation_then_another_users_claim() {
    let app = spawn_app_with(EngineConfig::for_tests(), copilot).await;
    let mut c = connect(&app, "u1").await;
    c.send(json!({"action": "message", "message": "What is flowgate?", "conversationId": null, "streaming": true}))
        .await;
    let timed = timed_turn(&mut c).await;
    let frames: Vec<Value> = timed.iter().map(|(_, f)| f.clone()).collect();
    let t = types(&frames);
    assert_eq!(t[0], "typing");
    assert_eq!(t[1], "stream_start");
    assert_eq!(*t.last().unwrap(), "stream_complete");
    let tokens: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "stream_token")
        .collect();
    assert!(tokens.len() >= 2);
    let done = frames.last().unwrap();
    assert_eq!(done["metadata"]["tokenCount"], tokens.len());
    let conversation = done["conversationId"].as_str().unwrap().to_owned();
    assert!(conversation.starts_with("conv_"), "{conversation}");
    // Paced: the end does not arrive in the same burst as the last token (rule 14).
    let last_token_at = timed[timed.len() - 2].0;
    let gap = timed.last().unwrap().0 - last_token_at;
    assert!(
        gap >= Duration::from_millis(15),
        "gap before stream_complete: {gap:?}"
    );
    let run_id = done["run_id"].as_str().unwrap();
    assert_eq!(
        app.ended_run(run_id).await.user_id,
        "u1",
        "the token's user, not userId"
    );

    // The same conversation: the first turn is the history (the flow echoes it).
    c.send(json!({"action": "message", "message": "And then?", "conversationId": conversation, "streaming": false}))
        .await;
    let frames: Vec<Value> = timed_turn(&mut c)
        .await
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(types(&frames), ["acknowledgment", "message", "complete"]);
    let content = frames[1]["content"].as_str().unwrap();
    assert!(content.contains("user: What is flowgate?"), "{content}");
    assert_eq!(frames[1]["conversationId"], conversation.as_str());

    // Another user naming that conversation: forbidden, and the socket stays open.
    let mut other = connect(&app, "u2").await;
    other
        .send(json!({"message": "let me read it", "conversationId": conversation}))
        .await;
    let refused = other.next().await.unwrap();
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");
    other.send(json!({"action": "ping"})).await;
    assert_eq!(other.next().await.unwrap()["type"], "pong");
    drop((c, other));
    app.stop().await;
}

#[tokio::test]
async fn messages_sent_at_once_all_run_in_order() {
    let app = spawn_app_with(EngineConfig::for_tests(), copilot).await;
    let mut c = connect(&app, "u1").await;
    for i in 0..4 {
        c.send(json!({"action": "message", "message": format!("message {i}"), "conversationId": "conv_burst", "streaming": false}))
            .await;
    }
    for i in 0..4 {
        let frames: Vec<Value> = timed_turn(&mut c)
            .await
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        assert_eq!(
            types(&frames),
            ["acknowledgment", "message", "complete"],
            "turn {i}"
        );
    }
    let history = app.state.conversations.history("u1", "conv_burst");
    let users: Vec<&str> = history
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(users, ["message 0", "message 1", "message 2", "message 3"]);
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_after_text_is_stream_interrupted_with_the_partial_response() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 200;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = spawn_app_with(engine, copilot).await;
    let mut c = connect(&app, "u1").await;
    c.send(
        json!({"action": "message", "message": "talk", "conversationId": null, "streaming": true}),
    )
    .await;
    let first = c.until(|f| f["type"] == "stream_token").await;
    let token = first.last().unwrap()["token"].as_str().unwrap().to_owned();
    c.send(json!({"action": "cancel"})).await;
    let frames: Vec<Value> = timed_turn(&mut c)
        .await
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "stream_interrupted");
    assert_eq!(end["code"], "cancelled");
    assert!(end["partialResponse"].as_str().unwrap().starts_with(&token));
    let info = app.ended_run(end["run_id"].as_str().unwrap()).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Cancelled);
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn an_early_failure_is_one_error_frame_without_a_stream_start() {
    let dead = dead_addr().await;
    let mut config = GatewayConfig::for_tests(format!("ws://{dead}"));
    copilot(&mut config);
    let app = spawn_gateway_files(config).await;
    let mut c = connect(&app, "u1").await;
    c.send(
        json!({"action": "message", "message": "hi", "conversationId": null, "streaming": true}),
    )
    .await;
    let frames: Vec<Value> = timed_turn(&mut c)
        .await
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(types(&frames), ["typing", "error"]);
    assert_eq!(frames[1]["code"], "engine_unavailable");
    c.send(json!({"action": "subscribe", "topic": "alerts"}))
        .await;
    let refused = c.next().await.unwrap();
    assert_eq!(refused["code"], "invalid_request");
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_turn_ends_after_a_pause_too() {
    let app = spawn_app_with(EngineConfig::for_tests(), copilot).await;
    let mut c = connect(&app, "u1").await;
    c.send(
        json!({"action": "message", "message": "hi", "conversationId": null, "streaming": true}),
    )
    .await;
    let frames: Vec<Value> = timed_turn(&mut c)
        .await
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
    app.ended_run(&run_id).await;
    drop(c);
    let mut c = connect(&app, "u1").await;
    c.send(json!({"action": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    let timed = timed_turn(&mut c).await;
    assert_eq!(timed.last().unwrap().1["type"], "stream_complete");
    let gap = timed.last().unwrap().0 - timed[timed.len() - 2].0;
    assert!(
        gap >= Duration::from_millis(15),
        "replayed end {gap:?} after the last token"
    );
    // The replayed text comes as a few paced tokens, never the whole turn in one burst.
    let live: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "stream_token")
        .map(|f| f["token"].as_str().unwrap())
        .collect();
    let replayed: Vec<(Instant, &str)> = timed
        .iter()
        .filter(|(_, f)| f["type"] == "stream_token")
        .map(|(at, f)| (*at, f["token"].as_str().unwrap()))
        .collect();
    assert!(live.len() > flowgate::relay::dialect::copilot::REPLAY_TOKENS);
    assert!(
        (2..=flowgate::relay::dialect::copilot::REPLAY_TOKENS).contains(&replayed.len()),
        "{replayed:?}"
    );
    assert_eq!(
        replayed.iter().map(|(_, t)| *t).collect::<String>(),
        live.concat()
    );
    assert_apart(replayed.iter().map(|(at, _)| *at));
    drop(c);
    app.stop().await;
}

/// Consecutive instants at least 15 ms apart (the 20 ms pacing, less timer slack).
fn assert_apart(at: impl Iterator<Item = Instant>) {
    let at: Vec<Instant> = at.collect();
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(15), "tokens {gap:?} apart");
    }
}

#[tokio::test]
async fn a_lagging_client_gets_merged_tokens_paced() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        copilot(c);
        // Every batch counts as lagging: its chunks are merged into one paced token.
        c.merge_lag = 0;
    })
    .await;
    let mut c = connect(&app, "u1").await;
    c.send(json!({"action": "message", "message": "What is flowgate?", "conversationId": null, "streaming": true}))
        .await;
    let timed = timed_turn(&mut c).await;
    let frames: Vec<Value> = timed.iter().map(|(_, f)| f.clone()).collect();
    assert_eq!(frames.last().unwrap()["type"], "stream_complete");
    let tokens: Vec<(Instant, &Value)> = timed
        .iter()
        .filter(|(_, f)| f["type"] == "stream_token")
        .map(|(at, f)| (*at, f))
        .collect();
    assert!(!tokens.is_empty());
    assert_apart(tokens.iter().map(|(at, _)| *at));
    let text: String = tokens
        .iter()
        .map(|(_, f)| f["token"].as_str().unwrap())
        .collect();
    let run_id = frames[0]["run_id"].as_str().unwrap();
    // The same text as the run log's chunks.
    let logged = app.run_text(run_id).await;
    assert_eq!(text, logged);
    drop(c);
    app.stop().await;
}
