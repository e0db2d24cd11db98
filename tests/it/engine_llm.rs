//! `llm_text` against an OpenAI-compatible endpoint (`--llm-base-url`): a fake SSE server on
//! port 0 inside each test, the real engine through a WebSocket client (and once through the
//! gateway). Covers streaming order, the request sent, API errors, malformed streams, the gap
//! timeout and cancellation closing the endpoint connection.

use std::time::Duration;

use flowgate::config::Secret;
use flowgate::engine::config::LlmEndpointConfig;
use flowgate::engine::{Engine, EngineConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::common::{assert_run_stamps, spawn_app_with, streamed_text};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

// ---- the fake endpoint -------------------------------------------------------------------

/// The request the fake endpoint received.
#[derive(Debug)]
struct Received {
    /// Request line and headers.
    head: String,
    body: Value,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

struct FakeLlm {
    base_url: String,
    request: oneshot::Receiver<Received>,
    /// Resolves when the engine closed the connection (read EOF or a failed write).
    closed: oneshot::Receiver<()>,
}

/// A fake endpoint that answers one connection: `head`, then each `(delay, bytes)` piece, then
/// holds the connection open until the client closes it.
async fn fake_llm(head: &str, pieces: Vec<(Duration, String)>) -> FakeLlm {
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
        request,
        closed,
    }
}

const SSE_CHUNKED: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                           Transfer-Encoding: chunked\r\n\r\n";

/// One HTTP chunk.
fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

fn delta(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- the engine through a WebSocket client ---------------------------------------------------

struct TestEngine {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn spawn_engine(config: EngineConfig) -> TestEngine {
    let engine = Engine::build(config).await.expect("engine binds");
    let addr = engine.local_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.run(shutdown.clone()));
    TestEngine { addr, shutdown }
}

fn endpoint_config(base_url: &str) -> EngineConfig {
    endpoint_config_with(base_url, |_| {})
}

/// [`endpoint_config`] with some endpoint settings changed.
fn endpoint_config_with(
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

async fn next_event(ws: &mut Ws) -> Option<Value> {
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
async fn start_run(engine: &TestEngine, flow: &Value, inputs: &Value) -> Ws {
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
async fn run_to_end(engine: &TestEngine, flow: &Value, inputs: &Value) -> Vec<Value> {
    let mut ws = start_run(engine, flow, inputs).await;
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut ws).await {
        events.push(e);
    }
    events
}

/// `start -> chat -> llm -> end` with the llm's `parameters`.
fn llm_flow(parameters: Value) -> Value {
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

fn inputs(message: &str) -> Value {
    json!({"chat": {"chat_input": message}})
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

fn chunk_texts(events: &[Value]) -> Vec<String> {
    of_type(events, "llm_chunk")
        .iter()
        .map(|e| e["data"]["content"].as_str().unwrap().to_owned())
        .collect()
}

fn element_error(events: &[Value]) -> String {
    let errors = of_type(events, "element_error");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["data"]["element_id"], "llm");
    let flow_errors = of_type(events, "flow_error");
    assert_eq!(flow_errors.len(), 1, "{events:#?}");
    assert_eq!(flow_errors[0]["data"]["error"], errors[0]["data"]["error"]);
    errors[0]["data"]["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn endpoint_deltas_stream_as_llm_chunks_in_order() {
    let pieces = vec![
        (ms(10), chunk(": keep-alive\n\n")),
        (
            ms(10),
            chunk(&format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            )),
        ),
        (ms(20), chunk(&delta("Hel"))),
        (ms(20), chunk(&delta("lo"))),
        // One SSE line split over two HTTP chunks, and two lines in one chunk.
        (ms(20), {
            let d = delta(" wor");
            let (a, b) = d.split_at(12);
            format!("{}{}", chunk(a), chunk(b))
        }),
        (ms(20), chunk(&format!("{}{}", delta("ld"), delta("!")))),
        (
            ms(10),
            chunk(&format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"total_tokens": 9}})
            )),
        ),
        (ms(10), chunk("data: [DONE]\n\n")),
        (ms(0), "0\r\n\r\n".to_owned()),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let flow = llm_flow(
        json!({"wrapper_prompt": "User: {prompt}", "temperature": 0.2,
                               "max_tokens": 50, "llm_hidden_prompt": "SECRET-INSTRUCTION"}),
    );
    let events = run_to_end(&engine, &flow, &inputs("hello there")).await;

    assert_eq!(
        events.last().unwrap()["type"],
        "flow_completed",
        "{events:#?}"
    );
    assert_eq!(chunk_texts(&events), ["Hel", "lo", " wor", "ld", "!"]);
    let first = of_type(&events, "llm_chunk")[0];
    assert_eq!(
        first["data"]["metadata"],
        json!({"element_id": "llm", "element_type": "llm_text", "element_name": "LLM",
               "flow_id": "llm-flow"})
    );
    let completed = of_type(&events, "element_completed");
    let llm_done = completed
        .iter()
        .find(|e| e["data"]["element_id"] == "llm")
        .unwrap();
    assert_eq!(llm_done["data"]["outputs"]["llm_output"], "Hello world!");
    let final_output = of_type(&events, "final_output")[0];
    assert_eq!(final_output["data"]["text_output"], "Hello world!");
    let prompt = of_type(&events, "llm_prompt")[0];
    assert_eq!(prompt["data"]["model"], "local-model");

    let req = fake.request.await.expect("the endpoint got a request");
    assert!(
        req.head
            .starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{}",
        req.head
    );
    assert_eq!(req.header("authorization"), Some("Bearer test-key-123"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.body,
        json!({"model": "local-model",
               "messages": [{"role": "user", "content": "User: hello there"}],
               "temperature": 0.2, "max_tokens": 50, "stream": true})
    );
    assert!(!req.body.to_string().contains("SECRET-INSTRUCTION"));
}

#[tokio::test]
async fn a_content_length_stream_with_the_element_model_and_no_key_works() {
    let body: String = [delta("One"), delta(" two"), "data: [DONE]\n\n".to_owned()].concat();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let fake = fake_llm(&head, vec![(ms(10), body)]).await;
    let engine = spawn_engine(endpoint_config_with(&fake.base_url, |e| e.api_key = None)).await;
    let events = run_to_end(
        &engine,
        &llm_flow(json!({"model": "gpt-test"})),
        &inputs("q"),
    )
    .await;
    assert_eq!(
        events.last().unwrap()["type"],
        "flow_completed",
        "{events:#?}"
    );
    assert_eq!(chunk_texts(&events), ["One", " two"]);
    let req = fake.request.await.unwrap();
    assert_eq!(req.body["model"], "gpt-test");
    assert_eq!(req.header("authorization"), None);
}

#[tokio::test]
async fn an_api_error_status_is_an_element_error_with_the_api_message() {
    let body = json!({"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
        .to_string();
    let head = format!(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let fake = fake_llm(&head, vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    assert_eq!(
        element_error(&events),
        "LLM request failed: 401 Unauthorized: Invalid API key"
    );
    assert!(of_type(&events, "llm_chunk").is_empty());
    assert_eq!(events.last().unwrap()["type"], "flow_error");
}

#[tokio::test]
async fn a_malformed_stream_is_an_element_error() {
    let pieces = vec![
        (ms(10), chunk(&delta("ok"))),
        (ms(10), chunk("data: {not json\n\n")),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(
        error.starts_with("LLM stream is malformed: a data line is not JSON"),
        "{error}"
    );
    assert_eq!(chunk_texts(&events), ["ok"]);
}

#[tokio::test]
async fn a_stream_that_stalls_fails_on_the_gap_timeout() {
    let fake = fake_llm(SSE_CHUNKED, vec![(ms(10), chunk(&delta("first")))]).await;
    let engine = spawn_engine(endpoint_config_with(&fake.base_url, |e| {
        e.timeout = ms(300)
    }))
    .await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(
        error.contains("stalled") && error.contains("--llm-timeout"),
        "{error}"
    );
    assert_eq!(chunk_texts(&events), ["first"]);
    // The engine dropped the stalled connection.
    tokio::time::timeout(WAIT, fake.closed)
        .await
        .expect("connection closed")
        .unwrap();
}

#[tokio::test]
async fn an_oversized_output_is_an_element_error() {
    let pieces = (0..10)
        .map(|_| (ms(1), chunk(&delta("0123456789"))))
        .collect();
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config_with(&fake.base_url, |e| {
        e.max_output_bytes = 35
    }))
    .await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(error.contains("--llm-max-output-bytes"), "{error}");
    assert_eq!(chunk_texts(&events).len(), 3);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_element_error() {
    let dead = crate::common::dead_addr().await;
    let engine = spawn_engine(endpoint_config(&format!("http://{dead}/v1"))).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(
        error.starts_with("LLM request failed: cannot connect to"),
        "{error}"
    );
}

#[tokio::test]
async fn closing_the_engine_socket_mid_stream_closes_the_endpoint_connection() {
    // One delta, then silence: only the cancellation (not the 5 s gap timeout, nor a failed
    // `llm_chunk` send) can close the connection within the 2 s below.
    let pieces = vec![(ms(10), chunk(&delta("first")))];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let mut ws = start_run(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    loop {
        let e = next_event(&mut ws)
            .await
            .expect("events until the first chunk");
        if e["type"] == "llm_chunk" {
            break;
        }
    }
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(2), fake.closed)
        .await
        .expect("the endpoint connection closes promptly after the run is cancelled")
        .unwrap();
}

#[tokio::test]
async fn the_assistant_agent_streams_from_the_endpoint_through_the_gateway() {
    let pieces = vec![
        (ms(10), chunk(&delta("Flowgate "))),
        (ms(10), chunk(&delta("relays "))),
        (ms(10), chunk(&delta("chains."))),
        (ms(10), chunk("data: [DONE]\n\n")),
        (ms(0), "0\r\n\r\n".to_owned()),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let app = spawn_app_with(endpoint_config(&fake.base_url), |_| {}).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "What is flowgate?", "conversation_history": []}))
        .await;
    let frames = c.collect_run().await;
    assert_run_stamps(&frames);
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "{frames:#?}"
    );
    assert_eq!(streamed_text(&frames), "Flowgate relays chains.");
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(
        final_output["data"]["text_output"],
        "Flowgate relays chains."
    );
    let req = fake.request.await.unwrap();
    // The stored element's own model wins over --llm-model.
    assert_eq!(req.body["model"], "us.deepseek.r1-v1:0");
    let content = req.body["messages"][0]["content"].as_str().unwrap();
    assert!(content.contains("User: What is flowgate?"), "{content}");
}

#[tokio::test]
async fn a_non_json_error_body_is_quoted_in_the_element_error() {
    let head = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\
                Content-Length: 14\r\n\r\nupstream down\n";
    let fake = fake_llm(head, vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    assert_eq!(
        element_error(&events),
        "LLM request failed: 502 Bad Gateway: upstream down"
    );
}

#[tokio::test]
async fn a_stream_that_ends_before_done_is_an_element_error() {
    let pieces = vec![
        (ms(10), chunk(&delta("half"))),
        (ms(10), "0\r\n\r\n".into()),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(error.contains("ended before `data: [DONE]`"), "{error}");
    assert_eq!(chunk_texts(&events), ["half"]);
}

#[tokio::test]
async fn a_non_streaming_json_answer_is_one_chunk() {
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant",
                                                          "content": "All at once."}}]})
    .to_string();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let fake = fake_llm(&head, vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    assert_eq!(
        events.last().unwrap()["type"],
        "flow_completed",
        "{events:#?}"
    );
    assert_eq!(chunk_texts(&events), ["All at once."]);
}

#[tokio::test]
async fn closing_the_engine_socket_before_the_first_byte_closes_the_endpoint_connection() {
    // The endpoint reads the request and never answers.
    let mut fake = fake_llm("", vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let mut ws = start_run(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    tokio::time::timeout(WAIT, &mut fake.request)
        .await
        .expect("the request arrives")
        .unwrap();
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(2), fake.closed)
        .await
        .expect("the endpoint connection closes before the 5 s first-byte timeout")
        .unwrap();
}
