//! Starting a run for a client and holding on to it ([`Attached`]), for every transport: the
//! WebSocket session and the HTTP streams of the SSE dialects.

use std::sync::Arc;

use tracing::Instrument;
use uuid::Uuid;

use super::context::AppState;
use super::protocol::{ErrorCode, RunRequest};
use super::registry::{CancelReason, RunShared};
use super::run::{self, RunSpec};
use crate::auth::Identity;

/// The run a client follows. Dropping it lets go of the run as [`OnDrop`] says; a finished run
/// is simply left.
pub struct Attached {
    pub shared: Arc<RunShared>,
    /// The last `seq` written to the client.
    pub cursor: u64,
    /// How far behind the client was when it attached (a resume may start far behind); the
    /// hard limit is on falling further behind than that.
    pub lag_at_attach: usize,
    pub state: AppState,
    pub on_drop: OnDrop,
}

/// What happens to a live run when its client lets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// The gateway's policy for sockets: the run goes on detached for `--detach-grace` so a
    /// resume can pick it up, then it is cancelled (at once with `--cancel-on-disconnect`).
    Policy,
    /// Cancel at once (HTTP streams, whose clients cannot resume: a closed connection is a stop).
    Cancel,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let left = self.shared.detach();
        if self.shared.remote.is_some() {
            // A mirror (its last client stopped it): the owner applies the detach policy once
            // the mirror lets go.
            return;
        }
        if left > 0 || self.shared.is_finished() {
            return;
        }
        let_go(&self.state, &self.shared, self.on_drop);
    }
}

/// The last client of a run this gateway owns let go (here, or a mirror on another gateway):
/// cancel it (`OnDrop::Cancel`, `--cancel-on-disconnect`) or let it run detached for
/// `--detach-grace`.
pub fn let_go(state: &AppState, shared: &Arc<RunShared>, on_drop: OnDrop) {
    let config = &state.config;
    if on_drop == OnDrop::Cancel {
        tracing::info!(run_id = %shared.run_id, "client closed the stream: cancelling its run");
        shared.cancel(CancelReason::StreamClosed);
        return;
    }
    if config.cancel_on_disconnect {
        tracing::info!(run_id = %shared.run_id, "client disconnected: cancelling its run");
        shared.cancel(CancelReason::Disconnected);
        return;
    }
    tracing::info!(run_id = %shared.run_id, grace = ?config.detach_grace, "client disconnected: run continues detached");
    let grace = config.detach_grace;
    let shutdown = state.shutdown.clone();
    // A weak handle: a run that ends meanwhile frees its buffer without waiting for the grace.
    let weak = Arc::downgrade(shared);
    state.sessions.spawn(async move {
        let why = tokio::select! {
            _ = tokio::time::sleep(grace) => CancelReason::NotResumed,
            _ = shutdown.cancelled() => CancelReason::Shutdown,
        };
        if let Some(shared) = weak.upgrade()
            && shared.attached() == 0
            && !shared.is_finished()
        {
            tracing::info!(run_id = %shared.run_id, reason = why.sentence(), "cancelling a detached run");
            shared.cancel(why);
        }
    });
}

/// Refuse a run the caller may not start now (`too_many_runs`), with the sentence to show.
pub fn check_limit(state: &AppState, identity: &Identity) -> Result<(), (ErrorCode, String)> {
    let (key, limit) = run_limit(state, identity);
    if state.runs.running_for(key) < limit {
        return Ok(());
    }
    let why = if identity.anonymous {
        format!(
            "{limit} anonymous runs are in progress (--max-anonymous-runs): try again later, or sign in"
        )
    } else {
        format!(
            "user `{}` already has {limit} runs in progress (--max-runs-per-user)",
            identity.user_id
        )
    };
    Err((ErrorCode::TooManyRuns, why))
}

/// Follow a live run from after `cursor` (a resume), with `on_drop` when the follower lets go;
/// `None` for a mirror that is stopping (its clients all left: resume through a new one).
pub fn follow(
    state: &AppState,
    shared: Arc<RunShared>,
    cursor: u64,
    on_drop: OnDrop,
) -> Option<Attached> {
    if !shared.attach_if_following() {
        return None;
    }
    let lag_at_attach = shared.lag(cursor);
    Some(Attached {
        shared,
        cursor,
        lag_at_attach,
        state: state.clone(),
        on_drop,
    })
}

/// Start a run of `agent_id` as its own task and attach to it from the first frame.
pub fn start(
    state: &AppState,
    identity: Identity,
    agent_id: String,
    request: RunRequest,
    traceparent: String,
    on_drop: OnDrop,
) -> Attached {
    let run = (Uuid::new_v4(), agent_id, request);
    start_as(state, identity, run, traceparent, on_drop)
}

/// [`start`] with a run id chosen by the caller (recorded elsewhere before the run starts).
pub fn start_as(
    state: &AppState,
    identity: Identity,
    (run_id, agent_id, request): (Uuid, String, RunRequest),
    traceparent: String,
    on_drop: OnDrop,
) -> Attached {
    let shared = state.runs.create(
        run_id,
        identity.user_id.clone(),
        agent_id.clone(),
        run_limit(state, &identity).0.to_owned(),
    );
    let span = tracing::info_span!("run", %run_id);
    tracing::info!(%run_id, "run started");
    let spec = RunSpec {
        run_id,
        agent_id,
        identity,
        request,
        requested_at: std::time::Instant::now(),
        traceparent,
    };
    let task_state = state.clone();
    let task_shared = shared.clone();
    state.sessions.spawn(
        async move {
            run::execute(task_state.clone(), spec, task_shared).await;
            // A finished run is resumed from the run log (which has every frame), so its
            // buffer goes now: finished runs cost no gateway memory.
            task_state.runs.remove(&run_id);
        }
        .instrument(span),
    );
    Attached {
        shared,
        cursor: 0,
        lag_at_attach: 0,
        state: state.clone(),
        on_drop,
    }
}

fn run_limit<'a>(state: &AppState, identity: &'a Identity) -> (&'a str, usize) {
    if identity.anonymous {
        (
            super::registry::ANONYMOUS_RUNS,
            state.config.max_anonymous_runs,
        )
    } else {
        (identity.user_id.as_str(), state.config.max_runs_per_user)
    }
}
