//! Following a run for an HTTP response (the SSE dialects and their one-shot twins).
//!
//! Design note. An HTTP client learns a run's fate from the status line, which is sent once:
//! [`Follower::started`] reads the run until `flow_started` (or its end), so a failure before it
//! (unknown agent, engine unavailable, too many runs) is a real HTTP error; after it, frames are
//! encoded as they come ([`Follower::next`]). The follower holds the run as an [`Attached`] with
//! [`super::turn::OnDrop::Cancel`]: a client that closes the connection stops the run.

use super::context::AppState;
pub use super::dialect::{Payload, StreamEncoder};
use super::protocol::RunRequest;
use super::registry::{Follow, Frame};
use super::trace::TraceContext;
use super::turn::{self, Attached, OnDrop};
use crate::auth::Identity;

/// The run failed before `flow_started`: its `data.code` and sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyFailure {
    pub code: String,
    pub message: String,
}

pub struct Follower<E> {
    attached: Attached,
    encoder: E,
    batch: usize,
    done: bool,
}

impl<E: StreamEncoder> Follower<E> {
    /// Start a run of `agent_id` for an HTTP response and read it until `flow_started`: the
    /// encoder is made for the new run's id. A failure before `flow_started` is the `Err`.
    pub async fn start(
        state: &AppState,
        identity: Identity,
        agent_id: String,
        request: RunRequest,
        on_drop: OnDrop,
        encoder: impl FnOnce(uuid::Uuid) -> E,
    ) -> Result<(Follower<E>, Vec<Payload>), EarlyFailure> {
        let attached = turn::start(
            state,
            identity,
            agent_id,
            request,
            TraceContext::new_root().child_header(),
            on_drop,
        );
        let encoder = encoder(attached.shared.run_id);
        let mut follower = Follower::new(attached, encoder, state.config.client_batch);
        let first = follower.started().await?;
        Ok((follower, first))
    }

    pub fn new(attached: Attached, encoder: E, batch: usize) -> Follower<E> {
        Follower {
            attached,
            encoder,
            batch: batch.max(1),
            done: false,
        }
    }

    pub fn encoder(&self) -> &E {
        &self.encoder
    }

    pub fn run_id(&self) -> uuid::Uuid {
        self.attached.shared.run_id
    }

    /// The payloads up to and including `flow_started` (and whatever came with it), or the
    /// failure that ended the run before it.
    pub async fn started(&mut self) -> Result<Vec<Payload>, EarlyFailure> {
        let mut out = Vec::new();
        loop {
            let batch = match self
                .attached
                .shared
                .next_after(self.attached.cursor, self.batch)
                .await
            {
                Follow::Frames(batch) => batch,
                Follow::End(_) => {
                    self.done = true;
                    return Ok(out);
                }
            };
            let mut started = false;
            for frame in batch {
                self.attached.cursor = frame.seq;
                let kind = kind_of(&frame);
                if frame.end.is_some() {
                    self.done = true;
                    if !started && kind.as_deref() != Some("flow_completed") {
                        return Err(early_failure(&frame, kind.as_deref()));
                    }
                }
                started |= kind.as_deref() == Some("flow_started");
                out.extend(self.encoder.encode(&frame));
            }
            if started || self.done {
                return Ok(out);
            }
        }
    }

    /// The next payloads (possibly none), or `None` once the run's terminal frame was encoded.
    pub async fn next(&mut self) -> Option<Vec<Payload>> {
        if self.done {
            return None;
        }
        match self
            .attached
            .shared
            .next_after(self.attached.cursor, self.batch)
            .await
        {
            Follow::Frames(batch) => {
                let mut out = Vec::new();
                for frame in batch {
                    self.attached.cursor = frame.seq;
                    if frame.end.is_some() {
                        self.done = true;
                    }
                    out.extend(self.encoder.encode(&frame));
                }
                Some(out)
            }
            Follow::End(_) => {
                self.done = true;
                None
            }
        }
    }
}

/// The `type` of a stamped frame.
fn kind_of(frame: &Frame) -> Option<String> {
    frame_type(frame.text.as_str())
}

/// The `type` of a stamped frame's text.
pub fn frame_type(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<Kind>(text).ok().map(|k| k.kind)
}

fn early_failure(frame: &Frame, kind: Option<&str>) -> EarlyFailure {
    let v: serde_json::Value = serde_json::from_str(frame.text.as_str()).unwrap_or_default();
    let data = &v["data"];
    let (code, message) = match kind {
        Some("flow_cancelled") => ("cancelled", "the run was cancelled"),
        _ => (
            data["code"].as_str().unwrap_or("flow_error"),
            data["error"].as_str().unwrap_or("the run failed"),
        ),
    };
    EarlyFailure {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}
