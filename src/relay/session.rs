//! One client WebSocket: reads client frames, starts runs, writes their frames, pings, closes.
//!
//! Invariants: at most one run at a time per socket; a run's frames are written in the order the
//! run produced them; every write has a timeout (`client_write_timeout`) and happens inside a
//! `select!` branch body; the socket is closed with a code of PROTOCOL.md section 5, never a
//! reserved one. When the client goes away the current run is cancelled.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::protocol::{self, ClientFrame, ErrorCode, close};
use super::run::{self, RunMsg, RunSpec};
use crate::auth::{AuthError, Identity};
use crate::http::AppState;

/// How the upgrade request authenticated.
#[derive(Debug)]
pub enum Authn {
    Ok(Identity),
    /// No token was presented: the first frame may be `{"type":"auth"}`.
    Missing,
    /// A token was presented and refused.
    Refused(AuthError),
}

struct ActiveRun {
    run_id: Uuid,
    cancel: CancellationToken,
    rx: mpsc::Receiver<RunMsg>,
    close_after: Option<(u16, &'static str)>,
}

/// Serve one client socket until it closes.
pub async fn serve(state: AppState, mut socket: WebSocket, agent_id: String, authn: Authn) {
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
    let mut draining = false;
    let grace = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(grace);

    loop {
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                if run.is_none() {
                    close_with(&mut socket, close::RESTART, "server restart", write_timeout).await;
                    return;
                }
                grace.as_mut().reset(tokio::time::Instant::now() + state.config.shutdown_grace);
            }
            _ = &mut grace, if draining => {
                if let Some(r) = &run {
                    tracing::info!(run_id = %r.run_id, "shutdown grace over: closing with 1012");
                    r.cancel.cancel();
                }
                close_with(&mut socket, close::RESTART, "server restart", write_timeout).await;
                return;
            }
            msg = recv_run(&mut run) => {
                match msg {
                    Some(RunMsg::Frame(text)) => {
                        if !write(&mut socket, Message::Text(text), write_timeout).await {
                            tracing::info!("client too slow or gone: dropping it");
                            if let Some(r) = run.take() { r.cancel.cancel(); }
                            close_with(&mut socket, close::TOO_SLOW, "too slow", write_timeout).await;
                            return;
                        }
                    }
                    Some(RunMsg::Close(code, reason)) => {
                        if let Some(r) = &mut run { r.close_after = Some((code, reason)); }
                    }
                    None => {
                        let ended = run.take().expect("recv_run only yields None for a run");
                        if let Some((code, reason)) = ended.close_after {
                            close_with(&mut socket, code, reason, write_timeout).await;
                            return;
                        }
                        if draining {
                            close_with(&mut socket, close::RESTART, "server restart", write_timeout).await;
                            return;
                        }
                    }
                }
            }
            incoming = socket.recv() => {
                let text = match incoming {
                    None => {
                        client_gone(&mut run);
                        return;
                    }
                    Some(Err(e)) => {
                        let too_big = is_capacity_error(&e);
                        client_gone(&mut run);
                        if too_big {
                            close_with(&mut socket, close::TOO_BIG, "message too big", write_timeout).await;
                        }
                        return;
                    }
                    Some(Ok(Message::Close(_))) => {
                        client_gone(&mut run);
                        return;
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let text = protocol::error_frame(ErrorCode::InvalidRequest, "binary frames are not accepted: send JSON text frames");
                        if !write(&mut socket, Message::Text(text.into()), write_timeout).await { client_gone(&mut run); return; }
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong: axum answers pings
                };
                let frame = match ClientFrame::parse(text.as_str()) {
                    Ok(f) => f,
                    Err(bad) => {
                        let text = protocol::error_frame(ErrorCode::InvalidRequest, &bad.0);
                        if !write(&mut socket, Message::Text(text.into()), write_timeout).await { client_gone(&mut run); return; }
                        continue;
                    }
                };
                match frame {
                    ClientFrame::Cancel => {
                        if let Some(r) = &run { r.cancel.cancel(); }
                    }
                    ClientFrame::Auth { token } => match state.verifier.verify(&token) {
                        Ok(id) => {
                            if identity.as_ref().is_some_and(|old| old.user_id != id.user_id) {
                                let text = protocol::error_frame(ErrorCode::Forbidden, "a token refresh must be for the same user");
                                let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                                client_gone(&mut run);
                                close_with(&mut socket, close::FORBIDDEN, "forbidden", write_timeout).await;
                                return;
                            }
                            tracing::Span::current().record("user_id", id.user_id.as_str());
                            identity = Some(id);
                        }
                        Err(e) => {
                            let text = protocol::error_frame(ErrorCode::Unauthenticated, &e.to_string());
                            let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                            client_gone(&mut run);
                            close_with(&mut socket, close::UNAUTHENTICATED, "unauthenticated", write_timeout).await;
                            return;
                        }
                    },
                    ClientFrame::Resume { run_id, .. } => {
                        let text = protocol::error_frame(ErrorCode::InvalidRequest, &format!("run `{run_id}` is unknown to this gateway"));
                        if !write(&mut socket, Message::Text(text.into()), write_timeout).await { client_gone(&mut run); return; }
                    }
                    ClientFrame::Run(request) => {
                        let Some(id) = identity.clone() else {
                            let text = protocol::error_frame(ErrorCode::Unauthenticated, "no token was presented: send `Authorization: Bearer <jwt>`, the `bearer, <jwt>` subprotocol, or `?token=`");
                            let _ = write(&mut socket, Message::Text(text.into()), write_timeout).await;
                            close_with(&mut socket, close::UNAUTHENTICATED, "unauthenticated", write_timeout).await;
                            return;
                        };
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
                            if !write(&mut socket, Message::Text(text.into()), write_timeout).await { client_gone(&mut run); return; }
                            continue;
                        }
                        run = Some(start_run(&state, &agent_id, id, *request));
                    }
                }
            }
            _ = ping.tick() => {
                if !write(&mut socket, Message::Ping(Vec::new().into()), write_timeout).await {
                    client_gone(&mut run);
                    return;
                }
            }
        }
    }
}

fn start_run(
    state: &AppState,
    agent_id: &str,
    identity: Identity,
    request: protocol::RunRequest,
) -> ActiveRun {
    let run_id = Uuid::new_v4();
    let (tx, rx) = mpsc::channel(state.config.client_buffer.max(1));
    let cancel = CancellationToken::new();
    let span = tracing::info_span!("run", %run_id);
    tracing::info!(%run_id, "run started");
    let spec = RunSpec {
        run_id,
        agent_id: agent_id.to_owned(),
        identity,
        request,
    };
    state
        .sessions
        .spawn(run::execute(state.clone(), spec, tx, cancel.clone()).instrument(span));
    ActiveRun {
        run_id,
        cancel,
        rx,
        close_after: None,
    }
}

/// The next message of the active run; pending forever when there is none.
async fn recv_run(run: &mut Option<ActiveRun>) -> Option<RunMsg> {
    match run {
        Some(r) => r.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn client_gone(run: &mut Option<ActiveRun>) {
    if let Some(r) = run.take() {
        tracing::info!(run_id = %r.run_id, "client disconnected: cancelling its run");
        r.cancel.cancel();
    }
}

fn is_capacity_error(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Message too big")
        || text.contains("size")
}

async fn write(socket: &mut WebSocket, msg: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &'static str, timeout: Duration) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = write(socket, Message::Close(Some(frame)), timeout).await;
}
