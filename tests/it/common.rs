//! Shared helpers: start the reference engine and a gateway in-process on port 0, connect real
//! WebSocket clients, collect runs.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use flowgate::config::{GatewayConfig, Secret};
use flowgate::engine::{Engine, EngineConfig};
use flowgate::http::{AppState, Gateway};
use flowgate::store::Store;
use flowgate::store::files::FilesStore;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret";
/// How long a test waits for any one frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Poll `check` every 10 ms until it yields `Some`, and return that; fail naming `what` after
/// `within`. Tests wait on state with this (or [`wait_until`]), never with a fixed sleep.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Poll `check` every 10 ms until it holds; fail naming `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, within, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

pub fn token(sub: &str) -> String {
    flowgate::auth::mint_hs256(&Secret::new(SECRET), sub, Duration::from_secs(600))
}

/// A running reference engine.
pub struct TestEngine {
    pub addr: SocketAddr,
    /// The engine's counters (e.g. runs ended: a cancel seen at the engine).
    pub stats: std::sync::Arc<flowgate::engine::EngineStats>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestEngine {
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_engine(config: EngineConfig) -> TestEngine {
    let engine = Engine::build(config).await.expect("engine binds");
    let addr = engine.local_addr();
    let stats = engine.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));
    TestEngine {
        addr,
        stats,
        shutdown,
        task,
    }
}

/// A running gateway (and usually its engine).
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub engine: Option<TestEngine>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// Shut the gateway down and wait until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
    pub fn ws_url(&self, agent: &str) -> String {
        format!("ws://{}/api/chat/execute/{agent}", self.addr)
    }
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub async fn connect(&self, agent: &str, user: &str) -> Client {
        Client::connect_bearer(&self.ws_url(agent), Some(&token(user))).await
    }

    /// The run log's record of a run once it has ended (completed, failed or cancelled),
    /// waiting at most [`FRAME_WAIT`] for that.
    pub async fn ended_run(&self, run_id: &str) -> flowgate::runlog::RunInfo {
        let id = uuid::Uuid::parse_str(run_id).expect("a run id");
        let what = format!("run {run_id} ending in the run log");
        wait_for(&what, FRAME_WAIT, || async move {
            let info = self
                .state
                .runlog
                .run_owner(id)
                .await
                .expect("the run log answers");
            info.filter(|i| i.status.is_finished())
        })
        .await
    }

    /// The concatenated `llm_chunk` contents of an ended run, from the run log.
    pub async fn run_text(&self, run_id: &str) -> String {
        self.ended_run(run_id).await;
        let id = uuid::Uuid::parse_str(run_id).expect("a run id");
        let frames = self
            .state
            .runlog
            .replay(id, 0)
            .await
            .expect("the run log answers");
        frames
            .iter()
            .map(|b| serde_json::from_slice::<serde_json::Value>(b).expect("logged JSON"))
            .filter(|v| v["type"] == "llm_chunk")
            .map(|v| v["data"]["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

pub async fn spawn_gateway(
    config: GatewayConfig,
    store: Store,
    engine: Option<TestEngine>,
) -> TestApp {
    let gateway = Gateway::with_store(config, store)
        .await
        .expect("gateway binds");
    let addr = gateway.local_addr();
    let state = gateway.state().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    TestApp {
        addr,
        state,
        shutdown,
        task: Some(task),
        engine,
    }
}

/// A gateway on the embedded sample agents, with no engine of ours (the test brings its own,
/// or none).
pub async fn spawn_gateway_files(config: GatewayConfig) -> TestApp {
    spawn_gateway(config, Store::Files(FilesStore::embedded()), None).await
}

/// Engine (test config) + gateway on the embedded sample agents.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(EngineConfig::for_tests(), |_| {}).await
}

pub async fn spawn_app_with(
    engine: EngineConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> TestApp {
    let engine = spawn_engine(engine).await;
    let mut config = GatewayConfig::for_tests(engine.url());
    tweak(&mut config);
    spawn_gateway(config, Store::Files(FilesStore::embedded()), Some(engine)).await
}

/// Engine + gateway on a Postgres pool (from `#[sqlx::test]`) with `flows/` imported.
pub async fn spawn_app_pg(pool: sqlx::PgPool) -> TestApp {
    spawn_app_pg_with(pool, EngineConfig::for_tests(), |_| {}).await
}

pub async fn spawn_app_pg_with(
    pool: sqlx::PgPool,
    engine: EngineConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> TestApp {
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(&pool, &flows)
        .await
        .expect("flows/ imports");
    let store = Store::Postgres(flowgate::store::postgres::PgStore::from_pool(
        pool,
        Duration::from_secs(3),
    ));
    let engine = spawn_engine(engine).await;
    let mut config = GatewayConfig::for_tests(engine.url());
    tweak(&mut config);
    spawn_gateway(config, store, Some(engine)).await
}

/// A real WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub response: http::Response<Option<Vec<u8>>>,
    /// The close frame, once received.
    pub closed: Option<Option<CloseFrame>>,
}

impl Client {
    pub async fn connect_bearer(url: &str, token: Option<&str>) -> Client {
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Client::connect_request(req).await
    }

    pub async fn connect_request(req: http::Request<()>) -> Client {
        let (ws, response) =
            tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(req))
                .await
                .expect("connect in time")
                .expect("upgrade succeeds");
        Client {
            ws,
            response,
            closed: None,
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_owned()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON, or `None` when the socket closed (the close frame is kept).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a frame within FRAME_WAIT");
            match msg {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Text(t))) => {
                    let frame: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    // Every frame the suite receives must match the published contract.
                    crate::schema_check::assert_server_frame(&frame);
                    return Some(frame);
                }
                Some(Ok(Message::Close(f))) => {
                    self.closed = Some(f);
                    return None;
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Frames until (and including) a terminal event, or until the socket closes.
    pub async fn collect_run(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            let terminal = is_terminal(&f);
            frames.push(f);
            if terminal {
                break;
            }
        }
        frames
    }

    /// Wait for the close frame and return its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while self.closed.is_none() {
            if self.next().await.is_none() && self.closed.is_none() {
                return None;
            }
        }
        self.closed.clone().flatten().map(|f| u16::from(f.code))
    }
}

/// How a WebSocket ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The code of the close frame the peer sent (its own, or its answer to ours); `None`: no
    /// close frame came (a browser reports 1006).
    pub close_code: Option<u16>,
    /// The connection ended with an orderly TCP close after the close frames (not a reset, and
    /// not still open after the wait).
    pub clean: bool,
}

impl Client {
    /// Close as a browser's `ws.close(code)` does, then read until the connection ends: did the
    /// server answer with a close frame, and did the connection end cleanly?
    pub async fn close_and_observe(&mut self, code: u16) -> Ending {
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        // The send fails only when the server already closed; `observe_end` then reports that.
        let _ = self.ws.send(Message::Close(Some(frame))).await;
        self.observe_end().await
    }

    /// Read until the connection ends (frames in flight are skipped; tungstenite answers a
    /// server's close frame by itself) and report how it ended.
    pub async fn observe_end(&mut self) -> Ending {
        use tokio_tungstenite::tungstenite::Error as E;
        let mut close_code = self
            .closed
            .clone()
            .map(|f| f.map_or(1005, |f| u16::from(f.code)));
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    return Ending {
                        close_code,
                        clean: false,
                    };
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    close_code = Some(f.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => {}
                Ok(None) | Ok(Some(Err(E::ConnectionClosed | E::AlreadyClosed))) => {
                    return Ending {
                        close_code,
                        clean: true,
                    };
                }
                Ok(Some(Err(_))) => {
                    return Ending {
                        close_code,
                        clean: false,
                    };
                }
            }
        }
    }
}

/// The run ended with `flow_completed`.
pub fn assert_completed(frames: &[Value]) {
    assert_eq!(
        frames.last().unwrap()["type"],
        "flow_completed",
        "{frames:?}"
    );
}

/// A well-formed token for `user`, signed with a key no gateway here uses.
pub fn forged_token(user: &str) -> String {
    flowgate::auth::mint_hs256(
        &flowgate::config::Secret::new("wrong"),
        user,
        Duration::from_secs(60),
    )
}

pub fn is_terminal(f: &Value) -> bool {
    matches!(
        f["type"].as_str(),
        Some("flow_completed" | "flow_error" | "flow_cancelled")
    )
}

pub fn types(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect()
}

/// Every frame carries the same `run_id` and `seq` 1, 2, 3, … without gaps.
pub fn assert_run_stamps(frames: &[Value]) -> String {
    let run_id = frames[0]["run_id"]
        .as_str()
        .expect("run_id on the first frame")
        .to_owned();
    uuid::Uuid::parse_str(&run_id).expect("run_id is a UUID");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            f["run_id"].as_str(),
            Some(run_id.as_str()),
            "run_id of frame {i}: {f}"
        );
        assert_eq!(
            f["seq"].as_u64(),
            Some(i as u64 + 1),
            "seq of frame {i}: {f}"
        );
    }
    run_id
}

/// The concatenated `llm_chunk` text of a run.
pub fn streamed_text(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "llm_chunk")
        .filter_map(|f| f["data"]["content"].as_str())
        .collect()
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A TCP proxy the test can switch off (every connection cut, new ones refused) and on again.
pub struct Proxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let flag = up.clone();
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut rx = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Captures log lines: `tracing_subscriber::fmt().with_writer(move || capture.clone())`.
#[derive(Clone, Default)]
pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A barka token: the user is in `id` (no `sub`).
pub fn barka_token(id: impl Into<Value>) -> String {
    let id: Value = id.into();
    let claims = serde_json::json!({
        "id": id,
        "email": "someone@example.com",
        "role": "org_client",
        "exp": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
    )
    .unwrap()
}

/// A WebSocket client of another client protocol (a dialect): every text frame it reads is
/// checked by `check` (the dialect's schema).
pub struct DialectSocket {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The close code and reason, once received.
    pub close: Option<(u16, String)>,
    check: fn(&Value),
}

impl DialectSocket {
    pub async fn connect(url: &str, check: fn(&Value)) -> DialectSocket {
        DialectSocket::connect_request(url.into_client_request().unwrap(), check).await
    }

    /// Connect with a request of the test's making (extra headers).
    pub async fn connect_request(req: http::Request<()>, check: fn(&Value)) -> DialectSocket {
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("upgrade succeeds");
        DialectSocket {
            ws,
            close: None,
            check,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame (checked), or `None` once closed (the close is answered).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a frame in time")
            {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    (self.check)(&v);
                    return Some(v);
                }
                Some(Ok(Message::Close(f))) => {
                    self.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    // Send the close reply tungstenite queued (the gateway waits for it).
                    let _ = self.ws.flush().await;
                    return None;
                }
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Frames up to and including the first for which `last` holds.
    pub async fn until(&mut self, last: fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(f) = self.next().await {
            let end = last(&f);
            out.push(f);
            if end {
                return out;
            }
        }
        panic!("the socket closed mid-turn: {out:#?}");
    }
}

/// One event of an SSE response: its `id:` and `data:`.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub data: String,
}

/// The whole SSE body of `r`, parsed by eventsource-stream, after checking the transport: a 200
/// `text/event-stream` that proxies do not buffer, LF line ends only (the AG-UI parser splits
/// on `\n\n`).
pub async fn sse_body(r: reqwest::Response) -> Vec<SseEvent> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    assert_eq!(r.status(), 200, "an SSE stream");
    let h = r.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(h.get("content-encoding").is_none());
    assert!(h.contains_key("x-flowgate-run-id"));
    let body = tokio::time::timeout(FRAME_WAIT, r.bytes())
        .await
        .expect("the stream ends in time")
        .expect("the body reads");
    assert!(!body.contains(&b'\r'), "LF line ends only");
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(body)]);
    chunks
        .eventsource()
        .map(|e| {
            let e = e.expect("a well-formed SSE event");
            SseEvent {
                id: e.id,
                data: e.data,
            }
        })
        .collect()
        .await
}

/// The `x-flowgate-run-id` header of an HTTP dialect's response.
pub fn run_id_header(r: &reqwest::Response) -> String {
    r.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A reqwest client for the HTTP dialects' tests (every call bounded).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(FRAME_WAIT)
        .build()
        .unwrap()
}

/// The test database's URL for a child process: `DATABASE_URL` (the suite's server, see
/// `tests/it/main.rs`) with the fresh database's name.
pub fn child_database_url(pool: &sqlx::PgPool) -> String {
    let db = pool
        .connect_options()
        .get_database()
        .expect("#[sqlx::test] names its database")
        .to_owned();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for the tests");
    let base = base.split('?').next().unwrap_or_default();
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    format!("{}/{db}", &base[..authority_end])
}

/// Wait (3 s at most) until the app's engine has ended `n` runs: a cancel reached the engine
/// (tests give it runs far longer than that).
pub async fn engine_ended_runs(app: &TestApp, n: usize) {
    let stats = app.engine.as_ref().expect("the app's engine").stats.clone();
    wait_until("the engine ended the run", Duration::from_secs(3), || {
        let stats = stats.clone();
        async move { stats.runs_ended.load(std::sync::atomic::Ordering::SeqCst) == n }
    })
    .await;
}

/// Read a few events of an SSE response, then close it: its run must end cancelled, at the
/// engine too.
pub async fn assert_closing_the_stream_cancels(app: &TestApp, r: reqwest::Response) {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let run_id = run_id_header(&r);
    let mut stream = r.bytes_stream().eventsource();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    let info = app.ended_run(&run_id).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Cancelled);
    engine_ended_runs(app, 1).await;
}

/// The address a `flowgate serve` child logs (`"gateway listening"`, JSON logs on its standard
/// error, piped); its later log lines are drained in the background.
pub async fn listening_address(child: &mut tokio::process::Child) -> String {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stderr = child
        .stderr
        .take()
        .expect("the child's standard error is piped");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("gateway listening") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
                return v["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .expect("the gateway logs its address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}
