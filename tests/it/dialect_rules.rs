//! Rules every WebSocket dialect keeps (DIALECTS.md 1.4): flowgate's control frames, here
//! `{"type":"ping"}` answered with a pong frame that carries no `run_id`/`seq` (rule 8).

use flowgate::config::DialectId;
use flowgate::engine::EngineConfig;
use serde_json::{Value, json};

use crate::common::*;
use crate::schema_check::{
    assert_adk_frame, assert_citizen_frame, assert_copilot_frame, assert_omni2_frame,
};

/// A dialect socket to try: its URL, its schema check, whether it greets on open.
type Socket = (String, fn(&Value), bool);

#[tokio::test]
async fn every_websocket_dialect_answers_a_ping_with_a_pong() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.dialects = vec![
            DialectId::Neuralabs,
            DialectId::Omni2,
            DialectId::Copilot,
            DialectId::Citizen,
            DialectId::Adk,
        ];
        c.omni2_agent_id = Some("assistant".into());
        c.copilot_agent_id = Some("assistant".into());
        c.citizen_agent_id = Some("assistant".into());
        c.adk_agent_id = Some("assistant".into());
        c.adk_jwt_user_claim = "sub".into();
    })
    .await;
    let addr = app.addr;
    let t = token("u1");
    let s: Value = reqwest::Client::new()
        .post(format!("http://{addr}/api/agent/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = s["sessionId"].as_str().unwrap().to_owned();
    let sockets: [Socket; 4] = [
        (
            format!("ws://{addr}/ws/chat?token={t}"),
            assert_omni2_frame,
            false,
        ),
        (
            format!("ws://{addr}/copilot?token={t}"),
            assert_copilot_frame,
            false,
        ),
        (
            format!("ws://{addr}/?sessionId={sid}"),
            assert_citizen_frame,
            true,
        ),
        (
            format!("ws://{addr}/ws/c1?token={t}"),
            assert_adk_frame,
            true,
        ),
    ];
    for (url, check, greets) in sockets {
        let mut c = DialectSocket::connect(&url, check).await;
        if greets {
            c.next().await.expect("the opening frame");
        }
        c.send(json!({"type": "ping"})).await;
        let pong = c.next().await.expect("a pong");
        assert_eq!(pong["type"], "pong", "{url}: {pong}");
        assert!(pong.get("run_id").is_none() && pong.get("seq").is_none());
        drop(c);
    }
    app.stop().await;
}
