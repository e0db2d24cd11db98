//! One client WebSocket: reads client frames, starts runs, writes their frames, pings, closes.
//!
//! Design note. A [`Session`] owns the socket and waits on seven things at once (the
//! authentication deadline, token expiry, shutdown, the shutdown grace, the followed run's next
//! frames, the client's next message, the ping timer); each has one handler method that returns
//! [`Step`]: go on, or end the session with an [`End`]. [`Session::end`] is the only exit: it
//! lets go of the followed run (an [`Attached`] run is cancelled or left detached for a resume
//! when it is dropped, whatever the reason) and then performs the close the `End` names,
//! always completing the WebSocket close handshake within a timeout.
//!
//! Invariants: at most one run at a time per socket; a run's frames are written in the order the
//! run produced them, through the session's [`Dialect`]; every write has a timeout
//! (`client_write_timeout`); the socket is closed with a code of docs/protocol.md, never a
//! reserved one.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::time::{Instant, Sleep};
use uuid::Uuid;

use super::context::AppState;
use super::dialect::Dialect;
use super::failure::{self, Failure};
use super::protocol::{self, ClientFrame, CloseCode, ErrorCode, RunRequest};
use super::registry::{AfterEnd, CancelReason, Follow, RunShared};
use super::trace::TraceContext;
use super::turn::{self, Attached, OnDrop};
use crate::auth::{AuthError, Identity};

/// How the upgrade request authenticated.
#[derive(Debug)]
pub enum Authn {
    Ok(Identity),
    /// No token was presented: the first frame may be `{"type":"auth"}`.
    Missing,
    /// A token was presented and refused.
    Refused(AuthError),
    /// The route's own credential (e.g. a citizen session id) was refused: the sentence says why.
    Rejected(String),
    /// A valid token that may not use this route as presented (e.g. a proxy's `X-User-Id` for
    /// another user): `forbidden`.
    Forbidden(String),
}

/// Serve one client socket in a client protocol (the native [`super::dialect::NeuraLabs`], or another dialect of
/// [`super::dialect`]) until it closes; runs go to `agent_id`.
pub async fn serve<D: Dialect>(
    state: AppState,
    socket: WebSocket,
    dialect: D,
    agent_id: String,
    authn: Authn,
    trace: TraceContext,
) {
    Session::serve(state, socket, dialect, agent_id, authn, trace).await;
}

/// Refuse a socket right after the upgrade (overload).
pub async fn refuse(
    mut socket: WebSocket,
    code: CloseCode,
    reason: &'static str,
    write_timeout: Duration,
) {
    close_with(&mut socket, code, reason, write_timeout).await;
}

/// What a handler decides: go on, or end the session.
type Step = ControlFlow<End>;

/// How a session ends (see [`Session::end`]).
#[derive(Debug)]
enum End {
    /// The connection is gone (or a write failed): nobody to tell.
    Gone,
    /// The client sent a close frame: answer it.
    ClientClosed,
    /// Close with `code`, after an error frame when there is one.
    Close {
        error: Option<(ErrorCode, Cow<'static, str>)>,
        code: CloseCode,
        reason: &'static str,
    },
}

impl End {
    fn close(code: CloseCode, reason: &'static str) -> End {
        End::Close {
            error: None,
            code,
            reason,
        }
    }

    /// An error frame with `code`'s `data.code`, then the close code that goes with it.
    fn refuse(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> End {
        End::Close {
            error: Some((code, message.into())),
            code: code.close_code().unwrap_or(CloseCode::Normal),
            reason: code.as_str(),
        }
    }

    fn restart() -> End {
        End::close(CloseCode::Restart, "server restart")
    }

    fn expired() -> End {
        End::Close {
            error: Some((
                ErrorCode::Unauthenticated,
                "the token has expired: reconnect (or send {\"type\":\"auth\"}) with a fresh token"
                    .into(),
            )),
            code: CloseCode::Unauthenticated,
            reason: "token expired",
        }
    }
}

/// One client socket and what it knows.
struct Session<D: Dialect> {
    state: AppState,
    socket: WebSocket,
    dialect: D,
    agent_id: String,
    trace: TraceContext,
    identity: Option<Identity>,
    run: Option<Attached>,
    /// When the token expires (reset by an `auth` frame).
    expiry: Pin<Box<Sleep>>,
    /// The token expired during a run: the socket closes with 4401 after it.
    expired: bool,
    /// Shutdown began: no new runs; the socket closes after its run or the grace.
    draining: bool,
    rate: super::limits::Bucket,
    /// Liveness: anything from the client (a pong included) proves it is there.
    last_heard: Instant,
    /// Run requests that arrived during a run (the dialect's queue depth; none natively).
    queued: std::collections::VecDeque<RunRequest>,
    /// The user's message of the running turn, for the conversation memory (dialects that
    /// keep one).
    turn_message: Option<String>,
    /// When run frames were last written (for the pause before a turn's terminal frame).
    last_written: Instant,
}

impl<D: Dialect> Session<D> {
    async fn serve(
        state: AppState,
        socket: WebSocket,
        dialect: D,
        agent_id: String,
        authn: Authn,
        trace: TraceContext,
    ) {
        let rate = super::limits::Bucket::new(
            state.config.client_messages_per_second,
            state.config.client_messages_per_second.saturating_mul(2),
        );
        let (identity, refused) = match authn {
            Authn::Ok(id) => (Some(id), None),
            Authn::Missing => (None, None),
            Authn::Refused(e) => (None, Some((ErrorCode::Unauthenticated, e.to_string()))),
            Authn::Rejected(why) => (None, Some((ErrorCode::Unauthenticated, why))),
            Authn::Forbidden(why) => (None, Some((ErrorCode::Forbidden, why))),
        };
        if let Some(id) = &identity {
            tracing::Span::current().record("user_id", id.user_id.as_str());
        }
        let mut session = Session {
            expiry: Box::pin(tokio::time::sleep(until_expiry(identity.as_ref()))),
            state,
            socket,
            dialect,
            agent_id,
            trace,
            identity,
            run: None,
            expired: false,
            draining: false,
            rate,
            last_heard: Instant::now(),
            queued: std::collections::VecDeque::new(),
            turn_message: None,
            last_written: Instant::now(),
        };
        // A refused socket gets only its error (no welcome).
        let opening = if refused.is_none() {
            session.dialect.opening()
        } else {
            Vec::new()
        };
        let opened = opening.is_empty()
            || write_batch(
                &mut session.socket,
                opening,
                session.state.config.client_write_timeout,
            )
            .await;
        let end = match refused {
            _ if !opened => End::Gone,
            Some((code, why)) => End::refuse(code, why),
            None => session.run_loop().await,
        };
        session.end(end).await;
    }

    /// Wait on everything at once and hand each event to its handler, until one ends the session.
    async fn run_loop(&mut self) -> End {
        let config = self.state.config.clone();
        let mut ping =
            tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        let shutdown = self.state.shutdown.clone();
        // Created once: a fresh `cancelled()` per loop turn would lock the token on every frame.
        let shutdown_wait = shutdown.cancelled();
        tokio::pin!(shutdown_wait);
        let grace = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(grace);
        // A socket without a token has `auth_timeout` to present one; until then it holds a place.
        let auth_deadline = tokio::time::sleep(config.auth_timeout);
        tokio::pin!(auth_deadline);
        loop {
            let step = tokio::select! {
                _ = &mut auth_deadline, if self.identity.is_none() => self.on_auth_deadline(),
                _ = &mut self.expiry, if !self.expired && self.identity.is_some() => self.on_expiry(),
                _ = &mut shutdown_wait, if !self.draining => {
                    grace.as_mut().reset(Instant::now() + config.shutdown_grace);
                    self.on_shutdown()
                }
                _ = &mut grace, if self.draining => self.on_grace_over(),
                follow = next_frames(&self.run, config.client_batch) => self.on_follow(follow).await,
                incoming = self.socket.recv() => self.on_incoming(incoming).await,
                _ = ping.tick() => self.on_ping().await,
            };
            if let ControlFlow::Break(end) = step {
                return end;
            }
        }
    }

    /// The one exit: let go of the run (see [`Attached`]), then close as `end` says.
    async fn end(mut self, end: End) {
        drop(self.run.take());
        let config = &self.state.config;
        match end {
            End::Gone => {}
            End::ClientClosed => answer_close(&mut self.socket, config.client_write_timeout).await,
            End::Close {
                error,
                code,
                reason,
            } => {
                let timeout = if code == CloseCode::TooSlow {
                    config.client_close_timeout
                } else {
                    config.client_write_timeout
                };
                if let Some((error, message)) = error {
                    let texts = self.dialect.error(error, &message);
                    let _ = write_batch(&mut self.socket, texts, timeout).await;
                }
                let (code, reason) = self.dialect.close(code, reason);
                close_with(&mut self.socket, code, reason, timeout).await;
            }
        }
    }

    fn on_auth_deadline(&mut self) -> Step {
        tracing::info!("no token within --auth-timeout: closing with 4401");
        let why = format!(
            "no token within {}: send {{\"type\":\"auth\",\"token\":\"<jwt>\"}} right after connecting, or connect with a token",
            humantime::format_duration(self.state.config.auth_timeout)
        );
        ControlFlow::Break(End::refuse(ErrorCode::Unauthenticated, why))
    }

    fn on_expiry(&mut self) -> Step {
        self.expired = true;
        tracing::info!("the client's token expired");
        if self.run.is_none() {
            return ControlFlow::Break(End::expired());
        }
        // The current run finishes; the socket closes with 4401 after it.
        ControlFlow::Continue(())
    }

    fn on_shutdown(&mut self) -> Step {
        self.draining = true;
        if self.run.is_none() {
            return ControlFlow::Break(End::restart());
        }
        ControlFlow::Continue(())
    }

    fn on_grace_over(&mut self) -> Step {
        if let Some(r) = &self.run {
            tracing::info!(run_id = %r.shared.run_id, last_seq = r.cursor, "shutdown grace over: closing with 1012");
            r.shared.cancel(CancelReason::Shutdown);
        }
        ControlFlow::Break(End::restart())
    }

    /// Frames of the followed run, or its end.
    async fn on_follow(&mut self, follow: Follow) -> Step {
        let after = match follow {
            Follow::Frames(batch) => {
                let config = &self.state.config;
                let r = self
                    .run
                    .as_mut()
                    .expect("next_frames only yields for a run");
                let lag = r.shared.lag(r.cursor);
                if lag > r.lag_at_attach.saturating_add(config.max_client_lag) {
                    tracing::info!(
                        lag,
                        "client too far behind: closing with 4408 (it can resume)"
                    );
                    return ControlFlow::Break(End::close(
                        CloseCode::TooSlow,
                        "too slow: resume from the log",
                    ));
                }
                let last = batch.last().map(|f| f.seq).unwrap_or(r.cursor);
                let end = batch.last().and_then(|f| f.end);
                let received: Vec<std::time::Instant> = batch.iter().map(|f| f.received).collect();
                let count = batch.len();
                let lagging = lag > config.merge_lag;
                let timeout = config.client_write_timeout;
                let mut batch = batch;
                // A client that loses frames arriving in one burst gets the terminal frame after
                // a pause (DIALECTS.md rule 14).
                let paced = match (end, self.dialect.turn_end_gap()) {
                    (Some(_), Some(gap)) => batch.pop().map(|terminal| (terminal, gap)),
                    _ => None,
                };
                let mut texts = self.dialect.encode(batch, lagging);
                let mut written = texts.len();
                // A lagging client of a dialect that loses bursts gets its merged batches apart.
                if lagging
                    && !texts.is_empty()
                    && self.dialect.paces_bursts()
                    && let Some(gap) = self.dialect.turn_end_gap()
                {
                    tokio::time::sleep_until(self.last_written + gap).await;
                }
                if let Some((terminal, gap)) = paced {
                    if !texts.is_empty() {
                        if !write_batch(&mut self.socket, texts, timeout).await {
                            return ControlFlow::Break(End::close(CloseCode::TooSlow, "too slow"));
                        }
                        self.last_written = Instant::now();
                    }
                    tokio::time::sleep_until(self.last_written + gap).await;
                    texts = self.dialect.encode(vec![terminal], lagging);
                    written += texts.len();
                }
                if !write_batch(&mut self.socket, texts, timeout).await {
                    tracing::info!("client too slow or gone");
                    return ControlFlow::Break(End::close(CloseCode::TooSlow, "too slow"));
                }
                self.last_written = Instant::now();
                let r = self
                    .run
                    .as_mut()
                    .expect("next_frames only yields for a run");
                r.cursor = last;
                let metrics = &self.state.metrics;
                metrics.coalesced_chunks.inc_by((count - written) as u64);
                metrics.events_relayed.inc_by(written as u64);
                for t in received {
                    metrics
                        .event_added_latency
                        .observe(t.elapsed().as_secs_f64());
                }
                match end {
                    Some(after) => after,
                    None => return ControlFlow::Continue(()),
                }
            }
            Follow::End(after) => after,
        };
        // The run is over for this socket: its terminal frame was just written (or the run
        // finished with everything delivered).
        drop(self.run.take());
        self.remember_turn();
        if self.expired {
            return ControlFlow::Break(End::expired());
        }
        if let AfterEnd::Close(code, reason) = after {
            return ControlFlow::Break(End::close(code, reason));
        }
        if self.draining {
            return ControlFlow::Break(End::restart());
        }
        match self.queued.pop_front() {
            Some(next) => self.on_run_request(next).await,
            None => ControlFlow::Continue(()),
        }
    }

    /// Keep the finished turn in the conversation memory (dialects that have one).
    fn remember_turn(&mut self) {
        let answer = self.dialect.take_answer();
        let message = self.turn_message.take();
        if let (Some(conversation), Some(id), Some(message)) =
            (self.dialect.conversation(), &self.identity, message)
        {
            self.state.conversations.remember(
                &id.user_id,
                conversation,
                &message,
                answer.as_deref().unwrap_or_default(),
            );
        }
    }

    /// Whatever the socket read: a message, a close, an error or the end of the connection.
    async fn on_incoming(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Step {
        self.last_heard = Instant::now();
        let config = &self.state.config;
        if config.client_messages_per_second > 0
            && matches!(incoming, Some(Ok(Message::Text(_) | Message::Binary(_))))
            && !self.rate.take(std::time::Instant::now())
        {
            tracing::warn!("client message flood: closing with 4429");
            return ControlFlow::Break(End::close(CloseCode::RateLimited, "rate limited"));
        }
        let text = match incoming {
            None => return ControlFlow::Break(End::Gone),
            Some(Err(e)) => {
                return ControlFlow::Break(match ReadFailure::of(e) {
                    ReadFailure::TooBig => End::close(CloseCode::TooBig, "message too big"),
                    ReadFailure::Protocol(why) => {
                        tracing::info!(error = %why, "client broke the WebSocket protocol: closing with 1002");
                        End::close(CloseCode::ProtocolError, "protocol error")
                    }
                    ReadFailure::Gone => End::Gone,
                });
            }
            Some(Ok(Message::Close(_))) => return ControlFlow::Break(End::ClientClosed),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                return self
                    .answer(
                        ErrorCode::InvalidRequest,
                        "binary frames are not accepted: send JSON text frames",
                    )
                    .await;
            }
            Some(Ok(_)) => return ControlFlow::Continue(()), // ping/pong: axum answers pings
        };
        if let Some(limit) = self.dialect.soft_message_limit(&self.state.config)
            && text.len() > limit
        {
            let why = format!("message too long: {} bytes, at most {limit}", text.len());
            return self.answer(ErrorCode::InvalidRequest, &why).await;
        }
        match self.dialect.decode(text.as_str()) {
            Ok(frame) => self.on_frame(frame).await,
            Err(bad) => {
                let code = self.dialect.refusal_code();
                self.answer(code, &bad.0).await
            }
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Step {
        match frame {
            ClientFrame::Cancel => {
                if let Some(r) = &self.run {
                    r.shared.cancel(CancelReason::Client);
                }
                ControlFlow::Continue(())
            }
            ClientFrame::Auth { token } => self.on_auth(&token),
            ClientFrame::Ping => match self.dialect.pong() {
                Some(pong) => {
                    let timeout = self.state.config.client_write_timeout;
                    if write(&mut self.socket, Message::Text(pong), timeout).await {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(End::Gone)
                    }
                }
                None => ControlFlow::Continue(()),
            },
            ClientFrame::Resume { run_id, after_seq } => self.on_resume(run_id, after_seq).await,
            ClientFrame::Run(request) => self.on_run_request(*request).await,
        }
    }

    /// A token (first, or a refresh for the same user).
    fn on_auth(&mut self, token: &str) -> Step {
        let id = match self.state.verifier.verify(token) {
            Ok(id) => id,
            Err(e) => {
                return ControlFlow::Break(End::refuse(ErrorCode::Unauthenticated, e.to_string()));
            }
        };
        if self
            .identity
            .as_ref()
            .is_some_and(|old| old.user_id != id.user_id)
        {
            return ControlFlow::Break(End::refuse(
                ErrorCode::Forbidden,
                "a token refresh must be for the same user",
            ));
        }
        tracing::Span::current().record("user_id", id.user_id.as_str());
        self.expiry
            .as_mut()
            .reset(Instant::now() + until_expiry(Some(&id)));
        self.expired = false;
        self.identity = Some(id);
        ControlFlow::Continue(())
    }

    async fn on_resume(&mut self, run_id: Uuid, after_seq: u64) -> Step {
        let Some(id) = self.identity.clone() else {
            return ControlFlow::Break(End::refuse(
                ErrorCode::Unauthenticated,
                "no token was presented: authenticate before resuming",
            ));
        };
        if self.run.is_some() {
            return self
                .answer(
                    ErrorCode::InvalidRequest,
                    "a run is in progress on this socket: resume on a new connection",
                )
                .await;
        }
        // Boxed: rare and large (run log queries); inline it would size every session.
        match Box::pin(self.resume(&id, run_id, after_seq)).await {
            Resumed::Live(shared) => {
                self.state.metrics.resumes.inc();
                tracing::info!(%run_id, after_seq, "client resumed a live run");
                let lag_at_attach = shared.lag(after_seq);
                self.run = Some(Attached {
                    shared,
                    cursor: after_seq,
                    lag_at_attach,
                    state: self.state.clone(),
                    on_drop: OnDrop::Policy,
                });
                ControlFlow::Continue(())
            }
            Resumed::Replayed => {
                self.state.metrics.resumes.inc();
                ControlFlow::Continue(())
            }
            Resumed::Refused => ControlFlow::Continue(()),
            Resumed::TooSlow => {
                tracing::info!(%run_id, "client too slow for its replay: closing with 4408 (it can resume)");
                ControlFlow::Break(End::close(
                    CloseCode::TooSlow,
                    "too slow: resume from the log",
                ))
            }
            Resumed::Gone => ControlFlow::Break(End::Gone),
        }
    }

    async fn on_run_request(&mut self, request: RunRequest) -> Step {
        let Some(id) = self.identity.clone() else {
            return ControlFlow::Break(End::refuse(
                ErrorCode::Unauthenticated,
                "no token was presented: send `Authorization: Bearer <jwt>`, the `bearer, <jwt>` subprotocol, or `?token=`",
            ));
        };
        if self.expired {
            return ControlFlow::Break(End::expired());
        }
        if self.run.is_some() && self.queued.len() < self.dialect.queue_depth() {
            self.queued.push_back(request);
            return ControlFlow::Continue(());
        }
        let refusal = if self.run.is_some() {
            Some("a run is already in progress on this socket: wait for its terminal event or send {\"type\":\"cancel\"}".to_owned())
        } else if self.draining {
            Some("the gateway is shutting down: reconnect and retry".to_owned())
        } else if request
            .agent_id
            .as_deref()
            .is_some_and(|a| a != self.agent_id)
        {
            Some(format!(
                "`agent_id` in the run request ({}) differs from the agent in the URL ({})",
                request.agent_id.as_deref().unwrap_or_default(),
                self.agent_id
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            return self.answer(ErrorCode::InvalidRequest, &why).await;
        }
        if let Err((code, why)) = turn::check_limit(&self.state, &id) {
            return self.answer(code, &why).await;
        }
        let mut request = request;
        self.dialect.begin_turn(request.tag.as_ref());
        if let Some(conversation) = self.dialect.conversation() {
            let memory = &self.state.conversations;
            if self.dialect.owned_conversations() && !memory.claim(&id.user_id, conversation) {
                let why = format!("conversation `{conversation}` belongs to another user");
                return self.answer(ErrorCode::Forbidden, &why).await;
            }
            if request.conversation_history.is_none() {
                let mut history = memory.history(&id.user_id, conversation);
                let window = self.dialect.history_window();
                history.drain(..history.len().saturating_sub(window));
                request.conversation_history = Some(history);
            }
            self.turn_message = request.message.clone();
        }
        self.run = Some(self.start_run(id, request));
        ControlFlow::Continue(())
    }

    async fn on_ping(&mut self) -> Step {
        let config = &self.state.config;
        if self.last_heard.elapsed() > config.ping_interval * 2 {
            tracing::info!("client stopped answering pings: closing with 4408");
            return ControlFlow::Break(End::close(CloseCode::TooSlow, "idle: no pong"));
        }
        let ping = Message::Ping(Vec::new().into());
        if !write(&mut self.socket, ping, config.client_write_timeout).await {
            return ControlFlow::Break(End::Gone);
        }
        ControlFlow::Continue(())
    }

    /// Answer with an error frame; the socket stays open (unless the write fails).
    async fn answer(&mut self, code: ErrorCode, message: &str) -> Step {
        let texts = self.dialect.error(code, message);
        if write_batch(
            &mut self.socket,
            texts,
            self.state.config.client_write_timeout,
        )
        .await
        {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(End::Gone)
        }
    }

    fn start_run(&self, identity: Identity, request: RunRequest) -> Attached {
        turn::start(
            &self.state,
            identity,
            self.agent_id.clone(),
            request,
            self.trace.child_header(),
            OnDrop::Policy,
        )
    }

    /// Resume `run_id` after `after_seq`: a live run is followed from the cursor; an ended one
    /// is replayed from the run log up to its terminal event (or an error naming what is
    /// missing).
    async fn resume(&mut self, identity: &Identity, run_id: Uuid, after_seq: u64) -> Resumed {
        let state = self.state.clone();
        let not_yours = || format!("run `{run_id}` belongs to another user");
        // A run here (its own, or a mirror still following): attach to it. A mirror whose
        // clients all left is stopping: the run is followed anew below.
        if let Some(shared) = state.runs.get(&run_id) {
            if shared.user_id != identity.user_id {
                return self.refuse_resume(ErrorCode::Forbidden, &not_yours()).await;
            }
            if shared.attach_if_following() {
                if self.dialect.rebuilds_on_resume() {
                    let _ = self.dialect.encode(shared.prefix(after_seq), false);
                }
                return Resumed::Live(shared);
            }
        }
        let unavailable = |e: crate::runlog::RunLogError| {
            tracing::warn!(error = %failure::chain(&e), "run log unavailable for a resume");
            failure::verdict(Failure::RunLog(&e))
        };
        let info = match state.runlog.run_owner(run_id).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                let msg = format!("run `{run_id}` is unknown");
                return self.refuse_resume(ErrorCode::InvalidRequest, &msg).await;
            }
            Err(e) => {
                let verdict = unavailable(e);
                return self.refuse_resume(verdict.code, &verdict.sentence).await;
            }
        };
        if info.user_id != identity.user_id {
            return self.refuse_resume(ErrorCode::Forbidden, &not_yours()).await;
        }
        // Live on another gateway: follow it through the cluster.
        if !info.status.is_finished()
            && let Some(cluster) = &state.cluster
            && let Some(owner) = info.owner.filter(|o| *o != cluster.node())
        {
            return match super::remote::follow(&state, &info, owner, after_seq).await {
                Ok(shared) => {
                    if self.dialect.rebuilds_on_resume() {
                        let _ = self.dialect.encode(shared.prefix(after_seq), false);
                    }
                    Resumed::Live(shared)
                }
                Err(why) => self.refuse_resume(ErrorCode::EngineUnavailable, &why).await,
            };
        }
        // A dialect that rebuilds its state reads the frames before the cursor too.
        let from = if self.dialect.rebuilds_on_resume() {
            0
        } else {
            after_seq
        };
        let frames = match state.runlog.replay(run_id, from).await {
            Ok(mut f) if from < after_seq => {
                let seen = usize::try_from(after_seq)
                    .unwrap_or(usize::MAX)
                    .min(f.len());
                let before: Vec<Utf8Bytes> = f
                    .drain(..seen)
                    .filter_map(|b| String::from_utf8(b.to_vec()).ok().map(Utf8Bytes::from))
                    .collect();
                let _ = self.dialect.encode_logged(before);
                f
            }
            Ok(f) => f,
            Err(e) => {
                let verdict = unavailable(e);
                return self.refuse_resume(verdict.code, &verdict.sentence).await;
            }
        };
        tracing::info!(%run_id, after_seq, frames = frames.len(), "replaying a run from the log");
        let texts: Vec<Utf8Bytes> = frames
            .into_iter()
            .filter_map(|b| String::from_utf8(b.to_vec()).ok().map(Utf8Bytes::from))
            .collect();
        // A finished run's replay ends with its terminal event, or says what is missing: a
        // client must never wait for frames the log does not have.
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
        // Written in batches of --client-batch frames, each within --client-write-timeout (a
        // long replay is not one write): a client that cannot keep up gets 4408 and can resume
        // from its last frame.
        let ends = texts
            .last()
            .is_some_and(|t| protocol::is_terminal_frame(t.as_str()));
        let mut encoded = self.dialect.encode_logged(texts);
        // A client that loses bursts gets the replayed turn's end after a pause too (rule 14).
        let paced_end = match self.dialect.turn_end_gap() {
            Some(gap) if ends && encoded.len() > 1 => encoded.pop().map(|end| (end, gap)),
            _ => None,
        };
        // A dialect that loses bursts gets the (merged, few) replayed frames one at a time.
        let pace = self
            .dialect
            .turn_end_gap()
            .filter(|_| self.dialect.paces_bursts());
        let per_write = if pace.is_some() {
            1
        } else {
            state.config.client_batch.max(1)
        };
        let mut texts = encoded.into_iter().peekable();
        let mut first = true;
        while texts.peek().is_some() {
            if let Some(gap) = pace
                && !std::mem::take(&mut first)
            {
                tokio::time::sleep(gap).await;
            }
            let batch: Vec<Utf8Bytes> = texts.by_ref().take(per_write).collect();
            if !write_batch(&mut self.socket, batch, state.config.client_write_timeout).await {
                return Resumed::TooSlow;
            }
        }
        if let Some((end, gap)) = paced_end {
            tokio::time::sleep(gap).await;
            if !write_batch(
                &mut self.socket,
                vec![end],
                state.config.client_write_timeout,
            )
            .await
            {
                return Resumed::TooSlow;
            }
        }
        if gap {
            state.metrics.runs_log_incomplete_replays.inc();
            let msg = format!(
                "the run log of run `{run_id}` is incomplete: frames after seq {after_seq} (up to at \
                 least seq {}) are missing and cannot be replayed; the run has ended",
                info.last_seq.max(after_seq + 1)
            );
            return self.refuse_resume(ErrorCode::Internal, &msg).await;
        }
        if !info.status.is_finished() {
            let msg = format!(
                "run `{run_id}` is not live on this gateway: its frames up to now were replayed"
            );
            return self.refuse_resume(ErrorCode::InvalidRequest, &msg).await;
        }
        Resumed::Replayed
    }

    /// Answer a resume with an error frame (the socket stays usable).
    async fn refuse_resume(&mut self, code: ErrorCode, message: &str) -> Resumed {
        match self.answer(code, message).await {
            ControlFlow::Continue(()) => Resumed::Refused,
            ControlFlow::Break(_) => Resumed::Gone,
        }
    }
}

/// What a resume did.
enum Resumed {
    /// The run is live here: follow it from the cursor.
    Live(Arc<RunShared>),
    /// The run had ended: its frames were replayed from the run log.
    Replayed,
    /// The resume was answered with an error frame (unknown run, another user's, log down…).
    Refused,
    /// A batch of the replay could not be written within `--client-write-timeout`.
    TooSlow,
    /// The socket failed while answering.
    Gone,
}

/// The run limit a caller counts against: its own (`--max-runs-per-user`), or for anonymous
/// callers the one they share (`--max-anonymous-runs`).
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

/// The next frames of the followed run; pending forever when there is none.
async fn next_frames(run: &Option<Attached>, max: usize) -> Follow {
    match run {
        Some(r) => r.shared.next_after(r.cursor, max).await,
        None => std::future::pending().await,
    }
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
async fn close_with(
    socket: &mut WebSocket,
    code: CloseCode,
    reason: &'static str,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let frame = CloseFrame {
        code: code.code(),
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
