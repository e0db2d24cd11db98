//! The `agui` dialect (AG-UI over SSE, DIALECTS.md 4.4) end to end against the reference engine:
//! every event checked against `schemas/agui.schema.json` and against the order rules
//! `@ag-ui/client` enforces (which `tests/clients/` runs with the real client).

use std::time::Duration;

use flowgate::config::{DialectId, GatewayConfig};
use flowgate::engine::{EngineConfig, Fault};
use serde_json::{Value, json};

use crate::common::*;
use crate::schema_check::assert_agui_event;

fn agui(c: &mut GatewayConfig) {
    c.dialects = vec![DialectId::Neuralabs, DialectId::Agui];
}

fn input(message: &str) -> Value {
    json!({
        "threadId": "t-91a0",
        "runId": "r-5c2e",
        "state": {},
        "messages": [
            {"id": "u0", "role": "user", "content": "Hi"},
            {"id": "a0", "role": "assistant", "content": "Hello!"},
            {"id": "u1", "role": "user", "content": message},
        ],
        "tools": [{"name": "confirm", "description": "ask the user", "parameters": {}}],
        "context": [],
        "forwardedProps": {},
    })
}

fn run(app: &TestApp, agent: &str, user: &str, body: &Value) -> reqwest::RequestBuilder {
    http_client()
        .post(app.http_url(&format!("/agui/{agent}")))
        .header("accept", "text/event-stream")
        .bearer_auth(token(user))
        .json(body)
}

/// The order rules of `@ag-ui/client`'s verifier: the first event is `RUN_STARTED`; a message's
/// content and end need its open start, and a start is not repeated while open; a step ends
/// only while open and two open steps never share a name; `RUN_FINISHED` only with nothing
/// open; nothing after `RUN_FINISHED` or `RUN_ERROR`.
fn verify_order(events: &[Value]) {
    let mut open_messages: Vec<String> = Vec::new();
    let mut open_steps: Vec<String> = Vec::new();
    let mut ended = false;
    for (i, e) in events.iter().enumerate() {
        let t = e["type"].as_str().unwrap();
        assert!(!ended, "event {i} ({t}) after the run ended");
        assert_eq!(
            i == 0,
            t == "RUN_STARTED",
            "RUN_STARTED first and only first: {t} at {i}"
        );
        let id = e["messageId"].as_str().unwrap_or_default().to_owned();
        let step = e["stepName"].as_str().unwrap_or_default().to_owned();
        match t {
            "TEXT_MESSAGE_START" => {
                assert!(!open_messages.contains(&id), "{id} started twice");
                open_messages.push(id);
            }
            "TEXT_MESSAGE_CONTENT" => assert!(open_messages.contains(&id), "content of {id}"),
            "TEXT_MESSAGE_END" => {
                let at = open_messages.iter().position(|m| *m == id);
                open_messages.remove(at.unwrap_or_else(|| panic!("end of {id}, not open")));
            }
            "STEP_STARTED" => {
                assert!(!open_steps.contains(&step), "step {step} started twice");
                open_steps.push(step);
            }
            "STEP_FINISHED" => {
                let at = open_steps.iter().position(|s| *s == step);
                open_steps.remove(at.unwrap_or_else(|| panic!("step {step} not open")));
            }
            "RUN_FINISHED" => {
                assert!(open_messages.is_empty() && open_steps.is_empty());
                ended = true;
            }
            "RUN_ERROR" => ended = true,
            _ => {}
        }
    }
    assert!(ended, "the run ends with RUN_FINISHED or RUN_ERROR");
}

fn checked(events: &[SseEvent]) -> Vec<Value> {
    let values: Vec<Value> = events
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).expect("every data line is JSON");
            assert_agui_event(&v);
            v
        })
        .collect();
    verify_order(&values);
    values
}

#[tokio::test]
async fn a_run_streams_in_the_order_the_client_verifies() {
    let app = spawn_app_with(EngineConfig::for_tests(), agui).await;
    let r = run(&app, "assistant", "alice", &input("What is flowgate?"))
        .send()
        .await
        .unwrap();
    let run_id = run_id_header(&r);
    let events = checked(&sse_body(r).await);
    let first = &events[0];
    assert_eq!(first["threadId"], "t-91a0", "the client's ids are echoed");
    assert_eq!(first["runId"], "r-5c2e");
    assert_eq!(first["metadata"]["flowgate"]["run_id"], run_id.as_str());
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "TEXT_MESSAGE_CONTENT")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, app.run_text(&run_id).await);
    assert!(text.contains("What is flowgate?"), "{text}");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "RUN_FINISHED");
    assert_eq!(last["result"]["text"], text.as_str());
    app.stop().await;
}

#[tokio::test]
async fn a_failed_run_ends_with_run_error_and_its_partial_output() {
    let mut engine = EngineConfig::for_tests();
    engine.fault = Some(Fault::CrashAfter(20));
    let app = spawn_app_with(engine, agui).await;
    let r = run(&app, "assistant", "alice", &input("hi"))
        .send()
        .await
        .unwrap();
    let events = checked(&sse_body(r).await);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "RUN_ERROR");
    assert_eq!(last["code"], "engine_lost");
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "TEXT_MESSAGE_CONTENT")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(!streamed.is_empty(), "the crash comes after some text");
    assert_eq!(
        last["metadata"]["flowgate"]["partial_output"],
        streamed.as_str()
    );
    app.stop().await;
}

#[tokio::test]
async fn failures_before_the_stream_are_http_errors() {
    let app = spawn_app_with(EngineConfig::for_tests(), agui).await;
    let status_and_code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        (status, v["code"].as_str().unwrap().to_owned())
    };
    let r = http_client()
        .post(app.http_url("/agui/assistant"))
        .bearer_auth(forged_token("alice"))
        .json(&input("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_code(r).await, (401, "unauthenticated".into()));
    let r = run(&app, "nope", "alice", &input("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_code(r).await, (404, "agent_not_found".into()));
    let r = run(&app, "router", "alice", &input("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_code(r).await, (403, "forbidden".into()));
    let r = run(&app, "assistant", "alice", &json!({"messages": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_code(r).await, (400, "invalid_request".into()));
    let binary = json!({"messages": [{"id": "u", "role": "user", "content": [{"type": "binary", "mimeType": "image/png", "data": "AA=="}]}]});
    let r = run(&app, "assistant", "alice", &binary)
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_code(r).await, (400, "invalid_request".into()));
    app.stop().await;
}

#[tokio::test]
async fn aborting_the_request_cancels_the_run_at_the_engine() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 500;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = spawn_app_with(engine, agui).await;
    let r = run(&app, "assistant", "alice", &input("talk a lot"))
        .send()
        .await
        .unwrap();
    assert_closing_the_stream_cancels(&app, r).await;
    app.stop().await;
}
