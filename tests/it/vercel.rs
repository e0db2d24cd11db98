//! The `vercel` dialect (AI SDK UI message stream v1, DIALECTS.md 4.3) end to end against the
//! reference engine: every part checked against `schemas/vercel.schema.json` (strict objects,
//! as the SDK parses them); resume after a dropped connection, the stop route, one run per
//! chat. The AI SDK itself runs against the demo in `tests/clients/`.

use std::time::Duration;

use eventsource_stream::Eventsource;
use flowgate::config::{DialectId, GatewayConfig};
use flowgate::engine::EngineConfig;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::*;
use crate::schema_check::assert_vercel_part;

fn vercel(c: &mut GatewayConfig) {
    c.dialects = vec![DialectId::Neuralabs, DialectId::Vercel];
    c.vercel_agent_id = Some("assistant".into());
}

fn slow() -> EngineConfig {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 150;
    engine.llm_token_delay = Duration::from_millis(10);
    engine
}

fn body(chat: &str, message: &str) -> Value {
    json!({
        "id": chat,
        "messages": [
            {"id": "m0", "role": "user", "parts": [{"type": "text", "text": "Hi"}]},
            {"id": "m1", "role": "assistant", "parts": [{"type": "step-start"}, {"type": "text", "text": "Hello!", "state": "done"}]},
            {"id": "m2", "role": "user", "parts": [{"type": "text", "text": message}]},
        ],
        "trigger": "submit-message",
    })
}

fn post(app: &TestApp, user: &str, body: &Value) -> reqwest::RequestBuilder {
    http_client()
        .post(app.http_url("/api/chat"))
        .bearer_auth(token(user))
        .json(body)
}

fn get(app: &TestApp, user: &str, path: &str) -> reqwest::RequestBuilder {
    http_client()
        .get(app.http_url(path))
        .bearer_auth(token(user))
}

/// The parts of a stream (each checked against the schema) and whether it ended with `[DONE]`.
fn checked(events: &[SseEvent]) -> (Vec<Value>, bool) {
    let done = events.last().is_some_and(|e| e.data == "[DONE]");
    let parts = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_vercel_part(&v);
            v
        })
        .collect();
    (parts, done)
}

/// The text of a message folded from parts (as `readUIMessageStream` does).
fn text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|p| p["type"] == "text-delta")
        .map(|p| p["delta"].as_str().unwrap())
        .collect()
}

/// Every text block is started before its deltas and ended once.
fn assert_blocks(parts: &[Value]) {
    let mut open: Option<String> = None;
    for p in parts {
        let id = p["id"].as_str().map(str::to_owned);
        match p["type"].as_str().unwrap() {
            "text-start" => {
                assert!(open.is_none(), "one block at a time");
                open = id;
            }
            "text-delta" => assert_eq!(open, id, "a delta of the open block"),
            "text-end" => {
                assert_eq!(open, id);
                open = None;
            }
            "finish" | "error" | "abort" => assert!(open.is_none(), "blocks closed first"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_chat_message_streams_as_strict_parts() {
    let app = spawn_app_with(EngineConfig::for_tests(), vercel).await;
    let r = post(&app, "alice", &body("chat-1", "What is flowgate?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let run_id = run_id_header(&r);
    let (parts, done) = checked(&sse_body(r).await);
    assert!(done, "[DONE] ends the stream");
    assert_eq!(parts[0]["type"], "start");
    assert_eq!(parts[0]["messageId"], format!("msg-{run_id}"));
    assert_eq!(parts.last().unwrap()["type"], "finish");
    assert_blocks(&parts);
    let answer = text(&parts);
    assert_eq!(answer, app.run_text(&run_id).await);
    assert!(answer.contains("What is flowgate?"), "{answer}");
    assert!(parts.iter().any(|p| p["type"] == "start-step"));
    // Idle now: nothing to resume.
    let r = get(&app, "alice", "/api/chat/chat-1/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    app.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_the_whole_message() {
    let app = spawn_app_with(slow(), vercel).await;
    let r = post(&app, "alice", &body("chat-r", "talk a while"))
        .send()
        .await
        .unwrap();
    let run_id = run_id_header(&r);
    let mut stream = r.bytes_stream().eventsource();
    let mut seen = 0;
    while seen < 12 {
        let e = stream.next().await.unwrap().unwrap();
        seen += usize::from(e.data.contains("text-delta"));
    }
    drop(stream);
    // Another user has no such chat: nothing to resume, nothing stopped.
    let r = get(&app, "bob", "/api/chat/chat-r/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http_client()
        .post(app.http_url("/api/chat/chat-r/stop"))
        .bearer_auth(token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The run went on detached: the resume replays the whole message, then follows it.
    let r = get(&app, "alice", "/api/chat/chat-r/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (parts, done) = checked(&sse_body(r).await);
    assert!(done);
    assert_eq!(
        parts[0]["type"], "start",
        "replayed from the run's first event"
    );
    assert_eq!(parts.last().unwrap()["type"], "finish");
    assert_blocks(&parts);
    assert_eq!(text(&parts), app.run_text(&run_id).await);
    assert!(text(&parts).len() > 100, "the whole answer");
    app.stop().await;
}

#[tokio::test]
async fn the_stop_route_cancels_the_run_and_one_run_per_chat() {
    let app = spawn_app_with(slow(), vercel).await;
    let r = post(&app, "alice", &body("chat-s", "talk a while"))
        .send()
        .await
        .unwrap();
    let run_id = run_id_header(&r);
    // A second message to the same chat while it runs: 409, in one readable sentence.
    let busy = post(&app, "alice", &body("chat-s", "and another"))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 409);
    let sentence = busy.text().await.unwrap();
    assert!(sentence.contains("/api/chat/chat-s/stop"), "{sentence}");
    let stopped = http_client()
        .post(app.http_url("/api/chat/chat-s/stop"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 204);
    let (parts, done) = checked(&sse_body(r).await);
    assert!(done);
    assert_eq!(parts.last().unwrap()["type"], "abort");
    assert_blocks(&parts);
    let info = app.ended_run(&run_id).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Cancelled);
    engine_ended_runs(&app, 1).await;
    app.stop().await;
}

#[tokio::test]
async fn refusals_are_one_readable_sentence() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.dialects = vec![DialectId::Neuralabs, DialectId::Vercel];
    })
    .await;
    let refused = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    // No --vercel-agent-id and no agentId in the body.
    let (status, why) = refused(post(&app, "alice", &body("c", "hi")).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(why.contains("agentId"), "{why}");
    let mut named = body("c", "hi");
    named["agentId"] = "nope".into();
    let (status, why) = refused(post(&app, "alice", &named).send().await.unwrap()).await;
    assert_eq!(status, 404, "{why}");
    let mut file = body("c", "hi");
    file["agentId"] = "assistant".into();
    file["messages"][2]["parts"] =
        json!([{"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="}]);
    let (status, why) = refused(post(&app, "alice", &file).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(why.contains("messages[2].parts[0]"), "{why}");
    let r = http_client()
        .post(app.http_url("/api/chat"))
        .bearer_auth(forged_token("alice"))
        .json(&named)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // With agentId named, the run streams.
    let mut ok = body("c", "hi");
    ok["agentId"] = "echo".into();
    let (parts, done) = checked(&sse_body(post(&app, "alice", &ok).send().await.unwrap()).await);
    assert!(done);
    assert_eq!(parts.last().unwrap()["type"], "finish");
    app.stop().await;
}
