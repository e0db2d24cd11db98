//! The gateway's client of an execution engine: connect, the 4-step handshake of docs/neuralabs.md
//! section 3, then a stream of event frames. Every await has a timeout; failures are classified
//! as [`EngineError`] variants that map one-to-one onto error codes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type EngineSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

type WsError = tokio_tungstenite::tungstenite::Error;

/// What went wrong talking to the engine. What a client is told is decided in one place,
/// [`super::failure::verdict`]; OS and library texts stay in `source()`, for the log.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// flowgate's own sentence (a bad URL, the engine's HTTP status, no connection in time).
    #[error("the execution engine is unavailable: {0}")]
    Unavailable(String),
    /// The engine could not be reached (the cause is an OS-level error).
    #[error("the execution engine is unreachable")]
    Unreachable(#[source] WsError),
    #[error("the execution engine did not answer in time ({0})")]
    Timeout(String),
    #[error("the execution engine broke the protocol: {what}")]
    Protocol {
        what: String,
        #[source]
        cause: Option<WsError>,
    },
    #[error("the connection to the execution engine was lost: {what}")]
    Lost {
        what: &'static str,
        #[source]
        cause: Option<WsError>,
    },
}

impl EngineError {
    pub fn protocol(what: impl Into<String>) -> EngineError {
        EngineError::Protocol {
            what: what.into(),
            cause: None,
        }
    }

    pub fn lost(what: &'static str, cause: Option<WsError>) -> EngineError {
        EngineError::Lost { what, cause }
    }

    /// A failed read of the engine socket (during the handshake or the run).
    pub fn of_read(e: WsError) -> EngineError {
        use tokio_tungstenite::tungstenite::error::ProtocolError as P;
        match e {
            WsError::Protocol(P::ResetWithoutClosingHandshake) => {
                EngineError::lost("the connection broke", Some(e))
            }
            WsError::Capacity(_) => EngineError::Protocol {
                what: "an oversize frame (--max-engine-frame-bytes)".into(),
                cause: Some(e),
            },
            WsError::Protocol(_) | WsError::Utf8(_) => EngineError::Protocol {
                what: "a malformed WebSocket frame".into(),
                cause: Some(e),
            },
            _ => EngineError::lost("the connection broke", Some(e)),
        }
    }
}

/// Settings for one engine connection.
#[derive(Debug, Clone)]
pub struct EngineTarget {
    /// e.g. `ws://127.0.0.1:8001` (no trailing path).
    pub base_url: String,
    /// The engine-hop bearer token, when configured.
    pub bearer: Option<String>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_frame_bytes: usize,
    /// W3C `traceparent` for the upgrade request.
    pub traceparent: Option<String>,
    /// WebSocket read and write buffer sizes (bytes).
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// How long a close waits for the engine's reply (`--engine-close-timeout`).
    pub close_timeout: Duration,
    /// TLS for a `wss://` URL (`None`: tungstenite's default, the system's roots).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The four payloads the gateway sends in the handshake.
pub struct Handshake<'a> {
    pub flow: &'a str,
    pub initial_inputs: &'a str,
    pub config: &'a str,
}

/// Connect to `<base>/ws/execute/<flow_id>` and perform the handshake. Returns the socket, ready
/// to read events.
pub async fn open(
    target: &EngineTarget,
    flow_id: &str,
    handshake: Handshake<'_>,
) -> Result<EngineSocket, EngineError> {
    let url = format!(
        "{}/ws/execute/{}",
        target.base_url.trim_end_matches('/'),
        flow_id
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| EngineError::Unavailable(format!("bad engine URL: {e}")))?;
    if let Some(token) = &target.bearer {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| EngineError::Unavailable("engine token is not a valid header".into()))?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    if let Some(tp) = &target.traceparent
        && let Ok(value) = tp.parse()
    {
        request.headers_mut().insert("traceparent", value);
    }
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(target.max_frame_bytes);
    config.max_frame_size = Some(target.max_frame_bytes);
    config.read_buffer_size = target.read_buffer_bytes;
    config.write_buffer_size = target.write_buffer_bytes;
    config.max_write_buffer_size = target.write_buffer_bytes.max(target.max_frame_bytes) * 2;
    let connector = target.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let (mut socket, _) = match tokio::time::timeout(target.connect_timeout, connect).await {
        Err(_) => {
            return Err(EngineError::Unavailable(format!(
                "no connection within {:?}",
                target.connect_timeout
            )));
        }
        Ok(Err(e)) => return Err(describe_ws_error(e)),
        Ok(Ok(pair)) => pair,
    };
    let t = target.handshake_timeout;
    let steps = async {
        expect_status(&mut socket, t, "ready").await?;
        send(&mut socket, t, handshake.flow).await?;
        expect_status(&mut socket, t, "received_flow").await?;
        send(&mut socket, t, handshake.initial_inputs).await?;
        expect_status(&mut socket, t, "received_inputs").await?;
        send(&mut socket, t, handshake.config).await?;
        expect_status(&mut socket, t, "starting").await
    };
    match steps.await {
        Ok(()) => Ok(socket),
        Err(e) => {
            // The engine gets a close frame (or the answer to its own) before the drop.
            let code = match &e {
                EngineError::Protocol { .. } => crate::close::CloseCode::ProtocolError,
                _ => crate::close::CloseCode::Normal,
            };
            close(socket, code, target.close_timeout).await;
            Err(e)
        }
    }
}

/// End the engine socket with a close handshake, bounded by `wait` in all: send our close frame
/// (unless the engine already closed: then tungstenite has queued the answer, and flushing sends
/// it), then read until the engine's close frame or the end of the connection.
pub async fn close(mut socket: EngineSocket, code: crate::close::CloseCode, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    let frame = CloseFrame {
        code: CloseCode::from(code.code()),
        reason: "".into(),
    };
    let sent = tokio::time::timeout_at(deadline, socket.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        // Closed already (by the engine, or the socket failed): send a queued answer, if any.
        let _ = tokio::time::timeout_at(deadline, socket.flush()).await;
        return;
    }
    let reply = async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, reply).await;
}

fn describe_ws_error(e: WsError) -> EngineError {
    if let WsError::Http(resp) = &e {
        return EngineError::Unavailable(format!("the engine answered HTTP {}", resp.status()));
    }
    if let Some(tls) = crate::tls::problem(&e) {
        return EngineError::Unavailable(tls.sentence("the engine", "--outbound-ca-file"));
    }
    EngineError::Unreachable(e)
}

async fn send(socket: &mut EngineSocket, t: Duration, text: &str) -> Result<(), EngineError> {
    match tokio::time::timeout(t, socket.send(Message::text(text.to_owned()))).await {
        Err(_) => Err(EngineError::Timeout("sending a handshake frame".into())),
        Ok(Err(e)) => Err(EngineError::lost(
            "a handshake frame could not be sent",
            Some(e),
        )),
        Ok(Ok(())) => Ok(()),
    }
}

async fn expect_status(
    socket: &mut EngineSocket,
    t: Duration,
    want: &str,
) -> Result<(), EngineError> {
    let text = loop {
        match tokio::time::timeout(t, socket.next()).await {
            Err(_) => {
                return Err(EngineError::Timeout(format!(
                    "waiting for handshake `{want}`"
                )));
            }
            Ok(None) => {
                return Err(EngineError::protocol(format!(
                    "the engine closed the connection before handshake `{want}`"
                )));
            }
            Ok(Some(Err(e))) => {
                return Err(EngineError::Protocol {
                    what: format!("a failed read before handshake `{want}`"),
                    cause: Some(e),
                });
            }
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(Message::Close(_)))) => {
                return Err(EngineError::protocol(format!(
                    "the engine closed the connection before handshake `{want}`"
                )));
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => {
                return Err(EngineError::protocol(format!(
                    "a non-text frame instead of handshake `{want}`"
                )));
            }
        }
    };
    #[derive(serde::Deserialize)]
    struct Status<'a> {
        #[serde(borrow)]
        status: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_str::<Status>(&text) {
        Ok(Status { status: Some(s) }) if s == want => Ok(()),
        _ => Err(EngineError::protocol(format!(
            "expected handshake `{want}`, got {}",
            preview(&text)
        ))),
    }
}

/// The first 80 characters of a frame, for error messages.
pub fn preview(text: &Utf8Bytes) -> String {
    let s: &str = text;
    let mut out: String = s.chars().take(80).collect();
    if s.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}
