//! `flowgate bench`: the benchmark harness.
//!
//! Owns: starting a reference engine and a gateway as child processes of a flowgate executable
//! (or targeting given URLs), driving N concurrent client sessions through the gateway and then
//! directly against the engine, and reporting setup latency, per-event latency, throughput, the
//! gateway's CPU and memory, errors and lost events, each judged against the targets of
//! `docs/benchmarks.md`. Called by the `bench` subcommand through [`run`]; the smoke test calls
//! [`execute`] for the [`Report`].
//!
//! Phases (streaming): warm-up + measured window through the gateway, then the same again
//! directly against the engine (the bench performs the engine handshake itself with the flow
//! payload the gateway would send), so "added" = gateway − direct from one invocation; with
//! `--nginx`, the direct phase's clients once more through an nginx child process proxying the
//! engine (the reference relay: the same frames as opaque bytes, one worker process); with
//! `--cluster`, a last phase on two gateways and NATS (issue 16; see the section of
//! `cluster_phase_run`). In `--idle` mode the engine's scripted model waits `--idle-delay`
//! between chunks, every session holds one run open, and the gateway's RSS is read with all
//! sessions open.
//!
//! Numbers are printed, never asserted (docs/style.md 13): a missed target says `MISSED`.

pub mod args;
pub mod error;
pub mod procs;
pub mod report;
pub mod scrape;
pub mod session;
pub mod stats;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::relay::engine_client::EngineTarget;
use crate::secret::Secret;
pub use args::BenchArgs;
pub use error::BenchError;
use procs::ChildProc;
pub use report::Report;
use report::{Added, ClusterReport, ConfigEcho, CpuReport, PathReport, RssReport};
use session::{ClusterTarget, Counters, DirectTarget, GatewayTarget, Plan};
use stats::{Merge, Tally, summarize};

/// `flowgate bench`: run, print the report, exit 0 when there were no errors and no lost events
/// (missed targets are reported, not an exit code), 1 otherwise, 2 when the bench could not run.
pub async fn run(args: BenchArgs) -> ExitCode {
    match execute(&args).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("flowgate bench: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", report.markdown());
            }
            if report.errors == 0 && report.lost_runs == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("flowgate bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// The handshake payload the gateway would send for the agent.
struct Payload {
    flow: String,
    initial_inputs: String,
    version: &'static str,
}

async fn load_payload(args: &BenchArgs) -> Result<Payload, BenchError> {
    let w = |e: String| BenchError::Workflow(e);
    let store = crate::store::files::FilesStore::open(&args.flows_dir)
        .map_err(|e| w(format!("{}: {e}", args.flows_dir.display())))?;
    let agent = store
        .agent(&args.agent)
        .await
        .map_err(|e| w(e.to_string()))?
        .ok_or_else(|| {
            w(format!(
                "no agent `{}` in {}",
                args.agent,
                args.flows_dir.display()
            ))
        })?;
    let version = agent.default_version();
    let stored = store
        .workflow(&args.agent, version)
        .await
        .map_err(|e| w(e.to_string()))?
        .ok_or_else(|| {
            w(format!(
                "agent `{}` has no {} workflow",
                args.agent,
                version.as_str()
            ))
        })?;
    let converted = crate::workflow::convert(&stored.workflow).map_err(|e| w(e.to_string()))?;
    let flow = crate::workflow::render(&converted.flow, args.flow_format);
    let initial_inputs =
        crate::workflow::initial_inputs(&converted.flow, Some(&args.message), None, None)
            .expect("a message alone always makes initial inputs")
            .to_string();
    Ok(Payload {
        flow,
        initial_inputs,
        version: version.as_str(),
    })
}

/// `ws://host:port[/…]` → the socket address and the base URL.
async fn resolve(url: &str) -> Result<(SocketAddr, String), BenchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| BenchError::Args(format!("`{url}` is not a URL: {e}")))?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some("ws") | Some("http") => ("ws", 80),
        _ => {
            return Err(BenchError::Args(format!(
                "`{url}`: only ws:// and http:// URLs can be benchmarked"
            )));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| BenchError::Args(format!("`{url}` has no host")))?;
    let port = uri.port_u16().unwrap_or(default_port);
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| BenchError::Args(format!("`{url}`: cannot resolve {host}")))?;
    Ok((
        addr,
        format!("{scheme}://{}", uri.authority().expect("has host")),
    ))
}

fn random_secret() -> Secret {
    Secret::new(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// nginx's `worker_connections` for `sessions` clients: 8 per session + 1,024, at most the
/// open-files limit less a margin for nginx's own files.
fn nginx_worker_connections(sessions: usize, nofile: Option<u64>) -> usize {
    let want = sessions.saturating_mul(8).saturating_add(1024);
    match nofile.and_then(|n| usize::try_from(n).ok()) {
        Some(limit) => want.min(limit.saturating_sub(64).max(sessions * 2 + 64)),
        None => want,
    }
}

fn env_pair(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

/// The settings of a gateway the bench starts (before `--database-url`, NATS and
/// `--gateway-env`).
fn gateway_env(
    args: &BenchArgs,
    addr: SocketAddr,
    engine_url: &str,
    secret: &Secret,
    engine_key: Option<&Secret>,
) -> Vec<(String, String)> {
    let mut env = vec![
        env_pair("FLOWGATE_LISTEN", addr),
        env_pair("FLOWGATE_ENGINE_URL", engine_url),
        env_pair("FLOWGATE_JWT_SECRET", secret.expose()),
        // The bench's clients come from few addresses at a high rate.
        env_pair("FLOWGATE_UPGRADES_PER_SECOND", 0),
        env_pair("FLOWGATE_CLIENT_MESSAGES_PER_SECOND", 0),
        env_pair("FLOWGATE_MAX_SESSIONS", args.sessions.max(10_000) + 64),
        // Every bench client comes from 127.0.0.1.
        env_pair("FLOWGATE_MAX_CONNECTIONS_PER_ADDRESS", 0),
        env_pair("FLOWGATE_MAX_CONNECTIONS", args.sessions.max(10_000) + 128),
    ];
    if let Some(key) = engine_key {
        env.push(env_pair("FLOWGATE_ENGINE_KEY", key.expose()));
    }
    env
}

/// The clients' view of a gateway at `addr` (`base`: `ws://host:port`).
fn gateway_target(
    args: &BenchArgs,
    addr: SocketAddr,
    base: &str,
    local_ips: Vec<IpAddr>,
    jwt_secret: Secret,
) -> Arc<GatewayTarget> {
    Arc::new(GatewayTarget {
        addr,
        url: format!("{base}/api/chat/execute/{}", args.agent),
        local_ips,
        request: serde_json::json!({"message": args.message}).to_string(),
        jwt_secret,
        token_ttl: args.warmup + args.duration + args.ramp_timeout + Duration::from_secs(3600),
    })
}

/// The `--database-url` database.
struct Database {
    url: Secret,
    /// The URL without password and parameters: `postgres://user@host:port/dbname`.
    shown: String,
    /// `host:port/dbname`.
    place: String,
    /// The command that creates the database.
    createdb: String,
}

impl Database {
    /// Parse `url` and describe it without its password (nor any parameter: a `password=` may
    /// hide there too).
    fn describe(url: &Secret) -> Result<Database, BenchError> {
        let options: sqlx::postgres::PgConnectOptions = url.expose().parse().map_err(|_| {
            // The parse error may quote the URL and its password: not shown.
            BenchError::Args(
                "--database-url: not a valid Postgres URL (expected \
                 postgres://user@host:port/dbname)"
                    .into(),
            )
        })?;
        let host = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None if options.get_host().contains(':') && !options.get_host().starts_with('[') => {
                format!("[{}]", options.get_host())
            }
            None => options.get_host().to_owned(),
        };
        // Postgres's default database is the user's name.
        let db = options.get_database().unwrap_or(options.get_username());
        let place = format!("{host}:{}/{db}", options.get_port());
        let user = options.get_username();
        let createdb_host = options
            .get_socket()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| options.get_host().to_owned());
        Ok(Database {
            url: url.clone(),
            shown: format!("postgres://{user}@{place}"),
            createdb: format!(
                "createdb -h {createdb_host} -p {} -U {user} {db}",
                options.get_port()
            ),
            place,
        })
    }

    /// Run the migrations and import `--flows-dir` (the library's `flowgate agents import`),
    /// then release the connections.
    async fn import(&self, args: &BenchArgs) -> Result<(), BenchError> {
        use crate::store::StoreError;
        use crate::store::import::{ImportError, RowChange, import_dir};
        let why = |e: &StoreError| match e {
            StoreError::Unavailable { what, .. } => what.clone(),
            other => other.to_string(),
        };
        progress(&format!("database: connecting to {}", self.shown));
        let pool = crate::store::postgres::connect_pool(&self.url, 2, args.connect_timeout)
            .await
            .map_err(|e| {
                let cause = why(&e);
                let fix = if cause.contains("does not exist") {
                    format!(
                        "create it first (`{}`) or pass an existing database",
                        self.createdb
                    )
                } else {
                    "start Postgres or pass a reachable URL".to_owned()
                };
                BenchError::Database(format!(
                    "--database-url: cannot connect to {}: {cause}; {fix}",
                    self.shown
                ))
            })?;
        let result = async {
            crate::store::postgres::migrate(&pool, crate::store::import::IMPORT_TIMEOUT)
                .await
                .map_err(|e| {
                    BenchError::Database(format!(
                        "--database-url {}: the migrations failed: {}; check that the user may \
                         create tables in that database",
                        self.shown,
                        why(&e)
                    ))
                })?;
            import_dir(&pool, &args.flows_dir)
                .await
                .map_err(|e| match e {
                    ImportError::Folder(e) => {
                        BenchError::Workflow(format!("{}: {e}", args.flows_dir.display()))
                    }
                    ImportError::Open(sentence) => BenchError::Database(sentence),
                    ImportError::Database(e) => BenchError::Database(format!(
                        "--database-url {}: importing {} failed (nothing was written): {}",
                        self.shown,
                        args.flows_dir.display(),
                        why(&e)
                    )),
                })
        }
        .await;
        let _ = tokio::time::timeout(args.close_timeout, pool.close()).await;
        let report = result?;
        let rows = report
            .agents
            .iter()
            .flat_map(|a| [a.agent, a.published, a.unpublished]);
        let count = |want: RowChange| rows.clone().filter(|&c| c == want).count();
        progress(&format!(
            "database: imported {} agents from {} into {} ({} rows created, {} updated, {} \
             unchanged)",
            report.agents.len(),
            args.flows_dir.display(),
            self.place,
            count(RowChange::Created),
            count(RowChange::Updated),
            count(RowChange::Unchanged),
        ));
        Ok(())
    }
}

/// How many loopback addresses the client sockets need.
fn local_addr_count(args: &BenchArgs) -> usize {
    if args.local_addrs > 0 {
        return args.local_addrs.min(254);
    }
    let ports = (procs::ephemeral_ports() * 9 / 10).max(1) as f64;
    // A connection per run leaves a TIME_WAIT entry for 60 s on one side: count them too.
    let per_run = (args.interval * args.events as u32).max(Duration::from_millis(10));
    let connections = if args.idle || args.keep_connection {
        args.sessions as f64
    } else {
        args.sessions as f64 * (1.0 + 60.0 / per_run.as_secs_f64())
    };
    ((connections / ports).ceil() as usize).clamp(1, 64)
}

/// The processes' readings at one instant.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    /// The process between the clients and the engine: the gateway, or nginx.
    relay: Option<procs::ProcSample>,
    engine: Option<procs::ProcSample>,
    /// This process (the clients).
    me: Option<procs::ProcSample>,
    open: usize,
}

fn read(relay_pid: Option<u32>, engine_pid: Option<u32>, counters: &Counters) -> Reading {
    Reading {
        at: Instant::now(),
        relay: relay_pid.and_then(procs::sample),
        engine: engine_pid.and_then(procs::sample),
        me: procs::sample(std::process::id()),
        open: counters.open.load(Ordering::Relaxed),
    }
}

/// What one phase measured.
struct PhaseResult {
    tally: Tally,
    window_s: f64,
    start: Reading,
    end: Reading,
}

fn cpu_seconds(
    a: Option<procs::ProcSample>,
    b: Option<procs::ProcSample>,
    tck: u64,
) -> Option<f64> {
    Some(b?.cpu_ticks.saturating_sub(a?.cpu_ticks) as f64 / tck as f64)
}

/// Wait for every session (bounded) and merge their tallies.
async fn collect<T: Merge>(mut set: JoinSet<T>, deadline: Instant) -> T {
    let mut total = T::default();
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(t))) => total.merge_from(t),
            Ok(Some(Err(e))) => total.phase_error("session_panicked", e.to_string()),
            Ok(None) => break,
            Err(_) => {
                let stuck = set.len();
                set.abort_all();
                for _ in 0..stuck {
                    total.phase_error("session_stuck", "a session did not finish in time".into());
                }
                break;
            }
        }
    }
    total
}

enum PathKind {
    Gateway(Arc<GatewayTarget>),
    Direct(Arc<DirectTarget>),
}

fn plan(args: &BenchArgs, warm_end: Instant, end: Instant) -> Plan {
    Plan {
        warm_end,
        end,
        events: args.events as u64,
        keep_connection: args.keep_connection,
        connect_timeout: args.connect_timeout,
        frame_timeout: args.frame_timeout,
        close_timeout: args.close_timeout,
        retry_pause: args.retry_pause,
        max_frame_bytes: args.max_frame_bytes,
        read_buffer_bytes: args.client_read_buffer_bytes,
    }
}

/// The timing and shared state of a streaming phase: it starts in 100 ms; samples count in
/// [start + warm-up, start + warm-up + duration].
struct Window {
    start: Instant,
    warm_end: Instant,
    end: Instant,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
}

impl Window {
    fn new(args: &BenchArgs) -> Window {
        let start = Instant::now() + Duration::from_millis(100);
        let warm_end = start + args.warmup;
        let end = warm_end + args.duration;
        Window {
            start,
            warm_end,
            end,
            plan: Arc::new(plan(args, warm_end, end)),
            counters: Arc::new(Counters::default()),
            gate: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
        }
    }
}

/// One streaming phase: sessions start staggered over one interval, run back to back; the
/// window is [start + warm-up, start + warm-up + duration]. `relay_pid`: the process sampled
/// between client and engine (the gateway, nginx, or none for the direct path).
async fn streaming_phase(
    args: &BenchArgs,
    path: PathKind,
    relay_pid: Option<u32>,
    engine_pid: Option<u32>,
) -> PhaseResult {
    let Window {
        start,
        warm_end,
        end,
        plan,
        counters,
        gate,
    } = Window::new(args);
    let mut set = JoinSet::new();
    for i in 0..args.sessions {
        let start_at = start + args.interval.mul_f64(i as f64 / args.sessions as f64);
        let (plan, gate, counters) = (plan.clone(), gate.clone(), counters.clone());
        match &path {
            PathKind::Gateway(t) => set.spawn(session::gateway_streaming(
                i,
                t.clone(),
                plan,
                start_at,
                gate,
                counters,
            )),
            PathKind::Direct(t) => set.spawn(session::direct_streaming(
                i,
                t.clone(),
                plan,
                start_at,
                gate,
                counters,
            )),
        };
    }
    tokio::time::sleep_until(warm_end).await;
    let first = read(relay_pid, engine_pid, &counters);
    tokio::time::sleep_until(end).await;
    let last = read(relay_pid, engine_pid, &counters);
    // A run in flight at the end finishes (it is checked for errors and lost events).
    let run_len = args.interval * args.events as u32;
    let deadline = Instant::now()
        + run_len
        + args.frame_timeout
        + args.connect_timeout * 2
        + args.close_timeout;
    let tally = collect(set, deadline).await;
    PhaseResult {
        tally,
        window_s: (last.at - first.at).as_secs_f64(),
        start: first,
        end: last,
    }
}

/// The idle phase: every session holds one waiting run; the reading is taken after all are
/// open and `--warmup` has passed, then the sessions are held for `--duration`.
async fn idle_phase(
    args: &BenchArgs,
    target: Arc<GatewayTarget>,
    gw_pid: Option<u32>,
    engine_pid: Option<u32>,
    notes: &mut Vec<String>,
) -> PhaseResult {
    let start = Instant::now();
    // Everything counts: the window is the whole phase.
    let plan = Arc::new(plan(args, start, start + Duration::from_secs(86_400)));
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let mut set = JoinSet::new();
    for i in 0..args.sessions {
        set.spawn(session::gateway_idle(
            i,
            target.clone(),
            plan.clone(),
            gate.clone(),
            counters.clone(),
            stop.clone(),
        ));
    }
    let ramp_deadline = start + args.ramp_timeout;
    loop {
        let done = counters.ready.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
        if done >= args.sessions {
            break;
        }
        if Instant::now() >= ramp_deadline {
            notes.push(format!(
                "only {done} of {} sessions were settled after --ramp-timeout {:?}",
                args.sessions, args.ramp_timeout
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(&format!(
        "{} sessions holding ({} failed) after {:.1} s",
        counters.ready.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(args.warmup).await;
    let first = read(gw_pid, engine_pid, &counters);
    tokio::time::sleep(args.duration).await;
    let last = read(gw_pid, engine_pid, &counters);
    stop.cancel();
    let deadline = Instant::now() + args.close_timeout * 2 + Duration::from_secs(5);
    let tally = collect(set, deadline).await;
    PhaseResult {
        tally,
        window_s: (last.at - first.at).as_secs_f64(),
        start: first,
        end: last,
    }
}

/// The processes the bench started (killed at the end, also on an early return).
#[derive(Default)]
struct Children {
    engine: Option<ChildProc>,
    gateway: Option<ChildProc>,
    nginx: Option<ChildProc>,
    /// nginx's prefix folder (configuration, pid file, logs, temp paths); removed after nginx
    /// stopped.
    nginx_dir: Option<procs::TempDir>,
    /// `--cluster`: the two gateways (owner, follower).
    cluster: Vec<ChildProc>,
    /// `--cluster`: the nats-server, and its JetStream store (removed after it stopped).
    nats: Option<ChildProc>,
    nats_dir: Option<procs::TempDir>,
}

impl Children {
    async fn stop(self, wait: Duration) {
        for c in self.cluster.into_iter().chain(
            [self.nats, self.nginx, self.gateway, self.engine]
                .into_iter()
                .flatten(),
        ) {
            c.stop(wait).await;
        }
        drop(self.nginx_dir);
        drop(self.nats_dir);
    }
}

/// The nginx of `--nginx`, found before anything starts.
struct Nginx {
    bin: PathBuf,
    build: procs::NginxBuild,
}

async fn find_nginx(args: &BenchArgs) -> Result<Option<Nginx>, BenchError> {
    let Some(explicit) = &args.nginx else {
        return Ok(None);
    };
    let bin = procs::find_nginx(explicit.as_deref())?;
    let build = procs::nginx_build(&bin, args.startup_timeout).await?;
    Ok(Some(Nginx { bin, build }))
}

/// Start nginx proxying `engine_url` on a free loopback port; returns its address and the
/// `ws://` base URL the direct clients use through it.
async fn start_nginx(
    args: &BenchArgs,
    nginx: &Nginx,
    engine_url: &str,
    nofile: Option<u64>,
    logs: Option<&Path>,
    children: &mut Children,
) -> Result<(u32, String), BenchError> {
    let (upstream, path) = procs::upstream_of(engine_url)?;
    let dir = procs::TempDir::new("flowgate-bench-nginx")?;
    let listen = procs::free_port()?;
    let conf = procs::nginx_conf(&procs::NginxConf {
        dir: dir.path(),
        listen,
        upstream: &upstream,
        nofile,
        // Two connections per run, plus the ones still closing when the next run of a session
        // connects (one socket per run): 2 × sessions is not enough under churn ("worker_connections
        // are not enough, reusing connections" and reset runs at 1,000 sessions). Bounded by the
        // open-files limit (each connection is a descriptor).
        worker_connections: nginx_worker_connections(args.sessions, nofile),
        temp_modules: &nginx.build.temp_modules,
    });
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)
        .map_err(|e| BenchError::Setup(format!("cannot write {}: {e}", conf_path.display())))?;
    let mut argv = vec![
        "-p".to_owned(),
        format!("{}/", dir.path().display()),
        "-c".to_owned(),
        conf_path.display().to_string(),
    ];
    let error_log = dir.path().join("error.log");
    if nginx.build.has_error_log_flag() {
        argv.extend(["-e".to_owned(), error_log.display().to_string()]);
    }
    progress(&format!(
        "starting nginx {} on {listen} (proxying {upstream})",
        nginx.build.version
    ));
    let started = procs::spawn(procs::Spawn {
        name: "nginx",
        exe: &nginx.bin,
        args: argv,
        env: Vec::new(),
        addr: listen,
        logs,
        startup_timeout: args.startup_timeout,
    })
    .await;
    let child = match started {
        Ok(c) => c,
        Err(e) => {
            let log = std::fs::read_to_string(&error_log).unwrap_or_default();
            let log = log.trim();
            return Err(match e {
                BenchError::Setup(why) if !log.is_empty() => {
                    BenchError::Setup(format!("{why}; nginx's error log: {log}"))
                }
                e => e,
            });
        }
    };
    let pid = child.pid;
    children.nginx = Some(child);
    children.nginx_dir = Some(dir);
    Ok((pid, format!("ws://{listen}{path}")))
}

/// What nginx wrote to its error log (a note when not empty); copied to `--child-logs`.
fn nginx_log_notes(children: &Children, logs: Option<&Path>, notes: &mut Vec<String>) {
    let Some(dir) = &children.nginx_dir else {
        return;
    };
    let path = dir.path().join("error.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    if let Some(logs) = logs {
        let _ = std::fs::write(logs.join("nginx-error.log"), &text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(first) = lines.first() {
        notes.push(format!(
            "nginx logged {} line(s) at level warn or above, the first: {first}",
            lines.len()
        ));
    }
}

fn cpu_report(pid: u32, p: &PhaseResult, tck: u64) -> Option<CpuReport> {
    let secs = cpu_seconds(p.start.relay, p.end.relay, tck)?;
    Some(cpu_per_event(
        pid,
        secs,
        p.window_s,
        p.tally.frames_in_window,
    ))
}

/// `secs` of CPU over `window_s` seconds in which `events` were relayed.
fn cpu_per_event(pid: u32, secs: f64, window_s: f64, events: u64) -> CpuReport {
    CpuReport {
        pid,
        cpu_seconds: secs,
        cpu_percent: secs / window_s.max(1e-9) * 100.0,
        events,
        cpu_seconds_per_million_events: (events > 0).then(|| secs / events as f64 * 1e6),
    }
}

fn rss_report(pid: u32, p: &PhaseResult, baseline: Option<procs::ProcSample>) -> Option<RssReport> {
    let end = p.end.relay?;
    let open = p.end.open;
    let base = baseline.map(|b| b.rss_kib).unwrap_or(0);
    Some(RssReport {
        pid,
        rss_kib: end.rss_kib,
        peak_rss_kib: end.hwm_kib,
        baseline_rss_kib: base,
        open_sessions: open,
        rss_per_session_kib: (open > 0).then(|| end.rss_kib as f64 / open as f64),
        added_rss_per_session_kib: (open > 0)
            .then(|| end.rss_kib.saturating_sub(base) as f64 / open as f64),
    })
}

// `flowgate bench --cluster` (issue 16, docs/scaling.md): the multi-gateway phase.
//
// Starts a nats-server with JetStream (or uses `--nats-url`) and two gateways on the
// `--database-url` database and the bench's engine, each with `FLOWGATE_NATS_URL` (each has its
// own run log instance id, so its own node id), waits until both report
// `flowgate_cluster_ready 1`, then runs the sessions of [`session::cluster_streaming`]: every
// run is started on the owner and followed from its first frame by a second client of the same
// user on the follower. The follower's receive time of each `seq` minus the owner-client's (one
// monotonic clock, this process) is the added latency of the cross-gateway follow; the two
// `seq` sequences must be identical. CPU is read from `/proc` for the owner, the follower and
// the nats-server over the measured window, per event relayed to the bench's clients.

/// What the phase needs from the single-gateway setup.
struct ClusterSetup<'a> {
    args: &'a BenchArgs,
    exe: &'a Path,
    logs: Option<&'a Path>,
    /// The nats-server to start (`None` with `--nats-url`).
    nats_bin: Option<&'a Path>,
    engine_url: &'a str,
    engine_key: Option<&'a Secret>,
    engine_pid: Option<u32>,
    jwt_secret: &'a Secret,
    database: &'a Database,
    local_ips: Vec<IpAddr>,
    tck: u64,
}

/// Start NATS and the two gateways, run the sessions, report.
async fn cluster_phase_run(
    s: &ClusterSetup<'_>,
    children: &mut Children,
) -> Result<ClusterReport, BenchError> {
    let args = s.args;
    let (nats_url, nats_server, nats_pid) = match (&args.nats_url, s.nats_bin) {
        (Some(url), _) => (url.clone(), None, None),
        (None, Some(bin)) => {
            let version = procs::nats_version(bin, args.startup_timeout)
                .await
                .unwrap_or_else(|| bin.display().to_string());
            let dir = procs::TempDir::new("flowgate-bench-nats")?;
            let addr = procs::free_port()?;
            progress(&format!("starting {version} on {addr} (JetStream)"));
            let child = procs::spawn(procs::Spawn {
                name: "nats-server",
                exe: bin,
                args: procs::nats_args(addr, dir.path()),
                env: Vec::new(),
                addr,
                logs: s.logs,
                startup_timeout: args.startup_timeout,
            })
            .await;
            // The store goes when the server has stopped (or did not start).
            children.nats_dir = Some(dir);
            let child = child?;
            let pid = child.pid;
            children.nats = Some(child);
            (format!("nats://{addr}"), Some(version), Some(pid))
        }
        (None, None) => return Err(BenchError::Args("--cluster: no nats-server".into())),
    };

    let mut gateways: Vec<(SocketAddr, u32)> = Vec::new();
    for name in ["gateway-owner", "gateway-follower"] {
        let addr = procs::free_port()?;
        let mut env = gateway_env(args, addr, s.engine_url, s.jwt_secret, s.engine_key);
        env.push(env_pair("DATABASE_URL", s.database.url.expose()));
        env.push(env_pair("FLOWGATE_NATS_URL", &nats_url));
        env.extend(args.gateway_env.iter().cloned());
        progress(&format!(
            "starting the {name} on {addr} (NATS {nats_url}, run log: {})",
            s.database.place
        ));
        let child = procs::spawn(procs::Spawn {
            name,
            exe: s.exe,
            args: vec!["serve".into()],
            env,
            addr,
            logs: s.logs,
            startup_timeout: args.startup_timeout,
        })
        .await?;
        gateways.push((addr, child.pid));
        children.cluster.push(child);
    }
    for &(addr, _) in &gateways {
        cluster_ready(addr, args, &nats_url).await?;
    }
    let [(owner_addr, owner_pid), (follower_addr, follower_pid)] = gateways[..] else {
        unreachable!("two gateways were started");
    };
    let target = |addr: SocketAddr| {
        gateway_target(
            args,
            addr,
            &format!("ws://{addr}"),
            s.local_ips.clone(),
            s.jwt_secret.clone(),
        )
    };
    let target = Arc::new(ClusterTarget {
        owner: target(owner_addr),
        follower: target(follower_addr),
    });

    progress(&format!(
        "cluster: {} sessions (owner {owner_addr}, follower {follower_addr}), {:?} warm-up + {:?}",
        args.sessions, args.warmup, args.duration
    ));
    let pids = [
        Some(owner_pid),
        Some(follower_pid),
        nats_pid,
        s.engine_pid,
        Some(std::process::id()),
    ];
    let phase = cluster_phase(args, target, pids).await;

    let mut incomplete = Some(0);
    for addr in [owner_addr, follower_addr] {
        let n = scrape::counter(
            addr,
            "flowgate_runs_log_incomplete_total",
            args.connect_timeout,
        )
        .await
        .ok();
        incomplete = incomplete.zip(n).map(|(a, b)| a + b);
    }

    let tck = s.tck;
    let secs = |i: usize| cpu_seconds(phase.start[i], phase.end[i], tck);
    let window_s = phase.window_s;
    let cpu = |i: usize, events: u64| Some(cpu_per_event(pids[i]?, secs(i)?, window_s, events));
    let mut t = phase.tally;
    let (owner_events, follower_events) = (t.owner.frames_in_window, t.follower.frames_in_window);
    let others = (secs(3), secs(4));
    let follow_added_us = summarize(&mut t.follow_us);
    let follow_start_us = summarize(&mut t.attach_us);
    let owner = PathReport::from_tally(std::mem::take(&mut t.owner), window_s, others);
    let follower = PathReport::from_tally(std::mem::take(&mut t.follower), window_s, others);
    Ok(ClusterReport {
        nats_url,
        nats_server,
        owner_url: format!("ws://{owner_addr}"),
        follower_url: format!("ws://{follower_addr}"),
        errors: owner.errors + follower.errors,
        lost_runs: owner.lost_runs + follower.lost_runs,
        owner,
        follower,
        follow_added_us,
        follow_start_us,
        follower_first_events: t.follower_first,
        catch_up_events: t.catch_up,
        resume_retries: t.resume_retries,
        runs_compared: t.compared,
        runs_mismatched: t.mismatched,
        owner_cpu: cpu(0, owner_events),
        follower_cpu: cpu(1, follower_events),
        nats_cpu: cpu(2, follower_events),
        runs_log_incomplete: incomplete,
    })
}

/// Wait until the gateway at `addr` says `flowgate_cluster_ready 1` (NATS connected, the
/// stream made, its probe back), within `--startup-timeout`.
async fn cluster_ready(
    addr: SocketAddr,
    args: &BenchArgs,
    nats_url: &str,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + args.startup_timeout;
    loop {
        let last = match scrape::counter(addr, "flowgate_cluster_ready", args.connect_timeout).await
        {
            Ok(1) => return Ok(()),
            Ok(n) => format!("flowgate_cluster_ready {n}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(BenchError::Setup(format!(
                "the gateway on {addr} did not join the cluster within {:?} ({last}); is \
                 JetStream on at {nats_url}? (--child-logs DIR keeps the gateways' logs)",
                args.startup_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the cluster phase measured; readings in the order of the pids: owner, follower,
/// nats-server, engine, this process.
struct ClusterPhase {
    tally: session::ClusterTally,
    window_s: f64,
    start: [Option<procs::ProcSample>; 5],
    end: [Option<procs::ProcSample>; 5],
}

fn read_all(pids: &[Option<u32>; 5]) -> (Instant, [Option<procs::ProcSample>; 5]) {
    (Instant::now(), pids.map(|p| p.and_then(procs::sample)))
}

/// The sessions start staggered over one interval and run back to back; the window is
/// [start + warm-up, start + warm-up + duration], as in the single-gateway phase.
async fn cluster_phase(
    args: &BenchArgs,
    target: Arc<ClusterTarget>,
    pids: [Option<u32>; 5],
) -> ClusterPhase {
    let Window {
        start,
        warm_end,
        end,
        plan,
        counters,
        gate,
    } = Window::new(args);
    let mut set = JoinSet::new();
    for i in 0..args.sessions {
        let start_at = start + args.interval.mul_f64(i as f64 / args.sessions as f64);
        set.spawn(session::cluster_streaming(
            i,
            target.clone(),
            plan.clone(),
            start_at,
            gate.clone(),
            counters.clone(),
        ));
    }
    tokio::time::sleep_until(warm_end).await;
    let (t0, first) = read_all(&pids);
    tokio::time::sleep_until(end).await;
    let (t1, last) = read_all(&pids);
    // A run in flight at the end finishes on both sides (the follower may wait for the run id
    // and resume again for up to a frame timeout).
    let run_len = args.interval * args.events as u32;
    let deadline = Instant::now()
        + run_len
        + args.frame_timeout * 2
        + args.connect_timeout * 2
        + args.close_timeout;
    let tally = collect(set, deadline).await;
    ClusterPhase {
        tally,
        window_s: (t1 - t0).as_secs_f64(),
        start: first,
        end: last,
    }
}

/// Run the benchmark and build its report.
pub async fn execute(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.sessions == 0 || args.events == 0 {
        return Err(BenchError::Args(
            "--sessions and --events must be at least 1".into(),
        ));
    }
    let nofile = crate::startup::raise_open_file_limit(args.nofile);
    let mut notes = Vec::new();
    if let Some(limit) = nofile {
        // The gateway holds two sockets per session (client and engine).
        let need = args.sessions as u64 * 2 + 256;
        if limit < need {
            notes.push(format!(
                "the open-files limit is {limit}, below the ~{need} the gateway needs for {} sessions",
                args.sessions
            ));
        }
    }
    if args.cluster && args.database_url.is_none() {
        return Err(BenchError::Args(
            "--cluster needs --database-url: the gateways of a cluster share one Postgres \
             database, where run ownership lives (create one: `createdb -h 127.0.0.1 -U \
             postgres flowgate_bench`)"
                .into(),
        ));
    }
    let tck = procs::clock_ticks();
    let payload = load_payload(args).await?;
    let found = Found {
        nginx: find_nginx(args).await?,
        nats: match (args.cluster, &args.nats_url) {
            (true, None) => Some(procs::find_nats_server(args.nats_server.as_deref())?),
            _ => None,
        },
    };
    let mut children = Children::default();
    let result = drive(args, &payload, &found, &mut children, nofile, tck, notes).await;
    children.stop(args.close_timeout).await;
    result
}

/// The external programs of this invocation, found before anything starts.
struct Found {
    nginx: Option<Nginx>,
    /// `--cluster`'s nats-server (`None` with `--nats-url` or without `--cluster`).
    nats: Option<PathBuf>,
}

async fn drive(
    args: &BenchArgs,
    payload: &Payload,
    found: &Found,
    children: &mut Children,
    nofile: Option<u64>,
    tck: u64,
    mut notes: Vec<String>,
) -> Result<Report, BenchError> {
    let exe = match &args.flowgate_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::Setup(format!("cannot find this executable: {e}")))?,
    };
    let logs = args.child_logs.as_deref().map(procs::log_dir).transpose()?;
    let logs: Option<&Path> = logs.as_deref();
    let nginx = found.nginx.as_ref();
    // The gateway's database, filled before the gateway starts.
    let database = match &args.database_url {
        Some(url) => {
            let db = Database::describe(url)?;
            db.import(args).await?;
            Some(db)
        }
        None => None,
    };
    let delay = if args.idle {
        args.idle_delay
    } else {
        args.interval
    };

    // The engine.
    let own_engine = args.engine_url.is_none()
        && (args.gateway_url.is_none() || !args.no_direct || nginx.is_some());
    let (engine_url, engine_key) = if let Some(url) = &args.engine_url {
        (Some(url.clone()), args.engine_key.clone())
    } else if own_engine && !(args.gateway_url.is_some() && args.idle) {
        let key = args.engine_key.clone().unwrap_or_else(random_secret);
        let addr = procs::free_port()?;
        progress(&format!("starting the engine on {addr}"));
        let engine = procs::spawn(procs::Spawn {
            name: "engine",
            exe: &exe,
            args: vec!["engine".into()],
            env: vec![
                env_pair("FLOWGATE_ENGINE_LISTEN", addr),
                env_pair("FLOWGATE_ENGINE_KEY", key.expose()),
                env_pair("FLOWGATE_ENGINE_LLM_TOKENS", args.events),
                env_pair(
                    "FLOWGATE_ENGINE_LLM_TOKEN_DELAY",
                    humantime::format_duration(delay),
                ),
            ]
            .into_iter()
            .chain(args.engine_env.iter().cloned())
            .collect(),
            addr,
            logs,
            startup_timeout: args.startup_timeout,
        })
        .await?;
        children.engine = Some(engine);
        (Some(format!("ws://{addr}")), Some(key))
    } else {
        (None, args.engine_key.clone())
    };
    let engine_pid = children.engine.as_ref().map(|c| c.pid);

    // The gateway.
    let (jwt_secret, gateway_url, gw_pid) = if let Some(url) = &args.gateway_url {
        let secret = args.jwt_secret.clone().ok_or_else(|| {
            BenchError::Args("--gateway-url needs --jwt-secret (FLOWGATE_JWT_SECRET)".into())
        })?;
        (secret, url.clone(), args.gateway_pid)
    } else {
        let secret = args.jwt_secret.clone().unwrap_or_else(random_secret);
        let addr = procs::free_port()?;
        let engine_url = engine_url
            .clone()
            .ok_or_else(|| BenchError::Args("no engine for the gateway".into()))?;
        let mut env = gateway_env(args, addr, &engine_url, &secret, engine_key.as_ref());
        if args.idle {
            let idle = (delay * 2).max(Duration::from_secs(120));
            env.push(env_pair(
                "FLOWGATE_ENGINE_IDLE_TIMEOUT",
                humantime::format_duration(idle),
            ));
        }
        let serve_args = match &database {
            // The gateway's `--database-url` / `DATABASE_URL` (in the environment: not on the
            // command line, where `ps` would show the password).
            Some(db) => {
                env.push(env_pair("DATABASE_URL", db.url.expose()));
                vec!["serve".into()]
            }
            None => {
                let flows = args.flows_dir.to_string_lossy().into_owned();
                vec!["serve".into(), "--flows-dir".into(), flows]
            }
        };
        env.extend(args.gateway_env.iter().cloned());
        match &database {
            Some(db) => progress(&format!(
                "starting the gateway on {addr} (store and run log: {})",
                db.place
            )),
            None => progress(&format!("starting the gateway on {addr}")),
        }
        let gateway = procs::spawn(procs::Spawn {
            name: "gateway",
            exe: &exe,
            args: serve_args,
            env,
            addr,
            logs,
            startup_timeout: args.startup_timeout,
        })
        .await?;
        let pid = gateway.pid;
        children.gateway = Some(gateway);
        (secret, format!("ws://{addr}"), Some(pid))
    };

    let (gw_addr, gw_base) = resolve(&gateway_url).await?;
    let local_ips: Vec<IpAddr> = match gw_addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (1..=local_addr_count(args))
            .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k as u8)))
            .collect(),
        _ => Vec::new(),
    };
    let gw_target = gateway_target(
        args,
        gw_addr,
        &gw_base,
        local_ips.clone(),
        jwt_secret.clone(),
    );
    let baseline = gw_pid.and_then(procs::sample);

    let gw_phase = if args.idle {
        progress(&format!("idle: opening {} sessions", args.sessions));
        idle_phase(args, gw_target.clone(), gw_pid, engine_pid, &mut notes).await
    } else {
        progress(&format!(
            "gateway: {} sessions, {:?} warm-up + {:?}",
            args.sessions, args.warmup, args.duration
        ));
        streaming_phase(
            args,
            PathKind::Gateway(gw_target.clone()),
            gw_pid,
            engine_pid,
        )
        .await
    };

    // The run log's own count of runs that lost records (the bench's clients cannot see that).
    let runs_log_incomplete = match scrape::counter(
        gw_addr,
        "flowgate_runs_log_incomplete_total",
        args.connect_timeout,
    )
    .await
    {
        Ok(n) => Some(n),
        Err(e) => {
            notes.push(format!(
                "runs with an incomplete run log not measured ({e}); with --admin-listen, read \
                 flowgate_runs_log_incomplete_total there"
            ));
            None
        }
    };

    // The direct clients, against the engine or (nginx phase) through nginx.
    let direct_target = |base_url: String| {
        Arc::new(DirectTarget {
            engine: EngineTarget {
                base_url,
                bearer: None,
                connect_timeout: args.connect_timeout,
                handshake_timeout: args.frame_timeout,
                max_frame_bytes: args.max_frame_bytes,
                traceparent: None,
                // The gateway's defaults, so both paths read alike.
                read_buffer_bytes: 2048,
                write_buffer_bytes: 512,
                close_timeout: Duration::from_millis(200),
                tls: None,
            },
            engine_key: engine_key.clone(),
            flow: payload.flow.clone(),
            initial_inputs: payload.initial_inputs.clone(),
            agent_id: args.agent.clone(),
            version: payload.version,
        })
    };
    let direct_phase = match (&engine_url, args.idle || args.no_direct) {
        (Some(url), false) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            progress(&format!(
                "direct: {} sessions, {:?} warm-up + {:?}",
                args.sessions, args.warmup, args.duration
            ));
            let target = direct_target(url.clone());
            Some(streaming_phase(args, PathKind::Direct(target), None, engine_pid).await)
        }
        (None, false) => {
            notes.push("no --engine-url: the direct phase was skipped".into());
            None
        }
        _ => None,
    };

    // The nginx reference phase: the direct clients once more, through nginx.
    let nginx_phase = match (nginx, &engine_url) {
        (Some(n), Some(url)) if !args.idle => {
            let (pid, base_url) = start_nginx(args, n, url, nofile, logs, children).await?;
            let baseline = procs::sample(pid);
            tokio::time::sleep(Duration::from_secs(1)).await;
            progress(&format!(
                "nginx: {} sessions, {:?} warm-up + {:?}",
                args.sessions, args.warmup, args.duration
            ));
            let target = direct_target(base_url);
            let phase =
                streaming_phase(args, PathKind::Direct(target), Some(pid), engine_pid).await;
            nginx_log_notes(children, logs, &mut notes);
            notes.push(format!(
                "nginx path: nginx {} relaying the same frames as opaque bytes, one worker \
                 process (proxy_pass to the engine, proxy_buffering off, tcp_nodelay on), \
                 driven by the direct phase's clients",
                n.build.version
            ));
            Some((pid, baseline, phase))
        }
        (Some(_), None) => {
            notes.push("no engine to proxy: the nginx phase was skipped".into());
            None
        }
        _ => None,
    };

    // The multi-gateway phase, on its own gateways: the single gateway and nginx stop first.
    let cluster = match (&database, &engine_url) {
        (Some(db), Some(engine)) if args.cluster => {
            for c in [children.gateway.take(), children.nginx.take()]
                .into_iter()
                .flatten()
            {
                c.stop(args.close_timeout).await;
            }
            children.nginx_dir = None;
            let setup = ClusterSetup {
                args,
                exe: &exe,
                logs,
                nats_bin: found.nats.as_deref(),
                engine_url: engine,
                engine_key: engine_key.as_ref(),
                engine_pid,
                jwt_secret: &gw_target.jwt_secret,
                database: db,
                local_ips: local_ips.clone(),
                tck,
            };
            let report = cluster_phase_run(&setup, children).await?;
            notes.push(format!(
                "cluster: two gateways on {} with NATS {} ({}); the single-gateway numbers \
                 come from the phase before it in this invocation (its own gateway, without \
                 NATS, stopped before the cluster started)",
                db.place,
                report.nats_url,
                report.nats_server.as_deref().unwrap_or("a running server")
            ));
            Some(report)
        }
        _ => None,
    };

    let gw_cpu = gw_pid
        .filter(|_| !args.idle)
        .and_then(|pid| cpu_report(pid, &gw_phase, tck));
    let rss = gw_pid.and_then(|pid| rss_report(pid, &gw_phase, baseline));
    let nginx_cpu = nginx_phase
        .as_ref()
        .and_then(|(pid, _, p)| cpu_report(*pid, p, tck));
    let nginx_rss = nginx_phase
        .as_ref()
        .and_then(|(pid, base, p)| rss_report(*pid, p, *base));
    let others = |p: &PhaseResult| {
        (
            cpu_seconds(p.start.engine, p.end.engine, tck),
            cpu_seconds(p.start.me, p.end.me, tck),
        )
    };
    let gw_others = others(&gw_phase);
    let gateway = PathReport::from_tally(gw_phase.tally, gw_phase.window_s, gw_others);
    let direct = direct_phase.map(|p| {
        let cpu = others(&p);
        PathReport::from_tally(p.tally, p.window_s, cpu)
    });
    let nginx_path = nginx_phase.map(|(_, _, p)| {
        let cpu = others(&p);
        PathReport::from_tally(p.tally, p.window_s, cpu)
    });
    let added = direct.as_ref().map(|d| Added::between(&gateway, d));
    let nginx_added = nginx_path
        .as_ref()
        .zip(direct.as_ref())
        .map(|(n, d)| Added::between(n, d));
    let paths = || [Some(&gateway), direct.as_ref(), nginx_path.as_ref()];
    let errors = paths().into_iter().flatten().map(|p| p.errors).sum::<u64>()
        + cluster.as_ref().map_or(0, |c| c.errors);
    let lost_runs = paths()
        .into_iter()
        .flatten()
        .map(|p| p.lost_runs)
        .sum::<u64>()
        + cluster.as_ref().map_or(0, |c| c.lost_runs);
    // The cluster's gateways count in the run log target too.
    let runs_log_incomplete = match cluster.as_ref().map(|c| c.runs_log_incomplete) {
        Some(c) => runs_log_incomplete.zip(c).map(|(a, b)| a + b),
        None => runs_log_incomplete,
    };
    if gateway.merged_frames > 0 {
        notes.push(format!(
            "the gateway merged {} chunk frames for clients that fell behind (the bench client \
             could not keep up: its numbers then include its own queueing)",
            gateway.merged_frames
        ));
    }
    if let Some(db) = &database {
        notes.push(format!(
            "gateway on Postgres ({}): store and run log in the database",
            db.place
        ));
    }
    let mut report = Report {
        mode: if args.idle { "idle" } else { "streaming" },
        config: ConfigEcho {
            sessions: args.sessions,
            events: args.events,
            interval_ms: if args.idle {
                args.idle_delay.as_secs_f64() * 1e3
            } else {
                args.interval.as_secs_f64() * 1e3
            },
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            keep_connection: args.keep_connection,
            gateway_url,
            engine_url,
            local_addrs: local_ips.iter().map(ToString::to_string).collect(),
            nofile_limit: nofile,
            clock_ticks_per_second: tck,
            store: match (&database, &args.gateway_url) {
                (Some(_), _) => "postgres",
                (None, Some(_)) => "unknown",
                (None, None) => "files",
            },
            database: database.as_ref().map(|db| db.shown.clone()),
        },
        gateway,
        direct,
        added,
        gateway_cpu: gw_cpu,
        rss,
        nginx: nginx_path,
        nginx_added,
        nginx_cpu,
        nginx_rss,
        cluster,
        errors,
        lost_runs,
        runs_log_incomplete,
        targets: Vec::new(),
        notes,
    };
    report.targets = report::targets(&report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_gets_room_for_connections_that_are_still_closing() {
        assert_eq!(nginx_worker_connections(1000, Some(20_000)), 9024);
        // Bounded by the descriptor limit, never below two per session.
        assert_eq!(nginx_worker_connections(1000, Some(4096)), 4032);
        assert_eq!(nginx_worker_connections(1000, Some(100)), 2064);
        assert_eq!(nginx_worker_connections(3, None), 1048);
    }

    #[test]
    fn enough_loopback_addresses_for_connection_churn() {
        let mut args = BenchArgs::parse_from(["--sessions", "100"]).unwrap();
        assert_eq!(local_addr_count(&args), 1);
        args.sessions = 1000;
        // 1000 sessions × 1 s runs, one connection each, 60 s of TIME_WAIT: > 28k ports.
        assert!(local_addr_count(&args) >= 2);
        args.local_addrs = 3;
        assert_eq!(local_addr_count(&args), 3);
    }

    #[test]
    fn the_database_is_described_without_its_password_or_parameters() {
        let url =
            Secret::new("postgres://bob:hunter2@db.example:6543/bench?password=x2&sslmode=disable");
        let db = Database::describe(&url).unwrap();
        assert_eq!(db.place, "db.example:6543/bench");
        assert_eq!(db.shown, "postgres://bob@db.example:6543/bench");
        assert_eq!(db.createdb, "createdb -h db.example -p 6543 -U bob bench");
        assert_eq!(db.url.expose(), url.expose());
        let db = Database::describe(&Secret::new("postgres://postgres@[::1]/")).unwrap();
        assert_eq!(db.place, "[::1]:5432/postgres");
        let err = Database::describe(&Secret::new("postgres://u:hunter2@h:notaport/d"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--database-url") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn database_url_is_a_flag_only_and_not_for_a_running_gateway() {
        // A `DATABASE_URL` in the environment is for `serve`: the bench must not pick it up.
        let a = BenchArgs::parse_from(["--sessions", "5"]).unwrap();
        assert!(a.database_url.is_none());
        let a = BenchArgs::parse_from(["--database-url", "postgres://u:pw@h/d"]).unwrap();
        assert_eq!(a.database_url.unwrap().expose(), "postgres://u:pw@h/d");
        let err = BenchArgs::parse_from([
            "--database-url",
            "postgres://h/d",
            "--gateway-url",
            "ws://127.0.0.1:1",
        ])
        .unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
        let help = {
            use clap::CommandFactory;
            #[derive(clap::Parser)]
            struct W {
                #[command(flatten)]
                args: BenchArgs,
            }
            W::command().render_long_help().to_string()
        };
        assert!(help.contains("--database-url <URL>"), "{help}");
    }

    #[test]
    fn cluster_flags_belong_to_the_cluster_mode() {
        let a = BenchArgs::parse_from(["--cluster", "--database-url", "postgres://h/d"]).unwrap();
        assert!(a.cluster && a.nats_server.is_none() && a.nats_url.is_none());
        let a =
            BenchArgs::parse_from(["--cluster", "--nats-url", "nats://127.0.0.1:4222"]).unwrap();
        assert_eq!(a.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
        for argv in [
            &["--nats-url", "nats://h:4222"][..],
            &["--nats-server", "/usr/sbin/nats-server"],
        ] {
            let err = BenchArgs::parse_from(argv.iter().copied()).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{err}"
            );
        }
        let err = BenchArgs::parse_from([
            "--cluster",
            "--nats-url",
            "nats://h:4222",
            "--nats-server",
            "/x",
        ])
        .unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
    }

    #[test]
    fn nginx_flag_takes_an_optional_path_and_streaming_mode_only() {
        assert_eq!(
            BenchArgs::parse_from(["--sessions", "5"]).unwrap().nginx,
            None
        );
        let a = BenchArgs::parse_from(["--nginx", "--sessions", "5"]).unwrap();
        assert_eq!(a.nginx, Some(None));
        assert_eq!(a.sessions, 5);
        let a = BenchArgs::parse_from(["--nginx", "/opt/nginx/sbin/nginx"]).unwrap();
        assert_eq!(a.nginx, Some(Some(PathBuf::from("/opt/nginx/sbin/nginx"))));
        let a = BenchArgs::parse_from(["--nginx=/usr/sbin/nginx"]).unwrap();
        assert_eq!(a.nginx, Some(Some(PathBuf::from("/usr/sbin/nginx"))));
        let err = BenchArgs::parse_from(["--nginx", "--idle"]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
    }
}
