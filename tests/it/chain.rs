//! The core chain end to end: client → gateway → reference engine, with the embedded files
//! store and with Postgres.

use std::time::Duration;

use flowgate::engine::EngineConfig;
use flowgate::workflow::FlowFormat;
use serde_json::json;

use crate::common::*;

const ECHO_EVENTS: &[&str] = &[
    "status",
    "status",
    "status",
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

#[tokio::test]
async fn echo_run_relays_every_event_in_order_with_run_id_and_seq() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hello", "user_id": "somebody-else"}))
        .await;
    let frames = c.collect_run().await;
    assert_eq!(types(&frames), ECHO_EVENTS);
    assert_run_stamps(&frames);
    assert_eq!(frames[0]["data"]["message"], "Retrieving workflow...");
    assert_eq!(
        frames[1]["data"]["message"],
        "Preparing workflow for execution..."
    );
    assert_eq!(frames[2]["data"]["message"], "Starting execution...");
    let started = &frames[3]["data"]["workflow"];
    assert_eq!(started["agent_id"], "echo");
    assert_eq!(started["version"], "published");
    assert_eq!(started["hash"].as_str().map(str::len), Some(64));
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(final_output["data"]["text_output"], "hello");
}

#[tokio::test]
async fn assistant_streams_llm_chunks_that_make_up_the_answer() {
    let app = spawn_app().await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({
        "message": "What is flowgate?",
        "conversation_history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }))
    .await;
    let frames = c.collect_run().await;
    assert_run_stamps(&frames);
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "{frames:#?}"
    );
    let chunks = frames.iter().filter(|f| f["type"] == "llm_chunk").count();
    assert!(chunks >= 2, "expected streaming, got {chunks} chunks");
    let text = streamed_text(&frames);
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(
        final_output["data"]["text_output"].as_str(),
        Some(text.as_str())
    );
    // The history node has no control edge: it runs as a backtracking dependency.
    let history = frames
        .iter()
        .find(|f| f["type"] == "element_started" && f["data"]["element_type"] == "context_history")
        .expect("context_history ran");
    assert_eq!(history["data"]["backtracking"], true);
}

#[tokio::test]
async fn raw_canvas_agent_runs_with_its_data_flowing() {
    let app = spawn_app().await;
    let mut c = app.connect("legacy", "carol").await;
    c.send_json(json!({"message": "canvas q"})).await;
    let frames = c.collect_run().await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "{frames:#?}"
    );
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(final_output["data"]["text_output"], "canvas q");
}

#[tokio::test]
async fn two_runs_on_one_socket_get_their_own_run_ids() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "one"})).await;
    let first = c.collect_run().await;
    c.send_json(json!({"message": "two"})).await;
    let second = c.collect_run().await;
    let a = assert_run_stamps(&first);
    let b = assert_run_stamps(&second);
    assert_ne!(a, b);
    let text = |frames: &[serde_json::Value]| {
        frames.iter().find(|f| f["type"] == "final_output").unwrap()["data"]["text_output"].clone()
    };
    assert_eq!(text(&first), "one");
    assert_eq!(text(&second), "two");
}

#[tokio::test]
async fn cancel_mid_stream_ends_with_flow_cancelled_and_the_text_so_far() {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 200;
    engine.llm_token_delay = Duration::from_millis(20);
    let app = spawn_app_with(engine, |_| {}).await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "tell me a long story"}))
        .await;
    let mut frames = Vec::new();
    loop {
        let f = c.next().await.expect("frame");
        let chunk = f["type"] == "llm_chunk";
        frames.push(f);
        if chunk && frames.iter().filter(|f| f["type"] == "llm_chunk").count() == 3 {
            break;
        }
    }
    c.send_json(json!({"type": "cancel"})).await;
    c.send_json(json!({"type": "cancel"})).await; // idempotent
    frames.extend(c.collect_run().await);
    assert_run_stamps(&frames);
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "flow_cancelled", "{last}");
    assert_eq!(last["data"]["reason"], "cancelled by the client");
    let chunks = frames.iter().filter(|f| f["type"] == "llm_chunk").count();
    assert!(chunks < 200, "the stream was not stopped ({chunks} chunks)");
    assert_eq!(
        last["data"]["partial_output"].as_str(),
        Some(streamed_text(&frames).as_str())
    );
    assert!(
        last["data"]["element_id"]
            .as_str()
            .unwrap()
            .starts_with("llm_text")
    );
    // The socket is still usable for the next run.
    c.send_json(json!({"message": "again"})).await;
    let next = c.collect_run().await;
    assert_eq!(next.last().unwrap()["type"], "flow_completed");
}

#[tokio::test]
async fn unknown_agent_is_agent_not_found_and_closes_4404() {
    let app = spawn_app().await;
    let mut c = app.connect("nobody", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "flow_error");
    assert_eq!(last["data"]["code"], "agent_not_found");
    assert_eq!(c.close_code().await, Some(4404));
}

#[tokio::test]
async fn bad_token_gets_unauthenticated_and_4401() {
    let app = spawn_app().await;
    let forged = forged_token("alice");
    let mut c = Client::connect_bearer(&app.ws_url("echo"), Some(&forged)).await;
    let f = c.next().await.expect("error frame");
    assert_eq!(f["type"], "error");
    assert_eq!(f["data"]["code"], "unauthenticated");
    assert_eq!(c.close_code().await, Some(4401));
}

#[tokio::test]
async fn missing_token_refuses_the_run_with_4401() {
    let app = spawn_app().await;
    let mut c = Client::connect_bearer(&app.ws_url("echo"), None).await;
    c.send_json(json!({"message": "hi"})).await;
    let f = c.next().await.expect("error frame");
    assert_eq!(f["data"]["code"], "unauthenticated");
    assert_eq!(c.close_code().await, Some(4401));
}

#[tokio::test]
async fn subprotocol_and_query_tokens_are_accepted() {
    let app = spawn_app().await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = app.ws_url("echo").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {}", token("alice")).parse().unwrap(),
    );
    let mut c = Client::connect_request(req).await;
    assert_eq!(
        c.response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("bearer")
    );
    c.send_json(json!({"message": "sub"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );

    let url = format!("{}?token={}", app.ws_url("echo"), token("alice"));
    let mut c = Client::connect_bearer(&url, None).await;
    c.send_json(json!({"message": "query"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
}

#[tokio::test]
async fn invalid_first_frame_is_invalid_request_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_text("this is not json").await;
    let f = c.next().await.unwrap();
    assert_eq!(f["type"], "error");
    assert_eq!(f["data"]["code"], "invalid_request");
    assert!(
        f["data"]["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    c.send_json(json!({"message": 42})).await;
    let f = c.next().await.unwrap();
    assert_eq!(f["data"]["code"], "invalid_request");
    c.send_json(json!({"message": "fine", "agent_id": "assistant"}))
        .await;
    let f = c.next().await.unwrap();
    assert_eq!(
        f["data"]["code"], "invalid_request",
        "agent_id mismatch is refused: {f}"
    );
    c.send_json(json!({"message": "fine", "agent_id": "echo"}))
        .await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
}

#[tokio::test]
async fn draft_of_an_unpublished_agent_is_only_for_its_owner() {
    let app = spawn_app().await;
    let mut c = app.connect("router", "alice").await;
    c.send_json(json!({"message": "urgent: server down"})).await;
    let frames = c.collect_run().await;
    assert_eq!(frames.last().unwrap()["data"]["code"], "forbidden");
    assert_eq!(c.close_code().await, Some(4403));

    let mut c = app.connect("router", "bob").await;
    c.send_json(json!({"message": "urgent: server down"})).await;
    let frames = c.collect_run().await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "{frames:#?}"
    );
    assert_eq!(frames[3]["data"]["workflow"]["version"], "draft");
    // The intent router runs exactly one of its two branches (urgent: llm_text_5 → end_7).
    let started: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "element_started")
        .map(|f| f["data"]["element_id"].as_str().unwrap())
        .collect();
    assert!(
        started.contains(&"llm_text_5") && started.contains(&"end_7"),
        "{started:?}"
    );
    assert!(
        !started.contains(&"llm_text_6") && !started.contains(&"end_8"),
        "the other branch ran: {started:?}"
    );
    let finals = frames
        .iter()
        .filter(|f| f["type"] == "final_output")
        .count();
    assert_eq!(finals, 1);

    // A normal request takes the other branch.
    let mut c = app.connect("router", "bob").await;
    c.send_json(json!({"message": "what are your opening hours"}))
        .await;
    let frames = c.collect_run().await;
    let started: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "element_started")
        .map(|f| f["data"]["element_id"].as_str().unwrap())
        .collect();
    assert!(
        started.contains(&"llm_text_6") && !started.contains(&"llm_text_5"),
        "{started:?}"
    );
}

#[tokio::test]
async fn engine_unreachable_is_engine_unavailable() {
    let dead = dead_addr().await;
    let mut config = flowgate::config::GatewayConfig::for_tests(format!("ws://{dead}"));
    config.engine_connect_timeout = Duration::from_secs(2);
    let app = spawn_gateway_files(config).await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hi"})).await;
    let frames = c.collect_run().await;
    assert_run_stamps(&frames);
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "flow_error");
    assert_eq!(last["data"]["code"], "engine_unavailable");
}

#[tokio::test]
async fn json_flow_format_runs_the_same_flow() {
    let app = spawn_app_with(EngineConfig::for_tests(), |c| {
        c.engine_flow_format = FlowFormat::Json
    })
    .await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "json please"})).await;
    let frames = c.collect_run().await;
    assert_eq!(types(&frames), ECHO_EVENTS);
}

#[tokio::test]
async fn health_and_readiness_endpoints_answer() {
    let app = spawn_app().await;
    let body = http_get(&app.http_url("/healthz")).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let body = http_get(&app.http_url("/readyz")).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"ready\""));
}

#[tokio::test]
async fn readiness_fails_when_the_engine_is_down() {
    let dead = dead_addr().await;
    let app = spawn_gateway_files(flowgate::config::GatewayConfig::for_tests(format!(
        "ws://{dead}"
    )))
    .await;
    let body = http_get(&app.http_url("/readyz")).await;
    assert!(body.starts_with("HTTP/1.1 503"), "{body}");
}

/// A minimal HTTP/1.1 GET (no client crate needed).
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(FRAME_WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// The engine event types of a trace in `tests/fixtures/traces/`, in order.
fn trace_event_types(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/traces")
        .join(name);
    std::fs::read_to_string(path)
        .expect("tests/fixtures/traces holds the traces")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["dir"] == "engine->gateway")
        .filter_map(|l| l["frame"]["type"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn legacy_canvas_run_has_the_exact_event_order_of_the_original_engine_trace() {
    let app = spawn_app().await;
    let mut c = app.connect("legacy", "alice").await;
    c.send_json(json!({"message": "canvas q"})).await;
    let frames = c.collect_run().await;
    let mut want = vec!["status".to_owned(); 3];
    want.extend(trace_event_types("raw-canvas.jsonl"));
    assert_eq!(types(&frames), want);
    let constants = frames
        .iter()
        .find(|f| f["type"] == "element_started" && f["data"]["element_type"] == "constants")
        .unwrap();
    assert_eq!(constants["data"]["backtracking"], true);
    let completed = frames.last().unwrap();
    assert_eq!(completed["data"]["final_output"]["text_output"], "canvas q");
}

#[tokio::test]
async fn echo_run_has_the_exact_event_order_of_the_original_engine_trace() {
    let app = spawn_app().await;
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "hello"})).await;
    let frames = c.collect_run().await;
    let mut want = vec!["status".to_owned(); 3];
    want.extend(trace_event_types("echo.jsonl"));
    assert_eq!(types(&frames), want);
}

#[tokio::test]
async fn assistant_run_has_the_exact_event_order() {
    // llm_tokens = 5 in the test engine; llm_prompt is filtered by the gateway by default.
    let app = spawn_app().await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "order please"})).await;
    let frames = c.collect_run().await;
    let mut want = vec!["status", "status", "status", "flow_started"];
    want.extend(["element_started", "processing", "element_completed"]); // start
    want.extend([
        "element_started",
        "processing",
        "chat_input",
        "element_completed",
    ]);
    want.extend([
        "element_started",
        "processing",
        "context_history",
        "element_completed",
    ]); // backtracking
    want.extend(["element_started", "processing"]); // llm_text
    want.extend(["llm_chunk"; 5]);
    want.push("element_completed");
    want.extend([
        "element_started",
        "processing",
        "final_output",
        "element_completed",
    ]); // end
    want.push("flow_completed");
    assert_eq!(types(&frames), want);
    let ids: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "element_started")
        .map(|f| f["data"]["element_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "start_1748286330001",
            "chat_input_1748286330002",
            "contexthistory_1748286330003",
            "llm_text_1748286339970",
            "end_1748286330005"
        ]
    );
}

#[tokio::test]
async fn an_engine_url_not_ws_or_wss_is_refused_at_startup_with_a_clear_error() {
    for url in ["http://engine:8001", "engine:8001", "wss://", "ws:///ws"] {
        let config = flowgate::config::GatewayConfig::for_tests(url);
        let store = flowgate::store::Store::Files(flowgate::store::files::FilesStore::embedded());
        let err = flowgate::http::Gateway::with_store(config, store)
            .await
            .err()
            .expect("refused");
        assert!(
            err.to_string()
                .contains("--engine-url must be a ws:// or wss:// URL with a host"),
            "{err}"
        );
    }
}
