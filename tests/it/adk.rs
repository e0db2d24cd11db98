//! The `adk` dialect (barka/ovara, DIALECTS.md 2.4.1) end to end: a client that speaks exactly
//! its frames, against the reference engine through the gateway; every frame checked against
//! `schemas/adk-server-frame.schema.json`.

use std::time::Duration;

use flowgate::config::DialectId;
use flowgate::engine::EngineConfig;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::schema_check::assert_adk_frame;

const CLIENT: &str = "665f1c2b9a7e4d0012ab34cd";

async fn adk_app(engine: EngineConfig) -> TestApp {
    spawn_app_with(engine, |c| {
        c.dialects = vec![DialectId::Neuralabs, DialectId::Adk];
        c.adk_agent_id = Some("assistant".into());
    })
    .await
}

/// Connect as barka does: the token (with its `Bearer ` prefix) in the query.
async fn connect(app: &TestApp, token: &str, conversation: &str) -> DialectSocket {
    let token = format!("Bearer {token}").replace(' ', "%20");
    let url = format!(
        "ws://{}/ws/{CLIENT}?token={token}&is_audio=false&conversation_id={conversation}",
        app.addr
    );
    DialectSocket::connect(&url, assert_adk_frame).await
}

/// Frames up to and including the one with `turn_complete: true`.
async fn read_turn(c: &mut DialectSocket) -> Vec<Value> {
    c.until(|f| f["turn_complete"] == true).await
}

fn text_of(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["turn_complete"] == false)
        .filter_map(|f| f["data"].as_str())
        .collect()
}

#[tokio::test]
async fn a_turn_streams_partials_and_ends_with_one_full_text_frame_and_is_remembered() {
    let app = adk_app(EngineConfig::for_tests()).await;
    let mut c = connect(&app, &barka_token("665f0a11"), "c-41d2").await;
    let hello = c.next().await.expect("connection_established");
    assert_eq!(hello["type"], "connection_established");
    assert_eq!(hello["client_id"], CLIENT);
    assert_eq!(hello["conversation_id"], "c-41d2");

    c.send(json!({"mime_type": "text/plain", "data": "What is flowgate?", "role": "user"}))
        .await;
    let turn = read_turn(&mut c).await;
    let last = turn.last().unwrap();
    assert_eq!(last["interrupted"], false);
    assert_eq!(last["data"], "");
    let partials: Vec<&Value> = turn.iter().filter(|f| f["partial"] == true).collect();
    assert!(partials.len() >= 2, "streamed in parts: {turn:#?}");
    assert_eq!(
        turn.iter().filter(|f| f["turn_complete"] == true).count(),
        1,
        "one terminal per turn"
    );
    // run_id/seq on every frame of the run, seq increasing.
    let run_id = last["run_id"].as_str().unwrap().to_owned();
    let seqs: Vec<u64> = turn.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(turn.iter().all(|f| f["run_id"] == run_id.as_str()));
    let answer = text_of(&turn);
    assert!(!answer.is_empty());

    // The same user's conversation is remembered (the token's `id`, not any client field)...
    let info = app.ended_run(&run_id).await;
    assert_eq!(info.user_id, "665f0a11");
    let conversation = format!("adk:{CLIENT}:c-41d2");
    let history = app.state.conversations.history("665f0a11", &conversation);
    assert_eq!(
        history,
        vec![
            json!({"role": "user", "content": "What is flowgate?"}),
            json!({"role": "assistant", "content": answer}),
        ]
    );
    assert!(
        app.state
            .conversations
            .history("someone-else", &conversation)
            .is_empty()
    );

    // ...and a frame without `role` (the ADK sample client) starts the next turn on the socket.
    c.send(json!({"mime_type": "text/plain", "data": "And then?"}))
        .await;
    let second = read_turn(&mut c).await;
    assert_eq!(second.last().unwrap()["interrupted"], false);
    assert_ne!(second.last().unwrap()["run_id"], run_id.as_str());
    let history = app.state.conversations.history("665f0a11", &conversation);
    assert_eq!(history.len(), 4, "{history:#?}");
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn other_mime_types_and_bad_frames_get_the_error_pair_and_the_socket_stays_open() {
    let app = adk_app(EngineConfig::for_tests()).await;
    let mut c = connect(&app, &barka_token("u1"), "c1").await;
    c.next().await.expect("connection_established");
    for bad in [
        json!({"mime_type": "audio/pcm", "data": "AAAA"}).to_string(),
        "not json".to_owned(),
        json!({"type": "subscribe"}).to_string(),
    ] {
        c.ws.send(Message::text(bad.clone())).await.unwrap();
        let text = c.next().await.expect("error text");
        assert_eq!(text["error_code"], "invalid_request", "{bad}: {text}");
        assert_eq!(text["turn_complete"], false);
        assert!(text.get("run_id").is_none());
        let end = c.next().await.expect("terminal");
        assert_eq!(end["turn_complete"], true);
        assert_eq!(end["interrupted"], true);
    }
    // Still open: a turn runs after the refusals.
    c.send(json!({"mime_type": "text/plain", "data": "hi"}))
        .await;
    assert_eq!(
        read_turn(&mut c).await.last().unwrap()["interrupted"],
        false
    );
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_token_gets_the_error_pair_then_close_1000_so_barka_stops_reconnecting() {
    let app = adk_app(EngineConfig::for_tests()).await;
    let forged = forged_token("mallory");
    let mut c = connect(&app, &forged, "c1").await;
    let text = c.next().await.expect("error text");
    assert_eq!(text["error_code"], "unauthenticated");
    let end = c.next().await.expect("terminal");
    assert_eq!(end["interrupted"], true);
    assert!(c.next().await.is_none());
    assert_eq!(c.close.as_ref().map(|c| c.0), Some(1000));
    // A native token has `sub`, not `id`: refused on this route, the claim is named.
    let mut c = connect(&app, &token("alice"), "c1").await;
    let text = c.next().await.expect("error text");
    assert!(
        text["data"].as_str().unwrap().contains("`id`"),
        "names the claim: {text}"
    );
    c.next().await.expect("terminal");
    assert!(c.next().await.is_none());
    assert_eq!(c.close.as_ref().map(|c| c.0), Some(1000));
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_engine_is_model_text_then_an_interrupted_terminal() {
    let engine_addr = dead_addr().await;
    let mut config = flowgate::config::GatewayConfig::for_tests(format!("ws://{engine_addr}"));
    config.dialects = vec![DialectId::Neuralabs, DialectId::Adk];
    config.adk_agent_id = Some("assistant".into());
    let app = spawn_gateway_files(config).await;
    let mut c = connect(&app, &barka_token("u1"), "c1").await;
    c.next().await.expect("connection_established");
    c.send(json!({"mime_type": "text/plain", "data": "hi"}))
        .await;
    let turn = read_turn(&mut c).await;
    assert_eq!(turn.len(), 2, "{turn:#?}");
    assert_eq!(turn[0]["error_code"], "engine_unavailable");
    assert!(!turn[0]["data"].as_str().unwrap().is_empty());
    assert_eq!(turn[1]["error_code"], "engine_unavailable");
    assert_eq!(turn[1]["interrupted"], true);
    assert_eq!(turn[0]["seq"], turn[1]["seq"], "one event, two frames");
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn cancel_ends_the_turn_interrupted_and_the_engine_run_stops() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 200;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = adk_app(engine).await;
    let mut c = connect(&app, &barka_token("u1"), "c1").await;
    c.next().await.expect("connection_established");
    c.send(json!({"mime_type": "text/plain", "data": "talk a lot"}))
        .await;
    let first = c.next().await.expect("a partial");
    assert_eq!(first["partial"], true);
    c.send(json!({"type": "cancel"})).await;
    let rest = read_turn(&mut c).await;
    let end = rest.last().unwrap();
    assert_eq!(end["interrupted"], true);
    assert!(
        end.get("error_code").is_none(),
        "a cancel is not an error: {end}"
    );
    let info = app.ended_run(first["run_id"].as_str().unwrap()).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Cancelled);
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn the_route_is_off_unless_enabled_and_bad_settings_are_refused_at_startup() {
    let app = spawn_app().await;
    let url = format!("ws://{}/ws/{CLIENT}?token=x", app.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    app.stop().await;

    let mut config = flowgate::config::GatewayConfig::for_tests("ws://127.0.0.1:1");
    config.dialects = vec![DialectId::Adk];
    let err = flowgate::http::Gateway::with_store(
        config.clone(),
        flowgate::store::Store::Files(flowgate::store::files::FilesStore::embedded()),
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--adk-agent-id"), "{err}");
    config.adk_agent_id = Some("bad id!".into());
    let err = flowgate::http::Gateway::with_store(
        config,
        flowgate::store::Store::Files(flowgate::store::files::FilesStore::embedded()),
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("bad id!"), "{err}");
}

#[tokio::test]
async fn a_numeric_user_id_claim_is_read_as_its_decimal_string() {
    let app = adk_app(EngineConfig::for_tests()).await;
    let mut c = connect(&app, &barka_token(4217), "c1").await;
    c.next().await.expect("connection_established");
    c.send(json!({"mime_type": "text/plain", "data": "hi"}))
        .await;
    let turn = read_turn(&mut c).await;
    let info = app
        .ended_run(turn.last().unwrap()["run_id"].as_str().unwrap())
        .await;
    assert_eq!(info.user_id, "4217");
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn a_message_sent_during_a_turn_waits_for_it_and_one_more_is_refused() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 20;
    engine.llm_token_delay = Duration::from_millis(10);
    let app = adk_app(engine).await;
    let mut c = connect(&app, &barka_token("u1"), "c1").await;
    c.next().await.expect("connection_established");
    for text in ["first", "second", "third"] {
        c.send(json!({"mime_type": "text/plain", "data": text}))
            .await;
    }
    // Two turns complete in order; the third message is refused (the queue holds one).
    let (mut completed, mut refused) = (Vec::new(), 0);
    while completed.len() < 2 {
        let f = c.next().await.expect("frames until both turns end");
        if f["error_code"] == "invalid_request" && f["turn_complete"] == false {
            assert!(f.get("run_id").is_none(), "{f}");
            refused += 1;
        } else if f["turn_complete"] == true && f.get("run_id").is_some() {
            assert_eq!(f["interrupted"], false, "{f}");
            completed.push(f["run_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(refused, 1);
    assert_ne!(completed[0], completed[1]);
    let history = app
        .state
        .conversations
        .history("u1", &format!("adk:{CLIENT}:c1"));
    let users: Vec<&str> = history
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(users, ["first", "second"], "in the order sent");
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn an_address_that_keeps_presenting_refused_tokens_gets_401_at_the_upgrade() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.dialects = vec![DialectId::Neuralabs, DialectId::Adk];
        c.adk_agent_id = Some("assistant".into());
        c.refused_tokens_per_minute = 3;
    })
    .await;
    for _ in 0..3 {
        let mut c = connect(&app, &forged_token("mallory"), "c1").await;
        assert_eq!(c.next().await.unwrap()["error_code"], "unauthenticated");
    }
    let url = format!("ws://{}/ws/{CLIENT}?token=forged", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!(
            "expected HTTP 401 at the upgrade, got {:?}",
            other.map(|_| ())
        ),
    }
    // The native route keeps its own contract (error frame + 4401), whatever the address did.
    let mut native = Client::connect_bearer(&app.ws_url("echo"), Some("forged")).await;
    assert_eq!(native.close_code().await, Some(4401));
    drop(native);
    app.stop().await;
}
