//! The `citizen` dialect (Citizen Interface "Leoma", DIALECTS.md 2.3) end to end against the
//! reference engine: session minting with reqwest, the socket with a client that sends exactly
//! the design note's enveloped frames and the shipped client's flat ones (every frame checked
//! against `schemas/citizen-server-frame.schema.json`).

use std::time::Duration;

use base64::Engine as _;
use flowgate::config::{DialectId, GatewayConfig};
use flowgate::engine::EngineConfig;
use futures_util::SinkExt;
use serde_json::{Value, json};

use crate::common::*;
use crate::schema_check::assert_citizen_frame;

fn citizen(c: &mut GatewayConfig) {
    c.dialects = vec![DialectId::Neuralabs, DialectId::Citizen];
    c.citizen_agent_id = Some("assistant".into());
}

async fn mint(app: &TestApp, bearer: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(format!("http://{}/api/agent/session", app.addr));
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn session(app: &TestApp) -> (String, DialectSocket) {
    let r = mint(app, None).await;
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    let id = s["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(s["agent"], "Assistant");
    let url = s["websocketUrl"].as_str().unwrap();
    assert_eq!(url, format!("ws://{}/", app.addr));
    let mut c =
        DialectSocket::connect(&format!("{url}?sessionId={id}"), assert_citizen_frame).await;
    assert_eq!(c.next().await.unwrap()["type"], "connected");
    (id, c)
}

fn flat_end(f: &Value) -> bool {
    f["done"] == true
}

fn enveloped_end(f: &Value) -> bool {
    f["type"] == "message" || f["type"] == "error"
}

#[tokio::test]
async fn a_flat_turn_is_one_frame_and_an_enveloped_turn_is_typing_then_message() {
    let app = spawn_app_with(EngineConfig::for_tests(), citizen).await;
    let (id, mut c) = session(&app).await;
    c.send(
        json!({"sessionId": id, "message": "I want to file a complaint", "userName": "A. Kamara",
                  "locationContext": {"hasLocation": true, "latitude": 8.48, "longitude": -13.23}}),
    )
    .await;
    let turn = c.until(flat_end).await;
    assert_eq!(turn.len(), 1, "one frame per turn: {turn:#?}");
    let answer = turn[0]["delta"].as_str().unwrap().to_owned();
    assert!(answer.contains("I want to file a complaint"), "{answer}");
    let info = app.ended_run(turn[0]["run_id"].as_str().unwrap()).await;
    assert_eq!(
        info.user_id,
        format!("anonymous:citizen-{id}"),
        "the session's own principal"
    );

    c.send(json!({"type": "message", "data": {"message": "And the status?", "sessionId": id}}))
        .await;
    let turn = c.until(enveloped_end).await;
    let types: Vec<&str> = turn.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["typing", "message"]);
    let message = turn[1]["data"]["message"].as_str().unwrap();
    assert_eq!(turn[1]["data"]["sessionId"], id.as_str());
    assert!(
        message.contains("user: I want to file a complaint"),
        "the session's history: {message}"
    );
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn sessions_are_registered_and_frames_for_another_session_are_forbidden() {
    let app = spawn_app_with(EngineConfig::for_tests(), citizen).await;
    // A session id nobody minted: the merged error frame, then 4401.
    let url = format!(
        "ws://{}/?sessionId=9f2c4e1ab37d4c0e8a5b6d7e8f901234",
        app.addr
    );
    let mut c = DialectSocket::connect(&url, assert_citizen_frame).await;
    let refused = c.next().await.unwrap();
    assert_eq!(refused["code"], "unauthenticated");
    assert_eq!(refused["done"], true);
    assert_eq!(refused["error"], refused["message"]);
    assert_eq!(refused["data"]["code"], "unauthenticated");
    assert!(c.next().await.is_none());
    assert_eq!(c.close.as_ref().map(|c| c.0), Some(4401));

    let (id, mut c) = session(&app).await;
    let (other, keep) = session(&app).await;
    c.send(json!({"sessionId": other, "message": "hi"})).await;
    assert_eq!(c.next().await.unwrap()["code"], "forbidden");
    c.ws.send(tokio_tungstenite::tungstenite::Message::text("{oops"))
        .await
        .unwrap();
    assert_eq!(
        c.next().await.unwrap(),
        json!({"type": "error", "message": "Invalid JSON format", "error": "Invalid JSON format",
               "done": true, "code": "invalid_request",
               "data": {"error": "Invalid JSON format", "code": "invalid_request"}})
    );
    c.send(json!({"type": "message", "data": {"sessionId": id}}))
        .await;
    let enveloped = c.next().await.unwrap();
    assert_eq!(
        enveloped["data"]["code"], "invalid_request",
        "answered in the request's form"
    );
    assert!(enveloped.get("done").is_none());
    // A plain GET / is still the chat page.
    let page = reqwest::get(format!("http://{}/", app.addr)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    drop((c, keep));
    app.stop().await;
}

#[tokio::test]
async fn attachments_are_checked_and_never_silently_dropped() {
    let app = spawn_app_with(EngineConfig::for_tests(), citizen).await;
    let (id, mut c) = session(&app).await;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    // A type the original refused: an error naming the file, no run, the socket stays open.
    c.send(json!({"sessionId": id, "message": "see attached",
                  "media": [{"name": "tool.exe", "type": "application/x-msdownload", "size": 3, "data": b64(b"MZ!")}]}))
        .await;
    let refused = c.next().await.unwrap();
    assert!(
        refused["error"].as_str().unwrap().contains("tool.exe"),
        "{refused}"
    );
    // Empty, and over the image limit (8 MB): refused with the rule.
    c.send(json!({"sessionId": id, "message": "x",
                  "mediaContext": {"hasMedia": true, "filename": "empty.png", "mimeType": "image/png", "size": 0, "data": ""}}))
        .await;
    assert!(
        c.next().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("empty")
    );
    // A valid image: the text runs and the answer says the attachment was not processed.
    c.send(json!({"type": "message", "data": {"sessionId": id, "message": "here is evidence",
                  "media": [{"name": "evidence.png", "type": "image/png", "size": 4, "data": b64(b"\x89PNG")}]}}))
        .await;
    let turn = c.until(enveloped_end).await;
    let message = turn.last().unwrap()["data"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("(Attachment evidence.png was received but not processed.)\n\n"),
        "{message}"
    );
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_flat_turn_keeps_its_partial_answer_and_a_token_makes_the_session_the_users() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 200;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = spawn_app_with(engine, |c| {
        citizen(c);
        c.citizen_stream_deltas = true;
    })
    .await;
    let (id, mut c) = session(&app).await;
    c.send(json!({"sessionId": id, "message": "talk"})).await;
    let first = c.next().await.unwrap();
    assert!(
        first["delta"].is_string() && first.get("done").is_none(),
        "deltas: {first}"
    );
    c.send(json!({"type": "cancel"})).await;
    let turn = c.until(flat_end).await;
    let end = turn.last().unwrap();
    assert_eq!(end["cancelled"], true);
    let info = app.ended_run(end["run_id"].as_str().unwrap()).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Cancelled);
    drop(c);

    // Minted with a token: the session is that user's; a refused token is 401.
    let r = mint(&app, Some(&token("alice"))).await;
    let s: Value = r.json().await.unwrap();
    let sid = s["sessionId"].as_str().unwrap();
    let url = format!("ws://{}/?sessionId={sid}", app.addr);
    let mut c = DialectSocket::connect(&url, assert_citizen_frame).await;
    c.next().await.unwrap();
    c.send(json!({"sessionId": sid, "message": "hi"})).await;
    let end = c.until(flat_end).await;
    let info = app
        .ended_run(end.last().unwrap()["run_id"].as_str().unwrap())
        .await;
    assert_eq!(info.user_id, "alice");
    assert_eq!(mint(&app, Some(&forged_token("alice"))).await.status(), 401);
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn minting_is_limited_per_client_address_read_from_trusted_proxies_only() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        citizen(c);
        c.upgrades_per_second = 1;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/agent/session", app.addr);
    let from = |addr: &'static str| http.post(&url).header("x-forwarded-for", addr).send();
    // One client behind the trusted proxy uses up its budget...
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(from("203.0.113.9").await.unwrap().status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // ...another client behind the same proxy still gets a session.
    assert_eq!(from("203.0.113.10").await.unwrap().status(), 200);
    // Behind a TLS-terminating trusted proxy the socket URL is wss.
    let s: Value = http
        .post(&url)
        .header("x-forwarded-for", "203.0.113.11")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        s["websocketUrl"].as_str().unwrap().starts_with("wss://"),
        "{s}"
    );
    app.stop().await;

    // Without trusting the peer, the header is ignored: one shared budget.
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        citizen(c);
        c.upgrades_per_second = 1;
    })
    .await;
    let url = format!("http://{}/api/agent/session", app.addr);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let forged = format!("198.51.100.{i}");
        statuses.push(
            http.post(&url)
                .header("x-forwarded-for", forged)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&429),
        "a forged header does not buy a new budget: {statuses:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_require_token_sessions_need_a_token_and_the_socket_the_same_user() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        citizen(c);
        c.citizen_require_token = true;
    })
    .await;
    assert_eq!(mint(&app, None).await.status(), 401);
    let s: Value = mint(&app, Some(&token("alice")))
        .await
        .json()
        .await
        .unwrap();
    let sid = s["sessionId"].as_str().unwrap();
    for (who, ok) in [(None, false), (Some("bob"), false), (Some("alice"), true)] {
        let mut url = format!("ws://{}/?sessionId={sid}", app.addr);
        if let Some(user) = who {
            url.push_str(&format!("&token={}", token(user)));
        }
        let mut c = DialectSocket::connect(&url, assert_citizen_frame).await;
        let first = c.next().await.unwrap();
        if ok {
            assert_eq!(first["type"], "connected");
        } else {
            assert_eq!(first["code"], "unauthenticated", "{who:?}: {first}");
            assert!(c.next().await.is_none());
            assert_eq!(c.close.as_ref().map(|c| c.0), Some(4401));
        }
    }
    app.stop().await;
}
