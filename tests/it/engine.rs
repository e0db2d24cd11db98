//! The reference engine through a real WebSocket client: handshake, event order against the
//! original engine's traces, errors, streaming, authentication, cancellation and fault modes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flowgate::engine::{Engine, EngineConfig, EngineStats};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

struct TestEngine {
    addr: std::net::SocketAddr,
    stats: Arc<EngineStats>,
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
    let stats = engine.stats();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.run(shutdown.clone()));
    TestEngine {
        addr,
        stats,
        shutdown,
    }
}

async fn connect(engine: &TestEngine, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let url = format!("ws://{}/ws/execute/flow-under-test", engine.addr);
    let mut request = url.into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")?;
    Ok(ws)
}

/// How the engine's side of the socket ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// A close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame.
    Dropped,
    /// Still open after the wait (nothing more arrived).
    Open,
}

async fn next_text(ws: &mut Ws, wait: Duration) -> Result<String, Ending> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return Err(Ending::Open),
            Ok(None) | Ok(Some(Err(_))) => return Err(Ending::Dropped),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(Ending::Closed(frame.map_or(1005, |f| u16::from(f.code))));
            }
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Read every remaining frame (raw text) and how the socket ended.
async fn drain(ws: &mut Ws, quiet: Duration) -> (Vec<String>, Ending) {
    let mut frames = Vec::new();
    loop {
        match next_text(ws, quiet).await {
            Ok(t) => frames.push(t),
            Err(end) => return (frames, end),
        }
    }
}

fn parse(frames: &[String]) -> Vec<Value> {
    frames
        .iter()
        .map(|f| serde_json::from_str(f).expect("every event is JSON"))
        .collect()
}

/// Steps 1-7 of the handshake; returns the engine's four status frames.
async fn handshake(ws: &mut Ws, flow: &str, inputs: &Value, config: &str) -> Vec<Value> {
    let mut statuses = Vec::new();
    statuses.push(next_text(ws, WAIT).await.expect("ready"));
    ws.send(Message::text(flow)).await.unwrap();
    statuses.push(next_text(ws, WAIT).await.expect("received_flow"));
    ws.send(Message::text(inputs.to_string())).await.unwrap();
    statuses.push(next_text(ws, WAIT).await.expect("received_inputs"));
    ws.send(Message::text(config)).await.unwrap();
    statuses.push(next_text(ws, WAIT).await.expect("starting"));
    statuses
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect()
}

struct Run {
    events: Vec<Value>,
    ending: Ending,
}

impl Run {
    fn types(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect()
    }
    fn of_type(&self, ty: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == ty).collect()
    }
    fn last(&self) -> &Value {
        self.events.last().expect("at least one event")
    }
}

async fn run_flow_with(engine: &TestEngine, flow: &str, inputs: &Value, config: &str) -> Run {
    let mut ws = connect(engine, None).await.unwrap();
    handshake(&mut ws, flow, inputs, config).await;
    let (frames, ending) = drain(&mut ws, WAIT).await;
    Run {
        events: parse(&frames),
        ending,
    }
}

async fn run_flow(engine: &TestEngine, flow: &Value, inputs: Value) -> Run {
    run_flow_with(engine, &flow.to_string(), &inputs, "null").await
}

/// The echo sample's flow definition (frame 2 of `tests/fixtures/traces/echo.jsonl`).
fn echo_flow() -> Value {
    json!({
        "nodes": {
            "start_1712000000001": {"type": "start", "name": "Start", "node_description": "Start element", "description": "Start element", "processing_message": "Starting flow...", "tags": [], "layer": 3, "position": {"x": 0, "y": 0}, "original_id": "node-1712000000001", "input_schema": {}, "output_schema": {}},
            "chat_input_1712000000002": {"type": "chat_input", "name": "Chat Input", "description": "Chat Input element", "processing_message": "Receiving input...", "tags": [], "layer": 3, "position": {"x": 200, "y": 0}, "original_id": "node-1712000000002", "parameters": {"max_length": 1000, "min_length": 1, "required": true}, "input_schema": {}, "output_schema": {"chat_input": {"type": "string", "description": "", "required": true}}},
            "end_1712000000003": {"type": "end", "name": "End", "description": "End element", "processing_message": "Completing flow...", "tags": [], "layer": 3, "position": {"x": 400, "y": 0}, "original_id": "node-1712000000003", "input_schema": {"text_input": {"type": "string", "description": "", "required": true}, "proposed_transaction": {"type": "json", "description": "", "required": false}}, "output_schema": {"text_output": {"type": "string", "description": "", "required": true}, "proposed_transaction": {"type": "json", "description": "", "required": false}}}
        },
        "connections": [
            {"from_id": "start_1712000000001", "to_id": "chat_input_1712000000002", "connection_type": "control"},
            {"from_id": "chat_input_1712000000002", "to_id": "end_1712000000003", "connection_type": "control"},
            {"from_id": "chat_input_1712000000002", "to_id": "end_1712000000003", "connection_type": "data", "from_output": "chat_input_1712000000002:chat_input", "to_input": "end_1712000000003:text_input"}
        ],
        "start_element": "start_1712000000001"
    })
}

fn echo_inputs(message: &str) -> Value {
    json!({"chat_input_1712000000002": {"chat_input": message}})
}

/// The echo flow in YAML, as flowgate's gateway sends it.
const ECHO_YAML: &str = r#"
nodes:
  start_1712000000001:
    type: start
    name: Start
    processing_message: "Starting flow..."
  chat_input_1712000000002:
    type: chat_input
    name: Chat Input
    processing_message: "Receiving input..."
    parameters: {max_length: 1000, min_length: 1, required: true}
  end_1712000000003:
    type: end
    name: End
    processing_message: "Completing flow..."
    input_schema:
      text_input: {type: string, required: true}
connections:
  - {from_id: start_1712000000001, to_id: chat_input_1712000000002, connection_type: control}
  - {from_id: chat_input_1712000000002, to_id: end_1712000000003, connection_type: control}
  - from_id: chat_input_1712000000002
    to_id: end_1712000000003
    connection_type: data
    from_output: "chat_input_1712000000002:chat_input"
    to_input: "end_1712000000003:text_input"
start_element: start_1712000000001
"#;

const ECHO_TRACE_TYPES: &[&str] = &[
    "flow_started",
    "element_started",
    "processing",
    "element_completed",
    "element_started",
    "processing",
    "chat_input",
    "element_completed",
    "element_started",
    "processing",
    "final_output",
    "element_completed",
    "flow_completed",
];

/// The raw canvas sample converted (frame 2 of `tests/fixtures/traces/raw-canvas.jsonl`).
fn raw_canvas_flow() -> Value {
    json!({"nodes": {"start_1700000000001": {"type": "start", "name": "Start", "parameters": {}, "input_schema": {}, "output_schema": {}}, "chat_input_1700000000002": {"type": "chat_input", "name": "Question", "parameters": {"required": true, "max_length": 500}, "input_schema": {}, "output_schema": {"chat_input": {"type": "string", "description": "", "required": true}}}, "constants_1700000000003": {"type": "constants", "name": "Greeting", "parameters": {"prefix": "You asked: "}, "input_schema": {}, "output_schema": {"prefix": {"type": "string", "description": "", "required": true}}}, "merger_1700000000004": {"type": "merger", "name": "Join", "parameters": {}, "input_schema": {"data1": {"type": "string", "description": "", "required": true}, "data2": {"type": "string", "description": "", "required": true}}, "output_schema": {"merged_data": {"type": "json", "description": "", "required": true}}}, "selector_1700000000005": {"type": "selector", "name": "Pick question", "parameters": {"key": "data2"}, "input_schema": {"data": {"type": "json", "description": "", "required": true}}, "output_schema": {"selected_value": {"type": "string", "description": "", "required": true}}}, "end_1700000000006": {"type": "end", "name": "End", "parameters": {}, "input_schema": {"text_input": {"type": "string", "description": "", "required": true}}, "output_schema": {}}}, "connections": [{"from_id": "start_1700000000001", "to_id": "chat_input_1700000000002", "connection_type": "control"}, {"from_id": "chat_input_1700000000002", "to_id": "merger_1700000000004", "connection_type": "control"}, {"from_id": "chat_input_1700000000002", "to_id": "merger_1700000000004", "connection_type": "data", "from_output": "chat_input_1700000000002:chat_input", "to_input": "merger_1700000000004:data2"}, {"from_id": "constants_1700000000003", "to_id": "merger_1700000000004", "connection_type": "control"}, {"from_id": "constants_1700000000003", "to_id": "merger_1700000000004", "connection_type": "data", "from_output": "constants_1700000000003:prefix", "to_input": "merger_1700000000004:data1"}, {"from_id": "merger_1700000000004", "to_id": "selector_1700000000005", "connection_type": "control"}, {"from_id": "merger_1700000000004", "to_id": "selector_1700000000005", "connection_type": "data", "from_output": "merger_1700000000004:merged_data", "to_input": "selector_1700000000005:data"}, {"from_id": "selector_1700000000005", "to_id": "end_1700000000006", "connection_type": "control"}, {"from_id": "selector_1700000000005", "to_id": "end_1700000000006", "connection_type": "data", "from_output": "selector_1700000000005:selected_value", "to_input": "end_1700000000006:text_input"}], "start_element": "start_1700000000001"})
}

/// `start -> <middle...> -> end`, each element's `out` feeding the next one's `input`, given as
/// `(id, node)` pairs; `text_from` names the `id:output` that feeds the end's `text_input`.
fn chain(middle: Vec<(&str, Value)>, data: Vec<(&str, &str)>, text_from: &str) -> Value {
    let mut nodes = serde_json::Map::new();
    nodes.insert("start".into(), json!({"type": "start", "name": "Start"}));
    let mut connections = Vec::new();
    let mut previous = "start".to_owned();
    for (id, node) in middle {
        nodes.insert(id.into(), node);
        connections.push(json!({"from_id": previous, "to_id": id, "connection_type": "control"}));
        previous = id.to_owned();
    }
    nodes.insert("end".into(), json!({"type": "end", "name": "End"}));
    connections.push(json!({"from_id": previous, "to_id": "end", "connection_type": "control"}));
    for (from, to) in data {
        connections.push(json!({
            "from_id": from.split(':').next().unwrap(),
            "to_id": to.split(':').next().unwrap(),
            "connection_type": "data",
            "from_output": from,
            "to_input": to,
        }));
    }
    connections.push(json!({
        "from_id": text_from.split(':').next().unwrap(), "to_id": "end",
        "connection_type": "data", "from_output": text_from, "to_input": "end:text_input",
    }));
    json!({"nodes": nodes, "connections": connections, "start_element": "start"})
}

fn chat_llm_flow() -> Value {
    chain(
        vec![
            ("chat", json!({"type": "chat_input", "name": "Chat"})),
            (
                "llm",
                json!({"type": "llm_text", "name": "LLM", "parameters": {
                "wrapper_prompt": "User: {prompt}", "llm_hidden_prompt": "SECRET-INSTRUCTION"}}),
            ),
        ],
        vec![("chat:chat_input", "llm:prompt")],
        "llm:llm_output",
    )
}

fn outputs_of<'a>(run: &'a Run, id: &str) -> &'a Value {
    let done = run
        .of_type("element_completed")
        .into_iter()
        .find(|e| e["data"]["element_id"] == id)
        .unwrap_or_else(|| panic!("{id} completed: {:?}", run.types()));
    &done["data"]["outputs"]
}

#[tokio::test]
async fn handshake_uses_the_exact_compat_strings_and_ends_with_close_1000() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let mut ws = connect(&engine, None).await.unwrap();
    let statuses = handshake(
        &mut ws,
        &echo_flow().to_string(),
        &echo_inputs("hello"),
        "null",
    )
    .await;
    assert_eq!(
        statuses,
        vec![
            json!({"status": "ready", "message": "Send flow_definition as JSON"}),
            json!({"status": "received_flow", "message": "Send initial_inputs as JSON"}),
            json!({"status": "received_inputs", "message": "Send config as JSON or 'null'"}),
            json!({"status": "starting", "message": "Starting flow execution"}),
        ]
    );
    let (frames, ending) = drain(&mut ws, WAIT).await;
    assert_eq!(ending, Ending::Closed(1000));
    assert_eq!(parse(&frames).last().unwrap()["type"], "flow_completed");
}

#[tokio::test]
async fn echo_flow_produces_the_original_event_sequence_with_fixed_defects() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let run = run_flow(&engine, &echo_flow(), echo_inputs("hello")).await;
    assert_eq!(run.types(), ECHO_TRACE_TYPES);
    let started = &run.events[1];
    let keys: Vec<&String> = started["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "flow_id",
            "element_id",
            "element_type",
            "element_name",
            "backtracking"
        ]
    );
    assert_eq!(started["data"]["flow_id"], "flow-under-test");
    assert!(started["timestamp"].as_f64().unwrap() > 1.7e9);
    assert_eq!(
        run.events[2]["data"],
        json!({"element_id": "start_1712000000001", "message": "Starting flow..."})
    );
    assert_eq!(
        run.of_type("chat_input")[0]["data"],
        json!({"element_id": "chat_input_1712000000002", "chat_input": "hello", "validation_passed": true})
    );
    assert_eq!(
        run.of_type("final_output")[0]["data"],
        json!({"flow_id": "flow-under-test", "element_id": "end_1712000000003", "text_output": "hello", "proposed_transaction": null})
    );
    let done = &run.last()["data"];
    assert_eq!(
        done["execution_order"],
        json!([
            "start_1712000000001",
            "chat_input_1712000000002",
            "end_1712000000003"
        ])
    );
    assert_eq!(
        done["final_output"],
        json!({"text_output": "hello", "proposed_transaction": null})
    );
    assert_eq!(
        done["element_outputs"]["chat_input_1712000000002"],
        json!({"chat_input": "hello"})
    );
}

#[tokio::test]
async fn yaml_and_json_flow_frames_give_the_same_events() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let yaml = run_flow_with(&engine, ECHO_YAML, &echo_inputs("hi"), "null").await;
    let json = run_flow(&engine, &echo_flow(), echo_inputs("hi")).await;
    assert_eq!(yaml.types(), ECHO_TRACE_TYPES);
    assert_eq!(yaml.types(), json.types());
    assert_eq!(yaml.last()["data"]["final_output"]["text_output"], "hi");
}

#[tokio::test]
async fn raw_canvas_flow_backtracks_the_constants_like_the_original() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let inputs = json!({"chat_input_1700000000002": {"chat_input": "canvas q"}});
    let run = run_flow(&engine, &raw_canvas_flow(), inputs).await;
    assert_eq!(
        run.types(),
        [
            "flow_started",
            "element_started",
            "processing",
            "element_completed",
            "element_started",
            "processing",
            "chat_input",
            "element_completed",
            "element_started",
            "processing",
            "constants",
            "element_completed",
            "element_started",
            "merger",
            "element_completed",
            "element_started",
            "selector",
            "element_completed",
            "element_started",
            "processing",
            "final_output",
            "element_completed",
            "flow_completed",
        ]
    );
    let constants = &run.events[8]["data"];
    assert_eq!(constants["element_id"], "constants_1700000000003");
    assert_eq!(constants["backtracking"], true);
    assert_eq!(
        run.events[9]["data"],
        json!({"element_id": "constants_1700000000003", "message": "Loading constants..."})
    );
    assert_eq!(
        run.of_type("merger")[0]["data"]["merged_data_preview"],
        "{'data1': 'You asked: ', 'data2': 'canvas q'}"
    );
    assert_eq!(
        run.of_type("selector")[0]["data"],
        json!({"element_id": "selector_1700000000005", "paths_tried": ["data2"], "path_used": "data2", "found": true, "selected_value_preview": "canvas q"})
    );
    let done = &run.last()["data"];
    assert_eq!(done["final_output"]["text_output"], "canvas q");
    assert_eq!(done["execution_order"][2], "constants_1700000000003");
}

#[tokio::test]
async fn empty_required_chat_input_gives_one_element_error_and_one_flow_error() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let run = run_flow(&engine, &echo_flow(), echo_inputs("")).await;
    let message = "Chat input validation failed: Chat input is required but was empty";
    let errors = run.of_type("element_error");
    assert_eq!(errors.len(), 1, "{:?}", run.types());
    assert_eq!(errors[0]["data"]["element_id"], "chat_input_1712000000002");
    assert_eq!(errors[0]["data"]["error"], message);
    assert_eq!(run.of_type("flow_error").len(), 1);
    let fe = &run.last()["data"];
    assert_eq!(run.last()["type"], "flow_error");
    let keys: Vec<&String> = fe.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "flow_id",
            "error",
            "partial_execution_order",
            "partial_outputs",
            "execution_time"
        ]
    );
    assert_eq!(fe["error"], message);
    assert_eq!(
        fe["partial_execution_order"],
        json!(["start_1712000000001"])
    );
    assert_eq!(run.ending, Ending::Closed(1000));
}

#[tokio::test]
async fn a_json_value_into_a_string_input_is_an_element_error() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let flow = chain(
        vec![
            (
                "obj",
                json!({"type": "constants", "name": "Obj", "parameters": {"v": {"a": 1}}}),
            ),
            (
                "llm",
                json!({"type": "llm_text", "name": "LLM",
                            "input_schema": {"prompt": {"type": "string", "required": true}}}),
            ),
        ],
        vec![("obj:v", "llm:prompt")],
        "llm:llm_output",
    );
    let run = run_flow(&engine, &flow, json!({})).await;
    let errors = run.of_type("element_error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["data"]["element_id"], "llm");
    let text = errors[0]["data"]["error"].as_str().unwrap();
    assert!(
        text.contains("Value '{'a': 1}' does not match expected type 'string'"),
        "{text}"
    );
    assert_eq!(run.of_type("flow_error").len(), 1);
}

#[tokio::test]
async fn llm_text_streams_the_configured_chunks_and_outputs_their_concatenation() {
    let engine = spawn_engine(EngineConfig {
        llm_tokens: 7,
        ..EngineConfig::for_tests()
    })
    .await;
    let run = run_flow(
        &engine,
        &chat_llm_flow(),
        json!({"chat": {"chat_input": "hello there"}}),
    )
    .await;
    let prompt = &run.of_type("llm_prompt")[0]["data"];
    assert_eq!(prompt["prompt"], "User: hello there");
    assert_eq!(prompt["model"], "flowgate-scripted");
    let chunks = run.of_type("llm_chunk");
    assert_eq!(chunks.len(), 7);
    assert_eq!(
        chunks[0]["data"]["metadata"],
        json!({"element_id": "llm", "element_type": "llm_text", "element_name": "LLM", "flow_id": "flow-under-test"})
    );
    let text: String = chunks
        .iter()
        .map(|c| c["data"]["content"].as_str().unwrap())
        .collect();
    assert!(text.starts_with("You said: User: hello there"), "{text}");
    assert_eq!(outputs_of(&run, "llm")["llm_output"], text);
    assert_eq!(run.last()["data"]["final_output"]["text_output"], text);
    let raw: String = run.events.iter().map(Value::to_string).collect();
    assert!(
        !raw.contains("SECRET-INSTRUCTION"),
        "the hidden prompt leaked"
    );
}

#[tokio::test]
async fn with_an_engine_key_only_valid_engine_tokens_get_in() {
    let key = flowgate::config::Secret::new("engine-key");
    let engine = spawn_engine(EngineConfig {
        engine_key: Some(key.clone()),
        ..EngineConfig::for_tests()
    })
    .await;
    let status = |r: Result<Ws, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 101,
    };
    assert_eq!(status(connect(&engine, None).await), 401);
    let foreign = flowgate::auth::mint_engine_token(&flowgate::config::Secret::new("other"));
    assert_eq!(status(connect(&engine, Some(&foreign)).await), 401);
    let user = flowgate::auth::mint_hs256(&key, "alice", Duration::from_secs(60));
    assert_eq!(status(connect(&engine, Some(&user)).await), 401);
    let token = flowgate::auth::mint_engine_token(&key);
    let mut ws = connect(&engine, Some(&token)).await.unwrap();
    handshake(
        &mut ws,
        &echo_flow().to_string(),
        &echo_inputs("hello"),
        "null",
    )
    .await;
    let (frames, ending) = drain(&mut ws, WAIT).await;
    assert_eq!(parse(&frames).last().unwrap()["type"], "flow_completed");
    assert_eq!(ending, Ending::Closed(1000));
}

#[tokio::test]
async fn closing_the_socket_during_the_stream_stops_the_run() {
    let config = EngineConfig {
        llm_tokens: 50,
        llm_token_delay: Duration::from_millis(20),
        ..EngineConfig::for_tests()
    };
    let engine = spawn_engine(config).await;
    let mut ws = connect(&engine, None).await.unwrap();
    let inputs = json!({"chat": {"chat_input": "hello"}});
    handshake(&mut ws, &chat_llm_flow().to_string(), &inputs, "null").await;
    let mut chunks = 0;
    while chunks < 2 {
        let frame: Value = serde_json::from_str(&next_text(&mut ws, WAIT).await.unwrap()).unwrap();
        if frame["type"] == "llm_chunk" {
            chunks += 1;
        }
    }
    let bye = tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "".into(),
    };
    ws.close(Some(bye)).await.unwrap();
    // The engine answers the close frame (frames already in flight may come first).
    let (_, ending) = drain(&mut ws, WAIT).await;
    assert_eq!(ending, Ending::Closed(1000));
    let ended = async {
        while engine.stats.runs_ended.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(500), ended)
        .await
        .expect("the run stopped quickly");
    // start, chat, llm started; the end element never did.
    assert_eq!(engine.stats.elements_started.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_flow_frame_that_does_not_parse_gets_a_flow_error_and_a_close() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let mut ws = connect(&engine, None).await.unwrap();
    next_text(&mut ws, WAIT).await.unwrap();
    ws.send(Message::text("nodes: [unclosed")).await.unwrap();
    let (frames, ending) = drain(&mut ws, WAIT).await;
    let frames = parse(&frames);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "flow_error");
    assert_eq!(frames[0]["data"]["flow_id"], "flow-under-test");
    assert!(
        frames[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("not valid YAML or JSON")
    );
    assert!(frames[0]["timestamp"].is_f64());
    assert_eq!(ending, Ending::Closed(1008));
}

#[tokio::test]
async fn frames_above_the_limit_are_refused_with_1009() {
    let engine = spawn_engine(EngineConfig {
        max_frame_bytes: 1024,
        ..EngineConfig::for_tests()
    })
    .await;
    let mut ws = connect(&engine, None).await.unwrap();
    next_text(&mut ws, WAIT).await.unwrap();
    let _ = ws.send(Message::text("x".repeat(4096))).await;
    let (frames, ending) = drain(&mut ws, WAIT).await;
    assert!(frames.is_empty());
    assert_eq!(ending, Ending::Closed(1009));
}

#[tokio::test]
async fn a_silent_gateway_times_out_the_handshake_step() {
    let engine = spawn_engine(EngineConfig {
        handshake_timeout: Duration::from_millis(100),
        ..EngineConfig::for_tests()
    })
    .await;
    let mut ws = connect(&engine, None).await.unwrap();
    next_text(&mut ws, WAIT).await.unwrap();
    let (_, ending) = drain(&mut ws, WAIT).await;
    assert_eq!(ending, Ending::Closed(4408));
}

#[tokio::test]
async fn unknown_and_disabled_element_types_fail_with_a_clear_error() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    for (ty, expected) in [
        ("Teleporter", "Unknown element type 'Teleporter'"),
        ("custom", "custom code is disabled on this engine"),
        (
            "read_blockchain_data",
            "'read_blockchain_data' is not implemented",
        ),
    ] {
        let flow = chain(
            vec![("x", json!({"type": ty, "name": "X"}))],
            vec![],
            "x:out",
        );
        let run = run_flow(&engine, &flow, json!({})).await;
        let errors = run.of_type("element_error");
        assert_eq!(errors.len(), 1, "{ty}");
        let text = errors[0]["data"]["error"].as_str().unwrap();
        assert!(text.contains(expected), "{ty}: {text}");
        assert_eq!(run.last()["type"], "flow_error");
    }
}

async fn run_with_fault_config(fault: &str, flow: &Value, inputs: Value) -> (Run, TestEngine) {
    let config = EngineConfig {
        fault: Some(fault.parse().unwrap()),
        fault_oversize_bytes: 100_000,
        ..EngineConfig::for_tests()
    };
    let engine = spawn_engine(config).await;
    let mut ws = connect(&engine, None).await.unwrap();
    handshake(&mut ws, &flow.to_string(), &inputs, "null").await;
    let (frames, ending) = drain(&mut ws, Duration::from_millis(300)).await;
    let events = frames
        .iter()
        .map(|f| serde_json::from_str(f).unwrap_or(Value::String(f.clone())))
        .collect();
    (Run { events, ending }, engine)
}

#[tokio::test]
async fn crash_after_n_drops_the_connection_without_a_close_frame() {
    let (run, _engine) =
        run_with_fault_config("crash-after=3", &echo_flow(), echo_inputs("hi")).await;
    assert_eq!(run.types(), &ECHO_TRACE_TYPES[..3]);
    assert_eq!(run.ending, Ending::Dropped);
}

#[tokio::test]
async fn stall_after_n_keeps_the_socket_open_and_silent() {
    let (run, _engine) =
        run_with_fault_config("stall-after=4", &echo_flow(), echo_inputs("hi")).await;
    assert_eq!(run.types(), &ECHO_TRACE_TYPES[..4]);
    assert_eq!(
        run.ending,
        Ending::Open,
        "nothing more within 300 ms and no close"
    );
}

#[tokio::test]
async fn non_json_after_n_sends_one_frame_that_is_not_json_then_carries_on() {
    let (run, _engine) =
        run_with_fault_config("non-json-after=2", &echo_flow(), echo_inputs("hi")).await;
    assert_eq!(run.events.len(), ECHO_TRACE_TYPES.len() + 1);
    let junk = run.events[2].as_str().expect("frame 3 is raw text");
    assert!(serde_json::from_str::<Value>(junk).is_err());
    assert_eq!(run.events.last().unwrap()["type"], "flow_completed");
    assert_eq!(run.ending, Ending::Closed(1000));
}

#[tokio::test]
async fn oversize_after_n_sends_one_frame_of_the_configured_size() {
    let config = EngineConfig {
        fault: Some("oversize-after=1".parse().unwrap()),
        fault_oversize_bytes: 100_000,
        ..EngineConfig::for_tests()
    };
    let engine = spawn_engine(config).await;
    let mut ws = connect(&engine, None).await.unwrap();
    handshake(
        &mut ws,
        &echo_flow().to_string(),
        &echo_inputs("hi"),
        "null",
    )
    .await;
    let (frames, ending) = drain(&mut ws, WAIT).await;
    assert_eq!(frames.len(), ECHO_TRACE_TYPES.len() + 1);
    assert_eq!(frames[1].len(), 100_000);
    assert!(frames.iter().all(|f| f.len() < 10_000 || f == &frames[1]));
    assert_eq!(ending, Ending::Closed(1000));
}

#[tokio::test]
async fn no_close_ends_the_run_without_a_close_frame() {
    let (run, _engine) = run_with_fault_config("no-close", &echo_flow(), echo_inputs("hi")).await;
    assert_eq!(run.types(), ECHO_TRACE_TYPES);
    assert_eq!(run.ending, Ending::Dropped);
}

#[tokio::test]
async fn refuse_handshake_closes_before_ready_and_bad_handshake_sends_a_wrong_first_frame() {
    let refuse = spawn_engine(EngineConfig {
        fault: Some("refuse-handshake".parse().unwrap()),
        ..EngineConfig::for_tests()
    })
    .await;
    let mut ws = connect(&refuse, None).await.unwrap();
    assert_eq!(next_text(&mut ws, WAIT).await, Err(Ending::Closed(1011)));

    let bad = spawn_engine(EngineConfig {
        fault: Some("bad-handshake".parse().unwrap()),
        ..EngineConfig::for_tests()
    })
    .await;
    let mut ws = connect(&bad, None).await.unwrap();
    let first: Value = serde_json::from_str(&next_text(&mut ws, WAIT).await.unwrap()).unwrap();
    assert_ne!(first["status"], "ready");
}

#[tokio::test]
async fn a_fault_on_the_start_element_applies_to_that_flow_only() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let mut faulty = echo_flow();
    faulty["nodes"]["start_1712000000001"]["parameters"] = json!({"fault": "crash-after=2"});
    let mut ws = connect(&engine, None).await.unwrap();
    handshake(&mut ws, &faulty.to_string(), &echo_inputs("hi"), "null").await;
    let (frames, ending) = drain(&mut ws, WAIT).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(ending, Ending::Dropped);
    let healthy = run_flow(&engine, &echo_flow(), echo_inputs("hi")).await;
    assert_eq!(healthy.types(), ECHO_TRACE_TYPES);

    // Outside tests (the default) a stored workflow cannot switch a fault on.
    let production = spawn_engine(EngineConfig {
        allow_flow_faults: false,
        ..EngineConfig::for_tests()
    })
    .await;
    let run = run_flow(&production, &faulty, echo_inputs("hi")).await;
    assert_eq!(run.types(), ECHO_TRACE_TYPES);
}

/// The classifier sample's shape: structured LLM -> case -> one LLM reply per branch.
fn classifier_flow(shared_end: bool) -> Value {
    let end_of = |branch: &str| {
        if shared_end {
            "end".to_owned()
        } else {
            format!("end_{branch}")
        }
    };
    let mut nodes = json!({
        "start": {"type": "start", "name": "Start"},
        "chat": {"type": "ChatInput", "name": "Chat"},
        "intent": {"type": "llmstructured", "name": "Intent",
                   "parameters": {"wrapper_prompt": "Classify: {prompt}"},
                   "output_schema": {"primary_intent": {"type": "string"}, "urgency": {"type": "string"},
                                     "confidence": {"type": "float"}, "structured_output": {"type": "string"}}},
        "route": {"type": "case", "name": "Route", "parameters": {"cases": [
            {"urgent": {"variable1": "urgency", "variable2": "high", "compare": "=="}},
            {"normal": {"variable1": "urgency", "variable2": "high", "compare": "!="}}]}},
        "reply_urgent": {"type": "llm_text", "name": "Urgent reply", "parameters": {"wrapper_prompt": "Urgent: {prompt}"}},
        "reply_normal": {"type": "llm_text", "name": "Normal reply", "parameters": {"wrapper_prompt": "Reply: {prompt}"}},
    });
    for branch in ["urgent", "normal"] {
        nodes[end_of(branch)] = json!({"type": "end", "name": end_of(branch)});
    }
    let mut connections = vec![
        json!({"from_id": "start", "to_id": "chat", "connection_type": "control"}),
        json!({"from_id": "chat", "to_id": "intent", "connection_type": "both", "from_output": "chat:chat_input", "to_input": "intent:prompt"}),
        json!({"from_id": "intent", "to_id": "route", "connection_type": "both", "from_output": "intent:structured_output", "to_input": "route:variables"}),
        json!({"from_id": "route", "to_id": "reply_urgent", "connection_type": "control"}),
        json!({"from_id": "route", "to_id": "reply_normal", "connection_type": "control"}),
    ];
    for branch in ["urgent", "normal"] {
        let reply = format!("reply_{branch}");
        connections.push(json!({"from_id": "chat", "to_id": reply, "connection_type": "data",
                                "from_output": "chat:chat_input", "to_input": format!("{reply}:prompt")}));
        connections.push(
            json!({"from_id": reply, "to_id": end_of(branch), "connection_type": "both",
                                "from_output": format!("{reply}:llm_output"),
                                "to_input": format!("{}:text_input", end_of(branch))}),
        );
    }
    json!({"nodes": nodes, "connections": connections, "start_element": "start"})
}

fn started_ids(run: &Run) -> Vec<String> {
    run.of_type("element_started")
        .iter()
        .map(|e| e["data"]["element_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn case_runs_only_the_chosen_branch() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let urgent = run_flow(
        &engine,
        &classifier_flow(false),
        json!({"chat": {"chat_input": "urgent: the server is down"}}),
    )
    .await;
    assert_eq!(
        started_ids(&urgent),
        [
            "start",
            "chat",
            "intent",
            "route",
            "reply_urgent",
            "end_urgent"
        ]
    );
    assert_eq!(outputs_of(&urgent, "route")["result"], "urgent");
    assert_eq!(urgent.last()["type"], "flow_completed");

    let normal = run_flow(
        &engine,
        &classifier_flow(false),
        json!({"chat": {"chat_input": "hello"}}),
    )
    .await;
    assert_eq!(
        started_ids(&normal),
        [
            "start",
            "chat",
            "intent",
            "route",
            "reply_normal",
            "end_normal"
        ]
    );
    assert!(
        normal.of_type("final_output")[0]["data"]["text_output"]
            .as_str()
            .unwrap()
            .contains("Reply: hello")
    );
}

#[tokio::test]
async fn the_unchosen_branch_is_not_backtracked_into_a_shared_end() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let run = run_flow(
        &engine,
        &classifier_flow(true),
        json!({"chat": {"chat_input": "hello"}}),
    )
    .await;
    assert_eq!(
        started_ids(&run),
        ["start", "chat", "intent", "route", "reply_normal", "end"]
    );
    assert!(
        run.of_type("element_started")
            .iter()
            .all(|e| e["data"]["backtracking"] == false)
    );
}

#[tokio::test]
async fn case_children_named_after_case_ids_are_matched_by_name() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let mut flow = classifier_flow(false);
    // Reverse the connection order; the names now decide.
    flow["nodes"]["reply_urgent"]["name"] = json!("urgent");
    flow["nodes"]["reply_normal"]["name"] = json!("normal");
    let conns = flow["connections"].as_array_mut().unwrap();
    conns.swap(3, 4);
    let run = run_flow(
        &engine,
        &flow,
        json!({"chat": {"chat_input": "URGENT please"}}),
    )
    .await;
    assert_eq!(
        started_ids(&run),
        [
            "start",
            "chat",
            "intent",
            "route",
            "reply_urgent",
            "end_urgent"
        ]
    );
}

#[tokio::test]
async fn flow_select_runs_only_the_selected_flow() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let flow = json!({
        "nodes": {
            "start": {"type": "start", "name": "Start"},
            "pick": {"type": "FlowSelect", "name": "Pick", "parameters": {"flows_to_switch": ["alpha", "beta"]}},
            "a": {"type": "constants", "name": "alpha", "parameters": {"text": "from alpha"}},
            "b": {"type": "constants", "name": "beta", "parameters": {"text": "from beta"}},
        },
        "connections": [
            {"from_id": "start", "to_id": "pick", "connection_type": "control"},
            {"from_id": "pick", "to_id": "a", "connection_type": "control"},
            {"from_id": "pick", "to_id": "b", "connection_type": "control"},
        ],
        "start_element": "start"
    });
    let run = run_flow(&engine, &flow, json!({"pick": {"selected_flow": "beta"}})).await;
    assert_eq!(started_ids(&run), ["start", "pick", "b"]);
    assert_eq!(outputs_of(&run, "pick")["selected_flow"], "beta");
    let wrong = run_flow(&engine, &flow, json!({"pick": {"selected_flow": "gamma"}})).await;
    assert_eq!(wrong.of_type("element_error").len(), 1);
}

fn single(id: &str, node: Value) -> Value {
    chain(vec![(id, node)], vec![], &format!("{id}:none"))
}

#[tokio::test]
async fn datablock_outputs_its_data_in_the_given_format() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let node = json!({"type": "datablock", "name": "Data", "parameters": {"data": "{\"k\": [1, 2]}", "format": "json"}});
    let run = run_flow(&engine, &single("d", node), json!({})).await;
    assert_eq!(outputs_of(&run, "d")["data"], json!({"k": [1, 2]}));
    assert_eq!(
        run.of_type("datablock")[0]["data"]["data_preview"],
        "{'k': [1, 2]}"
    );
}

#[tokio::test]
async fn random_generator_is_deterministic_under_a_seed_and_stays_in_range() {
    let engine = spawn_engine(EngineConfig {
        seed: Some(42),
        ..EngineConfig::for_tests()
    })
    .await;
    let node = json!({"type": "RandomGenerator", "name": "Dice", "parameters": {"type": "int", "min": 1, "max": 6}});
    let mut values = Vec::new();
    for _ in 0..2 {
        let run = run_flow(&engine, &single("r", node.clone()), json!({})).await;
        values.push(outputs_of(&run, "r")["random_data"].clone());
        assert_eq!(run.of_type("random_generator").len(), 1);
    }
    assert_eq!(values[0], values[1]);
    let v = values[0].as_i64().unwrap();
    assert!((1..=6).contains(&v), "{v}");
    let strings: Vec<Value> = [1, 2]
        .iter()
        .map(|seed| json!({"type": "random_generator", "name": "S", "parameters": {"type": "string", "length": 16, "seed": seed}}))
        .collect();
    let a = run_flow(&engine, &single("s", strings[0].clone()), json!({})).await;
    let b = run_flow(&engine, &single("s", strings[1].clone()), json!({})).await;
    assert_eq!(
        outputs_of(&a, "s")["random_data"].as_str().unwrap().len(),
        16
    );
    assert_ne!(
        outputs_of(&a, "s")["random_data"],
        outputs_of(&b, "s")["random_data"]
    );
}

#[tokio::test]
async fn time_uses_the_injected_clock() {
    let fixed = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap();
    let engine = spawn_engine(EngineConfig {
        fixed_time: Some(fixed),
        ..EngineConfig::for_tests()
    })
    .await;
    let node = json!({"type": "time", "name": "Clock", "parameters": {"timezone": "+02:00"}});
    let run = run_flow(&engine, &single("t", node), json!({})).await;
    let out = outputs_of(&run, "t");
    assert_eq!(out["current_time"], "2026-01-02T05:04:05+02:00");
    assert_eq!(out["formatted_time"], "2026-01-02 05:04:05");
    assert_eq!(out["timestamp"], fixed.timestamp());
    assert_eq!(
        run.of_type("time_block")[0]["data"]["current_time"],
        out["current_time"]
    );
}

#[tokio::test]
async fn llm_structured_returns_typed_values_and_json_text_without_chunks() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let run = run_flow(
        &engine,
        &classifier_flow(false),
        json!({"chat": {"chat_input": "what time is it?"}}),
    )
    .await;
    let out = outputs_of(&run, "intent");
    assert_eq!(out["primary_intent"], "question");
    assert_eq!(out["urgency"], "low");
    assert!(out["confidence"].is_f64());
    let text: Value = serde_json::from_str(out["structured_output"].as_str().unwrap()).unwrap();
    assert_eq!(text["urgency"], "low");
    let result = &run.of_type("llm_structured_result")[0]["data"];
    assert_eq!(result["element_id"], "intent");
    let chunk_owners: Vec<&Value> = run
        .of_type("llm_chunk")
        .iter()
        .map(|c| &c["data"]["element_id"])
        .collect();
    assert!(
        chunk_owners.iter().all(|o| *o == "reply_normal"),
        "{chunk_owners:?}"
    );
}

#[tokio::test]
async fn metadata_reports_the_run_identity_from_the_config_frame_and_nothing_else() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let flow = single("m", json!({"type": "metadata", "name": "Meta"}));
    let config = json!({"run": {"run_id": "r-1", "agent_id": "echo", "user_id": "alice", "version": "published"},
                        "allow_custom_code": true, "model": "gpt-x"});
    let run = run_flow_with(&engine, &flow.to_string(), &json!({}), &config.to_string()).await;
    assert_eq!(
        outputs_of(&run, "m"),
        &json!({"user_id": "alice", "agent_id": "echo", "run_id": "r-1", "version": "published", "flow_id": "flow-under-test"})
    );
    let anonymous = run_flow(&engine, &flow, json!({})).await;
    assert_eq!(outputs_of(&anonymous, "m")["user_id"], Value::Null);
}

#[tokio::test]
async fn context_history_keeps_the_last_messages_in_the_requested_format() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let node = json!({"type": "contexthistory", "name": "History", "parameters": {"max_messages": 2, "format": "text_only"}});
    let history = json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                         {"role": "assistant", "content": "c"}]);
    let run = run_flow(
        &engine,
        &single("h", node),
        json!({"h": {"context_history": history}}),
    )
    .await;
    assert_eq!(
        outputs_of(&run, "h")["history"],
        json!(["user: b", "assistant: c"])
    );
}

#[tokio::test]
async fn rest_api_is_blocked_unless_the_host_is_allowed() {
    let app = axum::Router::new().route(
        "/v1/info",
        axum::routing::get(|| async { axum::Json(json!({"ok": true})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let node = json!({"type": "RestAPI", "name": "API", "parameters": {"url": format!("http://127.0.0.1:{port}/v1/info")}});
    let flow = single("api", node);

    let closed = spawn_engine(EngineConfig::for_tests()).await;
    let run = run_flow(&closed, &flow, json!({})).await;
    let errors = run.of_type("element_error");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("blocked")
    );
    assert_eq!(run.of_type("api_error").len(), 1);

    // An entry without a port allows port 80 only, not the test server's port.
    let host_only = spawn_engine(EngineConfig {
        rest_allow_hosts: vec!["127.0.0.1".into()],
        ..EngineConfig::for_tests()
    })
    .await;
    let run = run_flow(&host_only, &flow, json!({})).await;
    assert_eq!(run.of_type("api_error").len(), 1);

    let open = spawn_engine(EngineConfig {
        rest_allow_hosts: vec![format!("127.0.0.1:{port}")],
        ..EngineConfig::for_tests()
    })
    .await;
    let run = run_flow(&open, &flow, json!({})).await;
    assert_eq!(
        outputs_of(&run, "api"),
        &json!({"response": {"ok": true}, "status_code": 200})
    );
    assert_eq!(run.of_type("api_response")[0]["data"]["status_code"], 200);
}

fn slow_llm() -> EngineConfig {
    EngineConfig {
        llm_tokens: 50,
        llm_token_delay: Duration::from_millis(20),
        ..EngineConfig::for_tests()
    }
}

#[tokio::test]
async fn engine_shutdown_closes_running_flows_with_1012() {
    let engine = spawn_engine(slow_llm()).await;
    let mut ws = connect(&engine, None).await.unwrap();
    let inputs = json!({"chat": {"chat_input": "hello"}});
    handshake(&mut ws, &chat_llm_flow().to_string(), &inputs, "null").await;
    loop {
        let frame: Value = serde_json::from_str(&next_text(&mut ws, WAIT).await.unwrap()).unwrap();
        if frame["type"] == "llm_chunk" {
            break;
        }
    }
    engine.shutdown.cancel();
    let (frames, ending) = drain(&mut ws, WAIT).await;
    assert_eq!(ending, Ending::Closed(1012));
    assert!(parse(&frames).iter().all(|f| f["type"] != "flow_completed"));
}

#[tokio::test]
async fn llm_chunk_timestamps_are_the_send_times_in_microseconds() {
    let engine = spawn_engine(EngineConfig {
        llm_tokens: 4,
        llm_token_delay: Duration::from_millis(20),
        ..EngineConfig::for_tests()
    })
    .await;
    let run = run_flow(
        &engine,
        &chat_llm_flow(),
        json!({"chat": {"chat_input": "hi"}}),
    )
    .await;
    let stamps: Vec<f64> = run
        .of_type("llm_chunk")
        .iter()
        .map(|c| c["timestamp"].as_f64().unwrap())
        .collect();
    assert_eq!(stamps.len(), 4);
    for pair in stamps.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((0.019..5.0).contains(&gap), "chunks {gap} s apart");
    }
}

#[tokio::test]
async fn an_element_runs_once_and_missing_control_ancestors_backtrack_first() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    // start -> a -> join; b -> join (b is only reachable backwards, via its own parent p);
    // start -> join as well; data-only d never runs.
    let c = |from: &str, to: &str, kind: &str| json!({"from_id": from, "to_id": to, "connection_type": kind});
    let constant =
        |name: &str| json!({"type": "constants", "name": name, "parameters": {"v": name}});
    let flow = json!({
        "nodes": {
            "start": {"type": "start", "name": "Start"},
            "a": constant("a"), "p": constant("p"), "b": constant("b"),
            "join": constant("join"), "d": constant("d"),
        },
        "connections": [
            c("start", "a", "control"), c("a", "join", "control"), c("p", "b", "both"),
            c("b", "join", "both"), c("start", "join", "control"),
            {"from_id": "join", "to_id": "d", "connection_type": "data",
             "from_output": "join:v", "to_input": "d:v"},
        ],
        "start_element": "start"
    });
    let run = run_flow(&engine, &flow, json!({})).await;
    let seen: Vec<(String, bool)> = run
        .of_type("element_started")
        .iter()
        .map(|e| {
            let d = &e["data"];
            (
                d["element_id"].as_str().unwrap().to_owned(),
                d["backtracking"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("start", false),
        ("a", false),
        ("p", true),
        ("b", true),
        ("join", false),
    ];
    let expected: Vec<(String, bool)> = expected.iter().map(|(i, b)| (i.to_string(), *b)).collect();
    assert_eq!(seen, expected);
    assert_eq!(run.last()["type"], "flow_completed");
}

#[tokio::test]
async fn the_config_frame_cannot_switch_on_custom_code_or_change_the_model() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let flow = chain(
        vec![
            ("llm", json!({"type": "llm_text", "name": "LLM"})),
            (
                "code",
                json!({"type": "custom", "name": "Code", "code": "import os"}),
            ),
        ],
        vec![],
        "llm:llm_output",
    );
    let config = json!({"custom_code_enabled": true, "allow_custom": true, "model": "gpt-x",
                        "llm_model": "gpt-x", "run": {"run_id": "r"}});
    let inputs = json!({"llm": {"prompt": "hi"}});
    let run = run_flow_with(&engine, &flow.to_string(), &inputs, &config.to_string()).await;
    assert_eq!(
        run.of_type("llm_prompt")[0]["data"]["model"],
        "flowgate-scripted"
    );
    let errors = run.of_type("element_error");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0]["data"]["error"],
        "custom code is disabled on this engine"
    );
}

#[tokio::test]
async fn initial_inputs_that_are_not_json_get_a_flow_error_and_a_close() {
    let engine = spawn_engine(EngineConfig::for_tests()).await;
    let mut ws = connect(&engine, None).await.unwrap();
    next_text(&mut ws, WAIT).await.unwrap();
    ws.send(Message::text(echo_flow().to_string()))
        .await
        .unwrap();
    next_text(&mut ws, WAIT).await.unwrap();
    ws.send(Message::text("{not json")).await.unwrap();
    let (frames, ending) = drain(&mut ws, WAIT).await;
    let frames = parse(&frames);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "flow_error");
    assert!(
        frames[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("initial inputs")
    );
    assert_eq!(ending, Ending::Closed(1008));
}
