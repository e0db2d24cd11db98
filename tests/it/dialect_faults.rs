//! A lost engine mid-answer (E2 of DIALECTS.md 1.3) in every WebSocket dialect: the engine
//! crashes after some chunks, and each dialect ends the turn with exactly its own terminal for
//! `engine_lost`, carrying the text streamed so far; every frame checked against its schema.

use flowgate::config::DialectId;
use flowgate::engine::EngineConfig;
use flowgate::engine::fault::Fault;
use serde_json::{Value, json};

use crate::common::*;
use crate::schema_check::{
    assert_adk_frame, assert_citizen_frame, assert_copilot_frame, assert_omni2_frame,
};

async fn crashing_app() -> TestApp {
    let mut engine = EngineConfig::for_tests();
    engine.fault = Some("crash-after=20".parse::<Fault>().unwrap());
    engine.llm_tokens = 20;
    spawn_app_with(engine, |c| {
        c.dialects = vec![
            DialectId::Neuralabs,
            DialectId::Omni2,
            DialectId::Copilot,
            DialectId::Citizen,
            DialectId::Adk,
        ];
        for agent in [
            &mut c.omni2_agent_id,
            &mut c.copilot_agent_id,
            &mut c.citizen_agent_id,
            &mut c.adk_agent_id,
        ] {
            *agent = Some("assistant".into());
        }
        c.adk_jwt_user_claim = "sub".into();
    })
    .await
}

/// The text a dialect streamed before its terminal.
fn streamed(frames: &[Value], key: &str) -> String {
    frames.iter().filter_map(|f| f[key].as_str()).collect()
}

#[tokio::test]
async fn every_dialect_ends_a_lost_engine_turn_with_its_own_terminal_and_the_partial_text() {
    let app = crashing_app().await;
    let addr = app.addr;

    // omni2: tokens, then one error frame with partial_output.
    let url = format!("ws://{addr}/ws/chat?token={}", token("u1"));
    let mut c = DialectSocket::connect(&url, assert_omni2_frame).await;
    c.send(json!({"type": "message", "text": "hi"})).await;
    let turn = c
        .until(|f| f["type"] == "done" || f["type"] == "error")
        .await;
    let (end, tokens) = turn.split_last().unwrap();
    assert_eq!(end["code"], "engine_lost", "{end}");
    assert!(!tokens.is_empty());
    assert_eq!(end["partial_output"], streamed(tokens, "text").as_str());
    drop(c);

    // copilot: stream_* then one stream_interrupted with partialResponse.
    let url = format!("ws://{addr}/copilot?token={}", token("u1"));
    let mut c = DialectSocket::connect(&url, assert_copilot_frame).await;
    c.send(
        json!({"action": "message", "message": "hi", "conversationId": null, "streaming": true}),
    )
    .await;
    let turn = c
        .until(|f| {
            ["stream_complete", "stream_interrupted", "error"]
                .contains(&f["type"].as_str().unwrap_or(""))
        })
        .await;
    let (end, rest) = turn.split_last().unwrap();
    assert_eq!(end["type"], "stream_interrupted");
    assert_eq!(end["code"], "engine_lost");
    assert_eq!(end["partialResponse"], streamed(rest, "token").as_str());
    drop(c);

    // citizen (flat): one frame, error + done + partial_output.
    let http = reqwest::Client::new();
    let s: Value = http
        .post(format!("http://{addr}/api/agent/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = s["sessionId"].as_str().unwrap();
    let url = format!("ws://{addr}/?sessionId={sid}");
    let mut c = DialectSocket::connect(&url, assert_citizen_frame).await;
    c.next().await.unwrap();
    c.send(json!({"sessionId": sid, "message": "hi"})).await;
    let turn = c.until(|f| f["done"] == true).await;
    assert_eq!(turn.len(), 1, "{turn:#?}");
    assert_eq!(turn[0]["code"], "engine_lost");
    assert!(!turn[0]["partial_output"].as_str().unwrap().is_empty());
    drop(c);

    // adk: partials, the sentence as model text, then the interrupted terminal.
    let url = format!("ws://{addr}/ws/c1?token={}", token("u1"));
    let mut c = DialectSocket::connect(&url, assert_adk_frame).await;
    c.next().await.unwrap();
    c.send(json!({"mime_type": "text/plain", "data": "hi"}))
        .await;
    let turn = c.until(|f| f["turn_complete"] == true).await;
    let n = turn.len();
    assert!(n >= 3, "{turn:#?}");
    assert_eq!(turn[n - 2]["error_code"], "engine_lost");
    assert!(
        turn[n - 2]["data"].as_str().unwrap().starts_with("\n\n"),
        "after the streamed text"
    );
    assert_eq!(turn[n - 1]["interrupted"], true);
    assert_eq!(turn[n - 1]["error_code"], "engine_lost");
    drop(c);
    app.stop().await;
}
