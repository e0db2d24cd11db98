//! A verified proxy hop (DIALECTS.md section 3): a client WebSocket relayed, unparsed, to an
//! upstream WebSocket server that is not the engine (e.g. the OMNI2 chain's Traefik → OMNI2).
//!
//! Design note. The hop verifies the client's token itself and never forwards an unverified
//! one; with `--hop-auth-url` it also asks the auth service (so revocations count; no answer in
//! time refuses the client). It opens the upstream leg before it answers the client's upgrade,
//! so the client gets the subprotocol the upstream chose. Upstream it sends the credential only
//! as `Authorization: Bearer`, adds `X-User-*` from the verified claims (or the auth service's
//! answer) and `X-Forwarded-For`/`-Proto`, passes `Origin` and the client's subprotocols, and
//! sends nothing else of the client's request (so client-supplied `X-User-*` headers never reach
//! the upstream). One task relays both directions (text and binary, in order); ping/pong is per
//! leg: the hop answers each side's pings and pings each side itself every `--ping-interval`, and
//! a side silent for two intervals is gone. When either side ends, the other gets its close frame
//! at once (table 3.4 of DIALECTS.md): close codes and reasons pass both ways, an upstream that
//! drops TCP or goes silent gives the client an `engine_lost` error and 1011 (never 1006), a
//! client that drops gives the upstream 1001. Every wait is bounded (connect, the auth check,
//! each write, the close handshakes); a side that does not take a frame within the write timeout
//! is closed with 4408 (a slow upstream: the client gets `engine_timeout` and 1011). No token is
//! logged.

use std::time::Duration;

use axum::extract::ws::{self, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
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
    /// The subprotocols the client offered, except flowgate's `bearer` and the token after it.
    pub protocols: Vec<String>,
}

/// Why the client is refused: its error frame's `code` and sentence, then its close.
pub struct Refusal {
    code: &'static str,
    message: String,
    close: CloseCode,
}

impl Refusal {
    fn unavailable(message: String) -> Refusal {
        Refusal {
            code: "engine_unavailable",
            message,
            close: CloseCode::Internal,
        }
    }
}

/// The upstream leg, opened before the client's upgrade is answered, or why not.
pub struct Opened {
    leg: Result<(Upstream, Option<String>), Refusal>,
    /// When the client's token expires (seconds since the epoch).
    expires_at: u64,
}

impl Opened {
    /// No upstream leg (the client is turned away before it is served).
    pub fn not_opened() -> Opened {
        Opened {
            leg: Err(Refusal::unavailable("not opened".into())),
            expires_at: 0,
        }
    }

    /// The subprotocol the upstream chose (the client is answered with it).
    pub fn protocol(&self) -> Option<&str> {
        self.leg.as_ref().ok().and_then(|(_, p)| p.as_deref())
    }
}

/// Verify the client (and ask the auth service), then open the upstream leg.
pub async fn open(state: &AppState, url: &str, client: Client) -> Opened {
    let identity = match &client.identity {
        Ok(id) => id.clone(),
        Err(why) => {
            tracing::info!("hop: token refused: closing with 4401");
            return Opened {
                leg: Err(Refusal {
                    code: "unauthenticated",
                    message: why.clone(),
                    close: CloseCode::Unauthenticated,
                }),
                expires_at: 0,
            };
        }
    };
    let leg = async {
        let headers = validate(state, &client.token, &identity, client.addr).await?;
        connect(state, url, &client, &identity, &headers).await
    }
    .await;
    if let Err(refused) = &leg {
        tracing::info!(code = refused.code, "hop: refused or upstream unavailable");
    }
    Opened {
        leg,
        expires_at: identity.expires_at,
    }
}

/// The identity headers the auth service (`--hop-auth-url`) answers for this token: empty when
/// none is configured. A refusal, an error status or no answer in time refuses the client.
async fn validate(
    state: &AppState,
    token: &str,
    identity: &Identity,
    addr: std::net::IpAddr,
) -> Result<Vec<(&'static str, String)>, Refusal> {
    let Some(url) = &state.config.hop_auth_url else {
        return Ok(Vec::new());
    };
    let wait = state.config.hop_connect_timeout;
    let call = state
        .http
        .get(url)
        .bearer_auth(token)
        .header("x-forwarded-for", addr.to_string())
        .header("x-forwarded-proto", "http")
        .send();
    let response = match tokio::time::timeout(wait, call).await {
        Err(_) => {
            return Err(Refusal::unavailable(format!(
                "the auth service did not answer within {}: try again later",
                humantime::format_duration(wait)
            )));
        }
        // reqwest's error names the URL and the cause, never the request's headers.
        Ok(Err(e)) => {
            return Err(Refusal::unavailable(format!(
                "the auth service is unreachable ({}): try again later",
                crate::logfmt::chain(&e)
            )));
        }
        Ok(Ok(r)) => r,
    };
    match response.status().as_u16() {
        200..=299 => {}
        401 => {
            return Err(Refusal {
                code: "unauthenticated",
                message: "the auth service refused the token (HTTP 401): sign in again".into(),
                close: CloseCode::Unauthenticated,
            });
        }
        403 => {
            return Err(Refusal {
                code: "forbidden",
                message: "the auth service refused access (HTTP 403)".into(),
                close: CloseCode::Forbidden,
            });
        }
        s => {
            return Err(Refusal::unavailable(format!(
                "the auth service answered HTTP {s}: try again later"
            )));
        }
    }
    let mut out = Vec::new();
    for name in ["x-user-id", "x-user-username", "x-user-role"] {
        let Some(value) = response.headers().get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() || value.len() > 256 {
            continue;
        }
        if name == "x-user-id" && value != identity.user_id {
            return Err(Refusal {
                code: "forbidden",
                message: "the auth service names another user than the token's".into(),
                close: CloseCode::Forbidden,
            });
        }
        out.push((name, value.to_owned()));
    }
    Ok(out)
}

/// Open the upstream socket, offering the client's subprotocols; the one chosen comes back.
async fn connect(
    state: &AppState,
    url: &str,
    client: &Client,
    identity: &Identity,
    validated: &[(&'static str, String)],
) -> Result<(Upstream, Option<String>), Refusal> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Refusal::unavailable(format!("the upstream URL is not usable: {e}")))?;
    let headers = request.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = value.parse() {
            headers.insert(name, v);
        }
    };
    set("authorization", &format!("Bearer {}", client.token));
    set("x-user-id", &identity.user_id);
    for (name, value) in validated {
        set(name, value);
    }
    set("x-forwarded-for", &client.addr.to_string());
    set("x-forwarded-proto", "http");
    if let Some(o) = &client.origin {
        set("origin", o);
    }
    let offered = !client.protocols.is_empty();
    if offered {
        set("sec-websocket-protocol", &client.protocols.join(", "));
    }
    let max = state.config.max_client_message_bytes;
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max);
    config.max_frame_size = Some(max);
    let wait = state.config.hop_connect_timeout;
    let deadline = Instant::now() + wait;
    let attempt = |request| {
        tokio::time::timeout_at(
            deadline,
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                Some(config),
                true,
                state
                    .outbound_tls
                    .clone()
                    .map(tokio_tungstenite::Connector::Rustls),
            ),
        )
    };
    let mut result = attempt(request.clone()).await;
    // An upstream that speaks none of the offered subprotocols answers without one (which
    // tungstenite refuses): connect as the browser would, without.
    if offered
        && matches!(
            result,
            Ok(Err(WsError::Protocol(
                ProtocolError::SecWebSocketSubProtocolError(SubProtocolError::NoSubProtocol)
            )))
        )
    {
        request.headers_mut().remove("sec-websocket-protocol");
        result = attempt(request).await;
    }
    match result {
        Err(_) => Err(Refusal::unavailable(format!(
            "the upstream did not answer within {}",
            humantime::format_duration(wait)
        ))),
        Ok(Err(WsError::Http(resp))) => Err(match resp.status().as_u16() {
            401 => Refusal {
                code: "unauthenticated",
                message: "the upstream refused the credential (HTTP 401)".into(),
                close: CloseCode::Unauthenticated,
            },
            403 => Refusal {
                code: "forbidden",
                message: "the upstream refused access (HTTP 403)".into(),
                close: CloseCode::Forbidden,
            },
            s => Refusal::unavailable(format!("the upstream answered HTTP {s}")),
        }),
        Ok(Err(e)) => Err(Refusal::unavailable(match crate::tls::problem(&e) {
            Some(tls) => tls.sentence("the upstream", "--outbound-ca-file"),
            None => format!("the upstream is unreachable: {e}"),
        })),
        Ok(Ok((socket, response))) => {
            let chosen = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((socket, chosen))
        }
    }
}

/// Relay `socket` to the opened upstream until either side ends (or refuse the client).
pub async fn serve(state: AppState, mut socket: WebSocket, opened: Opened) {
    let config = state.config.clone();
    let write = config.client_write_timeout;
    let close_wait = config.client_close_timeout;
    let mut up = match opened.leg {
        Ok((up, _)) => up,
        Err(refused) => {
            refuse(
                &mut socket,
                refused.code,
                &refused.message,
                refused.close,
                write,
            )
            .await;
            return;
        }
    };
    let until_expiry = Duration::from_secs(
        opened
            .expires_at
            .saturating_sub(crate::auth::now_secs())
            .min(365 * 24 * 3600),
    );
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    let every = config.ping_interval;
    let mut pings = tokio::time::interval_at(Instant::now() + every, every);
    let mut heard_client = Instant::now();
    let mut heard_up = Instant::now();
    let shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            from_client = socket.recv() => {
                heard_client = Instant::now();
                let m = match from_client {
                    Some(Ok(ws::Message::Text(t))) => {
                        Message::Text(tungstenite::Utf8Bytes::from(t.as_str()))
                    }
                    Some(Ok(ws::Message::Binary(b))) => Message::Binary(b),
                    Some(Ok(ws::Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (f.code, f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        // Answer the client's close, then pass it on (1001 for "no status" codes).
                        let _ = tokio::time::timeout(write, socket.flush()).await;
                        let code = if matches!(code, 1005 | 1006 | 1015) { 1001 } else { code };
                        close_up(up, code, &reason, close_wait).await;
                        return;
                    }
                    Some(Ok(_)) => continue, // ping/pong: answered on this leg by axum
                    None | Some(Err(_)) => {
                        close_up(up, 1001, "", close_wait).await;
                        return;
                    }
                };
                match tokio::time::timeout(write, up.send(m)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        lost(&mut socket, write).await;
                        return;
                    }
                    Err(_) => {
                        // The upstream does not take frames: it is closed as a slow reader is.
                        tracing::info!("hop: upstream too slow: closing it with 4408");
                        let why = format!(
                            "the upstream did not take a frame within {}",
                            humantime::format_duration(write)
                        );
                        refuse(&mut socket, "engine_timeout", &why, CloseCode::Internal, write).await;
                        close_up(up, CloseCode::TooSlow.code(), "too slow", close_wait).await;
                        return;
                    }
                }
            }
            from_up = up.next() => {
                heard_up = Instant::now();
                match from_up {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        let m = match m {
                            Message::Text(t) => ws::Message::Text(ws::Utf8Bytes::from(t.as_str())),
                            Message::Binary(b) => ws::Message::Binary(b),
                            _ => unreachable!("matched above"),
                        };
                        let sent = tokio::time::timeout(write, socket.send(m)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            close_up(up, 1001, "", close_wait).await;
                            // A client that does not take a frame in time is closed with 4408 (it
                            // may reconnect) once it reads again; one whose write failed is gone.
                            if sent.is_err() {
                                tracing::info!("hop: client too slow: closing with 4408");
                                let too_slow = CloseCode::TooSlow.code();
                                close_client(&mut socket, too_slow, "too slow", close_wait).await;
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
                        close_client(&mut socket, code, &reason, close_wait).await;
                        return;
                    }
                    Some(Ok(_)) => {} // ping/pong: answered on this leg by tungstenite
                    None | Some(Err(_)) => {
                        lost(&mut socket, write).await;
                        return;
                    }
                }
            }
            _ = pings.tick() => {
                if heard_client.elapsed() > every * 2 {
                    tracing::info!("hop: client stopped answering pings: closing with 4408");
                    close_up(up, 1001, "", close_wait).await;
                    let too_slow = CloseCode::TooSlow.code();
                    close_client(&mut socket, too_slow, "idle: no pong", close_wait).await;
                    return;
                }
                if heard_up.elapsed() > every * 2 {
                    tracing::info!("hop: upstream stopped answering pings: engine_lost");
                    lost(&mut socket, write).await;
                    close_up(up, 1001, "", close_wait).await;
                    return;
                }
                let ping = ws::Message::Ping(bytes::Bytes::new());
                if !send_client(&mut socket, ping, write).await {
                    close_up(up, 1001, "", close_wait).await;
                    return;
                }
                if !send_up(&mut up, Message::Ping(bytes::Bytes::new()), write).await {
                    lost(&mut socket, write).await;
                    return;
                }
            }
            _ = &mut expiry => {
                let why = "the token has expired: reconnect with a fresh token";
                refuse(&mut socket, "unauthenticated", why, CloseCode::Unauthenticated, write).await;
                close_up(up, 1000, "", close_wait).await;
                return;
            }
            _ = shutdown.cancelled() => {
                let restart = CloseCode::Restart;
                let reason = "server restart";
                close_up(up, restart.code(), reason, close_wait).await;
                close_client(&mut socket, restart.code(), reason, close_wait).await;
                return;
            }
        }
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
