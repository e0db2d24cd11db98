//! The engine's WebSocket endpoint `GET /ws/execute/{flow_id}`: engine-hop authentication, the
//! 4-step handshake of docs/neuralabs.md section 3, and the per-run socket loop.
//!
//! Design: after the handshake the executor runs as its own task and hands serialized events to
//! this loop through a bounded channel. The loop races three things: the next event (written
//! with `write_timeout`), the socket (a close frame, an error or EOF from the gateway cancels
//! the run before its next element or chunk) and the engine's shutdown (close 1012). When the
//! executor is done the loop sends close 1000 and waits `close_timeout` for the reply. Fault
//! injection ([`super::fault`]) happens here, at the socket, so the executor never knows.
//!
//! Close codes: 1000 normal end, 1008 bad handshake input, 1009 frame too big, 1011 injected
//! refusal, 1012 engine shutting down, 4408 handshake step too slow.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::EngineConfig;
use super::executor::Executor;
use super::fault::Fault;
use super::flow::Flow;
use super::outbound::Outbound;
use super::run::{Emitter, RunEnv, epoch_secs};
use super::stats::EngineStats;
use crate::close::CloseCode;

/// Shared state of the engine's server. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<EngineConfig>,
    /// The outbound HTTP clients, built once at startup and shared by every run.
    pub http: Outbound,
    pub stats: Arc<EngineStats>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Parsed flow definitions by their exact text: a gateway sends the same text for every
    /// run of a workflow, and parsing it is the engine's largest per-run cost.
    pub flows: FlowCache,
}

/// A bounded map from flow definition text to the parsed flow (cleared when full).
#[derive(Clone, Default)]
pub struct FlowCache(Arc<std::sync::Mutex<std::collections::HashMap<String, Flow>>>);

impl FlowCache {
    const MAX_ENTRIES: usize = 64;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Flow>> {
        // A poisoned cache is only a cache: keep using it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Self::get_or_parse`], with a cache miss parsed on the blocking pool: a large flow
    /// frame costs CPU, and must not stall the runtime's workers (every other run's events).
    async fn get_or_parse_blocking(
        &self,
        text: String,
        max_elements: usize,
    ) -> Result<Flow, String> {
        if let Some(flow) = self.lock().get(&text) {
            return Ok(flow.clone());
        }
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.get_or_parse(&text, max_elements))
            .await
            .map_err(|_| "parsing the flow definition failed".to_owned())?
    }

    fn get_or_parse(&self, text: &str, max_elements: usize) -> Result<Flow, String> {
        if let Some(flow) = self.lock().get(text) {
            return Ok(flow.clone());
        }
        let flow = crate::workflow::yaml::from_yaml(text)
            .map_err(|e| format!("the flow definition is not valid YAML or JSON: {e}"))
            .and_then(|v| Flow::parse(&v, max_elements))?;
        let mut cache = self.lock();
        if cache.len() >= Self::MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(text.to_owned(), flow.clone());
        Ok(flow)
    }
}

/// The engine's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws/execute/{flow_id}", get(execute))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

async fn execute(
    ws: WebSocketUpgrade,
    Path(flow_id): Path<String>,
    headers: HeaderMap,
    State(state): State<AppState>,
) -> Response {
    if let Some(key) = &state.config.engine_key {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let verdict = match token {
            Some(t) => crate::auth::verify_engine_token(key, t),
            None => Err(crate::auth::AuthError::Missing),
        };
        if let Err(e) = verdict {
            tracing::warn!(flow_id, error = %e, "engine connection refused");
            return (
                StatusCode::UNAUTHORIZED,
                format!("engine token refused: {e}\n"),
            )
                .into_response();
        }
    }
    let max = state.config.max_frame_bytes;
    let tracker = state.tracker.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(state.config.ws_read_buffer_bytes)
        .on_upgrade(move |socket| tracker.track_future(session(socket, flow_id, state)))
}

fn status_frame(status: &str, message: &str) -> String {
    json!({"status": status, "message": message}).to_string()
}

/// Why a handshake step got no usable frame.
#[derive(Debug, thiserror::Error)]
enum RecvError {
    #[error("the gateway closed the connection")]
    Closed,
    #[error("no frame within the handshake timeout")]
    Timeout,
    #[error("the frame is larger than the engine accepts")]
    TooBig,
    #[error("a binary frame was sent where a text frame was expected")]
    Binary,
    #[error("the engine is shutting down")]
    Shutdown,
}

struct Conn {
    socket: WebSocket,
    config: Arc<EngineConfig>,
    shutdown: CancellationToken,
}

impl Conn {
    async fn send_text(&mut self, text: String) -> bool {
        let write = self.socket.send(Message::Text(text.into()));
        matches!(
            tokio::time::timeout(self.config.write_timeout, write).await,
            Ok(Ok(()))
        )
    }

    /// Send a close frame, then wait (bounded) for the gateway's reply.
    async fn close(mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code: code.code(),
            reason: reason.into(),
        };
        let write = self.socket.send(Message::Close(Some(frame)));
        if !matches!(
            tokio::time::timeout(self.config.write_timeout, write).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let drain = async {
            while let Some(Ok(msg)) = self.socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(self.config.close_timeout, drain).await;
    }

    async fn recv_text(&mut self) -> Result<String, RecvError> {
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout_at(deadline, self.socket.recv()) => m,
                _ = self.shutdown.cancelled() => return Err(RecvError::Shutdown),
            };
            match msg {
                Err(_) => return Err(RecvError::Timeout),
                Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Err(RecvError::Closed),
                Ok(Some(Err(e))) => {
                    let text = e.to_string();
                    return Err(if text.contains("too long") || text.contains("too big") {
                        RecvError::TooBig
                    } else {
                        RecvError::Closed
                    });
                }
                Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
                Ok(Some(Ok(Message::Binary(_)))) => return Err(RecvError::Binary),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Handle a failed handshake receive: close with the fitting code.
    async fn abort(self, flow_id: &str, error: RecvError) {
        tracing::info!(flow_id, error = %error, "handshake ended");
        match error {
            RecvError::Closed => {
                // One more read flushes the automatic close reply, if the peer sent a close.
                let mut conn = self;
                let _ = tokio::time::timeout(conn.config.close_timeout, conn.socket.recv()).await;
            }
            RecvError::Timeout => {
                self.close(CloseCode::TooSlow, "handshake step timed out")
                    .await
            }
            RecvError::TooBig => self.close(CloseCode::TooBig, "frame too big").await,
            RecvError::Binary => self.close(CloseCode::Policy, "text frames only").await,
            RecvError::Shutdown => self.close(CloseCode::Restart, "engine shutting down").await,
        }
    }

    /// Send a handshake `flow_error` and close (1008).
    async fn refuse(mut self, flow_id: &str, error: &str) {
        tracing::info!(flow_id, error, "flow refused");
        let frame = json!({
            "type": "flow_error",
            "timestamp": epoch_secs(),
            "data": {"flow_id": flow_id, "error": error},
        });
        if self.send_text(frame.to_string()).await {
            self.close(CloseCode::Policy, "invalid handshake input")
                .await;
        }
    }
}

/// How a handshake ended early.
enum Early {
    /// Receiving a step failed.
    Recv(RecvError),
    /// A frame was unusable: send a `flow_error` and close.
    Refused(String),
    /// Writing to the gateway failed; nothing more can be sent.
    Gone,
    /// An injected handshake fault.
    Fault(Fault),
}

/// What a completed handshake delivered.
struct Accepted {
    flow: Flow,
    initial: Map<String, Value>,
    run: Map<String, Value>,
    /// The flow's own fault, else the engine's.
    fault: Option<Fault>,
}

async fn send_step(conn: &mut Conn, status: &str, message: &str) -> Result<(), Early> {
    match conn.send_text(status_frame(status, message)).await {
        true => Ok(()),
        false => Err(Early::Gone),
    }
}

/// Parse a JSON frame that must be an object or `null` (`null` reads as empty).
fn object_or_null(text: &str, what: &str) -> Result<Map<String, Value>, Early> {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(Early::Refused(format!(
            "{what}: expected a JSON object or null"
        ))),
        Err(e) => Err(Early::Refused(format!("{what}: not valid JSON ({e})"))),
    }
}

/// Steps 1-7 of docs/neuralabs.md section 3.
async fn handshake(conn: &mut Conn, state: &AppState) -> Result<Accepted, Early> {
    if let Some(f @ (Fault::RefuseHandshake | Fault::BadHandshake)) = state.config.fault {
        return Err(Early::Fault(f));
    }
    send_step(conn, "ready", "Send flow_definition as JSON").await?;
    let text = conn.recv_text().await.map_err(Early::Recv)?;
    let flow = state
        .flows
        .get_or_parse_blocking(text, state.config.max_elements)
        .await
        .map_err(Early::Refused)?;
    let flow_fault = if state.config.allow_flow_faults {
        flow_fault(&flow).map_err(Early::Refused)?
    } else {
        None
    };
    if let Some(f @ (Fault::RefuseHandshake | Fault::BadHandshake)) = flow_fault {
        return Err(Early::Fault(f));
    }
    send_step(conn, "received_flow", "Send initial_inputs as JSON").await?;
    let text = conn.recv_text().await.map_err(Early::Recv)?;
    let initial = object_or_null(&text, "handshake frame 4 (initial inputs)")?;
    send_step(conn, "received_inputs", "Send config as JSON or 'null'").await?;
    let text = conn.recv_text().await.map_err(Early::Recv)?;
    let run = match object_or_null(&text, "handshake frame 6 (config)")?.remove("run") {
        Some(Value::Object(run)) => run,
        _ => Map::new(),
    };
    send_step(conn, "starting", "Starting flow execution").await?;
    let fault = flow_fault.or(state.config.fault);
    Ok(Accepted {
        flow,
        initial,
        run,
        fault,
    })
}

async fn session(socket: WebSocket, flow_id: String, state: AppState) {
    let mut conn = Conn {
        socket,
        config: state.config.clone(),
        shutdown: state.shutdown.clone(),
    };
    let accepted = match handshake(&mut conn, &state).await {
        Ok(a) => a,
        Err(Early::Gone) => return,
        Err(Early::Recv(e)) => return conn.abort(&flow_id, e).await,
        Err(Early::Refused(e)) => return conn.refuse(&flow_id, &e).await,
        Err(Early::Fault(Fault::BadHandshake)) => {
            tracing::info!(flow_id, "fault: sending a wrong handshake frame");
            if conn.send_text(status_frame("busy", "Not ready")).await {
                let _ = conn.recv_text().await;
                conn.close(CloseCode::Internal, "bad handshake").await;
            }
            return;
        }
        Err(Early::Fault(_)) => {
            tracing::info!(flow_id, "fault: refusing the handshake");
            return conn
                .close(CloseCode::Internal, "refusing the handshake")
                .await;
        }
    };
    let Accepted {
        flow,
        initial,
        run,
        fault,
    } = accepted;
    tracing::info!(
        flow_id,
        run_id = run.get("run_id").and_then(serde_json::Value::as_str),
        "flow starting"
    );
    let env = RunEnv {
        config: state.config.clone(),
        http: state.http.clone(),
        run,
    };
    stream_run(conn, flow, initial, env, fault, &flow_id, &state).await;
}

/// The `fault` parameter of the flow's start element, if any.
fn flow_fault(flow: &Flow) -> Result<Option<Fault>, String> {
    let start = flow.node(&flow.start_element);
    match start.and_then(|n| n.parameters.get("fault")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(spec)) => spec.parse().map(Some).map_err(|e| format!("{e}")),
        Some(_) => Err("the start element's `fault` parameter must be a string".into()),
    }
}

async fn stream_run(
    mut conn: Conn,
    flow: Flow,
    initial: Map<String, Value>,
    env: RunEnv,
    fault: Option<Fault>,
    flow_id: &str,
    state: &AppState,
) {
    let (tx, mut rx) = mpsc::channel::<String>(state.config.event_buffer.max(1));
    let cancel = CancellationToken::new();
    let _stop_run = cancel.clone().drop_guard();
    let emitter = Emitter::new(tx, cancel.clone(), flow_id);
    let executor = Executor::new(flow, initial, env, emitter, state.stats.clone());
    state.tracker.spawn(executor.run());
    let mut sent = 0usize;
    let fire_at = fault.and_then(|f| f.after());
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                if fire_at == Some(sent) {
                    match fault {
                        Some(Fault::CrashAfter(_)) => {
                            tracing::info!(flow_id, sent, "fault: dropping the connection");
                            return;
                        }
                        Some(Fault::StallAfter(_)) => {
                            tracing::info!(flow_id, sent, "fault: stalling");
                            drop(rx);
                            stall(conn).await;
                            return;
                        }
                        Some(Fault::NonJsonAfter(_) | Fault::OversizeAfter(_)) => {
                            let junk = match fault {
                                Some(Fault::NonJsonAfter(_)) => "this frame is not JSON {".to_owned(),
                                _ => oversize_frame(state.config.fault_oversize_bytes),
                            };
                            if !conn.send_text(junk).await {
                                return;
                            }
                        }
                        _ => {}
                    }
                }
                if !conn.send_text(event).await {
                    tracing::info!(flow_id, "write to the gateway failed; stopping the run");
                    return;
                }
                sent += 1;
            }
            msg = conn.socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    tracing::info!(flow_id, sent, "gateway closed the socket; stopping the run");
                    cancel.cancel();
                    // One more read flushes the automatic close reply.
                    let _ = tokio::time::timeout(conn.config.close_timeout, conn.socket.recv()).await;
                    return;
                }
                Some(Ok(_)) => {}
            },
            _ = state.shutdown.cancelled() => {
                cancel.cancel();
                return conn.close(CloseCode::Restart, "engine shutting down").await;
            }
        }
    }
    if fault == Some(Fault::NoClose) {
        tracing::info!(flow_id, "fault: ending without a close frame");
        return;
    }
    conn.close(CloseCode::Normal, "flow finished").await;
}

/// Keep the socket open, sending nothing, until the gateway closes it or the engine stops.
async fn stall(mut conn: Conn) {
    loop {
        tokio::select! {
            msg = conn.socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = conn.shutdown.cancelled() => return,
        }
    }
}

/// A valid JSON event frame of exactly `size` bytes (at least its envelope).
fn oversize_frame(size: usize) -> String {
    let head = r#"{"type":"padding","timestamp":0,"data":{"padding":""#;
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut frame = String::with_capacity(size);
    frame.push_str(head);
    frame.extend(std::iter::repeat_n('x', pad));
    frame.push_str(tail);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_cache_returns_the_parse_of_the_exact_text_and_stays_bounded() {
        let cache = FlowCache::default();
        let text = |start: &str| {
            format!(
                r#"{{"nodes": {{"{start}": {{"type": "start"}}}}, "connections": [], "start_element": "{start}"}}"#
            )
        };
        let first = cache.get_or_parse(&text("s"), 10).expect("valid");
        let again = cache.get_or_parse(&text("s"), 10).expect("cached");
        assert_eq!(first.start_element, "s");
        assert_eq!(again.start_element, "s");
        // A different text is parsed on its own, never served from another entry.
        assert_eq!(
            cache
                .get_or_parse(&text("t"), 10)
                .expect("valid")
                .start_element,
            "t"
        );
        // Errors are not cached as flows, and stay errors.
        for _ in 0..2 {
            assert!(cache.get_or_parse("nodes: [", 10).is_err());
        }
        for i in 0..(FlowCache::MAX_ENTRIES * 2) {
            cache
                .get_or_parse(&text(&format!("s{i}")), 10)
                .expect("valid");
            assert!(cache.lock().len() <= FlowCache::MAX_ENTRIES);
        }
    }

    #[test]
    fn oversize_frames_are_valid_json_of_the_requested_size() {
        let f = oversize_frame(1000);
        assert_eq!(f.len(), 1000);
        assert!(serde_json::from_str::<Value>(&f).is_ok());
    }
}
