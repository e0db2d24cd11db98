//! The `adk` dialect's HTTP side (DIALECTS.md 2.4.2) end to end with a real HTTP client
//! (reqwest) and a real SSE parser (eventsource-stream): sessions, `/run_sse`, `/run`, errors
//! as HTTP statuses with `{"detail"}`, a disconnect that stops the run.

use std::time::Duration;

use eventsource_stream::Eventsource;
use flowgate::config::DialectId;
use flowgate::engine::EngineConfig;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::*;

async fn app_with(engine: EngineConfig) -> TestApp {
    spawn_app_with(engine, |c| {
        c.dialects = vec![DialectId::Neuralabs, DialectId::Adk];
        c.adk_agent_id = Some("assistant".into());
    })
    .await
}

struct Caller {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Caller {
    fn new(app: &TestApp, user: &str) -> Caller {
        Caller {
            http: reqwest::Client::builder()
                .timeout(FRAME_WAIT)
                .build()
                .unwrap(),
            base: format!("http://{}", app.addr),
            token: barka_token(user),
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn session(&self, user: &str) -> String {
        let r = self
            .post(&format!("/apps/assistant/users/{user}/sessions"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let s: Value = r.json().await.unwrap();
        assert_eq!(s["appName"], "assistant");
        assert_eq!(s["userId"], user);
        assert_eq!(s["events"], json!([]));
        s["id"].as_str().unwrap().to_owned()
    }
}

fn request(user: &str, session: &str, text: &str, streaming: bool) -> Value {
    json!({
        "appName": "assistant",
        "userId": user,
        "sessionId": session,
        "newMessage": {"role": "user", "parts": [{"text": text}]},
        "streaming": streaming,
    })
}

/// The events of an SSE response, parsed by eventsource-stream.
async fn events(r: reqwest::Response) -> Vec<Value> {
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut out = Vec::new();
    let mut stream = r.bytes_stream().eventsource();
    while let Some(e) = stream.next().await {
        let e = e.expect("a well-formed SSE event");
        out.push(serde_json::from_str(&e.data).expect("JSON data"));
    }
    out
}

/// ADK's `Event`: only its own keys (flowgate's in customMetadata).
fn assert_adk_event(e: &Value) {
    const KEYS: &[&str] = &[
        "content",
        "partial",
        "turnComplete",
        "interrupted",
        "invocationId",
        "author",
        "id",
        "timestamp",
        "customMetadata",
    ];
    for k in e.as_object().expect("an object").keys() {
        assert!(KEYS.contains(&k.as_str()), "unknown key {k} in {e}");
    }
    assert_eq!(e["author"], "assistant");
    assert!(e["timestamp"].is_f64(), "{e}");
    assert_eq!(e["content"]["role"], "model");
    assert!(e["customMetadata"]["flowgate_seq"].is_u64());
}

#[tokio::test]
async fn run_sse_streams_partials_then_one_final_event_and_run_returns_the_final_only() {
    let app = app_with(EngineConfig::for_tests()).await;
    let c = Caller::new(&app, "u1");
    let session = c.session("u1").await;

    let r = c
        .post("/run_sse")
        .json(&request("u1", &session, "What is flowgate?", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let evs = events(r).await;
    evs.iter().for_each(assert_adk_event);
    let (last, partials) = evs.split_last().unwrap();
    assert!(partials.len() >= 2, "{evs:#?}");
    assert!(partials.iter().all(|e| e["partial"] == true));
    assert_eq!(last["turnComplete"], true);
    let streamed: String = partials
        .iter()
        .map(|e| e["content"]["parts"][0]["text"].as_str().unwrap())
        .collect();
    let full = last["content"]["parts"][0]["text"].as_str().unwrap();
    assert_eq!(streamed, full, "the final event repeats the whole answer");
    let invocation = last["invocationId"].as_str().unwrap();
    assert!(evs.iter().all(|e| e["invocationId"] == invocation));
    let run_id = last["customMetadata"]["flowgate_run_id"].as_str().unwrap();
    assert_eq!(app.ended_run(run_id).await.user_id, "u1");

    // `/run`: the same answer, no partials; snake_case keys accepted.
    let body = json!({
        "app_name": "assistant", "user_id": "u1", "session_id": session,
        "new_message": {"parts": [{"text": "And again?"}]},
    });
    let r = c.post("/run").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let evs: Vec<Value> = r.json().await.unwrap();
    assert_eq!(evs.len(), 1, "{evs:#?}");
    assert_adk_event(&evs[0]);
    assert_eq!(evs[0]["turnComplete"], true);
    // The session is the conversation: the first turn reached this run's flow as its history.
    let second = evs[0]["content"]["parts"][0]["text"].as_str().unwrap();
    assert!(
        second.contains("user: What is flowgate?") && second.contains(full),
        "the session's history reached the flow: {second}"
    );

    // Both turns remembered for this user.
    let history = app
        .state
        .conversations
        .history("u1", &format!("adk-session:assistant:{session}"));
    assert_eq!(history.len(), 4, "{history:#?}");
    app.stop().await;
}

#[tokio::test]
async fn session_routes_and_every_refusal_is_an_http_status_with_detail() {
    let app = app_with(EngineConfig::for_tests()).await;
    let c = Caller::new(&app, "u1");
    let base = "/apps/assistant/users/u1/sessions";
    // A chosen id; twice is 400; GET and DELETE; then 404.
    let r = c
        .post(&format!("{base}/s-8c1e"))
        .json(&json!({"state": {"k": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], json!({"k": 1}));
    let again = c.post(&format!("{base}/s-8c1e")).send().await.unwrap();
    assert_eq!(again.status(), 400);
    let url = format!("{}{base}/s-8c1e", c.base);
    let got = c.http.get(&url).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let gone = c
        .http
        .delete(&url)
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    let missing = c.http.get(&url).bearer_auth(&c.token).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"detail": "Session not found"})
    );

    // Another user's path: 403; no token: 401; a forged token: 401.
    let other = c
        .post("/apps/assistant/users/someone-else/sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    let anon = c
        .http
        .post(format!("{}{base}", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    assert!(anon.json::<Value>().await.unwrap()["detail"].is_string());
    let forged = c
        .http
        .post(format!("{}{base}", c.base))
        .bearer_auth(forged_token("u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    let session = c.session("u1").await;
    for (body, status) in [
        // Unknown session.
        (request("u1", "s-never", "hi", true), 404),
        // Another user in the body.
        (request("u2", &session, "hi", true), 403),
        // A non-text part.
        (
            json!({"appName": "assistant", "userId": "u1", "sessionId": session,
                   "newMessage": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}}),
            400,
        ),
        // Not a RunAgentRequest.
        (json!({"message": "hi"}), 400),
    ] {
        let r = c.post("/run_sse").json(&body).send().await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    }
    // An agent that does not exist: the run fails before flow_started, so a real 404.
    let missing_app = c
        .post("/apps/nope/users/u1/sessions/s1")
        .send()
        .await
        .unwrap();
    assert_eq!(missing_app.status(), 200, "sessions do not check the agent");
    let mut body = request("u1", "s1", "hi", true);
    body["appName"] = "nope".into();
    let r = c.post("/run_sse").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let detail = r.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.starts_with("agent_not_found: "), "{detail}");
    // A body over --max-request-body-bytes: 413.
    let big = "x".repeat(2 * 1024 * 1024);
    let r = c
        .post("/run_sse")
        .json(&request("u1", &session, &big, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_engine_is_a_503_before_any_event() {
    let dead = dead_addr().await;
    let mut config = flowgate::config::GatewayConfig::for_tests(format!("ws://{dead}"));
    config.dialects = vec![DialectId::Neuralabs, DialectId::Adk];
    config.adk_agent_id = Some("assistant".into());
    let app = spawn_gateway_files(config).await;
    let c = Caller::new(&app, "u1");
    let session = c.session("u1").await;
    let r = c
        .post("/run_sse")
        .json(&request("u1", &session, "hi", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let detail = r.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.starts_with("engine_unavailable: "), "{detail}");
    app.stop().await;
}

#[tokio::test]
async fn closing_the_stream_cancels_the_run() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 500;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = app_with(engine).await;
    let c = Caller::new(&app, "u1");
    let session = c.session("u1").await;
    let r = c
        .post("/run_sse")
        .json(&request("u1", &session, "talk a lot", true))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream().eventsource();
    let first = stream.next().await.unwrap().unwrap();
    let first: Value = serde_json::from_str(&first.data).unwrap();
    let run_id = first["customMetadata"]["flowgate_run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(stream);
    let info = app.ended_run(&run_id).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Cancelled);
    app.stop().await;
}
