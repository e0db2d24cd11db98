//! The run log: frames come back in order from `replay`, `finish` records how a run ended, the
//! memory log stays bounded, the sweep fails only runs of gateways that stopped heartbeating, and
//! a full buffer drops (and counts) frames instead of blocking the relay.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flowgate::runlog::{
    GATEWAY_LOST, MemoryRunLog, MemoryRunLogConfig, PgRunLog, PgRunLogConfig, RunLog, RunStart,
    RunState, RunStatus, prune, sweep_lost_runs,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(5);

fn config() -> PgRunLogConfig {
    PgRunLogConfig {
        buffer: 1024,
        batch_max: 64,
        max_events_per_run: 10_000,
        write_timeout: TIMEOUT,
        write_attempts: 2,
        retry_delay: Duration::from_millis(50),
        heartbeat_interval: Duration::from_secs(10),
        stale_after: Duration::from_secs(60),
        ..PgRunLogConfig::default()
    }
}

fn run(user: &str) -> RunStart {
    RunStart {
        run_id: Uuid::new_v4(),
        agent_id: "echo".to_owned(),
        user_id: user.to_owned(),
        version: "published".to_owned(),
        workflow_hash: Some("abc123".to_owned()),
    }
}

fn frame(seq: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"llm_chunk","seq":{seq},"data":{{"content":"é{seq}"}}}}"#
    ))
}

async fn check_replay_and_finish(log: RunLog) {
    let start = run("alice");
    let id = start.run_id;
    log.start(start);
    for seq in 1..=40 {
        log.event(id, seq, frame(seq));
    }
    let all = log.replay(id, 0).await.expect("replay");
    assert_eq!(all, (1..=40).map(frame).collect::<Vec<_>>());
    let tail = log.replay(id, 37).await.expect("replay");
    assert_eq!(tail, vec![frame(38), frame(39), frame(40)]);
    assert!(log.replay(id, 40).await.expect("replay").is_empty());

    let info = log.run_owner(id).await.expect("owner").expect("known run");
    assert_eq!(info.user_id, "alice");
    assert_eq!(info.status, RunState::Running);
    assert_eq!(info.last_seq, 40);
    assert_eq!(info.ended_at, None);

    log.finish(
        id,
        RunStatus::Failed,
        Some("engine_lost"),
        Some("the engine went away"),
    );
    // Exactly one ending: a later finish does not overwrite it.
    log.finish(id, RunStatus::Completed, None, None);
    let info = log.run_owner(id).await.expect("owner").expect("known run");
    assert_eq!(info.status, RunState::Failed);
    assert_eq!(info.error_code.as_deref(), Some("engine_lost"));
    assert_eq!(info.error_message.as_deref(), Some("the engine went away"));
    assert!(info.ended_at.is_some());
    assert_eq!(info.events_dropped, 0);

    assert_eq!(log.run_owner(Uuid::new_v4()).await.expect("owner"), None);
    assert_eq!(log.stats().events_dropped, 0);
    assert_eq!(log.stats().events_written, 40);
    // Read after the writer caught up (Postgres), or stored on arrival (memory): nothing waits.
    assert_eq!(log.stats().events_pending, 0);
}

#[sqlx::test]
async fn postgres_replay_is_in_order_and_finish_records_the_ending(pool: PgPool) {
    let log = PgRunLog::spawn(pool.clone(), config())
        .await
        .expect("run log");
    check_replay_and_finish(RunLog::Postgres(log.clone())).await;
    assert!(log.stats().batches >= 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM flowgate_run_event")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stored, 40);
}

#[tokio::test]
async fn memory_replay_is_in_order_and_finish_records_the_ending() {
    check_replay_and_finish(RunLog::Memory(MemoryRunLog::new(
        MemoryRunLogConfig::default(),
    )))
    .await;
}

#[tokio::test]
async fn memory_log_evicts_the_oldest_finished_run_and_caps_frames() {
    let log = RunLog::Memory(MemoryRunLog::new(MemoryRunLogConfig {
        max_runs: 2,
        max_events_per_run: 3,
    }));
    let (a, b, c) = (run("a"), run("b"), run("c"));
    let (a_id, b_id, c_id) = (a.run_id, b.run_id, c.run_id);
    log.start(b);
    log.start(a);
    log.finish(a_id, RunStatus::Completed, None, None);
    log.start(c); // full: `a` is the oldest *finished* run, `b` (older, running) stays
    assert_eq!(log.run_owner(a_id).await.expect("owner"), None);
    assert!(log.run_owner(b_id).await.expect("owner").is_some());
    assert!(log.run_owner(c_id).await.expect("owner").is_some());

    for seq in 1..=5 {
        log.event(c_id, seq, frame(seq));
    }
    assert_eq!(
        log.replay(c_id, 0).await.expect("replay"),
        vec![frame(1), frame(2), frame(3)]
    );
    let info = log.run_owner(c_id).await.expect("owner").expect("c");
    assert_eq!((info.last_seq, info.events_dropped), (3, 2));
    assert_eq!(log.stats().events_dropped, 2);
}

async fn insert_instance(pool: &PgPool, id: Uuid, heartbeat_age_secs: f64) {
    sqlx::query(
        "INSERT INTO flowgate_instance (instance_id, started_at, heartbeat_at) \
         VALUES ($1, now() - interval '2 hours', now() - make_interval(secs => $2))",
    )
    .bind(id)
    .bind(heartbeat_age_secs)
    .execute(pool)
    .await
    .expect("instance");
}

async fn insert_run(pool: &PgPool, instance: Uuid, status: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO flowgate_run (run_id, agent_id, user_id, version, status, instance_id) \
         VALUES ($1, 'echo', 'alice', 'published', $2, $3)",
    )
    .bind(id)
    .bind(status)
    .bind(instance)
    .execute(pool)
    .await
    .expect("run");
    id
}

async fn status_of(pool: &PgPool, run_id: Uuid) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, error_code FROM flowgate_run WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await
        .expect("status")
}

#[sqlx::test]
async fn sweep_fails_only_running_runs_of_an_instance_with_a_stale_heartbeat(pool: PgPool) {
    let (stale, live) = (Uuid::new_v4(), Uuid::new_v4());
    insert_instance(&pool, stale, 3600.0).await;
    insert_instance(&pool, live, 1.0).await;
    let lost = insert_run(&pool, stale, "running").await;
    let done = insert_run(&pool, stale, "completed").await;
    let alive = insert_run(&pool, live, "running").await;

    let swept = sweep_lost_runs(&pool, Duration::from_secs(60), None, TIMEOUT)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    assert_eq!(
        status_of(&pool, lost).await,
        ("failed".to_owned(), Some(GATEWAY_LOST.to_owned()))
    );
    assert_eq!(status_of(&pool, done).await, ("completed".to_owned(), None));
    assert_eq!(status_of(&pool, alive).await, ("running".to_owned(), None));
}

#[sqlx::test]
async fn a_starting_gateway_sweeps_lost_runs_but_not_live_ones(pool: PgPool) {
    let (stale, live) = (Uuid::new_v4(), Uuid::new_v4());
    insert_instance(&pool, stale, 3600.0).await;
    insert_instance(&pool, live, 1.0).await;
    let lost = insert_run(&pool, stale, "running").await;
    let alive = insert_run(&pool, live, "running").await;

    let log = PgRunLog::spawn(
        pool.clone(),
        PgRunLogConfig {
            heartbeat_interval: Duration::from_millis(20),
            ..config()
        },
    )
    .await
    .expect("run log");
    let deadline = Instant::now() + TIMEOUT;
    while status_of(&pool, lost).await.0 == "running" {
        assert!(Instant::now() < deadline, "the lost run was never swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status_of(&pool, lost).await.1.as_deref(),
        Some(GATEWAY_LOST)
    );
    assert_eq!(status_of(&pool, alive).await, ("running".to_owned(), None));
    // This gateway's own heartbeat row is fresh.
    let fresh: bool = sqlx::query_scalar(
        "SELECT heartbeat_at > now() - interval '1 minute' FROM flowgate_instance \
         WHERE instance_id = $1",
    )
    .bind(log.instance_id())
    .fetch_one(&pool)
    .await
    .expect("heartbeat row");
    assert!(fresh);
}

#[sqlx::test]
async fn a_full_buffer_counts_drops_instead_of_blocking(pool: PgPool) {
    // One connection, held by the test: the writer cannot write until it is released.
    let opts = pool.connect_options().as_ref().clone();
    let single = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(opts)
        .await
        .expect("pool");
    let cfg = PgRunLogConfig {
        buffer: 4,
        batch_max: 2,
        write_timeout: Duration::from_secs(20),
        ..config()
    };
    let log = PgRunLog::spawn(single.clone(), cfg).await.expect("run log");
    let held = single.acquire().await.expect("hold the only connection");

    let start = run("alice");
    let id = start.run_id;
    log.start(start);
    let began = Instant::now();
    for seq in 1..=200 {
        log.event(id, seq, frame(seq));
    }
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "event() blocked for {:?}",
        began.elapsed()
    );
    let dropped = log.stats().events_dropped;
    assert!(
        dropped >= 200 - 8,
        "only {dropped} frames were counted as dropped"
    );
    // Nothing can be written yet: every frame not dropped waits (the writer's lag).
    assert_eq!(log.stats().events_pending, 200 - dropped);

    drop(held);
    log.flush(Duration::from_secs(10)).await;
    log.finish(id, RunStatus::Completed, None, None);
    log.flush(Duration::from_secs(10)).await;
    let stats = log.stats();
    assert_eq!(stats.events_written + stats.events_dropped, 200);
    assert_eq!(stats.events_pending, 0);
    let info = RunLog::Postgres(log)
        .run_owner(id)
        .await
        .expect("owner")
        .expect("run row");
    assert_eq!(info.status, RunState::Completed);
    assert_eq!(info.events_dropped, stats.events_dropped);
}

#[sqlx::test]
async fn pruning_deletes_only_runs_past_retention_with_their_frames(pool: PgPool) {
    let (old_gateway, live) = (Uuid::new_v4(), Uuid::new_v4());
    insert_instance(&pool, old_gateway, 30.0 * 24.0 * 3600.0).await;
    insert_instance(&pool, live, 1.0).await;
    let old = insert_run(&pool, old_gateway, "completed").await;
    let recent = insert_run(&pool, live, "completed").await;
    let running = insert_run(&pool, live, "running").await;
    sqlx::query("UPDATE flowgate_run SET ended_at = now() - interval '8 days' WHERE run_id = $1")
        .bind(old)
        .execute(&pool)
        .await
        .expect("age the run");
    sqlx::query("UPDATE flowgate_run SET ended_at = now() - interval '1 hour' WHERE run_id = $1")
        .bind(recent)
        .execute(&pool)
        .await
        .expect("age the run");
    for id in [old, recent, running] {
        sqlx::query("INSERT INTO flowgate_run_event (run_id, seq, frame) VALUES ($1, 1, '{}')")
            .bind(id)
            .execute(&pool)
            .await
            .expect("frame");
    }

    let week = Duration::from_secs(7 * 24 * 3600);
    let deleted = prune(&pool, week, 100, TIMEOUT).await.expect("prune");
    assert_eq!(deleted, 1);
    let runs: Vec<Uuid> = sqlx::query_scalar("SELECT run_id FROM flowgate_run")
        .fetch_all(&pool)
        .await
        .expect("runs");
    assert!(!runs.contains(&old));
    assert!(runs.contains(&recent) && runs.contains(&running));
    let frames: Vec<Uuid> = sqlx::query_scalar("SELECT run_id FROM flowgate_run_event")
        .fetch_all(&pool)
        .await
        .expect("frames");
    assert!(!frames.contains(&old));
    assert_eq!(frames.len(), 2);
    let instances: Vec<Uuid> = sqlx::query_scalar("SELECT instance_id FROM flowgate_instance")
        .fetch_all(&pool)
        .await
        .expect("instances");
    assert_eq!(
        instances,
        vec![live],
        "the long-silent instance row is gone"
    );
}

#[sqlx::test]
async fn a_run_whose_rows_the_database_refuses_costs_only_its_own_records(pool: PgPool) {
    let log = PgRunLog::spawn(
        pool.clone(),
        PgRunLogConfig {
            // Long enough that every record below lands in one batch.
            linger: Duration::from_millis(200),
            ..config()
        },
    )
    .await
    .expect("run log");
    let log = RunLog::Postgres(log);
    // `flowgate_run.agent_id` is VARCHAR(64): this run's start row is refused.
    let mut bad = run("mallory");
    bad.agent_id = "x".repeat(65);
    let good = run("alice");
    let (bad_id, good_id) = (bad.run_id, good.run_id);
    log.start(bad);
    log.start(good);
    for seq in 1..=5 {
        log.event(bad_id, seq, frame(seq));
        log.event(good_id, seq, frame(seq));
    }
    log.finish(good_id, RunStatus::Completed, None, None);
    log.flush(TIMEOUT).await;

    let info = log
        .run_owner(good_id)
        .await
        .expect("owner")
        .expect("the other run is logged");
    assert_eq!(info.status, RunState::Completed);
    assert_eq!(info.last_seq, 5);
    assert_eq!(
        log.replay(good_id, 0).await.expect("replay"),
        (1..=5).map(frame).collect::<Vec<_>>()
    );
    assert_eq!(log.run_owner(bad_id).await.expect("owner"), None);
    assert_eq!(log.stats().events_written, 5);
    assert_eq!(log.stats().events_dropped, 5);
}

/// Frames of a run as a client got them: (seq, text without the `timestamp`-free comparison).
async fn resume_all(app: &crate::common::TestApp, run_id: &str) -> Vec<serde_json::Value> {
    let mut c = app.connect("assistant", "alice").await;
    c.send_json(serde_json::json!({"type": "resume", "run_id": run_id, "after_seq": 0}))
        .await;
    c.collect_run().await
}

#[sqlx::test]
async fn a_slow_database_slows_runs_down_but_loses_no_frame(pool: PgPool) {
    let mut engine = flowgate::engine::EngineConfig::for_tests();
    engine.llm_tokens = 60;
    engine.llm_token_delay = Duration::from_millis(2);
    let app = crate::common::spawn_app_pg_with(pool.clone(), engine, |c| {
        c.runlog_buffer = 8;
        c.runlog_linger = Duration::ZERO;
        c.runlog_wait = Duration::from_secs(30);
        c.merge_lag = usize::MAX;
    })
    .await;
    // The database stops taking frames: the writer blocks on this lock.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE flowgate_run_event IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = app.connect("assistant", "alice").await;
        c.send_json(serde_json::json!({"message": format!("run {i}")}))
            .await;
        clients.push(c);
    }
    // Wait (on state) until the runs are held back by the full log, then let it go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.metrics.runlog_waits.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never filled up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.rollback().await.unwrap();
    let mut live = Vec::new();
    for c in &mut clients {
        let frames = c.collect_run().await;
        crate::common::assert_completed(&frames);
        live.push(frames);
    }
    assert_eq!(app.state.metrics.runs_log_incomplete.get(), 0);
    assert_eq!(app.state.runlog.stats().events_dropped, 0);
    // Every run replays exactly as it was streamed.
    for frames in &live {
        let run_id = frames[0]["run_id"].as_str().unwrap();
        let replayed = resume_all(&app, run_id).await;
        assert_eq!(&replayed, frames, "run {run_id}");
    }
}

#[sqlx::test]
async fn a_replay_with_missing_frames_says_so_instead_of_hanging(pool: PgPool) {
    let app = crate::common::spawn_app_pg(pool.clone()).await;
    let start = run("alice");
    let id = start.run_id;
    app.state.runlog.start(start);
    let frame = |seq: u64| {
        Bytes::from(
            serde_json::json!({"type": "processing", "timestamp": 1.0,
                "data": {"element_id": "llm", "message": format!("step {seq}")},
                "run_id": id.to_string(), "seq": seq})
            .to_string(),
        )
    };
    // Frame 4 and the terminal frame 6 never reached the log (e.g. the database was down).
    for seq in [1, 2, 3, 5] {
        app.state.runlog.event(id, seq, frame(seq));
    }
    app.state
        .runlog
        .finish(id, RunStatus::Completed, None, None);
    app.state.runlog.flush(TIMEOUT).await;

    let mut c = app.connect("assistant", "alice").await;
    c.send_json(serde_json::json!({"type": "resume", "run_id": id.to_string(), "after_seq": 0}))
        .await;
    let mut got = Vec::new();
    let error = loop {
        let f = c
            .next()
            .await
            .expect("frames, then an error: never silence");
        if f["type"] == "error" {
            break f;
        }
        got.push(f["seq"].as_u64().unwrap());
    };
    assert_eq!(got, [1, 2, 3, 5]);
    assert_eq!(error["data"]["code"], "internal", "{error}");
    let text = error["data"]["error"].as_str().unwrap();
    assert!(
        text.contains("incomplete") && text.contains("missing"),
        "{text}"
    );
}

#[sqlx::test]
async fn a_blocked_run_log_never_makes_agent_lookups_wait(pool: PgPool) {
    // The store gets one connection: were the run log on the same pool, its blocked writer
    // would hold it and every agent lookup would time out.
    let flows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    flowgate::store::import::import_dir(&pool, &flows)
        .await
        .expect("flows/ imports");
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let store = flowgate::store::Store::Postgres(flowgate::store::postgres::PgStore::from_pool(
        one,
        Duration::from_secs(3),
    ));
    let engine = crate::common::spawn_engine(flowgate::engine::EngineConfig::for_tests()).await;
    let mut config = flowgate::config::GatewayConfig::for_tests(engine.url());
    config.runlog_wait = Duration::from_secs(30);
    let app = crate::common::spawn_gateway(config, store, Some(engine)).await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE flowgate_run_event IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // The writer is now stuck inside a transaction; runs still look their agents up and stream.
    for i in 0..3 {
        let mut c = app.connect("echo", "alice").await;
        c.send_json(serde_json::json!({"message": format!("hi {i}")}))
            .await;
        let frames = c.collect_run().await;
        crate::common::assert_completed(&frames);
    }
    lock.rollback().await.unwrap();
}

#[sqlx::test]
async fn a_transaction_a_frozen_gateway_leaves_open_is_ended_by_postgres(pool: PgPool) {
    // The run log's connections carry idle_in_transaction_session_timeout = --store-timeout:
    // a gateway frozen mid-write (SIGSTOP, a cut network) cannot hold its row locks against
    // the gateway that takes its runs over.
    let app = crate::common::spawn_app_pg_with(
        pool.clone(),
        flowgate::engine::EngineConfig::for_tests(),
        |c| c.store_timeout = Duration::from_millis(300),
    )
    .await;
    let RunLog::Postgres(log) = &app.state.runlog else {
        panic!("a Postgres run log")
    };
    let setting: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(log.pool())
        .await
        .unwrap();
    assert_eq!(setting, "300ms");
    // Left open, a transaction is ended by the server: its session goes away, and its next
    // statement fails.
    let mut tx = log.pool().begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    crate::common::wait_until(
        "Postgres ends the idle transaction's session",
        Duration::from_secs(5),
        || {
            let pool = pool.clone();
            async move {
                let sessions: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                        .bind(pid)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                sessions == 0
            }
        },
    )
    .await;
    assert!(sqlx::query("SELECT 1").execute(&mut *tx).await.is_err());
    drop(tx);
    app.stop().await;
}
