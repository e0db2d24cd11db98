//! One client WebSocket: reads client frames, starts runs, writes their frames, pings, closes.
//!
//! Invariants: at most one run at a time per socket; a run's frames are written in the order the
//! run produced them; every write has a timeout (`client_write_timeout`) and happens inside a
//! `select!` branch body; the socket is closed with a code of docs/neuralabs.md section 5, never a
//! reserved one. When the client goes away the current run goes on detached for `--detach-grace`
//! (so a `resume` can pick it up) and is cancelled after it, or at once with
//! `--cancel-on-disconnect`.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use std::sync::Arc;

use futures_util::SinkExt;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use super::context::AppState;
use super::protocol::{self, ClientFrame, ErrorCode, close};
use super::registry::{Follow, Frame, RunShared};
use super::run::{self, RunSpec};
use crate::auth::{AuthError, Identity};

/// How the upgrade request authenticated.
#[derive(Debug)]
pub enum Authn {
    Ok(Identity),
    /// No token was presented: the first frame may be `{"type":"auth"}`.
    Missing,
    /// A token was presented and refused.
    Refused(AuthError),
}

/// The run this socket follows, and the last `seq` written to the client.
struct ActiveRun {
    shared: Arc<RunShared>,
    cursor: u64,
    /// How far behind the socket was when it attached (a resume may start far behind); the
    /// hard limit is on falling further behind than that.
    lag_at_attach: usize,
}

/// Serve one client socket until it closes.
pub async fn serve(
    state: AppState,
    mut socket: WebSocket,
    agent_id: String,
    authn: Authn,
    trace: super::trace::TraceContext,
) {
    let write_timeout = state.config.client_write_timeout;
    let mut identity = match authn {
        Authn::Ok(id) => Some(id),
        Authn::Missing => None,
        Authn::Refused(e) => {
            let text = protocol::error_frame(ErrorCode::Unauthenticated, &e.to_string());
            let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
            close_with(
                &mut socket,
                close::UNAUTHENTICATED,
                "unauthenticated",
                write_timeout,
            )
            .await;
            return;
        }
    };
    if let Some(id) = &identity {
        tracing::Span::current().record("user_id", id.user_id.as_str());
    }
    let mut run: Option<ActiveRun> = None;
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + state.config.ping_interval,
        state.config.ping_interval,
    );
    let shutdown = state.shutdown.clone();
    // Created once: a fresh `cancelled()` per loop turn would lock the token on every frame.
    let shutdown_wait = shutdown.cancelled();
    tokio::pin!(shutdown_wait);
    let mut draining = false;
    let grace = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(grace);
    let expiry = tokio::time::sleep(until_expiry(identity.as_ref()));
    tokio::pin!(expiry);
    // A socket without a token has `auth_timeout` to present one; until then it holds a place.
    let auth_deadline = tokio::time::sleep(state.config.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut expired = false;
    let mut rate = super::limits::Bucket::new(
        state.config.client_messages_per_second,
        state.config.client_messages_per_second.saturating_mul(2),
    );
    // Liveness: anything from the client (a pong included) proves it is there.
    let mut last_heard = tokio::time::Instant::now();

    loop {
        tokio::select! {
            _ = &mut auth_deadline, if identity.is_none() => {
                tracing::info!("no token within --auth-timeout: closing with 4401");
                let why = format!(
                    "no token within {}: send {{\"type\":\"auth\",\"token\":\"<jwt>\"}} right after connecting, or connect with a token",
                    humantime::format_duration(state.config.auth_timeout)
                );
                let text = protocol::error_frame(ErrorCode::Unauthenticated, &why);
                let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                close_with(&mut socket, close::UNAUTHENTICATED, "unauthenticated", write_timeout).await;
                return;
            }
            _ = &mut expiry, if !expired && identity.is_some() => {
                expired = true;
                tracing::info!("the client's token expired");
                if run.is_none() {
                    expire(&mut socket, write_timeout).await;
                    return;
                }
                // The current run finishes; the socket closes with 4401 after it.
            }
            _ = &mut shutdown_wait, if !draining => {
                draining = true;
                if run.is_none() {
                    close_with(&mut socket, close::RESTART, "server restart", write_timeout).await;
                    return;
                }
                grace.as_mut().reset(tokio::time::Instant::now() + state.config.shutdown_grace);
            }
            _ = &mut grace, if draining => {
                if let Some(r) = &run {
                    tracing::info!(run_id = %r.shared.run_id, last_seq = r.cursor, "shutdown grace over: closing with 1012");
                    r.shared.cancel.cancel();
                }
                close_with(&mut socket, close::RESTART, "server restart", write_timeout).await;
                return;
            }
            follow = next_frames(&run, state.config.client_batch) => {
                // `Some(close_after)` once the run is over for this socket: its terminal frame
                // was just written (or the run finished with everything delivered).
                let ended = match follow {
                    Follow::Frames(batch) => {
                        let r = run.as_mut().expect("next_frames only yields for a run");
                        let lag = r.shared.lag(r.cursor);
                        if lag > r.lag_at_attach.saturating_add(state.config.max_client_lag) {
                            tracing::info!(lag, "client too far behind: closing with 4408 (it can resume)");
                            leave(&state, &mut run);
                            close_with(&mut socket, close::TOO_SLOW, "too slow: resume from the log", state.config.client_close_timeout).await;
                            return;
                        }
                        let last = batch.last().map(|f| f.seq).unwrap_or(r.cursor);
                        let end = batch.last().and_then(|f| f.end);
                        let received: Vec<std::time::Instant> = batch.iter().map(|f| f.received).collect();
                        let count = batch.len();
                        let texts = if lag > state.config.merge_lag { merge_chunks(batch) } else { batch.into_iter().map(|f| f.text).collect() };
                        let written = texts.len();
                        if !write_batch(&mut socket, texts, write_timeout).await {
                            tracing::info!("client too slow or gone");
                            leave(&state, &mut run);
                            close_with(&mut socket, close::TOO_SLOW, "too slow", state.config.client_close_timeout).await;
                            return;
                        }
                        r.cursor = last;
                        state.metrics.coalesced_chunks.inc_by((count - written) as u64);
                        state.metrics.events_relayed.inc_by(written as u64);
                        for t in received {
                            state.metrics.event_added_latency.observe(t.elapsed().as_secs_f64());
                        }
                        end
                    }
                    Follow::End(close_after) => Some(close_after),
                };
                if let Some(close_after) = ended {
                    if let Some(done) = run.take() { done.shared.detach(); }
                    if expired {
                        expire(&mut socket, write_timeout).await;
                        return;
                    }
                    if let Some((code, reason)) = close_after {
                        close_with(&mut socket, code, reason, write_timeout).await;
                        return;
                    }
                    if draining {
                        close_with(&mut socket, close::RESTART, "server restart", write_timeout).await;
                        return;
                    }
                }
            }
            incoming = socket.recv() => {
                last_heard = tokio::time::Instant::now();
                if state.config.client_messages_per_second > 0
                    && matches!(incoming, Some(Ok(Message::Text(_) | Message::Binary(_))))
                    && !rate.take(std::time::Instant::now())
                {
                    tracing::warn!("client message flood: closing with 4429");
                    leave(&state, &mut run);
                    close_with(&mut socket, close::RATE_LIMITED, "rate limited", write_timeout).await;
                    return;
                }
                let text = match incoming {
                    None => {
                        leave(&state, &mut run);
                        return;
                    }
                    Some(Err(e)) => {
                        leave(&state, &mut run);
                        match ReadFailure::of(e) {
                            ReadFailure::TooBig => {
                                close_with(&mut socket, close::TOO_BIG, "message too big", write_timeout).await;
                            }
                            ReadFailure::Protocol(why) => {
                                tracing::info!(error = %why, "client broke the WebSocket protocol: closing with 1002");
                                close_with(&mut socket, close::PROTOCOL_ERROR, "protocol error", write_timeout).await;
                            }
                            ReadFailure::Gone => {}
                        }
                        return;
                    }
                    Some(Ok(Message::Close(_))) => {
                        leave(&state, &mut run);
                        answer_close(&mut socket, write_timeout).await;
                        return;
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let text = protocol::error_frame(ErrorCode::InvalidRequest, "binary frames are not accepted: send JSON text frames");
                        if !write(&mut socket, Message::Text(text.into()), write_timeout).await { leave(&state, &mut run); return; }
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong: axum answers pings
                };
                let frame = match ClientFrame::parse(text.as_str()) {
                    Ok(f) => f,
                    Err(bad) => {
                        let text = protocol::error_frame(ErrorCode::InvalidRequest, &bad.0);
                        if !write(&mut socket, Message::Text(text.into()), write_timeout).await { leave(&state, &mut run); return; }
                        continue;
                    }
                };
                match frame {
                    ClientFrame::Cancel => {
                        if let Some(r) = &run { r.shared.cancel.cancel(); }
                    }
                    ClientFrame::Auth { token } => match state.verifier.verify(&token) {
                        Ok(id) => {
                            if identity.as_ref().is_some_and(|old| old.user_id != id.user_id) {
                                let text = protocol::error_frame(ErrorCode::Forbidden, "a token refresh must be for the same user");
                                let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                                leave(&state, &mut run);
                                close_with(&mut socket, close::FORBIDDEN, "forbidden", write_timeout).await;
                                return;
                            }
                            tracing::Span::current().record("user_id", id.user_id.as_str());
                            expiry.as_mut().reset(tokio::time::Instant::now() + until_expiry(Some(&id)));
                            expired = false;
                            identity = Some(id);
                        }
                        Err(e) => {
                            let text = protocol::error_frame(ErrorCode::Unauthenticated, &e.to_string());
                            let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                            leave(&state, &mut run);
                            close_with(&mut socket, close::UNAUTHENTICATED, "unauthenticated", write_timeout).await;
                            return;
                        }
                    },
                    ClientFrame::Resume { run_id, after_seq } => {
                        let Some(id) = identity.clone() else {
                            let text = protocol::error_frame(ErrorCode::Unauthenticated, "no token was presented: authenticate before resuming");
                            let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                            close_with(&mut socket, close::UNAUTHENTICATED, "unauthenticated", write_timeout).await;
                            return;
                        };
                        if run.is_some() {
                            let text = protocol::error_frame(ErrorCode::InvalidRequest, "a run is in progress on this socket: resume on a new connection");
                            if !write(&mut socket, Message::Text(text.into()), write_timeout).await { leave(&state, &mut run); return; }
                            continue;
                        }
                        // Boxed: rare and large (run log queries); inline it would size every session.
                        match Box::pin(resume(&state, &mut socket, &id, run_id, after_seq, write_timeout)).await {
                            Resumed::Live(shared) => {
                                state.metrics.resumes.inc();
                                tracing::info!(%run_id, after_seq, "client resumed a live run");
                                let lag_at_attach = shared.lag(after_seq);
                                run = Some(ActiveRun { shared, cursor: after_seq, lag_at_attach });
                            }
                            Resumed::Replayed => { state.metrics.resumes.inc(); }
                            Resumed::SocketGone => return,
                        }
                    }
                    ClientFrame::Run(request) => {
                        let Some(id) = identity.clone() else {
                            let text = protocol::error_frame(ErrorCode::Unauthenticated, "no token was presented: send `Authorization: Bearer <jwt>`, the `bearer, <jwt>` subprotocol, or `?token=`");
                            let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                            close_with(&mut socket, close::UNAUTHENTICATED, "unauthenticated", write_timeout).await;
                            return;
                        };
                        if expired {
                            expire(&mut socket, write_timeout).await;
                            leave(&state, &mut run);
                            return;
                        }
                        let refusal = if run.is_some() {
                            Some("a run is already in progress on this socket: wait for its terminal event or send {\"type\":\"cancel\"}".to_owned())
                        } else if draining {
                            Some("the gateway is shutting down: reconnect and retry".to_owned())
                        } else if request.agent_id.as_deref().is_some_and(|a| a != agent_id) {
                            Some(format!("`agent_id` in the run request ({}) differs from the agent in the URL ({agent_id})", request.agent_id.as_deref().unwrap_or_default()))
                        } else {
                            None
                        };
                        if let Some(why) = refusal {
                            let text = protocol::error_frame(ErrorCode::InvalidRequest, &why);
                            if !write(&mut socket, Message::Text(text.into()), write_timeout).await { leave(&state, &mut run); return; }
                            continue;
                        }
                        let (key, limit) = run_limit(&state, &id);
                        if state.runs.running_for(key) >= limit {
                            let why = if id.anonymous {
                                format!("{limit} anonymous runs are in progress (--max-anonymous-runs): try again later, or sign in")
                            } else {
                                format!("user `{}` already has {limit} runs in progress (--max-runs-per-user)", id.user_id)
                            };
                            let text = protocol::error_frame(ErrorCode::TooManyRuns, &why);
                            if !write(&mut socket, Message::Text(text.into()), write_timeout).await { leave(&state, &mut run); return; }
                            continue;
                        }
                        run = Some(start_run(&state, &agent_id, id, *request, &trace));
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > state.config.ping_interval * 2 {
                    tracing::info!("client stopped answering pings: closing with 4408");
                    leave(&state, &mut run);
                    close_with(&mut socket, close::TOO_SLOW, "idle: no pong", write_timeout).await;
                    return;
                }
                if !write(&mut socket, Message::Ping(Vec::new().into()), write_timeout).await {
                    leave(&state, &mut run);
                    return;
                }
            }
        }
    }
}

/// The run limit a caller counts against: its own (`--max-runs-per-user`), or for anonymous
/// callers the one they share (`--max-anonymous-runs`).
fn run_limit<'a>(state: &AppState, identity: &'a Identity) -> (&'a str, usize) {
    if identity.anonymous {
        (
            super::registry::ANONYMOUS_RUNS,
            state.config.max_anonymous_runs,
        )
    } else {
        (identity.user_id.as_str(), state.config.max_runs_per_user)
    }
}

/// Time until the token expires (forever for anonymous callers or no identity).
fn until_expiry(identity: Option<&Identity>) -> Duration {
    let Some(id) = identity else {
        return Duration::from_secs(365 * 24 * 3600);
    };
    if id.expires_at == u64::MAX {
        return Duration::from_secs(365 * 24 * 3600);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(id.expires_at.saturating_sub(now))
}

/// The token expired: tell the client and close with 4401.
async fn expire(socket: &mut WebSocket, write_timeout: Duration) {
    let text = protocol::error_frame(
        ErrorCode::Unauthenticated,
        "the token has expired: reconnect (or send {\"type\":\"auth\"}) with a fresh token",
    );
    let _ = write(socket, Message::Text(text.into()), write_timeout).await;
    close_with(
        socket,
        close::UNAUTHENTICATED,
        "token expired",
        write_timeout,
    )
    .await;
}

/// Refuse a socket right after the upgrade (overload).
pub async fn refuse(
    mut socket: WebSocket,
    code: u16,
    reason: &'static str,
    write_timeout: Duration,
) {
    close_with(&mut socket, code, reason, write_timeout).await;
}

fn start_run(
    state: &AppState,
    agent_id: &str,
    identity: Identity,
    request: protocol::RunRequest,
    trace: &super::trace::TraceContext,
) -> ActiveRun {
    let run_id = Uuid::new_v4();
    let shared = state.runs.create(
        run_id,
        identity.user_id.clone(),
        agent_id.to_owned(),
        run_limit(state, &identity).0.to_owned(),
    );
    let span = tracing::info_span!("run", %run_id);
    tracing::info!(%run_id, "run started");
    let spec = RunSpec {
        run_id,
        agent_id: agent_id.to_owned(),
        identity,
        request,
        requested_at: std::time::Instant::now(),
        traceparent: trace.child_header(),
    };
    let task_state = state.clone();
    let task_shared = shared.clone();
    state.sessions.spawn(
        async move {
            run::execute(task_state.clone(), spec, task_shared).await;
            // A finished run is resumed from the run log (which has every frame), so its buffer
            // goes now: finished runs cost no gateway memory.
            task_state.runs.remove(&run_id);
        }
        .instrument(span),
    );
    ActiveRun {
        shared,
        cursor: 0,
        lag_at_attach: 0,
    }
}

/// The next frames of the followed run; pending forever when there is none.
async fn next_frames(run: &Option<ActiveRun>, max: usize) -> Follow {
    match run {
        Some(r) => r.shared.next_after(r.cursor, max).await,
        None => std::future::pending().await,
    }
}

/// The client stopped following its run (socket gone or dropped): the run goes on detached for
/// `detach_grace` so a resume can pick it up, then it is cancelled (or at once with
/// `cancel_on_disconnect`).
fn leave(state: &AppState, run: &mut Option<ActiveRun>) {
    let Some(r) = run.take() else { return };
    if r.shared.detach() > 0 || r.shared.is_finished() {
        return;
    }
    let shared = r.shared;
    if state.config.cancel_on_disconnect {
        tracing::info!(run_id = %shared.run_id, "client disconnected: cancelling its run");
        shared.cancel.cancel();
        return;
    }
    tracing::info!(run_id = %shared.run_id, grace = ?state.config.detach_grace, "client disconnected: run continues detached");
    let grace = state.config.detach_grace;
    let shutdown = state.shutdown.clone();
    // A weak handle: a run that ends meanwhile frees its buffer without waiting for the grace.
    let weak = Arc::downgrade(&shared);
    drop(shared);
    state.sessions.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = shutdown.cancelled() => {}
        }
        if let Some(shared) = weak.upgrade()
            && shared.attached() == 0
            && !shared.is_finished()
        {
            tracing::info!(run_id = %shared.run_id, "nobody resumed the detached run: cancelling it");
            shared.cancel.cancel();
        }
    });
}

enum Resumed {
    Live(Arc<RunShared>),
    Replayed,
    SocketGone,
}

/// Resume `run_id` after `after_seq`: a live run is followed from the cursor; a finished one is
/// replayed from the run log up to its terminal event.
async fn resume(
    state: &AppState,
    socket: &mut WebSocket,
    identity: &Identity,
    run_id: Uuid,
    after_seq: u64,
    write_timeout: Duration,
) -> Resumed {
    /// Answer the resume with an error frame (the socket stays usable).
    async fn refuse(socket: &mut WebSocket, code: ErrorCode, msg: String, t: Duration) -> Resumed {
        let frame = Message::Text(protocol::error_frame(code, &msg).into());
        if write(socket, frame, t).await {
            Resumed::Replayed
        } else {
            Resumed::SocketGone
        }
    }
    let not_yours = || format!("run `{run_id}` belongs to another user");
    if let Some(shared) = state.runs.get(&run_id) {
        if shared.user_id != identity.user_id {
            return refuse(socket, ErrorCode::Forbidden, not_yours(), write_timeout).await;
        }
        shared.attach();
        return Resumed::Live(shared);
    }
    let unavailable = |e: crate::runlog::RunLogError| {
        tracing::warn!(error = %e, "run log unavailable for a resume");
        "the run log is unavailable right now: try the resume again later".to_owned()
    };
    let info = match state.runlog.run_owner(run_id).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            let msg = format!("run `{run_id}` is unknown");
            return refuse(socket, ErrorCode::InvalidRequest, msg, write_timeout).await;
        }
        Err(e) => {
            return refuse(
                socket,
                ErrorCode::StoreUnavailable,
                unavailable(e),
                write_timeout,
            )
            .await;
        }
    };
    if info.user_id != identity.user_id {
        return refuse(socket, ErrorCode::Forbidden, not_yours(), write_timeout).await;
    }
    let frames = match state.runlog.replay(run_id, after_seq).await {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                socket,
                ErrorCode::StoreUnavailable,
                unavailable(e),
                write_timeout,
            )
            .await;
        }
    };
    tracing::info!(%run_id, after_seq, frames = frames.len(), "replaying a run from the log");
    let texts: Vec<Utf8Bytes> = frames
        .into_iter()
        .filter_map(|b| String::from_utf8(b.to_vec()).ok().map(Utf8Bytes::from))
        .collect();
    // A finished run's replay ends with its terminal event, or says what is missing: a client
    // must never wait for frames the log does not have.
    let expected = info.last_seq.saturating_sub(after_seq);
    let complete = if expected == 0 {
        info.events_dropped == 0
    } else {
        texts.len() as u64 == expected
            && texts
                .last()
                .is_some_and(|t| protocol::is_terminal_frame(t.as_str()))
    };
    let gap = info.status.is_finished() && !complete;
    if !write_batch(socket, texts, write_timeout).await {
        return Resumed::SocketGone;
    }
    if gap {
        state.metrics.runs_log_incomplete_replays.inc();
        let msg = format!(
            "the run log of run `{run_id}` is incomplete: frames after seq {after_seq} (up to at \
             least seq {}) are missing and cannot be replayed; the run has ended",
            info.last_seq.max(after_seq + 1)
        );
        return refuse(socket, ErrorCode::Internal, msg, write_timeout).await;
    }
    if !info.status.is_finished() {
        let msg = format!(
            "run `{run_id}` is not live on this gateway: its frames up to now were replayed"
        );
        return refuse(socket, ErrorCode::InvalidRequest, msg, write_timeout).await;
    }
    Resumed::Replayed
}

/// Merge consecutive `llm_chunk` frames of the same element into one (for a lagging client).
/// The merged frame has the `seq` of the last one and `merged_seqs: [first, last]`.
fn merge_chunks(batch: Vec<Frame>) -> Vec<Utf8Bytes> {
    let parts: Vec<Option<(String, String)>> = batch.iter().map(Frame::chunk_parts).collect();
    let mut out = Vec::with_capacity(batch.len());
    let mut i = 0;
    while i < batch.len() {
        let Some((element, first)) = &parts[i] else {
            out.push(batch[i].text.clone());
            i += 1;
            continue;
        };
        let mut j = i + 1;
        let mut content = first.clone();
        while let Some(Some((e, c))) = parts.get(j)
            && e == element
        {
            content.push_str(c);
            j += 1;
        }
        if j == i + 1 {
            out.push(batch[i].text.clone());
        } else {
            let run_id = serde_json::from_str::<serde_json::Value>(batch[i].text.as_str())
                .ok()
                .and_then(|v| v.get("run_id").cloned())
                .unwrap_or_default();
            let merged = json!({
                "type": "llm_chunk",
                "timestamp": protocol::now_ts(),
                "data": {"element_id": element, "content": content},
                "run_id": run_id,
                "seq": batch[j - 1].seq,
                "merged_seqs": [batch[i].seq, batch[j - 1].seq],
            });
            out.push(Utf8Bytes::from(merged.to_string()));
        }
        i = j;
    }
    out
}

/// Write frames with one flush, bounded by `timeout` as a whole.
async fn write_batch(socket: &mut WebSocket, texts: Vec<Utf8Bytes>, timeout: Duration) -> bool {
    let work = async {
        for t in texts {
            socket.feed(Message::Text(t)).await?;
        }
        socket.flush().await
    };
    matches!(tokio::time::timeout(timeout, work).await, Ok(Ok(())))
}

/// Why reading the client socket failed.
enum ReadFailure {
    /// A message or frame above `--max-client-message-bytes` (close 1009).
    TooBig,
    /// Bad framing or invalid UTF-8 in a text frame (close 1002).
    Protocol(tokio_tungstenite::tungstenite::Error),
    /// The connection is gone (reset, closed without a close frame, I/O error): nobody to tell.
    Gone,
}

impl ReadFailure {
    fn of(e: axum::Error) -> ReadFailure {
        use tokio_tungstenite::tungstenite::Error as E;
        use tokio_tungstenite::tungstenite::error::ProtocolError as P;
        // axum wraps the tungstenite error it got (the same tungstenite as ours).
        match e.into_inner().downcast::<E>().map(|b| *b) {
            Ok(E::Capacity(_)) => ReadFailure::TooBig,
            Ok(E::Protocol(P::ResetWithoutClosingHandshake)) => ReadFailure::Gone,
            Ok(e @ (E::Protocol(_) | E::Utf8(_))) => ReadFailure::Protocol(e),
            _ => ReadFailure::Gone,
        }
    }
}

async fn write(socket: &mut WebSocket, msg: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

/// End the session from our side: send a close frame with `code`, then wait for the client's
/// reply (reading and dropping whatever it still sends), all within `timeout`. Dropping the
/// socket right after the send would leave the browser without a clean close (1006) whenever its
/// reply reaches a socket we no longer read.
async fn close_with(socket: &mut WebSocket, code: u16, reason: &'static str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let sent = tokio::time::timeout_at(deadline, socket.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let reply = async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, reply).await;
}

/// The client closed: send its close frame back (same code) before the socket is dropped.
/// tungstenite only queues that reply; flushing writes it.
async fn answer_close(socket: &mut WebSocket, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, socket.flush()).await;
}
