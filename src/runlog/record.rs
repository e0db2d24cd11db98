//! What the run log records and answers: the records a run hands it, a run's state, what a
//! resume reads back, the log's counters and errors. A leaf: both stores (`memory`, `postgres`)
//! and the [`super::RunLog`] front use it.

use bytes::Bytes;
use uuid::Uuid;

/// The `error_code` of runs whose gateway stopped heartbeating.
pub const GATEWAY_LOST: &str = "gateway_lost";

/// A run that has just been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStart {
    pub run_id: Uuid,
    pub agent_id: String,
    /// The authenticated user (JWT subject) who owns the run.
    pub user_id: String,
    /// `published` or `draft`.
    pub version: String,
    /// The hash of the flow definition sent to the engine (`flow_started.data.workflow.hash`).
    pub workflow_hash: Option<String>,
}

/// One thing the relay logs about a run, in the order it happened.
#[derive(Debug, Clone)]
pub enum Record {
    Start(RunStart),
    Prepared {
        run_id: Uuid,
        version: String,
        hash: String,
    },
    Event {
        run_id: Uuid,
        seq: u64,
        frame: Bytes,
    },
    Finish {
        run_id: Uuid,
        status: RunStatus,
        code: Option<String>,
        message: Option<String>,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a run is now (`flowgate_run.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Parse the stored text; unknown text is `None`.
    pub fn parse(text: &str) -> Option<RunState> {
        Some(match text {
            "running" => RunState::Running,
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_finished(self) -> bool {
        self != RunState::Running
    }
}

impl From<RunStatus> for RunState {
    fn from(status: RunStatus) -> RunState {
        match status {
            RunStatus::Completed => RunState::Completed,
            RunStatus::Failed => RunState::Failed,
            RunStatus::Cancelled => RunState::Cancelled,
        }
    }
}

/// What the log knows about one run (for `resume`: ownership, state, last frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub run_id: Uuid,
    pub agent_id: String,
    pub user_id: String,
    pub version: String,
    pub workflow_hash: Option<String>,
    pub status: RunState,
    /// The highest `seq` logged (0 before the first frame).
    pub last_seq: u64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Frames of this run that were not logged: a replay of it is incomplete.
    pub events_dropped: u64,
    /// The gateway instance that owns the run (its run log instance id; `None` in memory).
    pub owner: Option<uuid::Uuid>,
}

/// Counters of the run log (for metrics and `/readyz`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunLogStats {
    /// Frames stored.
    pub events_written: u64,
    /// Frames not stored (buffer full, per-run cap, or a failed write).
    pub events_dropped: u64,
    /// Frames accepted and not yet committed: the writer's lag (Postgres; always 0 in memory,
    /// where a frame is stored when it is accepted).
    pub events_pending: u64,
    /// Write transactions committed (Postgres).
    pub batches: u64,
    /// Longest time between `event()` and its frame being committed, in milliseconds.
    pub write_lag_ms_max: u64,
    /// Write transactions that failed (after retries).
    pub write_errors: u64,
}

/// Failures of the run log's readers.
#[derive(Debug, thiserror::Error)]
pub enum RunLogError {
    /// The database failed (the `source()`) or did not answer in time.
    #[error("the run log is unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        cause: Option<sqlx::Error>,
    },
    /// A stored row is unreadable.
    #[error("the run log holds unreadable data: {what}")]
    Corrupt {
        what: String,
        #[source]
        cause: Option<sqlx::Error>,
    },
}
