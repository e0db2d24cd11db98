//! Runs another gateway owns (issue 16, docs/scaling.md): a resume that lands on this gateway
//! follows the run through a local mirror fed from the cluster stream; a cancel on the mirror
//! goes to the owner; the owner learns of the mirror's clients (attach/detach) so its detach
//! policy counts them. And the owner's side: answering other gateways' requests.
//!
//! Design note. A mirror is a [`RunShared`] like a local run's, so sessions and HTTP streams
//! follow it unchanged. Its task reads the run's subject from the first frame on (one ordered
//! consumer: what was stored, then what comes, no race between the two), drops a `seq` it has
//! already seen, and stops at a gap: a frame is never delivered out of order or skipped
//! silently; the sessions then close with 1012 and can resume again (a finished run replays
//! from the run log).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use uuid::Uuid;

use super::context::AppState;
use super::protocol::CloseCode;
use super::registry::{AfterEnd, CancelReason, Frame, RunShared};
use super::stream::frame_type;
use super::turn::{self, OnDrop};
use crate::cluster::{Ask, Cluster};
use crate::runlog::RunInfo;

/// Follow `info`'s run, owned by `owner`, for a client resuming after `after_seq`: the mirror
/// (attached for the caller) once it holds the frames up to `after_seq`, or the sentence saying
/// why not.
pub async fn follow(
    state: &AppState,
    info: &RunInfo,
    owner: Uuid,
    after_seq: u64,
) -> Result<Arc<RunShared>, String> {
    let run_id = info.run_id;
    let Some(cluster) = state.cluster.as_ref().filter(|c| c.ready()) else {
        return Err(format!(
            "run `{run_id}` is in progress on another gateway, and following it from here needs \
             NATS, which is unreachable now: resume again later (once the run has ended it is \
             replayed from the run log)"
        ));
    };
    let (shared, created) =
        state
            .runs
            .mirror(run_id, info.user_id.clone(), info.agent_id.clone(), owner);
    if created {
        match cluster.follow(run_id).await {
            Ok(frames) => {
                let task = mirror(state.clone(), shared.clone(), cluster.clone(), frames);
                state.sessions.spawn(task);
            }
            Err(e) => {
                state.runs.remove_if(&shared);
                shared.finish_with(AfterEnd::KeepOpen);
                return Err(format!(
                    "cannot follow run `{run_id}` on another gateway: {e}; resume again later"
                ));
            }
        }
    }
    // A dialect rebuilds its state from the frames up to `after_seq`: wait for them (bounded).
    let wait = state.config.nats_timeout;
    let arrived = tokio::time::timeout(wait, async {
        while (shared.len() as u64) < after_seq && !shared.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if arrived.is_err() || (shared.len() as u64) < after_seq {
        release(&shared);
        return Err(format!(
            "run `{run_id}` on another gateway has no frame {after_seq} yet (within {wait:?}): \
             resume with an `after_seq` you received"
        ));
    }
    Ok(shared)
}

/// Let go of a mirror the caller attached to without following it (the last client stops it).
fn release(shared: &Arc<RunShared>) {
    shared.detach();
}

/// Frames a mirror holds while waiting for a missing one (a resent frame stored late).
const REORDER_WINDOW: usize = 4096;

/// Why a mirror stopped.
enum Stop {
    /// The run's terminal frame arrived.
    Ended,
    /// Its last local client let go.
    Unfollowed,
    /// The stream broke, has a gap, or went quiet: the sentence for the log.
    Broken(String),
}

/// Feed `shared` from the run's frames until its terminal frame, its last local client leaves,
/// or the follow breaks.
async fn mirror(
    state: AppState,
    shared: Arc<RunShared>,
    cluster: Cluster,
    frames: impl futures_util::Stream<Item = Result<(u64, bytes::Bytes), crate::cluster::ClusterError>>
    + Send
    + 'static,
) {
    let run_id = shared.run_id;
    let Some(remote) = shared.remote.as_ref() else {
        return;
    };
    let (owner, unfollowed) = (remote.owner, remote.unfollowed.clone());
    // The owner counts this gateway's clients while the mirror follows (best effort: a gone
    // owner is noticed by the sweep).
    let attach = {
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.ask(owner, run_id, Ask::Attach).await })
    };
    // Longer than any quiet the owner allows itself before it ends the run on its own.
    let quiet = state.config.engine_idle_timeout * 2 + state.config.nats_timeout;
    type Frames = std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<(u64, bytes::Bytes), crate::cluster::ClusterError>,
                > + Send,
        >,
    >;
    let mut frames: Frames = Box::pin(frames);
    // Silence after which the follow is made again (cheap: a new consumer).
    let refollow = state.config.nats_timeout * 2;
    let mut last_frame = tokio::time::Instant::now();
    let mut expected = 1u64;
    let mut early: std::collections::BTreeMap<u64, bytes::Bytes> = Default::default();
    let mut cancel_asked = false;
    let stop = loop {
        tokio::select! {
            _ = unfollowed.cancelled() => break Stop::Unfollowed,
            _ = shared.cancel.cancelled(), if !cancel_asked => {
                cancel_asked = true;
                cancel_remote(&state, &cluster, run_id, owner).await;
            }
            next = tokio::time::timeout(refollow, frames.next()) => match next {
                // Quiet, ended or failed (a NATS restart loses the consumer): follow again from
                // the start (what was delivered is dropped by `seq`), until the owner has been
                // quiet for longer than it allows itself.
                Err(_) | Ok(None) | Ok(Some(Err(_))) => {
                    if last_frame.elapsed() > quiet {
                        break Stop::Broken(format!("no frame from the owner for {quiet:?}"));
                    }
                    match cluster.follow(run_id).await {
                        Ok(again) => frames = Box::pin(again),
                        Err(e) => {
                            tracing::debug!(%run_id, error = %e, "cannot follow the run's stream again yet");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                Ok(Some(Ok((seq, bytes)))) => {
                    last_frame = tokio::time::Instant::now();
                    if seq < expected {
                        continue; // stored twice (a retried publish): already delivered
                    }
                    // A frame resent after an outage can be stored after later ones: hold
                    // early frames (bounded) until the missing ones come.
                    early.insert(seq, bytes);
                    if early.len() > REORDER_WINDOW {
                        break Stop::Broken(format!("frame {expected} is missing from the stream"));
                    }
                    let mut ended = false;
                    while let Some(bytes) = early.remove(&expected) {
                        let Ok(text) = String::from_utf8(bytes.to_vec()) else {
                            break;
                        };
                        let kind = frame_type(&text);
                        let terminal = matches!(
                            kind.as_deref(),
                            Some("flow_completed" | "flow_error" | "flow_cancelled")
                        );
                        shared.push(Frame {
                            seq: expected,
                            text: Utf8Bytes::from(text),
                            chunk: kind.as_deref() == Some("llm_chunk"),
                            received: std::time::Instant::now(),
                            end: terminal.then_some(AfterEnd::KeepOpen),
                        });
                        expected += 1;
                        if terminal {
                            ended = true;
                            break;
                        }
                    }
                    if ended {
                        break Stop::Ended;
                    }
                }
            },
        }
    };
    match stop {
        Stop::Ended => shared.finish(),
        Stop::Unfollowed => shared.finish_with(AfterEnd::KeepOpen),
        Stop::Broken(why) => {
            tracing::warn!(%run_id, %owner, cause = %why, "following a run of another gateway broke: its clients can resume again");
            shared.finish_with(AfterEnd::Close(
                CloseCode::Restart,
                "lost the run's stream: resume again",
            ));
        }
    }
    state.runs.remove_if(&shared);
    if matches!(attach.await, Ok(Ok(true))) {
        let _ = cluster.ask(owner, run_id, Ask::Detach).await;
    }
}

/// A client here cancels a run `owner` runs: record the request, then ask the owner; an owner
/// that does not answer is treated as lost at once (the run is taken over and ended with
/// `gateway_lost`, which reaches this mirror through the stream).
pub async fn cancel_remote(state: &AppState, cluster: &Cluster, run_id: Uuid, owner: Uuid) {
    let crate::runlog::RunLog::Postgres(log) = &state.runlog else {
        return;
    };
    if let Err(e) = log.request_cancel(run_id).await {
        tracing::warn!(%run_id, error = %crate::logfmt::chain(&e), "cannot record a cancel request");
    }
    match cluster.ask(owner, run_id, Ask::Cancel).await {
        // The owner cancels the engine; its `flow_cancelled` comes through the stream.
        Ok(true) => tracing::info!(%run_id, %owner, "asked the run's owner to cancel it"),
        Ok(false) => tracing::info!(%run_id, %owner, "the owner no longer has the run"),
        Err(e) => {
            tracing::warn!(%run_id, %owner, error = %e, "the run's owner did not answer the cancel: taking the run over");
            match log.claim_run(run_id, owner).await {
                Ok(Some(logged)) => end_lost_run(state, run_id, logged).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%run_id, error = %crate::logfmt::chain(&e), "cannot take the run over");
                }
            }
        }
    }
}

/// Answer another gateway's request about a run this gateway owns; `true` when done.
pub fn answer(state: &AppState, ask: Ask, run_id: Uuid) -> bool {
    let Some(shared) = state.runs.get(&run_id) else {
        return false;
    };
    if shared.remote.is_some() || shared.is_finished() {
        return false;
    }
    match ask {
        Ask::Cancel => {
            tracing::info!(%run_id, "cancelled by a client on another gateway");
            shared.cancel(CancelReason::Client);
        }
        Ask::Attach => shared.attach(),
        Ask::Detach => {
            if shared.detach() == 0 {
                turn::let_go(state, &shared, OnDrop::Policy);
            }
        }
    }
    true
}

/// Lost gateways' runs: every `--heartbeat-interval`, take over the `running` runs of gateways
/// silent for six intervals (their lease) and end each with one terminal `flow_error`
/// (`gateway_lost`) after the last frame any client can have seen. A run is never run again
/// (the engine call is not idempotent).
pub async fn take_over_lost_runs(state: AppState) {
    let crate::runlog::RunLog::Postgres(log) = &state.runlog else {
        return;
    };
    let every = state
        .config
        .heartbeat_interval
        .max(Duration::from_millis(10));
    let lease = every * 6;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match log.claim_lost_runs(lease, 100).await {
            Ok(runs) => {
                for (run_id, logged) in runs {
                    end_lost_run(&state, run_id, logged).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::logfmt::chain(&e), "cannot look for lost gateways' runs");
            }
        }
    }
}

/// End a run taken over from a lost gateway: the frames only the stream has go to the run log,
/// then the terminal frame goes to both, then the run is marked failed.
async fn end_lost_run(state: &AppState, run_id: Uuid, logged: u64) {
    tracing::warn!(%run_id, logged, "taking over a run of a lost gateway");
    let wait = state.config.store_timeout;
    let message = "the gateway serving this run stopped: the run cannot continue (its frames up to here are kept)";
    // What clients can have seen: the stream has every frame the owner sent (the run log may
    // lag behind it); without NATS, the run log is all there is. A frozen owner's last frames
    // can still reach NATS after we read it (they were in its socket buffer): then the
    // terminal's `seq` is taken, and we read again and append after them (a few times).
    let mut attempt = 0;
    let (last, terminal) = loop {
        attempt += 1;
        let frames = frames_so_far(state, run_id).await;
        let last = frames.last().map_or(0, |(seq, _)| *seq);
        for (seq, frame) in frames.iter().filter(|(seq, _)| *seq > logged) {
            let record = crate::runlog::Record::Event {
                run_id,
                seq: *seq,
                frame: frame.clone(),
            };
            state.runlog.deliver(record, wait).await;
        }
        let partial: String = frames
            .iter()
            .filter_map(|(_, f)| serde_json::from_slice::<serde_json::Value>(f).ok())
            .filter(|v| v["type"] == "llm_chunk")
            .filter_map(|v| v["data"]["content"].as_str().map(str::to_owned))
            .collect();
        let terminal = serde_json::json!({
            "type": "flow_error",
            "timestamp": super::protocol::now_ts(),
            "data": {"error": message, "code": super::protocol::ErrorCode::GatewayLost.as_str(), "partial_output": partial},
            "run_id": run_id.to_string(),
            "seq": last + 1,
        });
        let terminal = bytes::Bytes::from(terminal.to_string());
        let Some(cluster) = state.cluster.as_ref() else {
            break (last, terminal);
        };
        match cluster
            .publish_now(run_id, last + 1, terminal.clone())
            .await
        {
            Ok(true) => break (last, terminal),
            Ok(false) if attempt < 5 => {
                tracing::warn!(%run_id, seq = last + 1, "the stream got more frames of the lost run meanwhile: reading it again");
            }
            Ok(false) => {
                tracing::warn!(%run_id, seq = last + 1, "the lost run's stream keeps growing: its owner may be alive; ending it in the run log only");
                break (last, terminal);
            }
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "cannot publish a lost run's terminal frame");
                break (last, terminal);
            }
        }
    };
    state
        .runlog
        .deliver(
            crate::runlog::Record::Event {
                run_id,
                seq: last + 1,
                frame: terminal,
            },
            wait,
        )
        .await;
    state
        .runlog
        .deliver(
            crate::runlog::Record::Finish {
                run_id,
                status: crate::runlog::RunStatus::Failed,
                code: Some(crate::runlog::GATEWAY_LOST.into()),
                message: Some(message.into()),
            },
            wait,
        )
        .await;
    state.metrics.runs_taken_over.inc();
    tracing::warn!(%run_id, last_seq = last, "took over a run of a lost gateway and ended it (gateway_lost)");
}

/// A run's frames from 1 on without a gap: the run log's, then what only the stream has.
async fn frames_so_far(state: &AppState, run_id: Uuid) -> Vec<(u64, bytes::Bytes)> {
    let mut frames: Vec<(u64, bytes::Bytes)> = match state.runlog.replay(run_id, 0).await {
        Ok(f) => f
            .into_iter()
            .map(|f| (logged_seq(&f), f))
            .zip(1u64..)
            .take_while(|((seq, _), want)| seq == want)
            .map(|(frame, _)| frame)
            .collect(),
        Err(e) => {
            tracing::warn!(%run_id, error = %crate::logfmt::chain(&e), "cannot read a lost run's log");
            Vec::new()
        }
    };
    if let Some(cluster) = state.cluster.as_ref().filter(|c| c.ready()) {
        match stream_frames(cluster, run_id, state.config.nats_timeout * 2).await {
            Ok(streamed) => {
                for (seq, frame) in streamed {
                    if seq == frames.len() as u64 + 1 {
                        frames.push((seq, frame));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "cannot read a lost run's stream: ending it after its logged frames");
            }
        }
    }
    frames
}

/// The `seq` of a stamped frame (0 when it has none).
fn logged_seq(frame: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(frame).map_or(0, |s| s.seq)
}

/// Every frame the stream has for `run_id`, in order.
async fn stream_frames(
    cluster: &Cluster,
    run_id: Uuid,
    within: Duration,
) -> Result<Vec<(u64, bytes::Bytes)>, crate::cluster::ClusterError> {
    let last = cluster.last_seq(run_id).await?;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let frames = cluster.follow(run_id).await?;
    let mut frames = std::pin::pin!(frames);
    let read = async {
        let mut early = std::collections::BTreeMap::new();
        while let Some(next) = frames.next().await {
            let Ok((seq, frame)) = next else {
                continue; // a hiccup: the ordered consumer goes on
            };
            if seq > out.len() as u64 {
                early.insert(seq, frame);
            }
            while let Some(frame) = early.remove(&(out.len() as u64 + 1)) {
                out.push((out.len() as u64 + 1, frame));
            }
            if out.len() as u64 >= last || early.len() > REORDER_WINDOW {
                break;
            }
        }
    };
    if tokio::time::timeout(within, read).await.is_err() {
        tracing::warn!(%run_id, last, "reading a lost run's stream timed out");
    }
    Ok(out)
}
