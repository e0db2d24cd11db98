//! Live runs of this gateway and their frame buffers.
//!
//! Design note. A run writes every frame it produces into its [`RunShared`] buffer and never
//! waits for a client; each attached session follows the buffer with its own cursor (the last
//! `seq` it wrote). This is what makes resume exact (a new socket simply starts its cursor at
//! `after_seq`), what keeps a slow client from blocking the engine, and what lets a run continue
//! detached for the disconnect grace. The buffer of a run lives as long as the run (frames are
//! also in the run log); it is capped by `max_run_frames`, past which the run is failed rather
//! than growing without bound. Finished runs leave the registry; their replay comes from the run
//! log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One stamped frame of a run.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub text: Utf8Bytes,
    /// For `llm_chunk` frames: `(element_id, content)` so a lagging client can get them merged.
    pub chunk: Option<Arc<(String, String)>>,
    /// When the gateway got (or made) the frame: the start of its added latency.
    pub received: std::time::Instant,
}

#[derive(Debug, Default)]
struct Buf {
    frames: Vec<Frame>,
    finished: bool,
    close_after: Option<(u16, &'static str)>,
    attached: usize,
}

/// The shared state of one live run.
#[derive(Debug)]
pub struct RunShared {
    pub run_id: Uuid,
    pub user_id: String,
    pub agent_id: String,
    pub cancel: CancellationToken,
    buf: Mutex<Buf>,
    notify: Notify,
}

/// What a follower gets from [`RunShared::next_after`].
#[derive(Debug)]
pub enum Follow {
    /// Frames with `seq` greater than the cursor, in order.
    Frames(Vec<Frame>),
    /// The run is finished and every frame was delivered; close the socket with this code, if any.
    End(Option<(u16, &'static str)>),
}

impl RunShared {
    pub fn new(run_id: Uuid, user_id: String, agent_id: String) -> Arc<RunShared> {
        Arc::new(RunShared {
            run_id,
            user_id,
            agent_id,
            cancel: CancellationToken::new(),
            buf: Mutex::new(Buf {
                attached: 1,
                ..Buf::default()
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a frame (called by the run only, in `seq` order).
    pub fn push(&self, frame: Frame) {
        self.lock().frames.push(frame);
        self.notify.notify_waiters();
    }

    /// Number of frames so far.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mark the run finished (after its terminal frame).
    pub fn finish(&self, close_after: Option<(u16, &'static str)>) {
        {
            let mut b = self.lock();
            b.finished = true;
            b.close_after = close_after;
        }
        self.notify.notify_waiters();
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// A session starts following the run.
    pub fn attach(&self) {
        self.lock().attached += 1;
    }

    /// A session stopped following; returns how many still follow.
    pub fn detach(&self) -> usize {
        let mut b = self.lock();
        b.attached = b.attached.saturating_sub(1);
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

    /// How many frames a follower at `cursor` is behind.
    pub fn lag(&self, cursor: u64) -> usize {
        self.lock()
            .frames
            .len()
            .saturating_sub(usize::try_from(cursor).unwrap_or(usize::MAX))
    }
}

/// Live runs by id. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Registry {
    runs: Arc<Mutex<HashMap<Uuid, Arc<RunShared>>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<RunShared>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, run: Arc<RunShared>) {
        self.lock().insert(run.run_id, run);
    }

    pub fn get(&self, run_id: &Uuid) -> Option<Arc<RunShared>> {
        self.lock().get(run_id).cloned()
    }

    pub fn remove(&self, run_id: &Uuid) {
        self.lock().remove(run_id);
    }

    /// Runs of `user_id` that have not finished.
    pub fn running_for(&self, user_id: &str) -> usize {
        self.lock()
            .values()
            .filter(|r| r.user_id == user_id && !r.is_finished())
            .count()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
