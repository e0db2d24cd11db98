//! The run log: which runs exist, who owns them, how they ended, and every frame they sent, so a
//! client can `resume` a run (`{"type":"resume","run_id":…,"after_seq":N}`) and an operator can see
//! what happened.
//!
//! Design: the log loses nothing, and a slow database slows runs down instead. The relay hands
//! every record of a run, in order, to [`RunLog::offer`]; when the buffer is full the record
//! comes back, and the relay waits with [`RunLog::deliver`] (reading nothing more from the
//! engine meanwhile: TCP pushes back on it) for at most `--runlog-wait`, after which the run
//! ends with `store_unavailable` and what did not fit is counted as lost. The fire-and-forget
//! [`RunLog::start`], [`RunLog::event`] and [`RunLog::finish`] remain for callers outside the
//! relay (tests, tools).
//! - [`PgRunLog`] (`postgres`) hands each record to one writer task through a bounded channel;
//!   the writer batches whatever has accumulated into multi-row `INSERT … UNNEST` statements in
//!   one transaction (a batch the database refuses is written again run by run). A lost frame
//!   is counted in [`RunLogStats::events_dropped`] and on the run row. A heartbeat task keeps
//!   `flowgate_instance.heartbeat_at` fresh and sweeps runs of instances whose heartbeat is
//!   stale to `failed`/`gateway_lost`, then deletes finished runs older than the retention (a
//!   bounded number per tick).
//! - [`MemoryRunLog`] (`memory`) keeps the last `max_runs` runs in memory (oldest finished runs
//!   are evicted first), at most `max_events_per_run` frames each.
//!
//! Readers ([`RunLog::run_owner`], [`RunLog::replay`]) are async and bounded by a timeout; on
//! Postgres they first wait (bounded) for the records queued before them to be written, so a
//! resume sees every frame the relay logged before it.

pub mod memory;
pub mod postgres;
pub mod record;

use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

pub use memory::{MemoryRunLog, MemoryRunLogConfig};
pub use postgres::{
    DEFAULT_BATCH_MAX, DEFAULT_BUFFER, DEFAULT_PRUNE_BATCH, DEFAULT_RETENTION,
    DEFAULT_WRITE_ATTEMPTS, PgRunLog, PgRunLogConfig, prune, sweep_lost_runs,
};
pub use record::{
    GATEWAY_LOST, Record, RunInfo, RunLogError, RunLogStats, RunStart, RunState, RunStatus,
};

/// Where runs are logged. Cheap to clone.
#[derive(Clone, Debug)]
pub enum RunLog {
    Postgres(PgRunLog),
    Memory(MemoryRunLog),
}

impl RunLog {
    /// Record a new run (status `running`). Never blocks, never fails the run.
    pub fn start(&self, run: RunStart) {
        match self {
            RunLog::Postgres(log) => log.start(run),
            RunLog::Memory(log) => log.start(run),
        }
    }

    /// Record the version and workflow hash a run resolved to (once its workflow is prepared).
    /// Never blocks.
    pub fn prepared(&self, run_id: Uuid, version: &str, workflow_hash: &str) {
        match self {
            RunLog::Postgres(log) => log.prepared(run_id, version, workflow_hash),
            RunLog::Memory(log) => log.prepared(run_id, version, workflow_hash),
        }
    }

    /// Record frame `seq` of a run. Never blocks: a full buffer counts a drop.
    pub fn event(&self, run_id: Uuid, seq: u64, frame: Bytes) {
        match self {
            RunLog::Postgres(log) => log.event(run_id, seq, frame),
            RunLog::Memory(log) => log.event(run_id, seq, frame),
        }
    }

    /// Record how a run ended. Never blocks.
    pub fn finish(
        &self,
        run_id: Uuid,
        status: RunStatus,
        code: Option<&str>,
        message: Option<&str>,
    ) {
        match self {
            RunLog::Postgres(log) => log.finish(run_id, status, code, message),
            RunLog::Memory(log) => log.finish(run_id, status, code, message),
        }
    }

    /// Queue `record` if there is room; a full buffer gives it back: the caller then waits
    /// with [`RunLog::deliver`] before it produces more (the relay stops reading the engine:
    /// backpressure instead of a lost frame). Records must be offered in order: once one is
    /// given back, later ones wait behind it.
    pub fn offer(&self, record: Record) -> Result<(), Record> {
        match self {
            RunLog::Postgres(log) => log.offer(record),
            RunLog::Memory(log) => {
                log.apply(record);
                Ok(())
            }
        }
    }

    /// Wait (at most `timeout`) for room and queue `record`; `false` when the buffer stayed full
    /// (the record is lost and counted: the run's log is incomplete).
    pub async fn deliver(&self, record: Record, timeout: Duration) -> bool {
        match self {
            RunLog::Postgres(log) => log.deliver(record, timeout).await,
            RunLog::Memory(log) => {
                log.apply(record);
                true
            }
        }
    }

    /// The run's owner, state and last `seq`, or `None` for an unknown run.
    pub async fn run_owner(&self, run_id: Uuid) -> Result<Option<RunInfo>, RunLogError> {
        match self {
            RunLog::Postgres(log) => log.run_owner(run_id).await,
            RunLog::Memory(log) => Ok(log.run_owner(run_id)),
        }
    }

    /// The logged frames with `seq > after_seq`, in `seq` order.
    pub async fn replay(&self, run_id: Uuid, after_seq: u64) -> Result<Vec<Bytes>, RunLogError> {
        match self {
            RunLog::Postgres(log) => log.replay(run_id, after_seq).await,
            RunLog::Memory(log) => Ok(log.replay(run_id, after_seq)),
        }
    }

    pub fn stats(&self) -> RunLogStats {
        match self {
            RunLog::Postgres(log) => log.stats(),
            RunLog::Memory(log) => log.stats(),
        }
    }

    /// Wait (at most `timeout`) until everything logged so far is stored (shutdown).
    pub async fn flush(&self, timeout: Duration) {
        match self {
            RunLog::Postgres(log) => log.flush(timeout).await,
            RunLog::Memory(_) => {}
        }
    }
}
