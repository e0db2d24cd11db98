//! One run: load → convert → engine handshake → relay events, as its own task.
//!
//! Design note. A run is a task separate from the client socket. It is the only place where
//! `seq` is assigned ([`Emitter`]), so every frame of a run — the gateway's own `status` and
//! error frames and every engine event — gets `run_id` and a gap-free `seq` in send order, and
//! the run guarantees exactly one terminal event (`flow_completed`, `flow_error` or
//! `flow_cancelled`): after the first terminal frame nothing else of the run is sent and the
//! engine socket is closed. Engine frames are not re-serialized: the run peeks at `type` (and, for
//! a few types, at `data.element_id`/`content`) and splices `"run_id"` and `"seq"` before the
//! final `}` of the engine's own bytes.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::context::AppState;
use super::engine_client::{self, EngineError, EngineSocket, EngineTarget, Handshake};
use super::failure::{self, Failure};
use super::protocol::{self, CloseCode, ErrorCode, RunRequest};
use super::registry::{AfterEnd, Frame, RunShared};
use crate::auth::Identity;
use crate::runlog::{Record, RunLog, RunStart, RunStatus};
use crate::store::{StoreError, Version};
use std::sync::Arc;

/// Everything a run needs.
pub struct RunSpec {
    pub run_id: Uuid,
    pub agent_id: String,
    pub identity: Identity,
    pub request: RunRequest,
    /// When the run request arrived.
    pub requested_at: std::time::Instant,
    /// The `traceparent` sent to the engine (the session's trace, a new span).
    pub traceparent: String,
}

/// Assigns `seq` and enforces "one terminal event, nothing after it". Frames go to the run's
/// shared buffer (followed by the sessions) and to the run log.
struct Emitter {
    run_id: Uuid,
    run_id_text: String,
    seq: u64,
    shared: Arc<RunShared>,
    log: RunLog,
    finished: bool,
    /// What follows the terminal frame on the run's sockets.
    close_after: AfterEnd,
    outcome: Outcome,
    /// Records the run log could not take yet (its buffer was full), in order.
    backlog: VecDeque<Record>,
    /// A record of this run was lost (the log stayed full past `--runlog-wait`).
    log_incomplete: bool,
    /// The run's `agent` label in the metrics: set once the store knows the agent.
    agent_label: Arc<str>,
    /// Where the other gateways follow the run (`--nats-url`).
    cluster: Option<crate::cluster::Cluster>,
}

impl Emitter {
    /// Hand a record to the run log in order: when the log's buffer is full (or records already
    /// wait), it waits in the backlog until [`Emitter::drain_log`].
    fn record(&mut self, record: Record) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(record);
        } else if let Err(record) = self.log.offer(record) {
            self.backlog.push_back(record);
        }
    }

    /// Wait (at most `wait` in all) until the run log has taken the backlog. Records it could
    /// not take are counted as lost, and the run's log is marked incomplete.
    async fn drain_log(&mut self, state: &AppState, wait: Duration) -> bool {
        if self.backlog.is_empty() {
            return true;
        }
        state.metrics.runlog_waits.inc();
        let deadline = tokio::time::Instant::now() + wait;
        let mut complete = true;
        while let Some(record) = self.backlog.pop_front() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.log.deliver(record, left).await {
                complete = false;
            }
        }
        if !complete {
            self.log_incomplete = true;
        }
        complete
    }

    /// Send a frame the gateway built; `run_id`/`seq` are added.
    fn value(&mut self, mut frame: Value) {
        if self.finished {
            return;
        }
        self.seq += 1;
        if let Value::Object(map) = &mut frame {
            map.insert("run_id".into(), Value::String(self.run_id_text.clone()));
            map.insert("seq".into(), Value::from(self.seq));
        }
        let terminal = matches!(
            frame.get("type").and_then(Value::as_str),
            Some("flow_completed" | "flow_error" | "flow_cancelled")
        );
        let text = frame.to_string();
        self.push(text, false, terminal);
    }

    /// Send an engine frame (a JSON object text) with `run_id`/`seq` spliced in.
    fn engine(&mut self, raw: &str, chunk: bool, terminal: bool) {
        if self.finished {
            return;
        }
        self.seq += 1;
        let body = raw.trim_end();
        let body = &body[..body.len() - 1]; // checked by the caller: ends with '}'
        // One allocation of the final size; no formatting machinery on the hot path.
        let mut seq = itoa::Buffer::new();
        let seq = seq.format(self.seq);
        let mut text = String::with_capacity(body.len() + self.run_id_text.len() + seq.len() + 20);
        text.push_str(body);
        text.push_str(",\"run_id\":\"");
        text.push_str(&self.run_id_text);
        text.push_str("\",\"seq\":");
        text.push_str(seq);
        text.push('}');
        self.push(text, chunk, terminal);
    }

    /// Hand a stamped frame to the run log and the run's buffer. The terminal frame carries the
    /// close code that follows it and ends the run's output.
    fn push(&mut self, text: String, chunk: bool, terminal: bool) {
        let text = Utf8Bytes::from(text);
        // Same bytes, no copy: the log, the cluster and the buffer share one allocation.
        let frame = bytes::Bytes::from(text.clone());
        if let Some(cluster) = &self.cluster {
            cluster.publish(self.run_id, self.seq, frame.clone());
        }
        self.record(Record::Event {
            run_id: self.run_id,
            seq: self.seq,
            frame,
        });
        self.shared.push(Frame {
            seq: self.seq,
            text,
            chunk,
            received: std::time::Instant::now(),
            end: terminal.then_some(self.close_after),
        });
        if terminal {
            self.finished = true;
        }
    }

    /// End the run with the error frame [`failure::verdict`] gives for `failure`.
    fn fail(&mut self, failure: Failure<'_>, extra: Value) {
        let verdict = failure::verdict(failure);
        self.terminal_error(verdict.code, &verdict.sentence, extra);
    }

    fn terminal_error(&mut self, code: ErrorCode, message: &str, extra: Value) {
        let mut data = json!({"error": message, "code": code.as_str()});
        if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
            d.extend(e);
        }
        if self.finished {
            return;
        }
        self.close_after = code
            .close_code()
            .map_or(AfterEnd::KeepOpen, |c| AfterEnd::Close(c, code.as_str()));
        self.value(json!({"type": "flow_error", "timestamp": protocol::now_ts(), "data": data}));
        self.outcome = Outcome::failed(code.as_str(), Some(message.to_owned()));
    }
}

/// How a run ended, as the run log and the metrics record it.
#[derive(Debug, Clone)]
struct Outcome {
    status: RunStatus,
    /// The error code (`data.code`, or `flow_error` for the engine's own error).
    code: Option<&'static str>,
    message: Option<String>,
}

impl Outcome {
    fn completed() -> Outcome {
        Outcome {
            status: RunStatus::Completed,
            code: None,
            message: None,
        }
    }

    fn cancelled() -> Outcome {
        Outcome {
            status: RunStatus::Cancelled,
            ..Outcome::completed()
        }
    }

    fn failed(code: &'static str, message: Option<String>) -> Outcome {
        Outcome {
            status: RunStatus::Failed,
            code: Some(code),
            message,
        }
    }
}

/// What the run knows about the stream so far (for `flow_cancelled` and `engine_lost`).
#[derive(Default)]
struct Progress {
    current_element: Option<String>,
    /// Most bytes of `partial_output` in a terminal frame.
    partial_cap: usize,
}

impl Progress {
    /// What the client has been sent of the answer so far (read back from the run's frames).
    fn partial_output(&self, shared: &RunShared) -> String {
        shared.partial_output(self.partial_cap)
    }
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    run_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    seq: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct PeekData<'a> {
    #[serde(default, borrow)]
    element_id: Option<Cow<'a, str>>,
}

/// Run to completion: the terminal frame is in the shared buffer (and the run log) when this
/// returns.
pub async fn execute(state: AppState, spec: RunSpec, shared: Arc<RunShared>) {
    let cancel = shared.cancel.clone();
    let mut em = Emitter {
        run_id: spec.run_id,
        run_id_text: spec.run_id.to_string(),
        seq: 0,
        shared: shared.clone(),
        log: state.runlog.clone(),
        backlog: VecDeque::new(),
        log_incomplete: false,
        finished: false,
        close_after: AfterEnd::KeepOpen,
        outcome: Outcome::completed(),
        agent_label: crate::metrics::UNKNOWN_AGENT.into(),
        cluster: state.cluster.clone(),
    };
    em.record(Record::Start(RunStart {
        run_id: spec.run_id,
        agent_id: spec.agent_id.clone(),
        user_id: spec.identity.user_id.clone(),
        version: spec
            .request
            .version
            .clone()
            .unwrap_or_else(|| "default".into()),
        workflow_hash: None, // recorded with `prepared`, with the resolved version
    }));
    let config = state.config.clone();
    // The phases are boxed: they are transient and large, and the task's future would otherwise
    // be the size of the largest of them for the whole run (memory per open session).
    let prepared = match cancel
        .run_until_cancelled(prepare_boxed(&state, &spec, &mut em))
        .await
    {
        None => {
            cancelled(&mut em, &Progress::default());
            None
        }
        Some(p) => p,
    };
    // Counted once the agent lookup is over, so that the label is bounded (see `metrics`).
    state.metrics.run_started(&em.agent_label);
    if let Some(handshake) = prepared {
        let target = EngineTarget {
            base_url: config.engine_url.clone(),
            bearer: config
                .engine_key
                .as_ref()
                .map(crate::auth::mint_engine_token),
            connect_timeout: config.engine_connect_timeout,
            handshake_timeout: config.engine_handshake_timeout,
            max_frame_bytes: config.max_engine_frame_bytes,
            traceparent: Some(spec.traceparent.clone()),
            read_buffer_bytes: config.ws_read_buffer_bytes,
            write_buffer_bytes: config.ws_write_buffer_bytes,
            close_timeout: config.engine_close_timeout,
            tls: state.outbound_tls.clone(),
        };
        let flow_id = em.run_id.to_string();
        let opened = cancel
            .run_until_cancelled(open_boxed(&target, &flow_id, &handshake))
            .await;
        drop(target);
        match opened {
            None => cancelled(&mut em, &Progress::default()),
            Some(Err(e)) => {
                state.metrics.engine_connect_failures.inc();
                tracing::warn!(error = %failure::chain(&e), "engine connection failed");
                em.fail(Failure::Engine(&e), json!({"partial_output": ""}));
            }
            Some(Ok(socket)) => {
                relay(&state, &spec, &mut em, socket, &cancel, &handshake).await;
            }
        }
    }
    let Outcome {
        status,
        code,
        message,
    } = em.outcome.clone();
    // The ending is logged after every frame of the run, and the run is over for the registry
    // only once the log has taken them (or the wait gave up and counted the loss).
    let wait = state.config.runlog_wait;
    em.drain_log(&state, wait).await;
    em.record(Record::Finish {
        run_id: spec.run_id,
        status,
        code: code.map(str::to_owned),
        message: message.clone(),
    });
    em.drain_log(&state, wait).await;
    if em.log_incomplete {
        state.metrics.runs_log_incomplete.inc();
    }
    state
        .metrics
        .run_finished(&em.agent_label, status.as_str(), code);
    tracing::info!(status = status.as_str(), code, frames = em.seq, "run ended");
    shared.finish();
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// `prepare`, boxed: its state (store queries, conversion) is large and only lives until the
/// engine handshake starts; inline, it would size the run's task for its whole life (memory
/// per open session).
fn prepare_boxed<'a>(
    state: &'a AppState,
    spec: &'a RunSpec,
    em: &'a mut Emitter,
) -> BoxFuture<'a, Option<Prepared>> {
    Box::pin(prepare(state, spec, em))
}

/// The engine connect + handshake, boxed for the same reason.
fn open_boxed<'a>(
    target: &'a EngineTarget,
    flow_id: &'a str,
    handshake: &'a Prepared,
) -> BoxFuture<'a, Result<EngineSocket, EngineError>> {
    Box::pin(engine_client::open(
        target,
        flow_id,
        Handshake {
            flow: &handshake.flow.payload,
            initial_inputs: &handshake.initial_inputs,
            config: &handshake.config,
        },
    ))
}

struct Prepared {
    /// The cached conversion (shared by every run of this workflow: no per-run copy).
    flow: Arc<super::cache::CachedFlow>,
    initial_inputs: String,
    config: String,
    hash: String,
    version: Version,
}

/// Load and convert the workflow; on failure the terminal error has been sent and `None` returned.
async fn prepare(state: &AppState, spec: &RunSpec, em: &mut Emitter) -> Option<Prepared> {
    em.value(protocol::status_value(protocol::STATUS_RETRIEVING));
    let agent = match state.store.agent(&spec.agent_id).await {
        Ok(Some(a)) => {
            em.agent_label = state.metrics.agent_label(&spec.agent_id);
            a
        }
        Ok(None) => {
            let msg = format!("agent `{}` does not exist", spec.agent_id);
            em.terminal_error(ErrorCode::AgentNotFound, &msg, json!({}));
            return None;
        }
        Err(e) => {
            store_error(em, &e);
            return None;
        }
    };
    let version = match spec.request.version.as_deref() {
        Some("draft") => Version::Draft,
        Some(_) => Version::Published,
        None => agent.default_version(),
    };
    if version == Version::Draft
        && (spec.identity.anonymous || agent.owner != spec.identity.user_id)
    {
        let msg = format!(
            "agent `{}` is not published, and its draft is only available to its owner",
            spec.agent_id
        );
        em.terminal_error(ErrorCode::Forbidden, &msg, json!({}));
        return None;
    }
    let stored = match state.store.workflow_shared(&spec.agent_id, version).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            let msg = format!(
                "agent `{}` has no {} workflow",
                spec.agent_id,
                version.as_str()
            );
            em.terminal_error(ErrorCode::WorkflowNotFound, &msg, json!({}));
            return None;
        }
        Err(e) => {
            store_error(em, &e);
            return None;
        }
    };
    em.value(protocol::status_value(protocol::STATUS_PREPARING));
    let converted = match state.cache.get_or_convert(
        &spec.agent_id,
        version,
        &stored,
        state.config.engine_flow_format,
    ) {
        Ok(c) => c,
        Err(invalid) => {
            // At most MAX_DETAILS findings in the frame (the sentence gives the total).
            let details: Vec<Value> = invalid
                .findings
                .iter()
                .take(crate::relay::cache::MAX_LOGGED_FINDINGS)
                .map(
                    |f| json!({"pointer": f.pointer, "message": f.message, "severity": f.severity}),
                )
                .collect();
            em.terminal_error(
                ErrorCode::InvalidWorkflow,
                &invalid.to_string(),
                json!({"details": details}),
            );
            return None;
        }
    };
    let history = spec
        .request
        .conversation_history
        .as_ref()
        .map(|h| Value::Array(h.clone()));
    let initial = spec
        .request
        .initial_inputs
        .as_ref()
        .map(|m| Value::Object(m.clone()));
    let inputs = match crate::workflow::initial_inputs(
        &converted.flow,
        spec.request.message.as_deref(),
        history.as_ref(),
        initial.as_ref(),
    ) {
        Ok(inputs) => inputs,
        Err(why) => {
            em.terminal_error(ErrorCode::InvalidRequest, &why, json!({}));
            return None;
        }
    };
    // The config frame is built here only; nothing from the client reaches it.
    let config = json!({"run": {
        "run_id": em.run_id.to_string(),
        "agent_id": spec.agent_id,
        "user_id": spec.identity.user_id,
        "version": version.as_str(),
    }});
    em.record(Record::Prepared {
        run_id: em.run_id,
        version: version.as_str().to_owned(),
        hash: converted.hash.clone(),
    });
    em.value(protocol::status_value(protocol::STATUS_STARTING));
    Some(Prepared {
        flow: converted.clone(),
        initial_inputs: inputs.to_string(),
        config: config.to_string(),
        hash: converted.hash.clone(),
        version,
    })
}

fn store_error(em: &mut Emitter, e: &StoreError) {
    // The database's own texts stay in the log.
    tracing::warn!(error = %failure::chain(e), "store failure");
    em.fail(Failure::Store(e), json!({}));
}

fn cancelled(em: &mut Emitter, progress: &Progress) {
    em.value(json!({
        "type": "flow_cancelled",
        "timestamp": protocol::now_ts(),
        "data": {
            "element_id": progress.current_element,
            "partial_output": progress.partial_output(&em.shared),
            "reason": em.shared.cancel_reason().sentence(),
        }
    }));
    em.finished = true;
    em.outcome = Outcome::cancelled();
}

/// Close the engine socket with a close handshake (bounded by `--engine-close-timeout`), in a
/// tracked task: the run's end does not wait for the engine's reply.
fn close_engine(state: &AppState, socket: EngineSocket) {
    let wait = state.config.engine_close_timeout;
    state
        .sessions
        .spawn(engine_client::close(socket, CloseCode::Normal, wait));
}

async fn relay(
    state: &AppState,
    spec: &RunSpec,
    em: &mut Emitter,
    mut socket: EngineSocket,
    cancel: &CancellationToken,
    prepared: &Prepared,
) {
    let idle = state.config.engine_idle_timeout;
    let mut progress = Progress {
        partial_cap: state.config.max_engine_frame_bytes,
        ..Progress::default()
    };
    // The idle deadline moves with events only: an engine that answers pings but sends no
    // event still times out.
    let mut deadline = tokio::time::Instant::now() + idle;
    let ping_every = state.config.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = tokio::time::Instant::now();
    // Created once, not per event: a fresh `cancelled()` future registers with the token's
    // lock on every poll, and a fresh timeout would add and remove a timer per event. The idle
    // timer is moved lazily: when it fires, it re-arms at the current deadline if events came.
    let cancel_wait = cancel.cancelled();
    tokio::pin!(cancel_wait);
    let idle_timer = tokio::time::sleep_until(deadline);
    tokio::pin!(idle_timer);
    loop {
        // Backpressure: while the run log's buffer is full, read nothing more from the engine
        // (TCP pushes back on it) instead of dropping frames; a log that stays full ends the run.
        if !em.backlog.is_empty() {
            let waiting_since = tokio::time::Instant::now();
            let drained = em.drain_log(state, state.config.runlog_wait).await;
            // Time spent waiting for the log is not the engine's silence.
            let waited = waiting_since.elapsed();
            deadline += waited;
            last_heard += waited;
            if drained {
                continue;
            }
            em.terminal_error(
                ErrorCode::StoreUnavailable,
                "the run log could not keep up (the database is too slow): the run was stopped",
                json!({"partial_output": progress.partial_output(&em.shared)}),
            );
            close_engine(state, socket);
            return;
        }
        let next = tokio::select! {
            biased;
            _ = &mut cancel_wait => {
                close_engine(state, socket);
                cancelled(em, &progress);
                return;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 2 {
                    lost(em, &progress, "the engine stopped answering pings");
                    return;
                }
                let sent = tokio::time::timeout(
                    state.config.engine_handshake_timeout,
                    socket.send(Message::Ping(Default::default())),
                ).await;
                if !matches!(sent, Ok(Ok(()))) {
                    lost(em, &progress, "a ping to the engine could not be sent");
                    return;
                }
                continue;
            }
            _ = &mut idle_timer => {
                if tokio::time::Instant::now() < deadline {
                    idle_timer.as_mut().reset(deadline);
                    continue;
                }
                Err(())
            }
            n = socket.next() => Ok(n),
        };
        let now = tokio::time::Instant::now();
        last_heard = now;
        let text = match next {
            Err(_) => {
                let msg = format!(
                    "the engine sent nothing for {}",
                    humantime::format_duration(idle)
                );
                em.terminal_error(
                    ErrorCode::EngineTimeout,
                    &msg,
                    json!({"partial_output": progress.partial_output(&em.shared)}),
                );
                close_engine(state, socket);
                return;
            }
            Ok(None) => {
                lost(
                    em,
                    &progress,
                    "the engine closed the connection before the run ended",
                );
                return;
            }
            Ok(Some(Err(e))) => {
                let e = EngineError::of_read(e);
                tracing::warn!(error = %failure::chain(&e), "engine connection error");
                em.fail(
                    Failure::Engine(&e),
                    json!({"partial_output": progress.partial_output(&em.shared), "element_id": progress.current_element}),
                );
                return;
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                deadline = now + idle;
                t
            }
            Ok(Some(Ok(Message::Close(_)))) => {
                lost(
                    em,
                    &progress,
                    "the engine closed the connection before the run ended",
                );
                close_engine(state, socket); // answers the engine's close frame
                return;
            }
            Ok(Some(Ok(Message::Binary(_)))) => {
                em.terminal_error(
                    ErrorCode::EngineProtocolError,
                    "the execution engine broke the protocol: a binary frame",
                    json!({"partial_output": progress.partial_output(&em.shared)}),
                );
                close_engine(state, socket);
                return;
            }
            Ok(Some(Ok(_))) => continue, // ping/pong: tungstenite answers pings itself
        };
        let raw: &str = text.as_str();
        let peek = match serde_json::from_str::<Peek>(raw) {
            Ok(p) if raw.trim_start().starts_with('{') && raw.trim_end().ends_with('}') => p,
            _ => {
                let msg = format!(
                    "the execution engine broke the protocol: not an event frame: {}",
                    engine_client::preview(&text)
                );
                em.terminal_error(
                    ErrorCode::EngineProtocolError,
                    &msg,
                    json!({"partial_output": progress.partial_output(&em.shared)}),
                );
                close_engine(state, socket);
                return;
            }
        };
        let kind = peek.kind.as_ref();
        // A chunk's `data` is not parsed here (it is most of the frame): merging and partial
        // outputs read it back from the frame when they need it.
        let chunk = kind == "llm_chunk";
        if kind == "element_started" {
            let data: PeekData = peek
                .data
                .and_then(|d| serde_json::from_str(d.get()).ok())
                .unwrap_or_default();
            progress.current_element = data.element_id.map(Cow::into_owned);
        }
        let terminal = kind == "flow_completed" || kind == "flow_error";
        if !terminal && state.config.drop_events.iter().any(|d| d == kind) {
            continue; // filtered (e.g. llm_prompt, which may hold hidden prompts)
        }
        if kind == "flow_started" || peek.run_id.is_some() || peek.seq.is_some() {
            // Rare: rebuild the frame (flow_started gains data.workflow; an engine that sends
            // its own run_id/seq has them replaced).
            let mut v: Value = match serde_json::from_str(raw) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if kind == "flow_started" {
                let setup = spec.requested_at.elapsed().as_secs_f64();
                state.metrics.connect_to_flow_started.observe(setup);
            }
            if kind == "flow_started"
                && let Some(Value::Object(data)) = v.get_mut("data")
            {
                data.insert(
                    "workflow".into(),
                    json!({"agent_id": spec.agent_id, "version": prepared.version.as_str(), "hash": prepared.hash}),
                );
            }
            if let Value::Object(m) = &mut v {
                m.remove("run_id");
                m.remove("seq");
            }
            em.value(v);
        } else {
            em.engine(raw, chunk, terminal);
        }
        if terminal {
            if kind == "flow_error" {
                let why = peek
                    .data
                    .and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
                    .and_then(|d| d.get("error").and_then(Value::as_str).map(str::to_owned));
                em.outcome = Outcome::failed("flow_error", why);
            }
            em.finished = true;
            close_engine(state, socket);
            return;
        }
        if em.shared.len() >= state.config.max_run_frames {
            let msg = format!(
                "the run exceeded {} frames (--max-run-frames) and was stopped",
                state.config.max_run_frames
            );
            close_engine(state, socket);
            em.terminal_error(
                ErrorCode::Internal,
                &msg,
                json!({"partial_output": progress.partial_output(&em.shared)}),
            );
            return;
        }
    }
}

/// End the run with `engine_lost`; `why` is flowgate's own sentence (never an OS text).
fn lost(em: &mut Emitter, progress: &Progress, why: &'static str) {
    em.fail(
        Failure::Engine(&EngineError::lost(why, None)),
        json!({"partial_output": progress.partial_output(&em.shared), "element_id": progress.current_element}),
    );
}
