//! The benchmark's client sessions: one task per session, through the gateway (a real WebSocket
//! client bound to one of several loopback addresses) or directly against the engine (the
//! gateway's own [`engine_client::open`] handshake). Every session keeps a [`Tally`] of its own
//! and returns it when the phase ends; nothing is shared but three counters.
//!
//! Timing: `t0` is taken before the TCP connect; the receive time of a frame is taken when the
//! WebSocket stream yields it (wall clock, for comparison with the engine's envelope `timestamp`,
//! and monotonic, for the measurement window).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::stats::{StreamCheck, Tally, is_terminal};
use crate::relay::engine_client::{self, EngineTarget, Handshake};
use crate::secret::Secret;

/// Timing and limits shared by every session of a phase.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Samples before this instant are discarded (warm-up).
    pub warm_end: Instant,
    /// No new run starts after this instant; samples after it are discarded.
    pub end: Instant,
    /// `llm_chunk` events each run must deliver.
    pub events: u64,
    /// Reuse one WebSocket for consecutive runs (otherwise one connection per run).
    pub keep_connection: bool,
    pub connect_timeout: Duration,
    pub frame_timeout: Duration,
    pub close_timeout: Duration,
    /// Pause after a failed run before the next one.
    pub retry_pause: Duration,
    pub max_frame_bytes: usize,
    /// Read buffer of each client WebSocket (tungstenite zero-fills it on the first read).
    pub read_buffer_bytes: usize,
}

/// Live counters of a phase.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client sockets open right now.
    pub open: AtomicUsize,
    /// Idle sessions that reached their first `llm_chunk` and are holding.
    pub ready: AtomicUsize,
    /// Idle sessions that have given up (error before holding).
    pub failed: AtomicUsize,
}

/// Where gateway sessions connect.
#[derive(Debug)]
pub struct GatewayTarget {
    pub addr: SocketAddr,
    /// `ws://host:port/api/chat/execute/<agent>`.
    pub url: String,
    /// Local addresses to bind client sockets to (round robin); empty: let the kernel choose.
    pub local_ips: Vec<IpAddr>,
    /// The run request frame.
    pub request: String,
    pub jwt_secret: Secret,
    pub token_ttl: Duration,
}

/// What direct sessions send the engine.
#[derive(Debug)]
pub struct DirectTarget {
    pub engine: EngineTarget,
    pub engine_key: Option<Secret>,
    pub flow: String,
    pub initial_inputs: String,
    pub agent_id: String,
    pub version: &'static str,
}

type Ws = WebSocketStream<TcpStream>;

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    merged_seqs: Option<[u64; 2]>,
}

/// How reading one run ended.
#[derive(Debug, PartialEq)]
enum RunEnd {
    Terminal,
    FirstChunk,
    Failed,
}

/// Read one run's frames until its terminal event (or, with `first_chunk`, its first
/// `llm_chunk`), recording samples and errors.
async fn read_run<S>(
    ws: &mut WebSocketStream<S>,
    t0: Instant,
    plan: &Plan,
    check: &mut StreamCheck,
    tally: &mut Tally,
    first_chunk: bool,
) -> RunEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut started: Option<(Instant, bool)> = None;
    loop {
        let msg = match tokio::time::timeout(plan.frame_timeout, ws.next()).await {
            Err(_) => {
                tally.error(
                    "timeout",
                    format!("no frame within {:?}", plan.frame_timeout),
                );
                return RunEnd::Failed;
            }
            Ok(None) => {
                tally.error("closed", "the socket ended before the terminal event");
                return RunEnd::Failed;
            }
            Ok(Some(Err(e))) => {
                tally.error("socket", format!("socket error: {e}"));
                return RunEnd::Failed;
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Binary(_) => {
                tally.error("protocol", "a binary frame");
                return RunEnd::Failed;
            }
            Message::Close(f) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                tally.error(
                    format!("closed:{code}"),
                    format!("closed with {code} before the terminal event"),
                );
                return RunEnd::Failed;
            }
        };
        let now = Instant::now();
        let wall = epoch_us();
        let env: Envelope = match serde_json::from_str(&text) {
            Ok(e) => e,
            Err(e) => {
                tally.error("protocol", format!("a frame that is not an event: {e}"));
                return RunEnd::Failed;
            }
        };
        let kind = env.kind.as_ref();
        check.frame(kind, env.seq, env.merged_seqs);
        let in_window = now >= plan.warm_end && now <= plan.end;
        if in_window {
            tally.frames_in_window += 1;
        }
        if env.merged_seqs.is_some() {
            tally.merged_frames += 1;
        }
        if kind == "flow_started" && started.is_none() {
            started = Some((now, in_window));
            if in_window {
                tally.setup_us.push((now - t0).as_micros() as u64);
            }
        }
        // `status`/`error` frames and merged chunks carry the gateway's time, not the engine's.
        if in_window
            && env.merged_seqs.is_none()
            && !matches!(kind, "status" | "error")
            && let Some(ts) = env.timestamp
        {
            let sent = (ts * 1e6).round() as u64;
            tally.event_us.push(wall.saturating_sub(sent));
        }
        match kind {
            "error" | "flow_error" => {
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                let code = v["data"]["code"].as_str().unwrap_or("none");
                let what = v["data"]["error"].as_str().unwrap_or("");
                tally.error(format!("{kind}:{code}"), format!("{kind} {code}: {what}"));
            }
            "flow_cancelled" => tally.error("flow_cancelled", "the run was cancelled"),
            _ => {}
        }
        if is_terminal(kind) {
            if let Some((at, true)) = started {
                tally.run_us.push((now - at).as_micros() as u64);
            }
            return RunEnd::Terminal;
        }
        if first_chunk && kind == "llm_chunk" {
            return RunEnd::FirstChunk;
        }
    }
}

/// Judge a finished run.
fn judge(check: &StreamCheck, end: &RunEnd, plan: &Plan, tally: &mut Tally) {
    match check.verdict(plan.events) {
        Ok(())
            if *end == RunEnd::Terminal && check.terminal.as_deref() == Some("flow_completed") =>
        {
            tally.runs_ok += 1;
        }
        Ok(()) => {}
        Err(why) => {
            tally.lost_runs += 1;
            if *end == RunEnd::Terminal {
                // A complete-looking run that misses frames is an error of its own.
                tally.error("lost", format!("lost events: {why}"));
            }
        }
    }
}

/// Close a socket and wait (bounded) for the peer's close and end of stream; returns how long
/// that took (microseconds).
async fn close<S>(mut ws: WebSocketStream<S>, wait: Duration) -> u64
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let t = Instant::now();
    let _ = tokio::time::timeout(wait, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    t.elapsed().as_micros() as u64
}

async fn connect_gateway(
    t: &GatewayTarget,
    local: Option<IpAddr>,
    token: &str,
    plan: &Plan,
) -> Result<Ws, (String, String)> {
    let fail = |kind: &str, e: String| (kind.to_owned(), e);
    let socket = if t.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail("connect", format!("socket: {e}")))?;
    if let Some(ip) = local {
        socket
            .set_reuseaddr(true)
            .map_err(|e| fail("connect", format!("SO_REUSEADDR: {e}")))?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| fail("connect", format!("bind {ip}: {e}")))?;
    }
    let stream = match tokio::time::timeout(plan.connect_timeout, socket.connect(t.addr)).await {
        Err(_) => return Err(fail("connect", "TCP connect timed out".into())),
        Ok(Err(e)) => return Err(fail("connect", format!("TCP connect: {e}"))),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let mut request = t
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| fail("connect", format!("bad URL: {e}")))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| fail("connect", "token is not a header value".into()))?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, bearer);
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(plan.max_frame_bytes);
    config.max_frame_size = Some(plan.max_frame_bytes);
    config.read_buffer_size = plan.read_buffer_bytes;
    let upgrade = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
    match tokio::time::timeout(plan.connect_timeout, upgrade).await {
        Err(_) => Err(fail("upgrade", "WebSocket upgrade timed out".into())),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(fail(
            &format!("upgrade:{}", resp.status().as_u16()),
            format!("upgrade refused: HTTP {}", resp.status()),
        )),
        Ok(Err(e)) => Err(fail("upgrade", format!("upgrade: {e}"))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

async fn send_request(ws: &mut Ws, t: &GatewayTarget, plan: &Plan, tally: &mut Tally) -> bool {
    let sent = tokio::time::timeout(
        plan.frame_timeout,
        ws.send(Message::text(t.request.clone())),
    )
    .await;
    match sent {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tally.error("send", format!("sending the run request: {e}"));
            false
        }
        Err(_) => {
            tally.error("timeout", "sending the run request timed out");
            false
        }
    }
}

fn session_token(t: &GatewayTarget, index: usize) -> String {
    crate::auth::mint_hs256(&t.jwt_secret, &format!("bench-{index}"), t.token_ttl)
}

fn local_ip(t: &GatewayTarget, index: usize) -> Option<IpAddr> {
    (!t.local_ips.is_empty()).then(|| t.local_ips[index % t.local_ips.len()])
}

/// A streaming session through the gateway: runs back to back until `plan.end`.
pub async fn gateway_streaming(
    index: usize,
    t: Arc<GatewayTarget>,
    plan: Arc<Plan>,
    start_at: Instant,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
) -> Tally {
    let mut tally = Tally::default();
    let token = session_token(&t, index);
    let local = local_ip(&t, index);
    tokio::time::sleep_until(start_at).await;
    let mut kept: Option<Ws> = None;
    while Instant::now() < plan.end {
        let mut t0 = Instant::now();
        let mut ws = match kept.take() {
            Some(ws) => ws,
            None => {
                let connected = {
                    let _permit = gate.acquire().await;
                    t0 = Instant::now();
                    connect_gateway(&t, local, &token, &plan).await
                };
                match connected {
                    Ok(ws) => {
                        counters.open.fetch_add(1, Ordering::Relaxed);
                        ws
                    }
                    Err((kind, msg)) => {
                        tally.error(kind, msg);
                        tokio::time::sleep(plan.retry_pause).await;
                        continue;
                    }
                }
            }
        };
        tally.runs += 1;
        let mut check = StreamCheck::new(true);
        let end = if send_request(&mut ws, &t, &plan, &mut tally).await {
            read_run(&mut ws, t0, &plan, &mut check, &mut tally, false).await
        } else {
            RunEnd::Failed
        };
        judge(&check, &end, &plan, &mut tally);
        if plan.keep_connection && end == RunEnd::Terminal {
            kept = Some(ws);
        } else {
            tally.close_us.push(close(ws, plan.close_timeout).await);
            counters.open.fetch_sub(1, Ordering::Relaxed);
        }
        if end != RunEnd::Terminal {
            tokio::time::sleep(plan.retry_pause).await;
        }
    }
    if let Some(ws) = kept {
        close(ws, plan.close_timeout).await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
    }
    tally
}

/// An idle session through the gateway: one run that waits on a slow engine; the session
/// holds its socket until `stop`.
pub async fn gateway_idle(
    index: usize,
    t: Arc<GatewayTarget>,
    plan: Arc<Plan>,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let token = session_token(&t, index);
    let local = local_ip(&t, index);
    let mut ws = {
        let _permit = gate.acquire().await;
        let t0 = Instant::now();
        let mut ws = match connect_gateway(&t, local, &token, &plan).await {
            Ok(ws) => ws,
            Err((kind, msg)) => {
                tally.error(kind, msg);
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return tally;
            }
        };
        counters.open.fetch_add(1, Ordering::Relaxed);
        tally.runs += 1;
        let mut check = StreamCheck::new(true);
        let end = if send_request(&mut ws, &t, &plan, &mut tally).await {
            read_run(&mut ws, t0, &plan, &mut check, &mut tally, true).await
        } else {
            RunEnd::Failed
        };
        if end != RunEnd::FirstChunk {
            if end == RunEnd::Terminal {
                tally.error(
                    "ended",
                    "the idle run ended (is the engine's token delay long enough?)",
                );
            }
            tally.lost_runs += 1;
            counters.failed.fetch_add(1, Ordering::Relaxed);
            close(ws, plan.close_timeout).await;
            counters.open.fetch_sub(1, Ordering::Relaxed);
            return tally;
        }
        ws
    };
    counters.ready.fetch_add(1, Ordering::Relaxed);
    let mut held = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(t))) => {
                    // Another chunk while idle is fine (a short delay); a terminal is not.
                    let kind = serde_json::from_str::<Value>(&t)
                        .ok()
                        .and_then(|v| v["type"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if is_terminal(&kind) || kind == "error" {
                        tally.error(format!("idle:{kind}"), format!("`{kind}` while holding"));
                        held = false;
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    tally.error("closed", "the gateway closed an idle session");
                    held = false;
                    break;
                }
            }
        }
    }
    if held {
        tally.runs_ok += 1;
    } else {
        tally.lost_runs += 1;
    }
    close(ws, plan.close_timeout).await;
    counters.open.fetch_sub(1, Ordering::Relaxed);
    tally
}

/// A streaming session straight against the engine: the bench does the handshake itself with
/// the payload the gateway would send.
pub async fn direct_streaming(
    index: usize,
    t: Arc<DirectTarget>,
    plan: Arc<Plan>,
    start_at: Instant,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
) -> Tally {
    let mut tally = Tally::default();
    tokio::time::sleep_until(start_at).await;
    let user = format!("bench-{index}");
    while Instant::now() < plan.end {
        let run_id = uuid::Uuid::new_v4().to_string();
        let config = json!({"run": {
            "run_id": run_id,
            "agent_id": t.agent_id,
            "user_id": user,
            "version": t.version,
        }})
        .to_string();
        let mut engine = t.engine.clone();
        engine.bearer = t.engine_key.as_ref().map(crate::auth::mint_engine_token);
        let (t0, opened) = {
            let _permit = gate.acquire().await;
            let t0 = Instant::now();
            let opened = engine_client::open(
                &engine,
                &run_id,
                Handshake {
                    flow: &t.flow,
                    initial_inputs: &t.initial_inputs,
                    config: &config,
                },
            )
            .await;
            (t0, opened)
        };
        tally.runs += 1;
        let mut ws = match opened {
            Ok(ws) => ws,
            Err(e) => {
                let verdict =
                    crate::relay::failure::verdict(crate::relay::failure::Failure::Engine(&e));
                tally.error(format!("engine:{}", verdict.label()), e.to_string());
                tally.lost_runs += 1;
                tokio::time::sleep(plan.retry_pause).await;
                continue;
            }
        };
        counters.open.fetch_add(1, Ordering::Relaxed);
        let mut check = StreamCheck::new(false);
        let end = read_run(&mut ws, t0, &plan, &mut check, &mut tally, false).await;
        judge(&check, &end, &plan, &mut tally);
        tally.close_us.push(close(ws, plan.close_timeout).await);
        counters.open.fetch_sub(1, Ordering::Relaxed);
        if end != RunEnd::Terminal {
            tokio::time::sleep(plan.retry_pause).await;
        }
    }
    tally
}
