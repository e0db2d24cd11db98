//! The in-memory run log (no database): the last `max_runs` runs, `max_events_per_run` frames each.
//!
//! When a new run would exceed `max_runs`, the oldest finished run is evicted; when every kept
//! run is still running, the oldest run is evicted (memory stays bounded either way). Frames past
//! the per-run cap are counted as dropped. The lock is never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use uuid::Uuid;

use super::record::{Record, RunInfo, RunLogStats, RunStart, RunState, RunStatus};

/// Limits of the in-memory run log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRunLogConfig {
    /// Runs kept; older finished runs are evicted first.
    pub max_runs: usize,
    /// Frames kept per run; later frames are dropped (and counted).
    pub max_events_per_run: usize,
}

impl Default for MemoryRunLogConfig {
    fn default() -> Self {
        MemoryRunLogConfig {
            max_runs: 1000,
            max_events_per_run: 10_000,
        }
    }
}

/// Runs and frames kept in memory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemoryRunLog {
    config: MemoryRunLogConfig,
    state: Arc<Mutex<State>>,
    written: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct State {
    runs: HashMap<Uuid, Run>,
    /// Run ids, oldest first.
    order: VecDeque<Uuid>,
}

#[derive(Debug)]
struct Run {
    info: RunInfo,
    /// `(seq, frame)` in arrival order.
    events: Vec<(u64, Bytes)>,
}

impl MemoryRunLog {
    pub fn new(config: MemoryRunLogConfig) -> MemoryRunLog {
        MemoryRunLog {
            config,
            state: Arc::new(Mutex::new(State::default())),
            written: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply one record (never waits).
    pub fn apply(&self, record: Record) {
        match record {
            Record::Start(run) => self.start(run),
            Record::Prepared {
                run_id,
                version,
                hash,
            } => self.prepared(run_id, &version, &hash),
            Record::Event { run_id, seq, frame } => self.event(run_id, seq, frame),
            Record::Finish {
                run_id,
                status,
                code,
                message,
            } => self.finish(run_id, status, code.as_deref(), message.as_deref()),
        }
    }

    pub fn start(&self, run: RunStart) {
        let mut state = self.lock();
        if state.runs.contains_key(&run.run_id) {
            return;
        }
        while state.runs.len() >= self.config.max_runs.max(1) {
            let victim = state
                .order
                .iter()
                .position(|id| {
                    state
                        .runs
                        .get(id)
                        .is_some_and(|r| r.info.status.is_finished())
                })
                .unwrap_or(0);
            let Some(id) = state.order.remove(victim) else {
                break;
            };
            if let Some(evicted) = state.runs.remove(&id)
                && !evicted.info.status.is_finished()
            {
                tracing::warn!(run_id = %id, "run log full of running runs: evicted the oldest");
            }
        }
        let info = RunInfo {
            run_id: run.run_id,
            agent_id: run.agent_id,
            user_id: run.user_id,
            version: run.version,
            workflow_hash: run.workflow_hash,
            status: RunState::Running,
            last_seq: 0,
            error_code: None,
            error_message: None,
            started_at: Some(chrono::Utc::now()),
            ended_at: None,
            events_dropped: 0,
            owner: None,
        };
        state.order.push_back(run.run_id);
        state.runs.insert(
            run.run_id,
            Run {
                info,
                events: Vec::new(),
            },
        );
    }

    pub fn prepared(&self, run_id: Uuid, version: &str, workflow_hash: &str) {
        if let Some(run) = self.lock().runs.get_mut(&run_id) {
            run.info.version = version.to_owned();
            run.info.workflow_hash = Some(workflow_hash.to_owned());
        }
    }

    pub fn event(&self, run_id: Uuid, seq: u64, frame: Bytes) {
        let mut state = self.lock();
        let Some(run) = state.runs.get_mut(&run_id) else {
            // Unknown (or already evicted) run: nothing to attach the frame to.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if run.events.len() >= self.config.max_events_per_run {
            if run.info.events_dropped == 0 {
                tracing::warn!(%run_id, cap = self.config.max_events_per_run,
                    "run has more frames than the run log keeps: its stored log is incomplete");
            }
            run.info.events_dropped += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        run.info.last_seq = run.info.last_seq.max(seq);
        run.events.push((seq, frame));
        self.written.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish(
        &self,
        run_id: Uuid,
        status: RunStatus,
        code: Option<&str>,
        message: Option<&str>,
    ) {
        let mut state = self.lock();
        if let Some(run) = state.runs.get_mut(&run_id)
            && !run.info.status.is_finished()
        {
            run.info.status = status.into();
            run.info.ended_at = Some(chrono::Utc::now());
            run.info.error_code = code.map(str::to_owned);
            run.info.error_message = message.map(str::to_owned);
        }
    }

    pub fn run_owner(&self, run_id: Uuid) -> Option<RunInfo> {
        self.lock().runs.get(&run_id).map(|r| r.info.clone())
    }

    pub fn replay(&self, run_id: Uuid, after_seq: u64) -> Vec<Bytes> {
        let state = self.lock();
        let Some(run) = state.runs.get(&run_id) else {
            return Vec::new();
        };
        let mut events: Vec<&(u64, Bytes)> = run
            .events
            .iter()
            .filter(|(seq, _)| *seq > after_seq)
            .collect();
        events.sort_by_key(|(seq, _)| *seq);
        events.dedup_by_key(|(seq, _)| *seq);
        events.into_iter().map(|(_, frame)| frame.clone()).collect()
    }

    pub fn stats(&self) -> RunLogStats {
        RunLogStats {
            events_written: self.written.load(Ordering::Relaxed),
            events_dropped: self.dropped.load(Ordering::Relaxed),
            ..RunLogStats::default()
        }
    }
}
