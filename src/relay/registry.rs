//! Live runs of this gateway and their frame buffers.
//!
//! Design note. A run writes every frame it produces into its [`RunShared`] buffer and never
//! waits for a client; each attached session follows the buffer with its own cursor (the last
//! `seq` it wrote). This is what makes resume exact (a new socket simply starts its cursor at
//! `after_seq`), what keeps a slow client from blocking the engine, and what lets a run continue
//! detached for the disconnect grace. The buffer of a run lives as long as the run (frames are
//! also in the run log); it is capped by `max_run_frames`, past which the run is failed rather
//! than growing without bound. Finished runs leave the registry at once; their replay comes from
//! the run log (which waits for its pending writes before reading).
//!
//! The terminal frame carries the run's ending (and the close code that follows it), so a
//! socket knows its run is over the moment it writes that frame — a client may send its next run
//! request right after `flow_completed`. Runs in progress are counted per user as they start and
//! end (the `too_many_runs` check is O(1)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::protocol::CloseCode;

/// One stamped frame of a run.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub text: Utf8Bytes,
    /// An engine `llm_chunk` frame (a lagging client may get consecutive ones merged; their
    /// `element_id`/`content` are read from `text` then, not stored twice).
    pub chunk: bool,
    /// When the gateway got (or made) the frame: the start of its added latency.
    pub received: std::time::Instant,
    /// `Some` on the run's terminal frame only: what follows it on the run's sockets.
    pub end: Option<AfterEnd>,
}

/// What a socket does once it has written its run's terminal frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterEnd {
    /// Stay open for the next run request.
    #[default]
    KeepOpen,
    /// Close with this code and reason (the error ends the connection, e.g. `agent_not_found`).
    Close(CloseCode, &'static str),
}

impl Frame {
    /// `(element_id, content)` of an engine `llm_chunk` frame, read back from its text (merging
    /// and partial outputs are rare, so the hot path stores nothing extra).
    pub fn chunk_parts(&self) -> Option<(String, String)> {
        #[derive(serde::Deserialize)]
        struct Chunk {
            data: ChunkData,
        }
        #[derive(serde::Deserialize)]
        struct ChunkData {
            #[serde(default)]
            element_id: Option<String>,
            content: String,
        }
        if !self.chunk {
            return None;
        }
        let c: Chunk = serde_json::from_str(self.text.as_str()).ok()?;
        Some((c.data.element_id.unwrap_or_default(), c.data.content))
    }
}

#[derive(Debug, Default)]
struct Buf {
    frames: Vec<Frame>,
    finished: bool,
    close_after: AfterEnd,
    attached: usize,
}

type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// Why a run was cancelled: the `reason` of its `flow_cancelled` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client sent `{"type":"cancel"}`.
    Client,
    /// The client disconnected and the gateway runs with `--cancel-on-disconnect`.
    Disconnected,
    /// An HTTP stream's client closed the connection (its protocol has no resume: a closed
    /// connection is a stop).
    StreamClosed,
    /// The client disconnected and nobody resumed the run within `--detach-grace`.
    NotResumed,
    /// The gateway is shutting down (`--shutdown-grace` is over, or the run was detached).
    Shutdown,
}

impl CancelReason {
    pub fn sentence(self) -> &'static str {
        match self {
            CancelReason::Client => "cancelled by the client",
            CancelReason::Disconnected => "the client disconnected (--cancel-on-disconnect)",
            CancelReason::StreamClosed => "the client closed the stream",
            CancelReason::NotResumed => {
                "the client disconnected and did not resume within --detach-grace"
            }
            CancelReason::Shutdown => "the gateway is shutting down",
        }
    }
}

/// The shared state of one live run.
#[derive(Debug)]
pub struct RunShared {
    pub run_id: Uuid,
    pub user_id: String,
    pub agent_id: String,
    /// Cancelled by [`RunShared::cancel`] (which records why); the run task waits on it.
    pub cancel: CancellationToken,
    cancel_reason: std::sync::OnceLock<CancelReason>,
    buf: Mutex<Buf>,
    notify: Notify,
    /// The per-user count of runs in progress this run is part of (until it ends).
    counts: Counts,
    counted: AtomicBool,
    /// Whose run limit it counts against: the user id, or [`ANONYMOUS_RUNS`] for anonymous
    /// callers (each its own principal, all under one limit).
    count_key: String,
    /// `Some` for a mirror of a run another gateway owns (fed from the cluster stream).
    pub remote: Option<Remote>,
}

/// What a mirror knows of the run it follows for this gateway's clients.
#[derive(Debug)]
pub struct Remote {
    /// The gateway that owns the run.
    pub owner: Uuid,
    /// Cancelled when the last local client let go (the mirror stops following).
    pub unfollowed: CancellationToken,
}

/// The run-limit key shared by every anonymous caller.
pub const ANONYMOUS_RUNS: &str = "anonymous";

/// What a follower gets from [`RunShared::next_after`].
#[derive(Debug)]
pub enum Follow {
    /// Frames with `seq` greater than the cursor, in order.
    Frames(Vec<Frame>),
    /// The run is finished and every frame was delivered.
    End(AfterEnd),
}

impl RunShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancel the run; the first reason given is the one its `flow_cancelled` frame states.
    pub fn cancel(&self, why: CancelReason) {
        let _ = self.cancel_reason.set(why);
        self.cancel.cancel();
    }

    /// Why the run was cancelled.
    pub fn cancel_reason(&self) -> CancelReason {
        self.cancel_reason
            .get()
            .copied()
            .unwrap_or(CancelReason::Client)
    }

    /// Append a frame (called by the run only, in `seq` order).
    pub fn push(&self, frame: Frame) {
        let end = frame.end;
        {
            let mut b = self.lock();
            b.frames.push(frame);
            if let Some(close_after) = end {
                b.close_after = close_after;
            }
        }
        if end.is_some() {
            self.uncount();
        }
        self.notify.notify_waiters();
    }

    /// Leave the per-user count of runs in progress (once).
    fn uncount(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = counts.get_mut(&self.count_key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.count_key);
                }
            }
        }
    }

    /// Number of frames so far.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mark a mirror finished without its terminal frame (its follow broke): its sessions end
    /// with `close_after`.
    pub fn finish_with(&self, close_after: AfterEnd) {
        self.lock().close_after = close_after;
        self.finish();
    }

    /// Mark the run finished (after its terminal frame).
    pub fn finish(&self) {
        self.lock().finished = true;
        self.uncount();
        self.notify.notify_waiters();
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// A session starts following the run.
    pub fn attach(&self) {
        self.lock().attached += 1;
    }

    /// A mirror whose clients all left: it is stopping, and a resume needs a new one.
    pub fn is_stopping(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|r| r.unfollowed.is_cancelled())
    }

    /// A session starts following the run, unless it is a mirror whose clients all left (it
    /// is stopping): `false` then. Under the same lock as [`RunShared::detach`], so a resume
    /// attaching as the last client leaves either keeps the mirror going or is told to make a
    /// new one, never attached to a mirror that stops.
    pub fn attach_if_following(&self) -> bool {
        let mut b = self.lock();
        if self.is_stopping() {
            return false;
        }
        b.attached += 1;
        true
    }

    /// A session stopped following; returns how many still follow. A mirror's last client
    /// stops the mirror (`Remote::unfollowed`).
    pub fn detach(&self) -> usize {
        let mut b = self.lock();
        b.attached = b.attached.saturating_sub(1);
        if b.attached == 0
            && let Some(remote) = &self.remote
        {
            remote.unfollowed.cancel();
        }
        b.attached
    }

    pub fn attached(&self) -> usize {
        self.lock().attached
    }

    /// Wait for frames after `cursor` (a `seq`), at most `max` of them.
    pub async fn next_after(&self, cursor: u64, max: usize) -> Follow {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let b = self.lock();
                // seq n is at index n-1.
                let start = usize::try_from(cursor)
                    .unwrap_or(usize::MAX)
                    .min(b.frames.len());
                if start < b.frames.len() {
                    let end = b.frames.len().min(start.saturating_add(max.max(1)));
                    return Follow::Frames(b.frames[start..end].to_vec());
                }
                if b.finished {
                    return Follow::End(b.close_after);
                }
            }
            notified.await;
        }
    }

    /// The text streamed so far: the `content` of the run's `llm_chunk` frames in order, at
    /// most `cap` bytes (a chunk that would pass the cap is left out). For the terminal frames
    /// that report a partial output (cancel, engine lost, timeouts).
    pub fn partial_output(&self, cap: usize) -> String {
        let chunks: Vec<Frame> = self
            .lock()
            .frames
            .iter()
            .filter(|f| f.chunk)
            .cloned()
            .collect();
        let mut out = String::new();
        for (_, content) in chunks.iter().filter_map(Frame::chunk_parts) {
            if out.len() + content.len() <= cap {
                out.push_str(&content);
            }
        }
        out
    }

    /// The frames with `seq` up to `n` (for a dialect that rebuilds its state on resume).
    pub fn prefix(&self, n: u64) -> Vec<Frame> {
        let b = self.lock();
        let end = usize::try_from(n).unwrap_or(usize::MAX).min(b.frames.len());
        b.frames[..end].to_vec()
    }

    /// How many frames a follower at `cursor` is behind.
    pub fn lag(&self, cursor: u64) -> usize {
        self.lock()
            .frames
            .len()
            .saturating_sub(usize::try_from(cursor).unwrap_or(usize::MAX))
    }
}

/// Live runs by id, and the number of runs in progress per user. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Registry {
    runs: Arc<Mutex<HashMap<Uuid, Arc<RunShared>>>>,
    counts: Counts,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<RunShared>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new run (attached to the socket that started it, counted against
    /// `count_key`: its user, or [`ANONYMOUS_RUNS`]).
    pub fn create(
        &self,
        run_id: Uuid,
        user_id: String,
        agent_id: String,
        count_key: String,
    ) -> Arc<RunShared> {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(count_key.clone())
            .or_insert(0) += 1;
        let run = Arc::new(self.shared(run_id, user_id, agent_id, Some(count_key), None));
        self.lock().insert(run_id, run.clone());
        run
    }

    /// A run's shared state, attached once; counted against `count_key` when there is one.
    fn shared(
        &self,
        run_id: Uuid,
        user_id: String,
        agent_id: String,
        count_key: Option<String>,
        remote: Option<Remote>,
    ) -> RunShared {
        RunShared {
            run_id,
            user_id,
            agent_id,
            cancel: CancellationToken::new(),
            cancel_reason: std::sync::OnceLock::new(),
            buf: Mutex::new(Buf {
                attached: 1,
                ..Buf::default()
            }),
            notify: Notify::new(),
            counts: self.counts.clone(),
            counted: AtomicBool::new(count_key.is_some()),
            count_key: count_key.unwrap_or_default(),
            remote,
        }
    }

    /// The mirror of a run `owner` runs (one per run on this gateway, attached once more for
    /// the caller); `true` when it was made now (the caller starts feeding it). Not counted
    /// against any run limit: the owner counts the run.
    pub fn mirror(
        &self,
        run_id: Uuid,
        user_id: String,
        agent_id: String,
        owner: Uuid,
    ) -> (Arc<RunShared>, bool) {
        let mut runs = self.lock();
        // A mirror whose clients all left is stopping: a new one takes its place.
        if let Some(run) = runs.get(&run_id)
            && run.attach_if_following()
        {
            return (run.clone(), false);
        }
        let remote = Remote {
            owner,
            unfollowed: CancellationToken::new(),
        };
        let run = Arc::new(self.shared(run_id, user_id, agent_id, None, Some(remote)));
        runs.insert(run_id, run.clone());
        (run, true)
    }

    pub fn get(&self, run_id: &Uuid) -> Option<Arc<RunShared>> {
        self.lock().get(run_id).cloned()
    }

    pub fn remove(&self, run_id: &Uuid) {
        self.lock().remove(run_id);
    }

    /// Remove `run` if it is still the registered run of its id (a mirror replaced by a newer
    /// one stays).
    pub fn remove_if(&self, run: &Arc<RunShared>) {
        let mut runs = self.lock();
        if runs.get(&run.run_id).is_some_and(|r| Arc::ptr_eq(r, run)) {
            runs.remove(&run.run_id);
        }
    }

    /// Runs counted against `key` in progress (started, terminal frame not yet produced).
    pub fn running_for(&self, key: &str) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_whose_last_client_left_is_replaced_and_one_with_a_client_is_kept() {
        let runs = Registry::default();
        let (run_id, owner) = (Uuid::new_v4(), Uuid::new_v4());
        let mirror = || runs.mirror(run_id, "alice".into(), "assistant".into(), owner);
        let (first, created) = mirror();
        assert!(created);
        // A second client attaches before the first leaves: the mirror goes on.
        let (again, created) = mirror();
        assert!(!created && Arc::ptr_eq(&first, &again));
        assert_eq!(first.detach(), 1);
        assert!(!first.remote.as_ref().unwrap().unfollowed.is_cancelled());
        // The last client leaves: the mirror stops, in the same step, and a resume now gets
        // a new one (never the stopping one).
        assert_eq!(first.detach(), 0);
        assert!(first.remote.as_ref().unwrap().unfollowed.is_cancelled());
        assert!(!first.attach_if_following());
        let (second, created) = mirror();
        assert!(created && !Arc::ptr_eq(&first, &second));
        // The stopped mirror's removal leaves its successor registered.
        runs.remove_if(&first);
        assert!(runs.get(&run_id).is_some_and(|r| Arc::ptr_eq(&r, &second)));
    }
}
