//! Operations: /metrics after runs, W3C traceparent from the client to the engine and in logs.

#![allow(clippy::result_large_err)] // tungstenite's header callback returns its own large error type

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::common::*;

fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metric_labels_stay_bounded_whatever_agent_ids_clients_ask_for() {
    let app = spawn_app_with(flowgate::engine::EngineConfig::for_tests(), |c| {
        c.metrics_max_agents = 1;
    })
    .await;
    for agent in ["echo", "assistant", "nosuch-1", "nosuch-2", "nosuch-3"] {
        let mut c = app.connect(agent, "alice").await;
        c.send_json(json!({"message": "hi"})).await;
        let frames = c.collect_run().await;
        assert!(is_terminal(frames.last().unwrap()), "{agent}: {frames:?}");
    }
    let body = crate::chain::http_get(&app.http_url("/metrics")).await;
    let started: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("flowgate_runs_started_total{"))
        .collect();
    assert_eq!(
        metric_value(&body, "flowgate_runs_started_total{agent=\"echo\"}"),
        Some(1.0),
        "{started:?}"
    );
    assert_eq!(
        metric_value(&body, "flowgate_runs_started_total{agent=\"(other)\"}"),
        Some(1.0),
        "the second real agent is folded: {started:?}"
    );
    assert_eq!(
        metric_value(&body, "flowgate_runs_started_total{agent=\"(unknown)\"}"),
        Some(3.0),
        "agents that do not exist share one label: {started:?}"
    );
    assert_eq!(started.len(), 3, "{started:?}");
    assert!(!body.contains("nosuch"), "{body}");
}

#[tokio::test]
async fn metrics_count_runs_events_and_latencies_after_a_run() {
    let app = spawn_app().await;
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(json!({"message": "count me"})).await;
    let frames = c.collect_run().await;
    let mut c = app.connect("nobody", "alice").await;
    c.send_json(json!({"message": "x"})).await;
    c.collect_run().await;

    let body = crate::chain::http_get(&app.http_url("/metrics")).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert_eq!(
        metric_value(&body, "flowgate_runs_started_total{agent=\"assistant\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(
            &body,
            "flowgate_runs_finished_total{agent=\"assistant\",status=\"completed\",code=\"\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric_value(
            &body,
            "flowgate_runs_finished_total{agent=\"(unknown)\",status=\"failed\",code=\"agent_not_found\"}"
        ),
        Some(1.0),
        "{body}"
    );
    let relayed = metric_value(&body, "flowgate_events_relayed_total").unwrap();
    assert!(
        relayed >= frames.len() as f64,
        "{relayed} < {}",
        frames.len()
    );
    assert!(
        metric_value(&body, "flowgate_event_added_latency_seconds_count").unwrap()
            >= frames.len() as f64
    );
    assert_eq!(
        metric_value(&body, "flowgate_connect_to_flow_started_seconds_count"),
        Some(1.0)
    );
    assert!(body.contains("flowgate_sessions_open"));
    assert!(body.contains("flowgate_runlog_events_dropped"));
    assert_eq!(
        metric_value(&body, "flowgate_runlog_events_dropped"),
        Some(0.0)
    );
}

#[tokio::test]
async fn the_clients_traceparent_reaches_the_engine_as_the_same_trace() {
    // A fake engine that records the upgrade's traceparent, then completes at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let cb = |req: &Request, resp: Response| {
                    if let Some(tp) = req.headers().get("traceparent") {
                        rec.lock().unwrap().push(tp.to_str().unwrap().to_owned());
                    }
                    Ok(resp)
                };
                let mut ws = tokio_tungstenite::accept_hdr_async(tcp, cb).await.unwrap();
                for status in ["ready", "received_flow", "received_inputs", "starting"] {
                    if status != "ready" {
                        ws.next().await;
                    }
                    ws.send(Message::text(json!({"status": status}).to_string()))
                        .await
                        .unwrap();
                }
                let done = json!({"type": "flow_completed", "timestamp": 1.0, "data": {"flow_id": "f", "execution_order": [], "element_outputs": {}, "final_output": {}, "execution_time": 0.0}});
                ws.send(Message::text(done.to_string())).await.unwrap();
                let _ = ws.close(None).await;
            });
        }
    });
    let app = spawn_gateway_files(flowgate::config::GatewayConfig::for_tests(format!(
        "ws://{addr}"
    )))
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = app.ws_url("echo").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("alice")).parse().unwrap(),
    );
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let mut c = Client::connect_request(req).await;
    c.send_json(json!({"message": "trace me"})).await;
    assert_eq!(
        c.collect_run().await.last().unwrap()["type"],
        "flow_completed"
    );
    let first = seen.lock().unwrap().clone();
    assert_eq!(first.len(), 1);
    let parts: Vec<&str> = first[0].split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "a new span for the engine hop"
    );

    // Without a traceparent the gateway creates one.
    let mut c = app.connect("echo", "alice").await;
    c.send_json(json!({"message": "no trace"})).await;
    c.collect_run().await;
    let all = seen.lock().unwrap().clone();
    assert_eq!(all.len(), 2, "a traceparent is always sent");
    let created: Vec<&str> = all[1].split('-').collect();
    assert_eq!(created[1].len(), 32);
    assert_ne!(
        created[1], trace_id,
        "a new trace when the client sent none"
    );
}
