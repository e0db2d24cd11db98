//! The Postgres run log: one writer task fed by a bounded channel, one heartbeat/sweep task.
//!
//! Invariants: `start`/`event`/`finish` never block (`try_send`); a `start` or `finish` that
//! meets a full buffer is handed to a short-lived task that waits (at most `write_timeout`) for
//! room, because losing those would leave a run without owner or forever `running`; a frame that
//! meets a full buffer is dropped and counted. The writer writes each batch in one transaction, in
//! the order runs → frames → `last_seq` → endings. The sweep only fails runs whose instance has
//! not heartbeated for `stale_after`; starting a gateway never touches other instances' runs.
//! Pruning deletes finished runs older than `retention`, `prune_batch` runs per heartbeat tick.
//! A frame counts as pending (the writer's lag, [`RunLogStats::events_pending`]) from the moment
//! it is queued until its batch is written or given up; each batch write is timed into the
//! histogram given to [`PgRunLog::spawn_with_metrics`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::histogram::Histogram;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::record::{
    GATEWAY_LOST, Record, RunInfo, RunLogError, RunLogStats, RunStart, RunState, RunStatus,
};

/// Settings of the Postgres run log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgRunLogConfig {
    /// Records buffered between the relay and the writer; a frame that finds it full is dropped.
    pub buffer: usize,
    /// Most records written in one transaction.
    pub batch_max: usize,
    /// How long the writer collects records after the first one before it writes (unless
    /// `batch_max` is reached or a flush waits): one transaction per few events costs far more
    /// CPU than one per batch. `ZERO` writes whatever is there at once.
    pub linger: Duration,
    /// Frames stored per run; later frames are dropped (and counted on the run row).
    pub max_events_per_run: u64,
    /// Time allowed for one write transaction or one read query.
    pub write_timeout: Duration,
    /// Attempts per batch before its records are given up (counted in `write_errors`).
    pub write_attempts: u32,
    /// Pause between two attempts of a failed batch.
    pub retry_delay: Duration,
    /// Interval of `flowgate_instance.heartbeat_at` updates (and of the sweep).
    pub heartbeat_interval: Duration,
    /// Runs of an instance whose heartbeat is older than this are failed with `gateway_lost`.
    pub stale_after: Duration,
    /// Finished runs older than this are deleted with their frames (on the heartbeat).
    pub retention: Duration,
    /// Most runs deleted per heartbeat tick (keeps each delete short).
    pub prune_batch: usize,
    /// Fail lost gateways' runs in the heartbeat task (one gateway, or no NATS). Off when the
    /// relay takes them over instead, appending their terminal frame ([`PgRunLog::claim_lost_runs`]).
    pub sweep: bool,
}

/// Default of [`PgRunLogConfig::buffer`] (and of the gateway's `--runlog-buffer`).
pub const DEFAULT_BUFFER: usize = 8192;
/// Default of [`PgRunLogConfig::retention`] (and of the gateway's `--runlog-retention`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default of [`PgRunLogConfig::batch_max`] (`--runlog-batch`).
pub const DEFAULT_BATCH_MAX: usize = 512;
/// Default of [`PgRunLogConfig::write_attempts`] (`--runlog-write-attempts`).
pub const DEFAULT_WRITE_ATTEMPTS: u32 = 3;
/// Default of [`PgRunLogConfig::prune_batch`] (`--runlog-prune-batch`).
pub const DEFAULT_PRUNE_BATCH: usize = 200;

impl Default for PgRunLogConfig {
    fn default() -> Self {
        PgRunLogConfig {
            buffer: DEFAULT_BUFFER,
            batch_max: DEFAULT_BATCH_MAX,
            linger: Duration::from_millis(10),
            max_events_per_run: 100_000,
            write_timeout: Duration::from_secs(5),
            write_attempts: DEFAULT_WRITE_ATTEMPTS,
            retry_delay: Duration::from_millis(200),
            heartbeat_interval: Duration::from_secs(10),
            stale_after: Duration::from_secs(60),
            retention: DEFAULT_RETENTION,
            prune_batch: DEFAULT_PRUNE_BATCH,
            sweep: true,
        }
    }
}

/// Runs logged to Postgres. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgRunLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: PgPool,
    config: PgRunLogConfig,
    instance_id: Uuid,
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    /// Runs that lost frames, with how many (logged once per run, written on `finish`).
    drops: Mutex<HashMap<Uuid, u64>>,
    /// Stops the heartbeat task when the last clone is dropped.
    _stop: DropGuard,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    /// Frames queued and not yet written or given up. Raised before a frame is sent to the
    /// writer (and lowered again if the send fails), lowered by the writer once the frame's
    /// batch is done: it never goes below zero.
    pending: AtomicU64,
    batches: AtomicU64,
    lag_ms_max: AtomicU64,
    write_errors: AtomicU64,
}

#[derive(Debug)]
enum Msg {
    Start {
        run: RunStart,
        at: DateTime<Utc>,
    },
    Event {
        run_id: Uuid,
        seq: u64,
        frame: Bytes,
        queued: Instant,
    },
    Prepared {
        run_id: Uuid,
        version: String,
        hash: String,
    },
    Finish {
        run_id: Uuid,
        status: RunStatus,
        code: Option<String>,
        message: Option<String>,
        dropped: u64,
        at: DateTime<Utc>,
    },
    /// Answered once everything queued before it is written.
    Barrier(oneshot::Sender<()>),
}

impl PgRunLog {
    /// Register this gateway instance and start the writer and heartbeat tasks. The pool must
    /// be migrated (`store::postgres::migrate`).
    /// The run log's own pool (diagnostics, tests).
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    pub async fn spawn(pool: PgPool, config: PgRunLogConfig) -> Result<PgRunLog, RunLogError> {
        PgRunLog::spawn_with_metrics(pool, config, None).await
    }

    /// [`Self::spawn`], timing each batch write into `write_seconds` (the gateway's
    /// `flowgate_runlog_batch_write_seconds`).
    pub async fn spawn_with_metrics(
        pool: PgPool,
        config: PgRunLogConfig,
        write_seconds: Option<Histogram>,
    ) -> Result<PgRunLog, RunLogError> {
        let instance_id = Uuid::new_v4();
        heartbeat(&pool, instance_id, config.write_timeout).await?;
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        tokio::spawn(writer(
            rx,
            pool.clone(),
            config,
            instance_id,
            Arc::clone(&counters),
            write_seconds,
        ));
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            config,
            instance_id,
            tx,
            counters,
            drops: Mutex::new(HashMap::new()),
            _stop: stop.clone().drop_guard(),
        });
        tokio::spawn(heartbeat_loop(pool, instance_id, config, stop));
        tracing::info!(%instance_id, "run log started");
        Ok(PgRunLog { shared })
    }

    /// This gateway's `flowgate_instance.instance_id`.
    pub fn instance_id(&self) -> Uuid {
        self.shared.instance_id
    }

    /// Queue `record` if the buffer has room; a full buffer gives it back (the caller waits
    /// with [`Self::deliver`] and produces nothing meanwhile: backpressure, never a drop).
    pub fn offer(&self, record: Record) -> Result<(), Record> {
        let Some(msg) = self.message(&record) else {
            return Ok(()); // above the per-run cap: counted
        };
        match self.try_queue(msg) {
            Ok(()) => {
                self.sent(&record);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(record),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("run log writer stopped: a record was lost");
                Ok(())
            }
        }
    }

    /// Wait (at most `timeout`) for room and queue `record`. `false`: the buffer stayed full,
    /// the record is lost and counted (the run's log is incomplete).
    pub async fn deliver(&self, record: Record, timeout: Duration) -> bool {
        let Some(msg) = self.message(&record) else {
            return true;
        };
        let frame = is_frame(&msg);
        self.count_pending(frame);
        match self.shared.tx.send_timeout(msg, timeout).await {
            Ok(()) => {
                self.sent(&record);
                true
            }
            Err(_) => {
                self.uncount_pending(frame);
                match record {
                    Record::Event { run_id, .. } => {
                        self.count_drop(run_id, "run log buffer stayed full")
                    }
                    _ => tracing::warn!("run log buffer stayed full: a run start or end was lost"),
                }
                false
            }
        }
    }

    /// The writer's message for `record` (`None`: a frame above the per-run cap, counted).
    fn message(&self, record: &Record) -> Option<Msg> {
        Some(match record {
            Record::Start(run) => Msg::Start {
                run: run.clone(),
                at: Utc::now(),
            },
            Record::Prepared {
                run_id,
                version,
                hash,
            } => Msg::Prepared {
                run_id: *run_id,
                version: version.clone(),
                hash: hash.clone(),
            },
            Record::Event { run_id, seq, frame } => {
                if *seq > self.shared.config.max_events_per_run {
                    self.count_drop(*run_id, "run has more frames than the run log keeps");
                    return None;
                }
                Msg::Event {
                    run_id: *run_id,
                    seq: *seq,
                    frame: frame.clone(),
                    queued: Instant::now(),
                }
            }
            Record::Finish {
                run_id,
                status,
                code,
                message,
            } => Msg::Finish {
                run_id: *run_id,
                status: *status,
                code: code.clone(),
                message: message.clone(),
                dropped: self
                    .shared
                    .drops
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(run_id)
                    .copied()
                    .unwrap_or(0),
                at: Utc::now(),
            },
        })
    }

    /// `record` is queued: a finish takes its run's drop count along.
    fn sent(&self, record: &Record) {
        if let Record::Finish { run_id, .. } = record {
            self.shared
                .drops
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(run_id);
        }
    }

    pub fn start(&self, run: RunStart) {
        self.send_reliably(Msg::Start {
            run,
            at: Utc::now(),
        });
    }

    pub fn prepared(&self, run_id: Uuid, version: &str, workflow_hash: &str) {
        self.send_reliably(Msg::Prepared {
            run_id,
            version: version.to_owned(),
            hash: workflow_hash.to_owned(),
        });
    }

    pub fn event(&self, run_id: Uuid, seq: u64, frame: Bytes) {
        if seq > self.shared.config.max_events_per_run {
            self.count_drop(run_id, "run has more frames than the run log keeps");
            return;
        }
        let msg = Msg::Event {
            run_id,
            seq,
            frame,
            queued: Instant::now(),
        };
        if self.try_queue(msg).is_err() {
            self.count_drop(run_id, "run log buffer full");
        }
    }

    pub fn finish(
        &self,
        run_id: Uuid,
        status: RunStatus,
        code: Option<&str>,
        message: Option<&str>,
    ) {
        let dropped = self
            .shared
            .drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run_id)
            .unwrap_or(0);
        self.send_reliably(Msg::Finish {
            run_id,
            status,
            code: code.map(str::to_owned),
            message: message.map(str::to_owned),
            dropped,
            at: Utc::now(),
        });
    }

    pub async fn run_owner(&self, run_id: Uuid) -> Result<Option<RunInfo>, RunLogError> {
        self.barrier().await;
        let query = sqlx::query(
            "SELECT run_id, agent_id, user_id, version, workflow_hash, status, last_seq, \
               error_code, error_message, started_at, ended_at, events_dropped, instance_id \
             FROM flowgate_run WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.shared.pool);
        let Some(row) = bounded(self.shared.config.write_timeout, query).await? else {
            return Ok(None);
        };
        let status: String = row.try_get("status").map_err(corrupt)?;
        let last_seq: i64 = row.try_get("last_seq").map_err(corrupt)?;
        let dropped: i64 = row.try_get("events_dropped").map_err(corrupt)?;
        Ok(Some(RunInfo {
            run_id: row.try_get("run_id").map_err(corrupt)?,
            agent_id: row.try_get("agent_id").map_err(corrupt)?,
            user_id: row.try_get("user_id").map_err(corrupt)?,
            version: row.try_get("version").map_err(corrupt)?,
            workflow_hash: row.try_get("workflow_hash").map_err(corrupt)?,
            status: RunState::parse(&status).ok_or_else(|| RunLogError::Corrupt {
                what: format!("unknown run status {status:?}"),
                cause: None,
            })?,
            last_seq: u64::try_from(last_seq).unwrap_or(0),
            error_code: row.try_get("error_code").map_err(corrupt)?,
            error_message: row.try_get("error_message").map_err(corrupt)?,
            started_at: row.try_get("started_at").map_err(corrupt)?,
            ended_at: row.try_get("ended_at").map_err(corrupt)?,
            events_dropped: u64::try_from(dropped).unwrap_or(0),
            owner: row.try_get("instance_id").map_err(corrupt)?,
        }))
    }

    /// Take over the `running` runs of gateways whose heartbeat (their lease) is older than
    /// `stale_after`, at most `limit` at a time: each becomes this gateway's, its epoch bumped
    /// (a concurrent sweeper skips the rows locked here). Returns `(run_id, last_seq logged)`.
    pub async fn claim_lost_runs(
        &self,
        stale_after: Duration,
        limit: usize,
    ) -> Result<Vec<(Uuid, u64)>, RunLogError> {
        let query = sqlx::query(
            "WITH lost AS ( \
               SELECT r.run_id FROM flowgate_run r \
               JOIN flowgate_instance i ON i.instance_id = r.instance_id \
               WHERE r.status = 'running' AND r.instance_id <> $1 \
                 AND i.heartbeat_at < now() - make_interval(secs => $2) \
               LIMIT $3 FOR UPDATE OF r SKIP LOCKED) \
             UPDATE flowgate_run r SET instance_id = $1, epoch = r.epoch + 1 \
             FROM lost WHERE r.run_id = lost.run_id \
             RETURNING r.run_id, r.last_seq",
        )
        .bind(self.shared.instance_id)
        .bind(stale_after.as_secs_f64())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.shared.pool);
        let rows = bounded(self.shared.config.write_timeout, query).await?;
        rows.iter()
            .map(|row| {
                let run_id: Uuid = row.try_get("run_id").map_err(corrupt)?;
                let last: i64 = row.try_get("last_seq").map_err(corrupt)?;
                Ok((run_id, u64::try_from(last).unwrap_or(0)))
            })
            .collect()
    }

    /// Make `run_id` the run of the `vercel` chat `chat_id` of `user_id`, unless the chat's
    /// current run is still going: `false` then. One statement, so two gateways asked at once
    /// cannot both win. A run is going while its row says `running`, or, before its row is
    /// written, for `pending` after the chat was claimed for it.
    pub async fn claim_chat(
        &self,
        user_id: &str,
        chat_id: &str,
        run_id: Uuid,
        pending: Duration,
    ) -> Result<bool, RunLogError> {
        let query = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO flowgate_chat (user_id, chat_id, run_id) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, chat_id) DO UPDATE SET run_id = $3, started_at = now() \
             WHERE NOT EXISTS (SELECT 1 FROM flowgate_run r \
                               WHERE r.run_id = flowgate_chat.run_id AND r.status = 'running') \
               AND (EXISTS (SELECT 1 FROM flowgate_run r WHERE r.run_id = flowgate_chat.run_id) \
                    OR flowgate_chat.started_at < now() - make_interval(secs => $4)) \
             RETURNING run_id",
        )
        .bind(user_id)
        .bind(chat_id)
        .bind(run_id)
        .bind(pending.as_secs_f64())
        .fetch_optional(&self.shared.pool);
        bounded(self.shared.config.write_timeout, query)
            .await
            .map(|claimed| claimed.is_some())
    }

    /// The run the `vercel` chat `chat_id` of `user_id` started last.
    pub async fn chat_run(
        &self,
        user_id: &str,
        chat_id: &str,
    ) -> Result<Option<Uuid>, RunLogError> {
        let query = sqlx::query_scalar(
            "SELECT run_id FROM flowgate_chat WHERE user_id = $1 AND chat_id = $2",
        )
        .bind(user_id)
        .bind(chat_id)
        .fetch_optional(&self.shared.pool);
        bounded(self.shared.config.write_timeout, query).await
    }

    /// Record that a client asked to cancel `run_id` (before its owner is asked).
    pub async fn request_cancel(&self, run_id: Uuid) -> Result<(), RunLogError> {
        let query = sqlx::query(
            "UPDATE flowgate_run SET cancel_requested_at = now() \
             WHERE run_id = $1 AND status = 'running'",
        )
        .bind(run_id)
        .execute(&self.shared.pool);
        bounded(self.shared.config.write_timeout, query)
            .await
            .map(|_| ())
    }

    /// Take over `run_id` from `owner` at once (it did not answer): `Some(last_seq logged)`
    /// when this gateway now owns the run, `None` when it ended or someone else took it.
    pub async fn claim_run(&self, run_id: Uuid, owner: Uuid) -> Result<Option<u64>, RunLogError> {
        let query = sqlx::query(
            "UPDATE flowgate_run SET instance_id = $1, epoch = epoch + 1 \
             WHERE run_id = $2 AND instance_id = $3 AND status = 'running' \
             RETURNING last_seq",
        )
        .bind(self.shared.instance_id)
        .bind(run_id)
        .bind(owner)
        .fetch_optional(&self.shared.pool);
        let row = bounded(self.shared.config.write_timeout, query).await?;
        row.map(|row| {
            let last: i64 = row.try_get("last_seq").map_err(corrupt)?;
            Ok(u64::try_from(last).unwrap_or(0))
        })
        .transpose()
    }

    pub async fn replay(&self, run_id: Uuid, after_seq: u64) -> Result<Vec<Bytes>, RunLogError> {
        self.barrier().await;
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(self.shared.config.max_events_per_run).unwrap_or(i64::MAX);
        let query = sqlx::query_scalar::<_, String>(
            "SELECT frame FROM flowgate_run_event WHERE run_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.shared.pool);
        let frames = bounded(self.shared.config.write_timeout, query).await?;
        Ok(frames.into_iter().map(Bytes::from).collect())
    }

    pub fn stats(&self) -> RunLogStats {
        let c = &self.shared.counters;
        RunLogStats {
            events_written: c.written.load(Ordering::Relaxed),
            events_dropped: c.dropped.load(Ordering::Relaxed),
            events_pending: c.pending.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            write_lag_ms_max: c.lag_ms_max.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Wait (at most `timeout`) until everything queued so far is written.
    pub async fn flush(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        let flushed = tokio::time::timeout(timeout, async {
            if self.shared.tx.send(Msg::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
        if flushed.is_err() {
            tracing::warn!(?timeout, "run log not fully written at shutdown");
        }
    }

    /// Let the writer catch up with what was queued before a read (bounded by the timeout).
    async fn barrier(&self) {
        self.flush(self.shared.config.write_timeout).await;
    }

    fn count_drop(&self, run_id: Uuid, why: &str) {
        self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let mut drops = self.shared.drops.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded like the buffer: past that, drops are only counted globally.
        if drops.len() >= self.shared.config.buffer.max(1) && !drops.contains_key(&run_id) {
            return;
        }
        let count = drops.entry(run_id).or_insert(0);
        if *count == 0 {
            tracing::warn!(%run_id, why, "the stored log of this run is incomplete");
        }
        *count += 1;
    }

    /// `try_send`, counting a frame as pending while it is queued. A refused message is
    /// dropped (callers keep their [`Record`]).
    fn try_queue(&self, msg: Msg) -> Result<(), mpsc::error::TrySendError<()>> {
        use mpsc::error::TrySendError;
        let frame = is_frame(&msg);
        self.count_pending(frame);
        self.shared.tx.try_send(msg).map_err(|e| {
            self.uncount_pending(frame);
            match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Closed(_) => TrySendError::Closed(()),
            }
        })
    }

    /// Before a frame is sent: the writer may take it (and lower the count) before the send
    /// returns.
    fn count_pending(&self, frame: bool) {
        if frame {
            self.shared.counters.pending.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The frame counted by [`Self::count_pending`] was not queued after all.
    fn uncount_pending(&self, frame: bool) {
        if frame {
            self.shared.counters.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// `try_send`, or when the buffer is full, a task that waits for room (bounded).
    fn send_reliably(&self, msg: Msg) {
        match self.shared.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.shared.tx.clone();
                let timeout = self.shared.config.write_timeout;
                tokio::spawn(async move {
                    if tokio::time::timeout(timeout, tx.send(msg)).await.is_err() {
                        tracing::warn!("run log buffer stayed full: a run start or end was lost");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("run log writer stopped: a run start or end was lost");
            }
        }
    }
}

/// The writer task: takes what has accumulated (up to `batch_max`), writes it, repeats. Ends
/// when every sender is gone.
async fn writer(
    mut rx: mpsc::Receiver<Msg>,
    pool: PgPool,
    config: PgRunLogConfig,
    instance_id: Uuid,
    counters: Arc<Counters>,
    write_seconds: Option<Histogram>,
) {
    let max = config.batch_max.max(1);
    let mut batch = Vec::with_capacity(max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.linger;
        // Whether a flush waits on this batch; only the records added since the last look are
        // scanned.
        let (mut flush_waits, mut seen) = (false, 0);
        loop {
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            flush_waits |= batch[seen..].iter().any(|m| matches!(m, Msg::Barrier(_)));
            seen = batch.len();
            if batch.len() >= max || flush_waits || config.linger.is_zero() {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => batch.push(msg),
                // Closed (written below, then the loop ends) or the linger is over.
                Ok(None) | Err(_) => break,
            }
        }
        let mut written = Batch::default();
        let mut barriers = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                Msg::Barrier(done) => barriers.push(done),
                other => written.add(other),
            }
        }
        if !written.is_empty() {
            let frames = written.events.len() as u64;
            let began = Instant::now();
            write_isolating(&pool, &config, instance_id, written, &counters).await;
            if let Some(histogram) = &write_seconds {
                histogram.observe(began.elapsed().as_secs_f64());
            }
            // Written or given up (and counted as dropped): no longer pending either way.
            counters.pending.fetch_sub(frames, Ordering::Relaxed);
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

fn is_frame(msg: &Msg) -> bool {
    matches!(msg, Msg::Event { .. })
}

/// One batch, split by statement.
#[derive(Default)]
struct Batch {
    starts: Vec<(RunStart, DateTime<Utc>)>,
    /// Frames as the relay made them (shared bytes, no copy until they are bound).
    events: Vec<(Uuid, i64, Bytes)>,
    oldest_event: Option<Instant>,
    prepared: Vec<(Uuid, String, String)>,
    finishes: Vec<FinishRow>,
}

struct FinishRow {
    run_id: Uuid,
    status: RunStatus,
    code: Option<String>,
    message: Option<String>,
    dropped: u64,
    at: DateTime<Utc>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.starts.is_empty()
            && self.events.is_empty()
            && self.prepared.is_empty()
            && self.finishes.is_empty()
    }

    fn add(&mut self, msg: Msg) {
        match msg {
            Msg::Start { run, at } => self.starts.push((run, at)),
            Msg::Event {
                run_id,
                seq,
                frame,
                queued,
            } => {
                self.events
                    .push((run_id, i64::try_from(seq).unwrap_or(i64::MAX), frame));
                self.oldest_event = Some(self.oldest_event.map_or(queued, |o| o.min(queued)));
            }
            Msg::Finish {
                run_id,
                status,
                code,
                message,
                dropped,
                at,
            } => {
                if !self.finishes.iter().any(|f| f.run_id == run_id) {
                    self.finishes.push(FinishRow {
                        run_id,
                        status,
                        code,
                        message,
                        dropped,
                        at,
                    });
                }
            }
            Msg::Prepared {
                run_id,
                version,
                hash,
            } => self.prepared.push((run_id, version, hash)),
            Msg::Barrier(_) => {}
        }
    }

    /// The batch as one batch per run (each keeps the statement order of `write_batch`).
    fn split_by_run(self) -> Vec<(Uuid, Batch)> {
        let mut parts: std::collections::BTreeMap<Uuid, Batch> = std::collections::BTreeMap::new();
        for (run, at) in self.starts {
            parts.entry(run.run_id).or_default().starts.push((run, at));
        }
        for prepared in self.prepared {
            parts.entry(prepared.0).or_default().prepared.push(prepared);
        }
        for event in self.events {
            parts.entry(event.0).or_default().events.push(event);
        }
        for finish in self.finishes {
            parts
                .entry(finish.run_id)
                .or_default()
                .finishes
                .push(finish);
        }
        for part in parts.values_mut() {
            if !part.events.is_empty() {
                part.oldest_event = self.oldest_event;
            }
        }
        parts.into_iter().collect()
    }

    fn account(&self, counters: &Counters, ok: bool) {
        let events = self.events.len() as u64;
        if ok {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.written.fetch_add(events, Ordering::Relaxed);
            if let Some(oldest) = self.oldest_event {
                let lag = u64::try_from(oldest.elapsed().as_millis()).unwrap_or(u64::MAX);
                counters.lag_ms_max.fetch_max(lag, Ordering::Relaxed);
            }
        } else {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            counters.dropped.fetch_add(events, Ordering::Relaxed);
        }
    }
}

/// Write a batch. When the database refuses its data (not when it is unreachable), write it
/// again one run at a time: a run whose records are refused loses only its own records, never
/// the other runs' of the same batch.
async fn write_isolating(
    pool: &PgPool,
    config: &PgRunLogConfig,
    instance_id: Uuid,
    batch: Batch,
    counters: &Counters,
) {
    match write_with_retries(pool, config, instance_id, &batch).await {
        Ok(()) => batch.account(counters, true),
        Err(WriteError::Unavailable) => batch.account(counters, false),
        Err(WriteError::Refused(why)) => {
            tracing::warn!(error = %why, "the database refused a run log batch: writing it run by run");
            for (run_id, part) in batch.split_by_run() {
                let ok = write_with_retries(pool, config, instance_id, &part)
                    .await
                    .is_ok();
                if !ok {
                    tracing::warn!(%run_id, "the database refused this run's log records: they are lost");
                }
                part.account(counters, ok);
            }
        }
    }
}

/// Why a write failed.
enum WriteError {
    /// The database refused the data (SQLSTATE classes 22 and 23: a value too long, a NUL, a
    /// violated constraint): retrying the same rows cannot help.
    Refused(String),
    /// No answer, no connection, or another failure: retried, then given up.
    Unavailable,
}

async fn write_with_retries(
    pool: &PgPool,
    config: &PgRunLogConfig,
    instance_id: Uuid,
    batch: &Batch,
) -> Result<(), WriteError> {
    for attempt in 1..=config.write_attempts.max(1) {
        let written =
            tokio::time::timeout(config.write_timeout, write_batch(pool, instance_id, batch)).await;
        match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(sqlx::Error::Database(db)))
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
            {
                return Err(WriteError::Refused(db.message().to_owned()));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, attempt, "run log write failed"),
            Err(_) => tracing::warn!(attempt, "run log write got no answer in time"),
        }
        if attempt < config.write_attempts {
            tokio::time::sleep(config.retry_delay).await;
        }
    }
    Err(WriteError::Unavailable)
}

/// A frame as Postgres text: frames are JSON text (borrowed as is); anything else is made valid,
/// and NUL (which Postgres text cannot hold; JSON escapes it anyway) is replaced.
fn frame_text(frame: &Bytes) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(frame) {
        Ok(s) if !s.contains('\0') => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(String::from_utf8_lossy(frame).replace('\0', "\u{FFFD}")),
    }
}

async fn write_batch(pool: &PgPool, instance_id: Uuid, batch: &Batch) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !batch.starts.is_empty() {
        let ids: Vec<Uuid> = batch.starts.iter().map(|(r, _)| r.run_id).collect();
        let agents: Vec<&str> = batch
            .starts
            .iter()
            .map(|(r, _)| r.agent_id.as_str())
            .collect();
        let users: Vec<&str> = batch
            .starts
            .iter()
            .map(|(r, _)| r.user_id.as_str())
            .collect();
        let versions: Vec<&str> = batch
            .starts
            .iter()
            .map(|(r, _)| r.version.as_str())
            .collect();
        let hashes: Vec<Option<&str>> = batch
            .starts
            .iter()
            .map(|(r, _)| r.workflow_hash.as_deref())
            .collect();
        let at: Vec<DateTime<Utc>> = batch.starts.iter().map(|(_, at)| *at).collect();
        sqlx::query(
            "INSERT INTO flowgate_run \
               (run_id, agent_id, user_id, version, workflow_hash, status, instance_id, started_at) \
             SELECT t.run_id, t.agent_id, t.user_id, t.version, t.hash, 'running', $6, t.at \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $7::timestamptz[]) \
               AS t(run_id, agent_id, user_id, version, hash, at) \
             ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(ids)
        .bind(agents)
        .bind(users)
        .bind(versions)
        .bind(hashes)
        .bind(instance_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    if !batch.prepared.is_empty() {
        let ids: Vec<Uuid> = batch.prepared.iter().map(|p| p.0).collect();
        let versions: Vec<&str> = batch.prepared.iter().map(|p| p.1.as_str()).collect();
        let hashes: Vec<&str> = batch.prepared.iter().map(|p| p.2.as_str()).collect();
        sqlx::query(
            "UPDATE flowgate_run r SET version = p.version, workflow_hash = p.hash \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS p(run_id, version, hash) \
             WHERE r.run_id = p.run_id",
        )
        .bind(ids)
        .bind(versions)
        .bind(hashes)
        .execute(&mut *tx)
        .await?;
    }
    if !batch.events.is_empty() {
        let ids: Vec<Uuid> = batch.events.iter().map(|e| e.0).collect();
        let seqs: Vec<i64> = batch.events.iter().map(|e| e.1).collect();
        let frames: Vec<std::borrow::Cow<'_, str>> =
            batch.events.iter().map(|e| frame_text(&e.2)).collect();
        sqlx::query(
            "INSERT INTO flowgate_run_event (run_id, seq, frame) \
             SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[]) \
             ON CONFLICT (run_id, seq) DO NOTHING",
        )
        .bind(ids)
        .bind(seqs)
        .bind(frames)
        .execute(&mut *tx)
        .await?;
        let mut last: HashMap<Uuid, i64> = HashMap::new();
        for (run_id, seq, _) in &batch.events {
            let entry = last.entry(*run_id).or_insert(*seq);
            *entry = (*entry).max(*seq);
        }
        let (ids, seqs): (Vec<Uuid>, Vec<i64>) = last.into_iter().unzip();
        sqlx::query(
            "UPDATE flowgate_run r SET last_seq = GREATEST(r.last_seq, b.seq) \
             FROM UNNEST($1::uuid[], $2::int8[]) AS b(run_id, seq) WHERE r.run_id = b.run_id",
        )
        .bind(ids)
        .bind(seqs)
        .execute(&mut *tx)
        .await?;
    }
    if !batch.finishes.is_empty() {
        let f = &batch.finishes;
        let ids: Vec<Uuid> = f.iter().map(|f| f.run_id).collect();
        let statuses: Vec<&str> = f.iter().map(|f| f.status.as_str()).collect();
        let codes: Vec<Option<&str>> = f.iter().map(|f| f.code.as_deref()).collect();
        let messages: Vec<Option<&str>> = f.iter().map(|f| f.message.as_deref()).collect();
        let dropped: Vec<i64> = f
            .iter()
            .map(|f| i64::try_from(f.dropped).unwrap_or(i64::MAX))
            .collect();
        let at: Vec<DateTime<Utc>> = f.iter().map(|f| f.at).collect();
        // A run the sweep wrongly declared lost (paused gateway) gets its real ending, unless
        // another gateway took it over meanwhile (it is then that gateway's to end).
        sqlx::query(
            "UPDATE flowgate_run r SET status = f.status, ended_at = f.at, error_code = f.code, \
               error_message = f.message, events_dropped = r.events_dropped + f.dropped \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::timestamptz[]) \
               AS f(run_id, status, code, message, dropped, at) \
             WHERE r.run_id = f.run_id AND r.instance_id = $8 \
               AND (r.status = 'running' OR r.error_code = $7)",
        )
        .bind(ids)
        .bind(statuses)
        .bind(codes)
        .bind(messages)
        .bind(dropped)
        .bind(at)
        .bind(GATEWAY_LOST)
        .bind(instance_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Upsert this instance's heartbeat row.
async fn heartbeat(pool: &PgPool, instance_id: Uuid, timeout: Duration) -> Result<(), RunLogError> {
    let query = sqlx::query(
        "INSERT INTO flowgate_instance (instance_id, started_at, heartbeat_at) \
         VALUES ($1, now(), now()) \
         ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(instance_id)
    .execute(pool);
    bounded(timeout, query).await.map(|_| ())
}

/// Fail the `running` runs of every instance (other than `exclude`) whose heartbeat is older
/// than `stale_after`. Returns how many runs were marked `failed`/`gateway_lost`.
pub async fn sweep_lost_runs(
    pool: &PgPool,
    stale_after: Duration,
    exclude: Option<Uuid>,
    timeout: Duration,
) -> Result<u64, RunLogError> {
    let query = sqlx::query(
        "UPDATE flowgate_run r SET status = 'failed', ended_at = now(), error_code = $1, \
           error_message = 'the gateway serving this run stopped (no heartbeat)' \
         FROM flowgate_instance i \
         WHERE r.status = 'running' AND r.instance_id = i.instance_id \
           AND i.instance_id IS DISTINCT FROM $2 \
           AND i.heartbeat_at < now() - make_interval(secs => $3)",
    )
    .bind(GATEWAY_LOST)
    .bind(exclude)
    .bind(stale_after.as_secs_f64())
    .execute(pool);
    let done = bounded(timeout, query).await?;
    Ok(done.rows_affected())
}

async fn heartbeat_loop(
    pool: PgPool,
    instance_id: Uuid,
    config: PgRunLogConfig,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.heartbeat_interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = heartbeat(&pool, instance_id, config.write_timeout).await {
            tracing::warn!(error = %crate::logfmt::chain(&e), "run log heartbeat failed");
            continue;
        }
        if config.sweep {
            sweep(&pool, instance_id, &config).await;
        }
        prune_finished(&pool, &config).await;
    }
}

async fn sweep(pool: &PgPool, instance_id: Uuid, config: &PgRunLogConfig) {
    {
        match sweep_lost_runs(
            pool,
            config.stale_after,
            Some(instance_id),
            config.write_timeout,
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                runs = n,
                "runs of a lost gateway marked failed (gateway_lost)"
            ),
            Err(e) => tracing::warn!(error = %crate::logfmt::chain(&e), "run log sweep failed"),
        }
    }
}

async fn prune_finished(pool: &PgPool, config: &PgRunLogConfig) {
    match prune(
        pool,
        config.retention,
        config.prune_batch,
        config.write_timeout,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(runs = n, "old runs deleted from the run log"),
        Err(e) => tracing::warn!(error = %crate::logfmt::chain(&e), "run log pruning failed"),
    }
}

/// Delete up to `batch` runs that ended more than `retention` ago, with their frames, and the
/// rows of instances that are silent for as long and have no running run. Returns the runs
/// deleted.
pub async fn prune(
    pool: &PgPool,
    retention: Duration,
    batch: usize,
    timeout: Duration,
) -> Result<u64, RunLogError> {
    let work = async {
        let mut tx = pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT run_id FROM flowgate_run \
             WHERE ended_at < now() - make_interval(secs => $1) ORDER BY ended_at LIMIT $2",
        )
        .bind(retention.as_secs_f64())
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        if !ids.is_empty() {
            sqlx::query("DELETE FROM flowgate_run_event WHERE run_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM flowgate_run WHERE run_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM flowgate_chat WHERE run_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "DELETE FROM flowgate_instance i \
             WHERE i.heartbeat_at < now() - make_interval(secs => $1) \
               AND NOT EXISTS (SELECT 1 FROM flowgate_run r \
                               WHERE r.instance_id = i.instance_id AND r.status = 'running')",
        )
        .bind(retention.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    };
    bounded(timeout, work).await
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, RunLogError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(RunLogError::Unavailable {
            what: "the database failed".into(),
            cause: Some(e),
        }),
        Err(_) => Err(RunLogError::Unavailable {
            what: format!("no answer within {timeout:?}"),
            cause: None,
        }),
    }
}

fn corrupt(e: sqlx::Error) -> RunLogError {
    RunLogError::Corrupt {
        what: "a row does not decode".into(),
        cause: Some(e),
    }
}
