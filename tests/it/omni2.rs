//! The `omni2` dialect (OMNI2 dashboard widget, DIALECTS.md 2.1) end to end against the
//! reference engine: `/ws/chat` with a client speaking exactly its frames (every frame checked
//! against `schemas/omni2-server-frame.schema.json`) and the SSE twin with reqwest and
//! eventsource-stream.

use std::time::Duration;

use eventsource_stream::Eventsource;
use flowgate::config::{DialectId, GatewayConfig, WelcomeAs};
use flowgate::engine::EngineConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::schema_check::assert_omni2_frame;

fn omni2(c: &mut GatewayConfig, agent: &str) {
    c.dialects = vec![DialectId::Neuralabs, DialectId::Omni2];
    c.omni2_agent_id = Some(agent.into());
}

async fn app_with(engine: EngineConfig, tweak: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    spawn_app_with(engine, |c| {
        omni2(c, "assistant");
        tweak(c);
    })
    .await
}

/// The forbidden form: an "Access blocked" error frame, then 1008 with an empty reason.
async fn assert_blocked(err: &Value, w: &mut DialectSocket) {
    assert_eq!(err["code"], "forbidden");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("Access blocked: "),
        "{err}"
    );
    assert!(w.next().await.is_none());
    assert_eq!(w.close, Some((1008, String::new())));
}

/// Connect as the widget does: `?token=` in the URL.
async fn connect(app: &TestApp, token: &str) -> DialectSocket {
    let url = format!("ws://{}/ws/chat?token={token}", app.addr);
    DialectSocket::connect(&url, assert_omni2_frame).await
}

/// Frames up to and including `done` or `error`.
async fn read_turn(w: &mut DialectSocket) -> Vec<Value> {
    w.until(|f| f["type"] == "done" || f["type"] == "error")
        .await
}

#[tokio::test]
async fn a_turn_is_tokens_then_done_and_the_socket_remembers_the_conversation() {
    let app = app_with(EngineConfig::for_tests(), |c| {
        c.omni2_welcome_text = "Welcome! I am the flowgate assistant.".into();
    })
    .await;
    let mut w = connect(&app, &token("42")).await;
    assert_eq!(
        w.next().await.unwrap(),
        json!({"type": "welcome", "text": "Welcome! I am the flowgate assistant."})
    );
    w.send(json!({"type": "message", "text": "What is flowgate?"}))
        .await;
    let turn = read_turn(&mut w).await;
    let (done, tokens) = turn.split_last().unwrap();
    assert!(tokens.len() >= 2 && tokens.iter().all(|f| f["type"] == "token"));
    assert_eq!(done["type"], "done");
    let answer: String = tokens.iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(done["result"]["answer"], answer.as_str());
    assert_eq!(done["result"]["iterations"], 1, "one llm_text element");
    assert_eq!(done["result"]["tool_calls"], 0);
    assert!(done["result"]["execution_time"].as_f64().unwrap() > 0.0);
    let run_id = done["run_id"].as_str().unwrap();
    assert_eq!(app.ended_run(run_id).await.user_id, "42");

    // The next message on the socket sees the first turn (the flow echoes its context).
    w.send(json!({"type": "message", "text": "And then?"}))
        .await;
    let second = read_turn(&mut w).await;
    let text = second.last().unwrap()["result"]["answer"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("user: What is flowgate?"), "{text}");
    drop(w);
    app.stop().await;
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_socket_stays_open() {
    let app = app_with(EngineConfig::for_tests(), |c| {
        c.omni2_welcome_text = "Hi".into();
        c.omni2_welcome_as = WelcomeAs::Token;
    })
    .await;
    let mut w = connect(&app, &token("42")).await;
    assert_eq!(
        w.next().await.unwrap(),
        json!({"type": "token", "text": "\n\nHi\n\n"})
    );
    w.ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(
        w.next().await.unwrap(),
        json!({"type": "error", "error": "Invalid JSON", "code": "invalid_request"})
    );
    w.send(json!({"type": "message", "text": "   "})).await;
    assert_eq!(w.next().await.unwrap()["code"], "invalid_request");
    w.send(json!({"type": "subscribe"})).await;
    let unknown = w.next().await.unwrap();
    assert!(
        unknown["error"].as_str().unwrap().contains("subscribe"),
        "{unknown}"
    );
    w.send(json!({"type": "message", "text": "hi"})).await;
    assert_eq!(read_turn(&mut w).await.last().unwrap()["type"], "done");
    drop(w);
    app.stop().await;
}

#[tokio::test]
async fn forbidden_is_access_blocked_then_1008_with_an_empty_reason() {
    // `router` is a draft of bob's: alice may not run it.
    let app = spawn_app_with(EngineConfig::for_tests(), |c| omni2(c, "router")).await;
    let mut w = connect(&app, &token("alice")).await;
    w.send(json!({"type": "message", "text": "hi"})).await;
    let turn = read_turn(&mut w).await;
    let err = turn.last().unwrap();
    assert_blocked(err, &mut w).await;
    app.stop().await;
}

#[tokio::test]
async fn a_refused_token_is_the_error_frame_then_4401() {
    let app = app_with(EngineConfig::for_tests(), |_| {}).await;
    let mut w = connect(&app, &forged_token("42")).await;
    let err = w.next().await.unwrap();
    assert_eq!(err["code"], "unauthenticated");
    assert!(w.next().await.is_none());
    assert_eq!(w.close.as_ref().map(|c| c.0), Some(4401));
    app.stop().await;
}

#[tokio::test]
async fn cancel_ends_in_done_with_cancelled_and_the_partial_answer() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 200;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = app_with(engine, |_| {}).await;
    let mut w = connect(&app, &token("42")).await;
    w.send(json!({"type": "message", "text": "talk"})).await;
    let first = w.next().await.unwrap();
    assert_eq!(first["type"], "token");
    w.send(json!({"type": "cancel"})).await;
    let rest = read_turn(&mut w).await;
    let done = rest.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["result"]["cancelled"], true);
    assert!(
        done["result"]["answer"]
            .as_str()
            .unwrap()
            .starts_with(first["text"].as_str().unwrap())
    );
    let info = app.ended_run(done["run_id"].as_str().unwrap()).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Cancelled);
    drop(w);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_engine_is_one_error_frame() {
    let dead = dead_addr().await;
    let mut config = GatewayConfig::for_tests(format!("ws://{dead}"));
    omni2(&mut config, "assistant");
    let app = spawn_gateway_files(config).await;
    let mut w = connect(&app, &token("42")).await;
    w.send(json!({"type": "message", "text": "hi"})).await;
    let turn = read_turn(&mut w).await;
    assert_eq!(turn.len(), 1, "{turn:#?}");
    assert_eq!(turn[0]["code"], "engine_unavailable");
    drop(w);
    app.stop().await;
}

#[tokio::test]
async fn the_sse_twin_streams_token_events_then_done_and_refuses_with_http_statuses() {
    let app = app_with(EngineConfig::for_tests(), |_| {}).await;
    let http = reqwest::Client::builder()
        .timeout(FRAME_WAIT)
        .build()
        .unwrap();
    let url = format!("http://{}/api/v1/chat/stream", app.addr);
    let post = |body: Value, bearer: Option<String>| {
        let mut r = http.post(&url).json(&body);
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = post(
        json!({"message": "What is flowgate?", "user_id": "someone-else"}),
        Some(token("42")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = Vec::new();
    let mut stream = r.bytes_stream().eventsource();
    while let Some(e) = stream.next().await {
        let e = e.unwrap();
        events.push((e.event, serde_json::from_str::<Value>(&e.data).unwrap()));
    }
    let (last, tokens) = events.split_last().unwrap();
    assert!(tokens.len() >= 2 && tokens.iter().all(|(name, _)| name == "token"));
    assert_eq!(last.0, "done");
    let answer: String = tokens
        .iter()
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(last.1["answer"], answer.as_str());
    assert_eq!(last.1["iterations"], 1);

    // The user's SSE turns are one conversation (`user_id` in the body is ignored).
    let history = app.state.conversations.history("42", "omni2-sse");
    assert_eq!(history.len(), 2, "{history:#?}");
    assert!(
        app.state
            .conversations
            .history("someone-else", "omni2-sse")
            .is_empty()
    );

    let no_token = post(json!({"message": "hi"}), None).await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(
        no_token.json::<Value>().await.unwrap()["code"],
        "unauthenticated"
    );
    let blank = post(json!({"message": " "}), Some(token("42")))
        .await
        .unwrap();
    assert_eq!(blank.status(), 400);
    app.stop().await;

    let dead = dead_addr().await;
    let mut config = GatewayConfig::for_tests(format!("ws://{dead}"));
    omni2(&mut config, "assistant");
    let app = spawn_gateway_files(config).await;
    let url = format!("http://{}/api/v1/chat/stream", app.addr);
    let r = http
        .post(&url)
        .bearer_auth(token("42"))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "a failure before the stream is a real status"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "engine_unavailable");
    assert!(body["error"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn a_too_long_message_is_an_error_and_the_socket_stays_open_until_the_hard_cap() {
    let app = app_with(EngineConfig::for_tests(), |c| {
        c.max_client_message_bytes = 1024
    })
    .await;
    let mut w = connect(&app, &token("42")).await;
    w.send(json!({"type": "message", "text": "x".repeat(2000)}))
        .await;
    let err = w.next().await.unwrap();
    assert_eq!(err["code"], "invalid_request");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("message too long: "),
        "{err}"
    );
    w.send(json!({"type": "message", "text": "hi"})).await;
    assert_eq!(read_turn(&mut w).await.last().unwrap()["type"], "done");
    // Past four times the limit the frame itself is refused: 1009.
    w.send(json!({"type": "message", "text": "x".repeat(5000)}))
        .await;
    assert!(w.next().await.is_none());
    assert_eq!(w.close.as_ref().map(|c| c.0), Some(1009));
    app.stop().await;
}

#[tokio::test]
async fn a_resumed_turn_rebuilds_the_answer_from_the_frames_before_the_cursor() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 30;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = app_with(engine, |c| c.detach_grace = Duration::from_secs(30)).await;
    let mut w = connect(&app, &token("42")).await;
    w.send(json!({"type": "message", "text": "talk"})).await;
    let first = w.until(|f| f["type"] == "token").await;
    let last = first.last().unwrap().clone();
    let (run_id, seq) = (
        last["run_id"].as_str().unwrap().to_owned(),
        last["seq"].as_u64().unwrap(),
    );
    drop(w); // the widget's socket goes; the run goes on detached

    // Live: a new socket resumes after the last frame it had.
    let mut w = connect(&app, &token("42")).await;
    w.send(json!({"type": "resume", "run_id": run_id, "after_seq": seq}))
        .await;
    let rest = read_turn(&mut w).await;
    assert!(rest.iter().all(|f| f["seq"].as_u64().unwrap() > seq));
    let done = rest.last().unwrap();
    assert_eq!(done["type"], "done");
    let streamed: String = rest.iter().filter_map(|f| f["text"].as_str()).collect();
    let answer = done["result"]["answer"].as_str().unwrap().to_owned();
    assert!(
        answer.ends_with(&streamed),
        "the rest streamed after the cursor"
    );
    assert!(
        answer.starts_with(last["text"].as_str().unwrap()),
        "the whole answer, frames before the cursor included: {answer}"
    );
    drop(w);

    // Ended: replayed from the run log, the same answer.
    app.ended_run(&run_id).await;
    let mut w = connect(&app, &token("42")).await;
    w.send(json!({"type": "resume", "run_id": run_id, "after_seq": seq}))
        .await;
    let replay = read_turn(&mut w).await;
    assert_eq!(replay.last().unwrap()["result"]["answer"], answer.as_str());
    drop(w);
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_x_user_id_must_name_the_tokens_user() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let behind = |trusted: bool| {
        move |c: &mut GatewayConfig| {
            if trusted {
                c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
        }
    };
    let request = |app: &TestApp, x_user_id: &str| {
        let mut req = format!("ws://{}/ws/chat", app.addr)
            .into_client_request()
            .unwrap();
        let h = req.headers_mut();
        h.insert(
            "authorization",
            format!("Bearer {}", token("42")).parse().unwrap(),
        );
        h.insert("x-user-id", x_user_id.parse().unwrap());
        req
    };
    let app = app_with(EngineConfig::for_tests(), behind(true)).await;
    let mut w = DialectSocket::connect_request(request(&app, "42"), assert_omni2_frame).await;
    w.send(json!({"type": "message", "text": "hi"})).await;
    assert_eq!(read_turn(&mut w).await.last().unwrap()["type"], "done");
    drop(w);
    let mut w = DialectSocket::connect_request(request(&app, "7"), assert_omni2_frame).await;
    let err = w.next().await.unwrap();
    assert_blocked(&err, &mut w).await;
    app.stop().await;

    // From a peer that is not a trusted proxy the header means nothing.
    let app = app_with(EngineConfig::for_tests(), behind(false)).await;
    let mut w = DialectSocket::connect_request(request(&app, "7"), assert_omni2_frame).await;
    w.send(json!({"type": "message", "text": "hi"})).await;
    let done = read_turn(&mut w).await;
    let info = app
        .ended_run(done.last().unwrap()["run_id"].as_str().unwrap())
        .await;
    assert_eq!(info.user_id, "42");
    drop(w);
    app.stop().await;
}
