//! A fake OpenAI-compatible endpoint (one connection on port 0, answering with the raw bytes a
//! test gives) and the helpers that run `llm_text` flows on the reference engine against it
//! through a WebSocket client: shared by `engine_llm` (plain `http://`) and `engine_https` (the
//! same endpoint behind a TLS terminator).

use std::net::SocketAddr;
use std::time::Duration;

use flowgate::config::Secret;
use flowgate::engine::EngineConfig;
use flowgate::engine::config::LlmEndpointConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{TestEngine, assert_run_stamps, spawn_app_with};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

// ---- the fake endpoint -------------------------------------------------------------------

/// The request the fake endpoint received.
#[derive(Debug)]
pub struct Received {
    /// Request line and headers.
    pub head: String,
    pub body: Value,
}

impl Received {
    /// It is `POST /v1/chat/completions` with the key of [`endpoint_config`].
    pub fn assert_chat_completion_with_the_test_key(&self) {
        assert!(
            self.head
                .starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{}",
            self.head
        );
        assert_eq!(self.header("authorization"), Some("Bearer test-key-123"));
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

pub struct FakeLlm {
    /// `http://<addr>/v1`.
    pub base_url: String,
    /// Where it listens (a TLS terminator in front of it makes it an `https://` endpoint).
    pub addr: SocketAddr,
    pub request: oneshot::Receiver<Received>,
    /// Resolves when the engine closed the connection (read EOF or a failed write).
    pub closed: oneshot::Receiver<()>,
}

/// A fake endpoint that answers one connection: `head`, then each `(delay, bytes)` piece, then
/// holds the connection open until the client closes it.
pub async fn fake_llm(head: &str, pieces: Vec<(Duration, String)>) -> FakeLlm {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (req_tx, request) = oneshot::channel();
    let (closed_tx, closed) = oneshot::channel();
    let head = head.to_owned();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "request ended early");
            raw.extend_from_slice(&buf[..n]);
        };
        let req_head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
        let len: usize = req_head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("a Content-Length");
        while raw.len() < head_end + 4 + len {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "body ended early");
            raw.extend_from_slice(&buf[..n]);
        }
        let body = serde_json::from_slice(&raw[head_end + 4..head_end + 4 + len]).unwrap();
        let _ = req_tx.send(Received {
            head: req_head,
            body,
        });
        if sock.write_all(head.as_bytes()).await.is_err() {
            let _ = closed_tx.send(());
            return;
        }
        for (delay, piece) in pieces {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                n = sock.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) {
                    let _ = closed_tx.send(());
                    return;
                },
            }
            if sock.write_all(piece.as_bytes()).await.is_err() {
                let _ = closed_tx.send(());
                return;
            }
        }
        // Hold the connection open until the client drops it.
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.send(());
    });
    FakeLlm {
        base_url: format!("http://{addr}/v1"),
        addr,
        request,
        closed,
    }
}

pub const SSE_CHUNKED: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                           Transfer-Encoding: chunked\r\n\r\n";

/// One HTTP chunk.
pub fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

pub fn delta(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- the engine through a WebSocket client ---------------------------------------------------

pub fn endpoint_config(base_url: &str) -> EngineConfig {
    endpoint_config_with(base_url, |_| {})
}

/// [`endpoint_config`] with some endpoint settings changed.
pub fn endpoint_config_with(
    base_url: &str,
    tweak: impl FnOnce(&mut LlmEndpointConfig),
) -> EngineConfig {
    let mut endpoint = LlmEndpointConfig {
        base_url: Some(base_url.to_owned()),
        api_key: Some(Secret::new("test-key-123")),
        timeout: Duration::from_secs(5),
        ..LlmEndpointConfig::default()
    };
    tweak(&mut endpoint);
    EngineConfig {
        llm_endpoint: Box::new(endpoint),
        llm_model: "local-model".into(),
        ..EngineConfig::for_tests()
    }
}

pub async fn next_event(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(_)) => {}
        }
    }
}

/// Connect and run the 4-step handshake with `flow` and `inputs`.
pub async fn start_run(engine: &TestEngine, flow: &Value, inputs: &Value) -> Ws {
    let url = format!("ws://{}/ws/execute/llm-flow", engine.addr);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .unwrap();
    for frame in [flow.to_string(), inputs.to_string(), "null".to_owned()] {
        next_event(&mut ws).await.expect("a handshake status");
        ws.send(Message::text(frame)).await.unwrap();
    }
    let starting = next_event(&mut ws).await.unwrap();
    assert_eq!(starting["status"], "starting");
    ws
}

/// Events until the socket closes.
pub async fn run_to_end(engine: &TestEngine, flow: &Value, inputs: &Value) -> Vec<Value> {
    let mut ws = start_run(engine, flow, inputs).await;
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut ws).await {
        events.push(e);
    }
    events
}

/// `start -> chat -> llm -> end` with the llm's `parameters`.
pub fn llm_flow(parameters: Value) -> Value {
    json!({
        "nodes": {
            "start": {"type": "start", "name": "Start"},
            "chat": {"type": "chat_input", "name": "Chat"},
            "llm": {"type": "llm_text", "name": "LLM", "parameters": parameters},
            "end": {"type": "end", "name": "End"}
        },
        "connections": [
            {"from_id": "start", "to_id": "chat", "connection_type": "control"},
            {"from_id": "chat", "to_id": "llm", "connection_type": "both",
             "from_output": "chat:chat_input", "to_input": "llm:prompt"},
            {"from_id": "llm", "to_id": "end", "connection_type": "both",
             "from_output": "llm:llm_output", "to_input": "end:text_input"}
        ],
        "start_element": "start"
    })
}

pub fn inputs(message: &str) -> Value {
    json!({"chat": {"chat_input": message}})
}

pub fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

pub fn chunk_texts(events: &[Value]) -> Vec<String> {
    of_type(events, "llm_chunk")
        .iter()
        .map(|e| e["data"]["content"].as_str().unwrap().to_owned())
        .collect()
}

pub fn element_error(events: &[Value]) -> String {
    let errors = of_type(events, "element_error");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["data"]["element_id"], "llm");
    let flow_errors = of_type(events, "flow_error");
    assert_eq!(flow_errors.len(), 1, "{events:#?}");
    assert_eq!(flow_errors[0]["data"]["error"], errors[0]["data"]["error"]);
    errors[0]["data"]["error"].as_str().unwrap().to_owned()
}

/// One run of the `assistant` sample agent through a gateway in front of an engine with
/// `engine`: the client's frames, checked for run stamps and a `flow_completed` end.
pub async fn assistant_run_through_the_gateway(engine: EngineConfig, message: &str) -> Vec<Value> {
    let app = spawn_app_with(engine, |_| {}).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": message, "conversation_history": []}))
        .await;
    let frames = c.collect_run().await;
    assert_run_stamps(&frames);
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "{frames:#?}"
    );
    frames
}
