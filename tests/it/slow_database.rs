//! The run log under a slow database: a gateway whose `--database-url` goes through a proxy
//! that delays everything it relays (so the agent store and the run log both sit behind a slow
//! link) loses no frame — every run replays exactly as it was streamed — and a busy run log does
//! not starve a new run's agent lookup.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowgate::config::{GatewayConfig, Secret};
use flowgate::engine::EngineConfig;
use flowgate::http::Gateway;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// One-way delay of the link: every database round trip costs twice this.
const LATENCY: Duration = Duration::from_millis(20);
/// Most bytes the proxy reads at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// Most chunks in flight per direction of one connection: the proxy then stops reading (TCP
/// pushes back), so it holds at most `IN_FLIGHT × CHUNK_BYTES` per direction.
const IN_FLIGHT: usize = 64;
/// `--runlog-buffer`: small, so that the runs outpace the log and wait for it.
const RUNLOG_BUFFER: usize = 128;
/// One database round trip over the link.
const ROUND_TRIP: Duration = LATENCY.saturating_mul(2);

/// A TCP proxy that delays every chunk, in each direction, by a fixed latency (a slow network
/// link: the database answers as fast as ever, but every round trip costs 2 × latency). Order
/// is kept per direction and the buffering is bounded. Dropping it ends every connection.
struct SlowLink {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SlowLink {
    async fn start(target: (String, u16), latency: Duration) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            // Dropped with this task: every connection ends with the link.
            let mut connections = JoinSet::new();
            loop {
                let inbound = tokio::select! {
                    _ = stopped.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => break,
                    },
                };
                while connections.try_join_next().is_some() {}
                let target = target.clone();
                connections.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        delayed_pipe(in_read, out_write, latency),
                        delayed_pipe(out_read, in_write, latency),
                    );
                });
            }
        });
        SlowLink { addr, stop }
    }
}

/// Copy `from` to `to`, each chunk written `latency` after it was read; chunks overlap in
/// flight (the link adds latency, not a bandwidth limit).
async fn delayed_pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, latency: Duration) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Bytes)>(IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = tokio::time::Instant::now() + latency;
            if tx
                .send((due, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// The reference engine and a gateway started like `flowgate serve --database-url <the slow
/// link to the test's database>`, with `flows/` imported (directly, not through the link).
async fn gateway_behind_slow_link(
    pool: &PgPool,
    engine: EngineConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (TestApp, SlowLink) {
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(pool, &flows)
        .await
        .expect("flows/ imports");
    let direct = pool.connect_options();
    let link = SlowLink::start((direct.get_host().to_owned(), direct.get_port()), LATENCY).await;
    let url = (*direct)
        .clone()
        .host("127.0.0.1")
        .port(link.addr.port())
        .to_url_lossy();
    let engine = spawn_engine(engine).await;
    let mut config = GatewayConfig::for_tests(engine.url());
    config.database_url = Some(Secret::new(url.to_string()));
    tweak(&mut config);
    let gateway = Gateway::build(config)
        .await
        .expect("the gateway starts through the slow link");
    let addr = gateway.local_addr();
    let state = gateway.state().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    let app = TestApp {
        addr,
        state,
        shutdown,
        task: Some(task),
        engine: Some(engine),
    };
    (app, link)
}

/// The value of the sample named exactly `name` in a `/metrics` body.
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{body}"))
}

async fn metrics(app: &TestApp) -> String {
    crate::chain::http_get(&app.http_url("/metrics")).await
}

/// Start a run of `agent` as `user` on its own socket; the task returns every frame to the
/// terminal one.
fn start_run(
    app: &TestApp,
    agent: &str,
    user: &str,
    message: String,
) -> tokio::task::JoinHandle<Vec<Value>> {
    let (url, token) = (app.ws_url(agent), token(user));
    tokio::spawn(async move {
        let mut c = Client::connect_bearer(&url, Some(&token)).await;
        c.send_json(json!({ "message": message })).await;
        c.collect_run().await
    })
}

/// Every frame of run `run_id` from `after_seq: 0`, asked on a new socket.
async fn resume_from_start(url: String, user: String, run_id: String) -> Vec<Value> {
    let mut c = Client::connect_bearer(&url, Some(&token(&user))).await;
    c.send_json(json!({"type": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    c.collect_run().await
}

/// Wait (on state, bounded) until no run is in the gateway's memory any more: a resume is then
/// answered from the run log in Postgres, never from a live run's buffer.
async fn wait_until_no_run_is_live(app: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    while !app.state.runs.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} runs still live after {within:?}",
            app.state.runs.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test]
async fn every_run_replays_identically_from_a_run_log_behind_a_slow_database(pool: PgPool) {
    const RUNS: usize = 12;
    const CHUNKS: usize = 150;
    let began = Instant::now();
    let mut engine = EngineConfig::for_tests();
    engine.llm_tokens = CHUNKS;
    engine.llm_token_delay = Duration::from_millis(1);
    let (app, _link) = gateway_behind_slow_link(&pool, engine, |c| {
        c.runlog_buffer = RUNLOG_BUFFER;
        // Every frame reaches the client as its own frame (no merging), so the live stream can
        // be compared frame by frame with the replay.
        c.merge_lag = usize::MAX;
    })
    .await;

    let runs: Vec<_> = (0..RUNS)
        .map(|i| start_run(&app, "assistant", &format!("user-{i}"), format!("run {i}")))
        .collect();
    let mut live = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        let frames = run.await.expect("the client task");
        let last = frames.last().expect("frames");
        assert_eq!(last["type"], "flow_completed", "run {i}: {last}");
        assert_run_stamps(&frames);
        let chunks = frames.iter().filter(|f| f["type"] == "llm_chunk").count();
        assert_eq!(chunks, CHUNKS, "run {i}");
        live.push((format!("user-{i}"), frames));
    }
    let streamed = began.elapsed();
    let body = metrics(&app).await;
    let waits = metric(&body, "flowgate_runlog_waits_total");
    assert!(
        waits > 0.0,
        "the runs never waited for the run log: the slow path was not exercised"
    );

    // Each finished run, resumed from its start, is replayed from Postgres exactly as it was
    // streamed: same frames, same seq, same terminal event.
    wait_until_no_run_is_live(&app, Duration::from_secs(10)).await;
    let replays: Vec<_> = live
        .iter()
        .map(|(user, frames)| {
            let run_id = frames[0]["run_id"].as_str().unwrap().to_owned();
            tokio::spawn(resume_from_start(
                app.ws_url("assistant"),
                user.clone(),
                run_id,
            ))
        })
        .collect();
    for ((_, frames), replay) in live.iter().zip(replays) {
        let replayed = replay.await.expect("the resume task");
        let run_id = &frames[0]["run_id"];
        let seqs = |f: &[Value]| f.iter().map(|f| f["seq"].as_u64()).collect::<Vec<_>>();
        assert_eq!(seqs(&replayed), seqs(frames), "seq of run {run_id}");
        assert_eq!(&replayed, frames, "frames of run {run_id}");
    }

    // The log agrees: nothing lost, nothing left `running`, nothing still pending.
    let body = metrics(&app).await;
    assert_eq!(metric(&body, "flowgate_runs_log_incomplete_total"), 0.0);
    assert_eq!(
        metric(&body, "flowgate_runs_log_incomplete_replays_total"),
        0.0
    );
    assert_eq!(metric(&body, "flowgate_runlog_events_dropped"), 0.0);
    assert_eq!(metric(&body, "flowgate_runlog_events_pending"), 0.0);
    let batches = metric(&body, "flowgate_runlog_batch_write_seconds_count");
    let write_time = metric(&body, "flowgate_runlog_batch_write_seconds_sum");
    assert!(batches > 0.0, "no batch write was timed");
    let frames: usize = live.iter().map(|(_, f)| f.len()).sum();
    assert_eq!(
        metric(&body, "flowgate_runlog_events_written"),
        frames as f64
    );
    let rows: Vec<(uuid::Uuid, String, i64, i64)> =
        sqlx::query_as("SELECT run_id, status, last_seq, events_dropped FROM flowgate_run")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), RUNS);
    for (run_id, status, last_seq, dropped) in &rows {
        let (_, frames) = live
            .iter()
            .find(|(_, f)| f[0]["run_id"] == run_id.to_string())
            .expect("a run the clients saw");
        assert_eq!(
            (status.as_str(), *last_seq, *dropped),
            ("completed", frames.len() as i64, 0),
            "run {run_id}"
        );
    }
    eprintln!(
        "{RUNS} runs × {CHUNKS} chunks ({frames} frames) through a {LATENCY:?} link: streamed in \
         {streamed:?}, {waits} waits for the run log, {batches} batches of {:.0} ms on average; \
         {:?} in all",
        write_time / batches * 1000.0,
        began.elapsed()
    );
    app.stop().await;
}

#[sqlx::test]
async fn a_busy_run_log_behind_a_slow_database_does_not_starve_a_new_runs_agent_lookup(
    pool: PgPool,
) {
    const LOAD_RUNS: usize = 8;
    // The agent lookup is two queries on the store's own pool: at worst a new connection
    // (TCP, startup, authentication: ~4 round trips), then per query a liveness check, a prepare
    // and an execute (3 each): ~10 round trips, 0.4 s. Bound: 2.5 times that for a loaded
    // machine, a third of the store timeout (3 s) at which a starved lookup would fail.
    let lookup_bound = ROUND_TRIP * 25;
    // Then the run's first records (start, statuses, prepared) wait their turn in the full log
    // before it reads `flow_started` from the engine: the writer finishes the transaction it is
    // in (a batch is ~10 round trips) and takes the waiting runs' records in arrival order in the
    // next one, the new run's among them. Two writer turns, with the same margin.
    let started_bound = lookup_bound + ROUND_TRIP * 2 * 10 * 5 / 2;
    let mut engine = EngineConfig::for_tests();
    // Far more than the log can take while the test looks (~1,000 frames a second through this
    // link): the load is cancelled once the new run has been measured.
    engine.llm_tokens = 3_000;
    engine.llm_token_delay = Duration::from_millis(1);
    let (app, _link) = gateway_behind_slow_link(&pool, engine, |c| {
        c.runlog_buffer = RUNLOG_BUFFER;
    })
    .await;

    // Runs that outpace the log: it is full, and they take turns waiting for it.
    let mut load = Vec::new();
    for i in 0..LOAD_RUNS {
        let mut c = app.connect("assistant", &format!("load-{i}")).await;
        c.send_json(json!({"message": format!("load {i}")})).await;
        load.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.metrics.runlog_waits.get() < LOAD_RUNS as u64 {
        assert!(Instant::now() < deadline, "the run log never filled up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A run of an agent nobody has asked for yet: its lookup goes to the database, over the
    // same slow link, while the run log is busy.
    let waits_before = app.state.metrics.runlog_waits.get();
    let mut c = app.connect("echo", "newcomer").await;
    let asked = Instant::now();
    c.send_json(json!({"message": "am I starved?"})).await;
    let (mut looked_up, mut started) = (None, None);
    let mut frames = Vec::new();
    while started.is_none() {
        let f = c.next().await.expect("frames up to flow_started");
        if f["data"]["message"] == "Preparing workflow for execution..." {
            looked_up = Some(asked.elapsed());
        }
        if f["type"] == "flow_started" {
            started = Some(asked.elapsed());
        }
        assert!(!is_terminal(&f), "{f}");
        frames.push(f);
    }
    let busy_meanwhile = app.state.metrics.runlog_waits.get() - waits_before;
    // The new run and every run of the load are in progress: it did not wait for them to end.
    let live_meanwhile = app.state.runs.len();
    let (looked_up, started) = (looked_up.expect("a preparing status"), started.unwrap());
    frames.extend(c.collect_run().await);
    assert_eq!(frames.last().unwrap()["type"], "flow_completed");
    assert!(
        busy_meanwhile > 0,
        "the run log was not busy during the lookup: the test proves nothing"
    );
    assert_eq!(live_meanwhile, LOAD_RUNS + 1, "the load was over too soon");
    assert!(
        looked_up < lookup_bound,
        "the agent lookup took {looked_up:?} (bound {lookup_bound:?})"
    );
    assert!(
        started < started_bound,
        "flow_started came after {started:?} (bound {started_bound:?})"
    );
    eprintln!(
        "behind a {LATENCY:?} link with {LOAD_RUNS} runs waiting for the run log \
         ({busy_meanwhile} waits meanwhile): agent looked up in {looked_up:?} (bound \
         {lookup_bound:?}), flow_started after {started:?} (bound {started_bound:?})"
    );

    // The load ends (cancelled) and its log is complete too.
    for c in &mut load {
        c.send_json(json!({"type": "cancel"})).await;
    }
    for c in &mut load {
        let frames = c.collect_run().await;
        let last = frames.last().expect("frames");
        assert!(
            last["type"] == "flow_cancelled" || last["type"] == "flow_completed",
            "{last}"
        );
    }
    wait_until_no_run_is_live(&app, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.runlog.stats().events_pending > 0 {
        assert!(Instant::now() < deadline, "the run log never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = metrics(&app).await;
    assert_eq!(metric(&body, "flowgate_runs_log_incomplete_total"), 0.0);
    assert_eq!(metric(&body, "flowgate_runlog_events_pending"), 0.0);
    // The endings are queued after the last frames: let the writer take them too.
    app.state.runlog.flush(Duration::from_secs(10)).await;
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM flowgate_run WHERE status = 'running'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(running, 0, "a run row was left running");
    // Clients that go away (rather than wait for the shutdown's close frames) let it end at once.
    drop((load, c));
    app.stop().await;
}
