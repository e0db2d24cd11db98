//! Measurements of the benchmark: latency samples and their percentiles, per-session tallies
//! (runs, errors, lost runs) and the per-run stream check (gap-free `seq`, terminal event, all
//! chunks). Pure data, no I/O; merged by [`super`] after every session has ended.

use std::collections::BTreeMap;

use serde::Serialize;

/// How many example error messages a tally keeps.
const ERROR_EXAMPLES: usize = 5;

/// p50 / p99 / max of a set of samples (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Nearest-rank percentiles of `samples` (sorted in place); `None` without samples.
pub fn summarize(samples: &mut [u64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |q: f64| {
        let n = samples.len();
        let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        samples[idx]
    };
    Some(Summary {
        count: samples.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: samples[samples.len() - 1],
    })
}

/// What one session (or, merged, one phase) saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Runs started.
    pub runs: u64,
    /// Runs that ended with `flow_completed`, gap-free and with every chunk.
    pub runs_ok: u64,
    /// Runs whose stream was incomplete: a `seq` gap, no terminal event, or missing chunks.
    pub lost_runs: u64,
    /// Errors by kind (e.g. `connect`, `timeout`, `flow_error:engine_timeout`).
    pub errors: BTreeMap<String, u64>,
    /// The first few error messages, for the report.
    pub error_examples: Vec<String>,
    /// connect → `flow_started`, microseconds (runs whose `flow_started` came in the window).
    pub setup_us: Vec<u64>,
    /// Client receive time − the engine's envelope `timestamp`, microseconds (frames received
    /// in the window).
    pub event_us: Vec<u64>,
    /// `flow_started` → terminal event, microseconds (runs that started in the window): how
    /// long a run takes, against the `events × interval` the engine is scripted for.
    pub run_us: Vec<u64>,
    /// Closing a run's socket (close frame → end of stream), microseconds.
    pub close_us: Vec<u64>,
    /// Frames received in the window (every frame of a run).
    pub frames_in_window: u64,
    /// Merged `llm_chunk` frames (`merged_seqs`) seen: the gateway fell behind on a client.
    pub merged_frames: u64,
}

impl Tally {
    pub fn error(&mut self, kind: impl Into<String>, message: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
        if self.error_examples.len() < ERROR_EXAMPLES {
            self.error_examples.push(message.into());
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: Tally) {
        self.runs += other.runs;
        self.runs_ok += other.runs_ok;
        self.lost_runs += other.lost_runs;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for e in other.error_examples {
            if self.error_examples.len() < ERROR_EXAMPLES {
                self.error_examples.push(e);
            }
        }
        self.setup_us.extend(other.setup_us);
        self.event_us.extend(other.event_us);
        self.run_us.extend(other.run_us);
        self.close_us.extend(other.close_us);
        self.frames_in_window += other.frames_in_window;
        self.merged_frames += other.merged_frames;
    }
}

/// What a session returns and a phase merges (a [`Tally`], or a cluster session's pair).
pub trait Merge: Default + Send + 'static {
    fn merge_from(&mut self, other: Self);
    /// Count an error of the phase itself (a session that panicked or did not finish).
    fn phase_error(&mut self, kind: &str, message: String);
}

impl Merge for Tally {
    fn merge_from(&mut self, other: Tally) {
        self.merge(other);
    }

    fn phase_error(&mut self, kind: &str, message: String) {
        self.error(kind, message);
    }
}

/// Checks one run's stream as it arrives: `seq` 1, 2, 3 … without gaps (a merged chunk frame
/// covers `merged_seqs: [first, last]`), the number of `llm_chunk` events, one terminal event.
#[derive(Debug)]
pub struct StreamCheck {
    /// Whether frames carry `seq` (gateway) or not (the engine directly).
    with_seq: bool,
    next_seq: u64,
    pub chunks: u64,
    pub gap: Option<String>,
    pub terminal: Option<String>,
}

impl StreamCheck {
    pub fn new(with_seq: bool) -> StreamCheck {
        StreamCheck {
            with_seq,
            next_seq: 1,
            chunks: 0,
            gap: None,
            terminal: None,
        }
    }

    /// Account for one frame.
    pub fn frame(&mut self, kind: &str, seq: Option<u64>, merged: Option<[u64; 2]>) {
        if self.terminal.is_some() && self.gap.is_none() {
            self.gap = Some(format!("a `{kind}` frame after the terminal event"));
        }
        let covered = match merged {
            Some([a, b]) if b >= a => b - a + 1,
            _ => 1,
        };
        if kind == "llm_chunk" {
            self.chunks += covered;
        }
        if self.with_seq && self.gap.is_none() {
            let first = match (merged, seq) {
                (Some([a, _]), _) => Some(a),
                (None, s) => s,
            };
            match first {
                Some(s) if s == self.next_seq => self.next_seq += covered,
                Some(s) => {
                    self.gap = Some(format!("seq {s} where {} was due", self.next_seq));
                }
                None => self.gap = Some(format!("a `{kind}` frame without seq")),
            }
        }
        if is_terminal(kind) {
            self.terminal = Some(kind.to_owned());
        }
    }

    /// `Ok` when the run is complete: gap-free, terminal, `want_chunks` chunks.
    pub fn verdict(&self, want_chunks: u64) -> Result<(), String> {
        if let Some(gap) = &self.gap {
            return Err(gap.clone());
        }
        match self.terminal.as_deref() {
            None => Err("no terminal event".into()),
            Some("flow_completed") if self.chunks != want_chunks => {
                Err(format!("{} of {want_chunks} llm_chunk events", self.chunks))
            }
            Some(_) => Ok(()),
        }
    }
}

pub fn is_terminal(kind: &str) -> bool {
    matches!(kind, "flow_completed" | "flow_error" | "flow_cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = summarize(&mut v).unwrap();
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 50, 99, 100));
        let mut one = vec![7];
        let s = summarize(&mut one).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (7, 7, 7));
        assert!(summarize(&mut []).is_none());
    }

    #[test]
    fn a_gap_free_run_with_every_chunk_passes() {
        let mut c = StreamCheck::new(true);
        c.frame("status", Some(1), None);
        c.frame("flow_started", Some(2), None);
        c.frame("llm_chunk", Some(3), None);
        c.frame("llm_chunk", Some(6), Some([4, 6]));
        c.frame("flow_completed", Some(7), None);
        assert_eq!(c.verdict(4), Ok(()));
    }

    #[test]
    fn a_seq_gap_a_missing_terminal_or_missing_chunks_is_a_lost_run() {
        let mut c = StreamCheck::new(true);
        c.frame("flow_started", Some(1), None);
        c.frame("llm_chunk", Some(3), None);
        c.frame("flow_completed", Some(4), None);
        assert!(c.verdict(1).unwrap_err().contains("seq 3"));

        let mut c = StreamCheck::new(false);
        c.frame("flow_started", None, None);
        c.frame("llm_chunk", None, None);
        assert_eq!(c.verdict(1).unwrap_err(), "no terminal event");
        c.frame("flow_completed", None, None);
        assert_eq!(c.verdict(1), Ok(()));
        assert!(c.verdict(2).unwrap_err().contains("1 of 2"));
    }
}
