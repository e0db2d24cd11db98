//! A verified proxy hop (DIALECTS.md section 3): a client WebSocket relayed, unparsed, to an
//! upstream WebSocket server that is not the engine (e.g. the OMNI2 chain's Traefik → OMNI2).
//!
//! Design note. The hop verifies the client's token itself and never forwards an unverified
//! one; upstream it sends the credential only as `Authorization: Bearer`, adds `X-User-Id` from
//! the verified claims and `X-Forwarded-For`/`-Proto`, passes `Origin`, and sends nothing else of
//! the client's request (so client-supplied `X-User-*` headers never reach the upstream). One
//! task relays both directions (text and binary, in order; ping/pong per leg), so when either
//! side ends, the other gets its close frame at once (table 3.4 of DIALECTS.md): close codes and
//! reasons pass both ways, an upstream that drops TCP gives the client an `engine_lost` error and
//! 1011 (never 1006), a client that drops gives the upstream 1001. Every wait is bounded (connect,
//! each write, the close handshakes); a side that does not take a frame within the write timeout
//! is closed with 4408. No token is logged.

use std::time::Duration;

use axum::extract::ws::{self, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Error as WsError, Message};

use super::context::AppState;
use crate::auth::Identity;
use crate::close::CloseCode;

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the hop knows about its client.
pub struct Client {
    /// The verified caller, or why the token was refused.
    pub identity: Result<Identity, String>,
    /// The verified token (forwarded as `Authorization: Bearer`).
    pub token: String,
    /// The client's address (`X-Forwarded-For` upstream).
    pub addr: std::net::IpAddr,
    pub origin: Option<String>,
}

/// Relay `socket` to `upstream` until either side ends.
pub async fn serve(state: AppState, mut socket: WebSocket, upstream: String, client: Client) {
    let config = state.config.clone();
    let write = config.client_write_timeout;
    let identity = match client.identity {
        Ok(id) => id,
        Err(why) => {
            tracing::info!("hop: token refused: closing with 4401");
            refuse(
                &mut socket,
                "unauthenticated",
                &why,
                CloseCode::Unauthenticated,
                write,
            )
            .await;
            return;
        }
    };
    let mut up = match connect(
        &state,
        &upstream,
        &client.token,
        &identity,
        client.addr,
        client.origin.as_deref(),
    )
    .await
    {
        Ok(up) => up,
        Err((code, message, close)) => {
            tracing::info!(code, "hop: upstream refused or unreachable");
            refuse(&mut socket, code, &message, close, write).await;
            return;
        }
    };
    let until_expiry = Duration::from_secs(
        identity
            .expires_at
            .saturating_sub(crate::auth::now_secs())
            .min(365 * 24 * 3600),
    );
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    let shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            from_client = socket.recv() => match from_client {
                Some(Ok(ws::Message::Text(t))) => {
                    let m = Message::Text(tungstenite::Utf8Bytes::from(t.as_str()));
                    if !send_up(&mut up, m, write).await {
                        lost(&mut socket, write).await;
                        return;
                    }
                }
                Some(Ok(ws::Message::Binary(b))) => {
                    if !send_up(&mut up, Message::Binary(b), write).await {
                        lost(&mut socket, write).await;
                        return;
                    }
                }
                Some(Ok(ws::Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (f.code, f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    // Answer the client's close, then pass it on (1001 for "no status" codes).
                    let _ = tokio::time::timeout(write, socket.flush()).await;
                    let code = if matches!(code, 1005 | 1006 | 1015) { 1001 } else { code };
                    close_up(up, code, &reason, config.client_close_timeout).await;
                    return;
                }
                Some(Ok(_)) => {} // ping/pong: answered on this leg by axum
                None | Some(Err(_)) => {
                    close_up(up, 1001, "", config.client_close_timeout).await;
                    return;
                }
            },
            from_up = up.next() => match from_up {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    let m = match m {
                        Message::Text(t) => ws::Message::Text(ws::Utf8Bytes::from(t.as_str())),
                        Message::Binary(b) => ws::Message::Binary(b),
                        _ => unreachable!("matched above"),
                    };
                    let sent = tokio::time::timeout(write, socket.send(m)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        close_up(up, 1001, "", config.client_close_timeout).await;
                        // A client that does not take a frame in time is closed with 4408 (it
                        // may reconnect) once it reads again; one whose write failed is gone.
                        if sent.is_err() {
                            tracing::info!("hop: client too slow: closing with 4408");
                            let too_slow = CloseCode::TooSlow.code();
                            close_client(&mut socket, too_slow, "too slow", config.client_close_timeout).await;
                        }
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite queued the answer to the upstream's close: flush sends it.
                    let _ = tokio::time::timeout(write, up.flush()).await;
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1000, String::new()));
                    close_client(&mut socket, code, &reason, config.client_close_timeout).await;
                    return;
                }
                Some(Ok(_)) => {} // ping/pong: answered on this leg by tungstenite
                None | Some(Err(_)) => {
                    lost(&mut socket, write).await;
                    return;
                }
            },
            _ = &mut expiry => {
                let why = "the token has expired: reconnect with a fresh token";
                refuse(&mut socket, "unauthenticated", why, CloseCode::Unauthenticated, write).await;
                close_up(up, 1000, "", config.client_close_timeout).await;
                return;
            }
            _ = shutdown.cancelled() => {
                let restart = CloseCode::Restart;
                let reason = "server restart";
                close_up(up, restart.code(), reason, config.client_close_timeout).await;
                close_client(&mut socket, restart.code(), reason, config.client_close_timeout).await;
                return;
            }
        }
    }
}

/// Open the upstream socket; a refusal is `(code, sentence, close code)` for the client.
async fn connect(
    state: &AppState,
    url: &str,
    token: &str,
    identity: &Identity,
    addr: std::net::IpAddr,
    origin: Option<&str>,
) -> Result<Upstream, (&'static str, String, CloseCode)> {
    let unavailable = |why: String| ("engine_unavailable", why, CloseCode::Internal);
    let mut request = url
        .into_client_request()
        .map_err(|e| unavailable(format!("the upstream URL is not usable: {e}")))?;
    let headers = request.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = value.parse() {
            headers.insert(name, v);
        }
    };
    set("authorization", &format!("Bearer {token}"));
    set("x-user-id", &identity.user_id);
    set("x-forwarded-for", &addr.to_string());
    set("x-forwarded-proto", "http");
    if let Some(o) = origin {
        set("origin", o);
    }
    let max = state.config.max_client_message_bytes;
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max);
    config.max_frame_size = Some(max);
    let wait = state.config.hop_connect_timeout;
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(wait, connect).await {
        Err(_) => Err(unavailable(format!(
            "the upstream did not answer within {}",
            humantime::format_duration(wait)
        ))),
        Ok(Err(WsError::Http(resp))) => Err(match resp.status().as_u16() {
            401 => (
                "unauthenticated",
                "the upstream refused the credential (HTTP 401)".into(),
                CloseCode::Unauthenticated,
            ),
            403 => (
                "forbidden",
                "the upstream refused access (HTTP 403)".into(),
                CloseCode::Forbidden,
            ),
            s => unavailable(format!("the upstream answered HTTP {s}")),
        }),
        Ok(Err(e)) => Err(unavailable(format!("the upstream is unreachable: {e}"))),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

async fn send_up(up: &mut Upstream, m: Message, wait: Duration) -> bool {
    matches!(tokio::time::timeout(wait, up.send(m)).await, Ok(Ok(())))
}

async fn send_client(socket: &mut WebSocket, m: ws::Message, wait: Duration) -> bool {
    matches!(tokio::time::timeout(wait, socket.send(m)).await, Ok(Ok(())))
}

/// The client's error frame (the OMNI2 shape `{type, error, code}`), then its close.
async fn refuse(
    socket: &mut WebSocket,
    code: &str,
    message: &str,
    close: CloseCode,
    wait: Duration,
) {
    let frame = json!({"type": "error", "error": message, "code": code}).to_string();
    let _ = send_client(socket, ws::Message::Text(frame.into()), wait).await;
    close_client(socket, close.code(), code, wait).await;
}

/// The upstream is gone without a close: `engine_lost`, then 1011 (never 1006).
async fn lost(socket: &mut WebSocket, wait: Duration) {
    let why = "the connection to the upstream was lost";
    refuse(socket, "engine_lost", why, CloseCode::Internal, wait).await;
}

/// Close the client with `code`/`reason` (reason cut to 123 bytes) and wait for its answer.
async fn close_client(socket: &mut WebSocket, code: u16, reason: &str, wait: Duration) {
    let frame = ws::CloseFrame {
        code,
        reason: ws::Utf8Bytes::from(cut(reason)),
    };
    let deadline = tokio::time::Instant::now() + wait;
    if !matches!(
        tokio::time::timeout_at(deadline, socket.send(ws::Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let reply = async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, ws::Message::Close(_)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, reply).await;
}

/// Close the upstream with `code`/`reason` and wait for its answer, bounded by `wait`.
async fn close_up(mut up: Upstream, code: u16, reason: &str, wait: Duration) {
    let frame = CloseFrame {
        code: code.into(),
        reason: tungstenite::Utf8Bytes::from(cut(reason)),
    };
    let deadline = tokio::time::Instant::now() + wait;
    if !matches!(
        tokio::time::timeout_at(deadline, up.send(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    ) {
        let _ = tokio::time::timeout_at(deadline, up.flush()).await;
        return;
    }
    let reply = async {
        while let Some(Ok(m)) = up.next().await {
            if matches!(m, Message::Close(_)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, reply).await;
}

/// A close reason fits in 123 bytes (cut at a character boundary).
fn cut(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}
