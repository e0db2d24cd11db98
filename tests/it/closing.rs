//! The WebSocket close handshake on both hops: every way a session ends, the peer gets a close
//! frame (its own code echoed, or ours) before the connection drops, so a browser sees a clean
//! close, never 1006.

use std::time::Duration;

use flowgate::config::GatewayConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::common::*;

#[tokio::test]
async fn a_client_closing_after_a_run_gets_its_close_code_back() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
    // What the NeuraLabs frontend does right after `flow_completed`.
    let end = c.close_and_observe(1000).await;
    assert_eq!(
        end,
        Ending {
            close_code: Some(1000),
            clean: true
        }
    );
}

#[tokio::test]
async fn a_client_closing_mid_run_gets_its_own_code_back() {
    let app = spawn_app().await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "tell me a long story"}))
        .await;
    loop {
        let f = c.next().await.expect("frames until the first chunk");
        if f["type"] == "llm_chunk" {
            break;
        }
    }
    let end = c.close_and_observe(4000).await;
    assert_eq!(
        end,
        Ending {
            close_code: Some(4000),
            clean: true
        }
    );
}

#[tokio::test]
async fn a_client_closing_an_idle_socket_gets_its_close_code_back() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    let end = c.close_and_observe(1001).await;
    assert_eq!(
        end,
        Ending {
            close_code: Some(1001),
            clean: true
        }
    );
}

#[tokio::test]
async fn shutdown_closes_idle_sockets_with_1012_and_a_completed_handshake() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    // The socket is served (not just upgraded) once a frame has been answered.
    c.send_json(json!({"type": "cancel"})).await;
    app.shutdown.cancel();
    let end = c.observe_end().await;
    assert_eq!(
        end,
        Ending {
            close_code: Some(1012),
            clean: true
        }
    );
}

#[tokio::test]
async fn refusals_send_their_44xx_close_frame_and_complete_the_handshake() {
    let app = spawn_app().await;
    let forged = forged_token("alice");
    let mut c = Client::connect_bearer(&app.ws_url("echo"), Some(&forged)).await;
    let f = c.next().await.expect("error frame");
    assert_eq!(f["data"]["code"], "unauthenticated");
    assert_eq!(
        c.observe_end().await,
        Ending {
            close_code: Some(4401),
            clean: true
        }
    );

    let mut c = app.connect("nobody", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["data"]["code"], "agent_not_found");
    assert_eq!(
        c.observe_end().await,
        Ending {
            close_code: Some(4404),
            clean: true
        }
    );
}

#[tokio::test]
async fn a_client_breaking_the_websocket_protocol_gets_a_1002_close_frame() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let c = app.connect("echo", "alice").await;
    // A masked frame with a reserved opcode (0x3): a protocol error on the server's side.
    let mut tcp = match c.ws.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!("plain ws"),
    };
    tcp.write_all(&[0x83, 0x80, 1, 2, 3, 4]).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tcp,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let got = tokio::time::timeout(FRAME_WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("an answer in time");
    assert_eq!(got, Some(1002));
}

/// An engine of this test: performs the handshake, sends `flow_started`, then either closes the
/// socket itself (`close_first`) or sends `flow_completed`; reports the close code it received
/// from the gateway (its own close answered, or the gateway's close).
async fn scripted_engine(close_first: bool) -> (String, oneshot::Receiver<Option<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let statuses = [
            json!({"status": "ready", "message": "Send flow_definition as JSON"}),
            json!({"status": "received_flow", "message": "Send initial_inputs as JSON"}),
            json!({"status": "received_inputs", "message": "Send config as JSON or 'null'"}),
        ];
        for status in statuses {
            ws.send(Message::text(status.to_string())).await.unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => break,
                    Some(Ok(_)) => continue,
                    other => panic!("handshake frame expected, got {other:?}"),
                }
            }
        }
        let events = [
            json!({"status": "starting", "message": "Starting flow execution"}),
            json!({"type": "flow_started", "timestamp": 1.0, "data": {"flow_id": "f", "start_time": 1.0}}),
        ];
        for e in events {
            ws.send(Message::text(e.to_string())).await.unwrap();
        }
        if close_first {
            let frame = CloseFrame {
                code: 1011.into(),
                reason: "engine gives up".into(),
            };
            ws.send(Message::Close(Some(frame))).await.unwrap();
        } else {
            let done = json!({"type": "flow_completed", "timestamp": 2.0,
                              "data": {"flow_id": "f", "final_output": {}, "execution_order": [],
                                       "element_outputs": {}, "execution_time": 0.1}});
            ws.send(Message::text(done.to_string())).await.unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(f) = m {
                    return Some(f.map_or(1005, |f| u16::from(f.code)));
                }
            }
            None
        })
        .await
        .unwrap_or(None);
        let _ = tx.send(got);
    });
    (url, rx)
}

#[tokio::test]
async fn the_gateway_answers_an_engine_that_closes_mid_run() {
    let (url, closed) = scripted_engine(true).await;
    let app = spawn_gateway_files(GatewayConfig::for_tests(url)).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["data"]["code"], "engine_lost");
    let answer = tokio::time::timeout(FRAME_WAIT, closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, Some(1011), "the engine's close frame was answered");
}

#[tokio::test]
async fn the_gateway_closes_the_engine_socket_with_1000_after_the_terminal_event() {
    let (url, closed) = scripted_engine(false).await;
    let app = spawn_gateway_files(GatewayConfig::for_tests(url)).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
    let code = tokio::time::timeout(FRAME_WAIT, closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(1000));
}
