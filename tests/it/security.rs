//! Attacks on the gateway's boundary: origins, floods, oversize input, limits, hidden prompts,
//! the engine config frame, token expiry, tokens in logs, anonymous access.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowgate::config::Secret;
use flowgate::engine::EngineConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;

async fn upgrade_status(req: tokio_tungstenite::tungstenite::http::Request<()>) -> Result<(), u16> {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn request_with_origin(
    app: &TestApp,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::http::Request<()> {
    let mut req = app.ws_url("echo").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("alice")).parse().unwrap(),
    );
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn a_cross_site_origin_gets_403_before_the_upgrade() {
    let app = spawn_app().await;
    assert_eq!(
        upgrade_status(request_with_origin(&app, Some("https://evil.example"))).await,
        Err(403)
    );
    // Same origin (the page served by this gateway) and non-browser clients are fine.
    let same = format!("http://{}", app.addr);
    assert_eq!(
        upgrade_status(request_with_origin(&app, Some(&same))).await,
        Ok(())
    );
    assert_eq!(
        upgrade_status(request_with_origin(&app, None)).await,
        Ok(())
    );
}

#[tokio::test]
async fn an_allow_listed_origin_is_accepted_and_others_are_not() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.allowed_origins = vec!["https://chat.example.com".into()]
    })
    .await;
    assert_eq!(
        upgrade_status(request_with_origin(&app, Some("https://chat.example.com"))).await,
        Ok(())
    );
    assert_eq!(
        upgrade_status(request_with_origin(
            &app,
            Some("https://chat.example.com.evil.io")
        ))
        .await,
        Err(403)
    );
}

#[tokio::test]
async fn an_upgrade_flood_from_one_address_gets_429() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| c.upgrades_per_second = 2).await;
    let mut statuses = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..8 {
        match tokio_tungstenite::connect_async(request_with_origin(&app, None)).await {
            Ok(ws) => {
                keep.push(ws);
                statuses.push(101)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                statuses.push(r.status().as_u16())
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 101).count(),
        4,
        "burst of 2×rate: {statuses:?}"
    );
    assert!(statuses[4..].iter().all(|s| *s == 429), "{statuses:?}");
}

#[tokio::test]
async fn an_oversize_client_message_closes_with_1009() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.max_client_message_bytes = 1024
    })
    .await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "x".repeat(4096)})).await;
    assert_eq!(c.close_code().await, Some(1009));
}

#[tokio::test]
async fn a_message_flood_closes_with_4429() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.client_messages_per_second = 5
    })
    .await;
    let mut c = app.connect("echo", "alice").await;
    for _ in 0..40 {
        if c.ws
            .send(Message::text(r#"{"type":"cancel"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.close_code().await, Some(4429));
}

#[tokio::test]
async fn sessions_beyond_the_limit_are_closed_with_1013() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| c.max_sessions = 2).await;
    let _a = app.connect("echo", "alice").await;
    let _b = app.connect("echo", "alice").await;
    // The upgrade answer comes before the session counts itself: wait until both do.
    let open = &app.state.open_sessions;
    wait_until("two open sessions", FRAME_WAIT, || async move {
        open.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    let mut third = app.connect("echo", "alice").await;
    assert_eq!(third.close_code().await, Some(1013));
}

#[tokio::test]
async fn hidden_prompts_in_llm_prompt_events_are_not_forwarded_by_default() {
    let app = spawn_app().await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert!(frames.iter().any(|f| f["type"] == "llm_chunk"));
    assert!(
        !frames.iter().any(|f| f["type"] == "llm_prompt"),
        "llm_prompt leaked"
    );
    assert_run_stamps(&frames); // filtering leaves no seq gap

    let app = spawn_app_with(EngineConfig::for_tests(), |c| c.drop_events.clear()).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert!(
        frames.iter().any(|f| f["type"] == "llm_prompt"),
        "configurable: forwarded when not dropped"
    );
}

/// A fake engine that records the handshake frames it receives.
async fn recording_engine() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                for status in ["ready", "received_flow", "received_inputs", "starting"] {
                    if status != "ready" {
                        let Some(Ok(Message::Text(t))) = ws.next().await else {
                            return;
                        };
                        rec.lock().unwrap().push(t.to_string());
                    }
                    ws.send(Message::text(
                        json!({"status": status, "message": "…"}).to_string(),
                    ))
                    .await
                    .unwrap();
                }
                let done = json!({"type": "flow_completed", "timestamp": 1.0, "data": {"flow_id": "f", "execution_order": [], "element_outputs": {}, "final_output": {}, "execution_time": 0.0}});
                ws.send(Message::text(done.to_string())).await.unwrap();
                let _ = ws.close(None).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn client_input_never_reaches_the_engine_config_frame() {
    let (engine, seen) = recording_engine().await;
    let app = spawn_gateway_files(flowgate::config::GatewayConfig::for_tests(format!(
        "ws://{engine}"
    )))
    .await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({
        "message": "hi",
        "user_id": "root",
        "config": {"enable_custom_code": true, "model": "expensive"},
        "initial_inputs": {"chat_input_1712000000002": {"chat_input": "hi"}}
    }))
    .await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "flow, inputs, config: {seen:?}");
    let config: Value = serde_json::from_str(&seen[2]).unwrap();
    let run = &config["run"];
    assert_eq!(run["user_id"], "alice", "the token decides, not the frame");
    assert_eq!(run["agent_id"], "echo");
    assert_eq!(
        config.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["run"]
    );
    assert!(!seen[2].contains("enable_custom_code") && !seen[2].contains("expensive"));
}

#[tokio::test]
async fn an_expiring_token_lets_the_run_finish_then_closes_with_4401() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 60;
    engine.llm_token_delay = Duration::from_millis(50); // ~3 s of streaming
    let app = spawn_app_with(engine, |_| {}).await;
    let short = flowgate::auth::mint_hs256(&Secret::new(SECRET), "alice", Duration::from_secs(2));
    let mut c = Client::connect_bearer(&app.ws_url("assistant"), Some(&short)).await;
    c.send_json(json!({"message": "long answer"})).await;
    let frames = c.collect_run().await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "the run in progress finishes"
    );
    let f = c.next().await.expect("the expiry error");
    assert_eq!(f["data"]["code"], "unauthenticated");
    assert_eq!(c.close_code().await, Some(4401));
}

#[tokio::test]
async fn an_in_band_auth_refresh_must_be_for_the_same_user() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"type": "auth", "token": token("alice")}))
        .await;
    c.send_json(json!({"message": "still me"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
    c.send_json(json!({"type": "auth", "token": token("mallory")}))
        .await;
    let f = c.next().await.unwrap();
    assert_eq!(f["data"]["code"], "forbidden");
    assert_eq!(c.close_code().await, Some(4403));
}

#[tokio::test]
async fn a_cancel_from_another_users_socket_does_not_touch_my_run() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 30;
    engine.llm_token_delay = Duration::from_millis(10);
    let app = spawn_app_with(engine, |_| {}).await;
    let mut mine = app.connect("assistant", "alice").await;
    mine.send_json(json!({"message": "mine"})).await;
    let first = mine.next().await.unwrap();
    let mut other = app.connect("assistant", "mallory").await;
    other
        .send_json(json!({"type": "cancel", "run_id": first["run_id"]}))
        .await;
    let mut frames = vec![first];
    frames.extend(mine.collect_run().await);
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
}

#[tokio::test]
async fn anonymous_access_is_off_by_default_and_published_only_when_on() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| c.auth.allow_anonymous = true).await;
    let mut c = Client::connect_bearer(&app.ws_url("echo"), None).await;
    c.send_json(json!({"message": "anon"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
    let mut c = Client::connect_bearer(&app.ws_url("echo"), None).await;
    c.send_json(json!({"message": "anon", "version": "draft"}))
        .await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["data"]["code"],
        "forbidden"
    );
}

#[tokio::test]
async fn garbage_frames_get_invalid_request_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    let garbage = [
        "",
        "{",
        "null",
        "[]",
        "\"str\"",
        "{\"type\":5}",
        "{\"type\":\"resume\",\"run_id\":\"x\"}",
        "{\"type\":\"resume\",\"run_id\":\"6a1e5b3c-3f0e-4a38-9c40-5d4f7c1a2b3d\",\"after_seq\":-1}",
        "{\"message\":[1,2]}",
        "{\"conversation_history\":{}}",
        "{\"initial_inputs\":[]}",
        "{\"type\":\"auth\"}",
        "\u{0}\u{1}",
        "{\"a\":\"\u{1F600}\"",
        "{\"version\":\"latest\"}",
    ];
    for g in garbage {
        c.send_text(g).await;
        let f = c
            .next()
            .await
            .unwrap_or_else(|| panic!("socket closed after {g:?}"));
        assert_eq!(f["type"], "error", "{g:?} → {f}");
        assert_eq!(f["data"]["code"], "invalid_request", "{g:?} → {f}");
    }
    c.send_json(json!({"message": "ok now"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
}

#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = spawn_app().await; // current-thread runtime: every task logs to this subscriber
    let header_token = token("alice");
    let mut c = Client::connect_bearer(&app.ws_url("echo"), Some(&header_token)).await;
    c.send_json(json!({"message": "hi"})).await;
    c.collect_run().await;

    let sub_token = token("bob");
    let mut req = app.ws_url("echo").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {sub_token}").parse().unwrap(),
    );
    let mut c = Client::connect_request(req).await;
    c.send_json(json!({"message": "hi"})).await;
    c.collect_run().await;

    let query_token = token("carol");
    let mut c =
        Client::connect_bearer(&format!("{}?token={query_token}", app.ws_url("echo")), None).await;
    c.send_json(json!({"message": "hi"})).await;
    c.send_json(json!({"type": "auth", "token": query_token}))
        .await;
    c.collect_run().await;

    let forged = flowgate::auth::mint_hs256(&Secret::new("nope"), "x", Duration::from_secs(60));
    let mut c = Client::connect_bearer(&app.ws_url("echo"), Some(&forged)).await;
    let _ = c.close_code().await;

    let logs = capture.text();
    assert!(
        logs.contains("run started"),
        "the capture works: {}",
        &logs[..logs.len().min(500)]
    );
    for (name, t) in [
        ("header", &header_token),
        ("subprotocol", &sub_token),
        ("query", &query_token),
        ("forged", &forged),
    ] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "the {name} token leaked into the logs"
        );
    }
    assert!(!logs.contains("token="), "a query string was logged");
}

#[tokio::test]
async fn the_engine_hop_is_authenticated_with_the_shared_key() {
    let key = Secret::new("engine-hop-key");
    let mut engine = EngineConfig::for_tests();
    engine.engine_key = Some(key.clone());
    // Gateway with the same key: runs work.
    let app = spawn_app_with(engine.clone(), |c| c.engine_key = Some(key.clone())).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "signed hop"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
    // Gateway without the key (or with another one): the engine refuses it.
    for wrong in [None, Some(Secret::new("other-key"))] {
        let app = spawn_app_with(engine.clone(), |c| c.engine_key = wrong.clone()).await;
        let mut c = app.connect("echo", "alice").await;
        c.send_json(json!({"message": "unsigned hop"})).await;
        let frames = c.collect_run().await;
        let last = frames.last().unwrap();
        assert_eq!(last["data"]["code"], "engine_unavailable", "{last}");
        assert!(
            last["data"]["error"].as_str().unwrap().contains("401"),
            "{last}"
        );
    }
}
