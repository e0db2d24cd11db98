//! The `openai` dialect (Chat Completions, DIALECTS.md 4.2) end to end against the reference
//! engine with a real HTTP client and SSE parser; every event and body checked against
//! `schemas/openai.schema.json`. The Python `openai` SDK runs against the demo in
//! `tests/clients/`.

use std::time::Duration;

use flowgate::config::{DialectId, GatewayConfig};
use flowgate::engine::{EngineConfig, Fault};
use serde_json::{Value, json};

use crate::common::*;
use crate::schema_check::assert_openai_event;

fn openai(c: &mut GatewayConfig) {
    c.dialects = vec![DialectId::Neuralabs, DialectId::Openai];
}

fn completion(app: &TestApp, user: &str, body: &Value) -> reqwest::RequestBuilder {
    http_client()
        .post(app.http_url("/v1/chat/completions"))
        .bearer_auth(token(user))
        .json(body)
}

fn ask(stream: bool) -> Value {
    json!({
        "model": "assistant",
        "messages": [
            {"role": "system", "content": "ignored: the flow owns its prompts"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "What is flowgate?"},
        ],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// The data of a stream's events, each checked against the schema (all but `[DONE]`).
fn checked(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).expect("JSON data");
            assert_openai_event(&v);
            v
        })
        .collect()
}

fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn a_streamed_completion_then_the_same_answer_whole() {
    let app = spawn_app_with(EngineConfig::for_tests(), openai).await;
    let r = completion(&app, "alice", &ask(true)).send().await.unwrap();
    let run_id = run_id_header(&r);
    let events = sse_body(r).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks = checked(&events);
    let id = format!("chatcmpl-{run_id}");
    assert!(chunks.iter().all(|c| c["id"] == id.as_str()));
    assert!(chunks.iter().all(|c| c["created"] == chunks[0]["created"]));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(
        chunks[1..]
            .iter()
            .all(|c| c["choices"][0]["delta"].get("role").is_none()),
        "role only in the first delta"
    );
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert!(
        chunks[..n - 2]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(chunks[n - 1]["choices"], json!([]), "the usage chunk");
    // Numbered with the seq of the frame each came from.
    let seqs: Vec<u64> = events[..events.len() - 1]
        .iter()
        .map(|e| e.id.parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    let streamed = content(&chunks);
    assert!(!streamed.is_empty());
    // The text the native path streams for the same run: its chunks in the run log.
    assert_eq!(streamed, app.run_text(&run_id).await);
    // The history reached the flow (the scripted model echoes its context).
    assert!(streamed.contains("What is flowgate?"), "{streamed}");

    let r = completion(&app, "alice", &ask(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-flowgate-run-id"));
    let whole: Value = r.json().await.unwrap();
    assert_openai_event(&whole);
    assert_eq!(whole["choices"][0]["message"]["content"], streamed.as_str());
    app.stop().await;
}

#[tokio::test]
async fn models_are_the_agents_the_caller_may_run() {
    let app = spawn_app_with(EngineConfig::for_tests(), openai).await;
    let list = |user: &'static str| {
        let url = app.http_url("/v1/models");
        async move {
            let r = http_client()
                .get(url)
                .bearer_auth(token(user))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            assert_openai_event(&v);
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let alice = list("alice").await;
    assert!(alice.contains(&"assistant".to_owned()), "{alice:?}");
    assert!(
        !alice.contains(&"router".to_owned()),
        "bob's draft: {alice:?}"
    );
    assert!(list("bob").await.contains(&"router".to_owned()));
    app.stop().await;
}

#[tokio::test]
async fn errors_have_openais_shape_and_status() {
    // A slow engine, so that a run is still streaming when the next one is asked for.
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 500;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = spawn_app_with(engine, |c| {
        openai(c);
        c.max_runs_per_user = 1;
        c.max_request_body_bytes = 4096;
    })
    .await;
    let expect = |r: reqwest::Response, status: u16, kind: &'static str, code: &'static str| async move {
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_openai_event(&v);
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        v
    };
    let bad_key = http_client()
        .post(app.http_url("/v1/chat/completions"))
        .bearer_auth(forged_token("alice"))
        .json(&ask(true))
        .send()
        .await
        .unwrap();
    expect(bad_key, 401, "authentication_error", "unauthenticated").await;
    let no_key = http_client()
        .post(app.http_url("/v1/chat/completions"))
        .json(&ask(true))
        .send()
        .await
        .unwrap();
    expect(no_key, 401, "authentication_error", "unauthenticated").await;
    let mut unknown = ask(true);
    unknown["model"] = "nope".into();
    let r = completion(&app, "alice", &unknown).send().await.unwrap();
    let v = expect(r, 404, "invalid_request_error", "model_not_found").await;
    assert_eq!(v["error"]["param"], "model");
    let mut tools = ask(true);
    tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    let r = completion(&app, "alice", &tools).send().await.unwrap();
    let v = expect(r, 400, "invalid_request_error", "invalid_request").await;
    assert_eq!(v["error"]["param"], "tools");
    let mut image = ask(true);
    image["messages"] = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]);
    let r = completion(&app, "alice", &image).send().await.unwrap();
    let v = expect(r, 400, "invalid_request_error", "invalid_request").await;
    assert_eq!(v["error"]["param"], "messages[0].content[0]");
    let mut big = ask(true);
    big["messages"][3]["content"] = "x".repeat(8192).into();
    let r = completion(&app, "alice", &big).send().await.unwrap();
    assert_eq!(r.status(), 413, "over --max-request-body-bytes");
    // Bob's draft agent is not alice's to run.
    let mut draft = ask(false);
    draft["model"] = "router".into();
    let r = completion(&app, "alice", &draft).send().await.unwrap();
    expect(r, 403, "permission_error", "forbidden").await;

    // One run at a time for this user: the second is rate limited while the first streams.
    let mut engine_slow = ask(true);
    engine_slow["messages"] = json!([{"role": "user", "content": "talk a lot"}]);
    let first = completion(&app, "alice", &engine_slow)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = completion(&app, "alice", &engine_slow)
        .send()
        .await
        .unwrap();
    expect(second, 429, "rate_limit_error", "too_many_runs").await;
    drop(first);
    app.stop().await;

    // The engine is down: 503, before any stream.
    let dead = dead_addr().await;
    let mut config = GatewayConfig::for_tests(format!("ws://{dead}"));
    openai(&mut config);
    let app = spawn_gateway_files(config).await;
    let r = completion(&app, "alice", &ask(true)).send().await.unwrap();
    expect(r, 503, "server_error", "engine_unavailable").await;
    app.stop().await;
}

#[tokio::test]
async fn an_engine_lost_mid_stream_is_one_error_event_without_done() {
    let mut engine = EngineConfig::for_tests();
    engine.fault = Some(Fault::CrashAfter(20));
    let app = spawn_app_with(engine, openai).await;
    let r = completion(&app, "alice", &ask(true)).send().await.unwrap();
    let events = sse_body(r).await;
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    let chunks = checked(&events);
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], "engine_lost");
    assert_eq!(last["error"]["type"], "server_error");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"] != "stop"),
        "a cut answer is never passed off as whole"
    );
    // Whole: the same failure is a 500 with the error body.
    let r = completion(&app, "alice", &ask(false)).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_openai_event(&v);
    assert_eq!(v["error"]["code"], "engine_lost");
    app.stop().await;
}

#[tokio::test]
async fn closing_the_connection_cancels_the_run_at_the_engine() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 500;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = spawn_app_with(engine, openai).await;
    let r = completion(&app, "alice", &ask(true)).send().await.unwrap();
    assert_closing_the_stream_cancels(&app, r).await;
    app.stop().await;
}

#[tokio::test]
async fn browser_pages_on_the_allowed_origins_may_call_the_http_dialects() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.dialects = vec![
            DialectId::Neuralabs,
            DialectId::Openai,
            DialectId::Vercel,
            DialectId::Agui,
        ];
        c.allowed_origins = vec!["https://chat.example.com".into()];
    })
    .await;
    for path in ["/v1/chat/completions", "/api/chat", "/agui/assistant"] {
        let preflight = |origin: &'static str| {
            http_client()
                .request(reqwest::Method::OPTIONS, app.http_url(path))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .send()
        };
        let r = preflight("https://chat.example.com").await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://chat.example.com"
        );
        let allowed = r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
        let r = preflight("https://evil.example.com").await.unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{path}: another origin is not allowed"
        );
    }
    let r = completion(&app, "alice", &ask(false))
        .header("origin", "https://chat.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(exposed.contains("x-flowgate-run-id"), "{exposed}");
    app.stop().await;
}
