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
    #[serde(default, borrow)]
    run_id: Option<Cow<'a, str>>,
}

/// How reading one run ended.
#[derive(Debug, PartialEq)]
enum RunEnd {
    Terminal,
    FirstChunk,
    Failed,
}

/// The next text frame of a run, or how reading ended (recorded in `tally`).
async fn next_text<S>(
    ws: &mut WebSocketStream<S>,
    plan: &Plan,
    tally: &mut Tally,
) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, RunEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg = match tokio::time::timeout(plan.frame_timeout, ws.next()).await {
            Err(_) => {
                tally.error(
                    "timeout",
                    format!("no frame within {:?}", plan.frame_timeout),
                );
                return Err(RunEnd::Failed);
            }
            Ok(None) => {
                tally.error("closed", "the socket ended before the terminal event");
                return Err(RunEnd::Failed);
            }
            Ok(Some(Err(e))) => {
                tally.error("socket", format!("socket error: {e}"));
                return Err(RunEnd::Failed);
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => return Ok(t),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Binary(_) => {
                tally.error("protocol", "a binary frame");
                return Err(RunEnd::Failed);
            }
            Message::Close(f) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                tally.error(
                    format!("closed:{code}"),
                    format!("closed with {code} before the terminal event"),
                );
                return Err(RunEnd::Failed);
            }
        }
    }
}

/// When a client received which `seq`s of a run: `(first, last, at)` per frame (`first <
/// last` for a merged chunk frame).
pub type Trace = Vec<(u64, u64, Instant)>;

/// One run's frames as they arrive: samples and errors into the tally, the stream check, and
/// (cluster mode) the receive times by `seq` and the run id of the first frame.
struct RunRead<'a> {
    t0: Instant,
    plan: &'a Plan,
    check: &'a mut StreamCheck,
    tally: &'a mut Tally,
    /// Stop at the first `llm_chunk` (idle mode).
    first_chunk: bool,
    started: Option<(Instant, bool)>,
    trace: Option<&'a mut Trace>,
    /// Told the run id of the first frame that has one.
    run_id: Option<tokio::sync::oneshot::Sender<String>>,
}

impl<'a> RunRead<'a> {
    fn new(
        t0: Instant,
        plan: &'a Plan,
        check: &'a mut StreamCheck,
        tally: &'a mut Tally,
    ) -> RunRead<'a> {
        RunRead {
            t0,
            plan,
            check,
            tally,
            first_chunk: false,
            started: None,
            trace: None,
            run_id: None,
        }
    }

    /// Read frames until the run ends.
    async fn run<S>(&mut self, ws: &mut WebSocketStream<S>) -> RunEnd
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let text = match next_text(ws, self.plan, self.tally).await {
                Ok(t) => t,
                Err(end) => return end,
            };
            if let Some(end) = self.frame(&text, Instant::now(), epoch_us()) {
                return end;
            }
        }
    }

    /// Account for one text frame received at `now` (`wall`: epoch microseconds); `Some` when
    /// the run ended with it.
    fn frame(&mut self, text: &str, now: Instant, wall: u64) -> Option<RunEnd> {
        let plan = self.plan;
        let tally = &mut *self.tally;
        let env: Envelope = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(e) => {
                tally.error("protocol", format!("a frame that is not an event: {e}"));
                return Some(RunEnd::Failed);
            }
        };
        let kind = env.kind.as_ref();
        self.check.frame(kind, env.seq, env.merged_seqs);
        if let (Some(trace), Some(seq)) = (self.trace.as_deref_mut(), env.seq) {
            let first = env.merged_seqs.map_or(seq, |[a, _]| a);
            trace.push((first, seq, now));
        }
        if let Some(id) = env.run_id.as_deref()
            && let Some(tx) = self.run_id.take()
        {
            let _ = tx.send(id.to_owned());
        }
        let in_window = now >= plan.warm_end && now <= plan.end;
        if in_window {
            tally.frames_in_window += 1;
        }
        if env.merged_seqs.is_some() {
            tally.merged_frames += 1;
        }
        if kind == "flow_started" && self.started.is_none() {
            self.started = Some((now, in_window));
            if in_window {
                tally.setup_us.push((now - self.t0).as_micros() as u64);
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
                let v: Value = serde_json::from_str(text).unwrap_or_default();
                let code = v["data"]["code"].as_str().unwrap_or("none");
                let what = v["data"]["error"].as_str().unwrap_or("");
                tally.error(format!("{kind}:{code}"), format!("{kind} {code}: {what}"));
            }
            "flow_cancelled" => tally.error("flow_cancelled", "the run was cancelled"),
            _ => {}
        }
        if is_terminal(kind) {
            if let Some((at, true)) = self.started {
                tally.run_us.push((now - at).as_micros() as u64);
            }
            return Some(RunEnd::Terminal);
        }
        if self.first_chunk && kind == "llm_chunk" {
            return Some(RunEnd::FirstChunk);
        }
        None
    }
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
    let mut r = RunRead::new(t0, plan, check, tally);
    r.first_chunk = first_chunk;
    r.run(ws).await
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

/// Where the two clients of a cluster session connect: the run's owner and the follower.
#[derive(Debug)]
pub struct ClusterTarget {
    pub owner: Arc<GatewayTarget>,
    pub follower: Arc<GatewayTarget>,
}

/// What the cluster sessions saw: each side's own tally, and the follower measured against
/// the owner's client event by event.
#[derive(Debug, Default)]
pub struct ClusterTally {
    /// The clients that started the runs on the owner.
    pub owner: Tally,
    /// The clients that followed the runs on the other gateway (`resume`, `after_seq` 0).
    pub follower: Tally,
    /// Follower receive − owner-client receive of one `seq`, microseconds (events the
    /// owner-client received in the window after the follow had started).
    pub follow_us: Vec<u64>,
    /// The owner-client's first frame → the follower's first frame, microseconds (runs that
    /// started in the window): reading the run id, the resume, the mirror's start.
    pub attach_us: Vec<u64>,
    /// Events of `follow_us` the follower received first (counted as 0).
    pub follower_first: u64,
    /// Events the owner-client had before the follower's first frame: delivered to the
    /// follower from the stream's history, not live; not in `follow_us`.
    pub catch_up: u64,
    /// Resumes answered "unknown run" (the owner had not yet written the run's row) and sent
    /// again.
    pub resume_retries: u64,
    /// Runs both clients read to the end, compared `seq` by `seq`.
    pub compared: u64,
    /// Of those, runs whose two `seq` sequences differ (also counted as lost runs and errors).
    pub mismatched: u64,
}

impl ClusterTally {
    pub fn merge(&mut self, o: ClusterTally) {
        self.owner.merge(o.owner);
        self.follower.merge(o.follower);
        self.follow_us.extend(o.follow_us);
        self.attach_us.extend(o.attach_us);
        self.follower_first += o.follower_first;
        self.catch_up += o.catch_up;
        self.resume_retries += o.resume_retries;
        self.compared += o.compared;
        self.mismatched += o.mismatched;
    }
}

impl super::stats::Merge for ClusterTally {
    fn merge_from(&mut self, other: ClusterTally) {
        self.merge(other);
    }

    fn phase_error(&mut self, kind: &str, message: String) {
        self.owner.error(kind, message);
    }
}

/// Every `seq` of a trace with its receive time (a merged frame's time for each seq it
/// covers); `None` unless the seqs are exactly 1, 2, … in order.
fn by_seq(trace: &Trace) -> Option<Vec<Instant>> {
    let mut out = Vec::new();
    for &(first, last, at) in trace {
        if first != out.len() as u64 + 1 || last < first {
            return None;
        }
        for _ in first..=last {
            out.push(at);
        }
    }
    Some(out)
}

/// Compare the follower's run with the owner-client's: the same `seq`s, and the follower's
/// delay per event.
fn compare(owner: &Trace, follower: &Trace, plan: &Plan, t: &mut ClusterTally) {
    t.compared += 1;
    let (Some(a), Some(b)) = (by_seq(owner), by_seq(follower)) else {
        // A gap on either side is already a lost run of that side.
        return;
    };
    if a.len() != b.len() {
        t.mismatched += 1;
        t.follower.lost_runs += 1;
        t.follower.error(
            "follow:mismatch",
            format!(
                "the follower got seq 1..{} where the owner's client got 1..{}",
                b.len(),
                a.len()
            ),
        );
        return;
    }
    let Some(&follow_start) = b.first() else {
        return;
    };
    if let Some(&first) = a.first()
        && first >= plan.warm_end
        && first <= plan.end
    {
        t.attach_us
            .push(follow_start.saturating_duration_since(first).as_micros() as u64);
    }
    for (&at_owner, &at_follower) in a.iter().zip(&b) {
        if at_owner < plan.warm_end || at_owner > plan.end {
            continue;
        }
        if at_owner < follow_start {
            t.catch_up += 1;
            continue;
        }
        if at_follower < at_owner {
            t.follower_first += 1;
        }
        t.follow_us
            .push(at_follower.saturating_duration_since(at_owner).as_micros() as u64);
    }
}

/// The follower's side of a run: wait for the run id, `resume` it from the start on the
/// follower gateway (again while it answers that the run is unknown: the owner writes the
/// run's row in the background), then read it to the end.
async fn follow_run(
    ws: &mut Ws,
    run_id: tokio::sync::oneshot::Receiver<String>,
    plan: &Plan,
    check: &mut StreamCheck,
    t: &mut ClusterTally,
    trace: &mut Trace,
) -> RunEnd {
    let run_id = match tokio::time::timeout(plan.frame_timeout, run_id).await {
        Ok(Ok(id)) => id,
        // The owner's side failed before a frame (its error is counted there).
        Ok(Err(_)) => return RunEnd::Failed,
        Err(_) => {
            t.follower.error(
                "timeout",
                format!("no run id from the owner within {:?}", plan.frame_timeout),
            );
            return RunEnd::Failed;
        }
    };
    let resume = json!({"type": "resume", "run_id": run_id, "after_seq": 0}).to_string();
    let deadline = Instant::now() + plan.frame_timeout;
    let mut pause = Duration::from_millis(2);
    let first = loop {
        let t0 = Instant::now();
        let sent = tokio::time::timeout(plan.frame_timeout, ws.send(Message::text(resume.clone())));
        match sent.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                t.follower.error("send", format!("sending the resume: {e}"));
                return RunEnd::Failed;
            }
            Err(_) => {
                t.follower.error("timeout", "sending the resume timed out");
                return RunEnd::Failed;
            }
        }
        let text = match next_text(ws, plan, &mut t.follower).await {
            Ok(text) => text,
            Err(end) => return end,
        };
        let is_error = serde_json::from_str::<Envelope>(&text).is_ok_and(|e| e.kind == "error");
        let unknown = is_error && text.contains("is unknown") && Instant::now() + pause < deadline;
        if is_error && !unknown {
            // The resume was refused (an `error` frame is not part of a run): nothing follows.
            let mut r = RunRead::new(t0, plan, check, &mut t.follower);
            r.frame(&text, Instant::now(), epoch_us());
            return RunEnd::Failed;
        }
        if !unknown {
            break (text, t0);
        }
        t.resume_retries += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let (text, t0) = first;
    let mut r = RunRead::new(t0, plan, check, &mut t.follower);
    r.trace = Some(trace);
    if let Some(end) = r.frame(&text, Instant::now(), epoch_us()) {
        return end;
    }
    r.run(ws).await
}

/// A cluster session: runs back to back until `plan.end`; each run is started on the owner
/// gateway and, at the same time, followed from its first frame by a second client on the
/// follower gateway (same user), one connection per run on each.
pub async fn cluster_streaming(
    index: usize,
    t: Arc<ClusterTarget>,
    plan: Arc<Plan>,
    start_at: Instant,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
) -> ClusterTally {
    let mut out = ClusterTally::default();
    let token = session_token(&t.owner, index);
    let (local_a, local_b) = (local_ip(&t.owner, index), local_ip(&t.follower, index));
    tokio::time::sleep_until(start_at).await;
    while Instant::now() < plan.end {
        let (t0, connected) = {
            let _permit = gate.acquire().await;
            let t0 = Instant::now();
            let a = connect_gateway(&t.owner, local_a, &token, &plan).await;
            let b = match &a {
                Ok(_) => Some(connect_gateway(&t.follower, local_b, &token, &plan).await),
                Err(_) => None,
            };
            (t0, (a, b))
        };
        let (mut wa, mut wb) = match connected {
            (Ok(a), Some(Ok(b))) => (a, b),
            (a, b) => {
                if let Err((kind, msg)) = a {
                    out.owner.error(kind, msg);
                }
                if let Some(Err((kind, msg))) = b {
                    out.follower.error(kind, msg);
                }
                tokio::time::sleep(plan.retry_pause).await;
                continue;
            }
        };
        counters.open.fetch_add(2, Ordering::Relaxed);
        out.owner.runs += 1;
        out.follower.runs += 1;
        let (mut check_a, mut check_b) = (StreamCheck::new(true), StreamCheck::new(true));
        let (mut trace_a, mut trace_b) = (Trace::new(), Trace::new());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut follower = ClusterTally::default();
        let owner_side = async {
            if !send_request(&mut wa, &t.owner, &plan, &mut out.owner).await {
                return RunEnd::Failed;
            }
            let mut r = RunRead::new(t0, &plan, &mut check_a, &mut out.owner);
            r.trace = Some(&mut trace_a);
            r.run_id = Some(tx);
            r.run(&mut wa).await
        };
        let follower_side = follow_run(
            &mut wb,
            rx,
            &plan,
            &mut check_b,
            &mut follower,
            &mut trace_b,
        );
        let (end_a, end_b) = tokio::join!(owner_side, follower_side);
        out.merge(follower);
        judge(&check_a, &end_a, &plan, &mut out.owner);
        judge(&check_b, &end_b, &plan, &mut out.follower);
        if end_a == RunEnd::Terminal && end_b == RunEnd::Terminal {
            compare(&trace_a, &trace_b, &plan, &mut out);
        }
        let (ca, cb) = tokio::join!(close(wa, plan.close_timeout), close(wb, plan.close_timeout));
        out.owner.close_us.push(ca);
        out.follower.close_us.push(cb);
        counters.open.fetch_sub(2, Ordering::Relaxed);
        if end_a != RunEnd::Terminal || end_b != RunEnd::Terminal {
            tokio::time::sleep(plan.retry_pause).await;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(warm_end: Instant, end: Instant) -> Plan {
        Plan {
            warm_end,
            end,
            events: 1,
            keep_connection: false,
            connect_timeout: Duration::from_secs(1),
            frame_timeout: Duration::from_secs(1),
            close_timeout: Duration::from_secs(1),
            retry_pause: Duration::from_millis(1),
            max_frame_bytes: 1024,
            read_buffer_bytes: 1024,
        }
    }

    #[test]
    fn merged_frames_give_every_seq_they_cover_their_time_and_gaps_are_refused() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let seqs = by_seq(&vec![(1, 1, ms(1)), (2, 4, ms(5)), (5, 5, ms(6))]).unwrap();
        assert_eq!(seqs, [ms(1), ms(5), ms(5), ms(5), ms(6)]);
        assert!(by_seq(&vec![(1, 1, ms(1)), (3, 3, ms(2))]).is_none());
        assert!(by_seq(&vec![(2, 2, ms(1))]).is_none());
    }

    #[test]
    fn the_follow_is_measured_per_seq_live_frames_only_and_a_difference_is_lost() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let p = plan(ms(0), ms(1_000));
        // The follower starts at 12 ms: seq 1 and 2 (owner at 10 and 11 ms) are catch-up.
        let owner: Trace = vec![
            (1, 1, ms(10)),
            (2, 2, ms(11)),
            (3, 3, ms(20)),
            (4, 4, ms(30)),
        ];
        let follower: Trace = vec![(1, 2, ms(12)), (3, 3, ms(21)), (4, 4, ms(29))];
        let mut c = ClusterTally::default();
        compare(&owner, &follower, &p, &mut c);
        assert_eq!(c.compared, 1);
        assert_eq!(c.mismatched, 0);
        assert_eq!(c.catch_up, 2);
        assert_eq!(c.follow_us, [1_000, 0]);
        assert_eq!(c.follower_first, 1);
        assert_eq!(c.attach_us, [2_000]);

        let short: Trace = vec![(1, 3, ms(12))];
        let mut c = ClusterTally::default();
        compare(&owner, &short, &p, &mut c);
        assert_eq!((c.mismatched, c.follower.lost_runs), (1, 1));
        assert_eq!(c.follower.errors["follow:mismatch"], 1);
        assert!(c.follow_us.is_empty());

        // Outside the window: compared, not sampled.
        let mut c = ClusterTally::default();
        compare(&owner, &follower, &plan(ms(100), ms(200)), &mut c);
        assert_eq!(
            (c.compared, c.follow_us.len(), c.attach_us.len()),
            (1, 0, 0)
        );
    }
}
