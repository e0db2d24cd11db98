//! One run as the elements see it: the event [`Emitter`] (the envelope and the run's
//! cancellation), the run's environment ([`RunEnv`]), how an element ends ([`Outcome`] with an
//! optional branch [`Route`], or a [`Failure`]) and why a run stops ([`Stop`]).
//!
//! Below the executor and the elements (it needs only `config` and `outbound`): the executor drives elements
//! through these types, and the elements (`elements`, `rest`) see these, never the executor. The
//! server builds each run's `Emitter` and `RunEnv`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::EngineConfig;
use super::outbound::Outbound;

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    /// The socket closed or the engine is shutting down; nothing more is sent.
    #[error("the run was cancelled")]
    Cancelled,
    /// An element failed; its `element_error` has already been sent.
    #[error("{0}")]
    Failed(String),
}

/// An element's failure: either its own error or the run being cancelled under it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Element(String),
    #[error("the run was cancelled")]
    Cancelled,
}

impl From<Stop> for Failure {
    fn from(s: Stop) -> Failure {
        match s {
            Stop::Cancelled => Failure::Cancelled,
            Stop::Failed(e) => Failure::Element(e),
        }
    }
}

/// Seconds since the epoch, with microsecond precision (the envelope's `timestamp`).
pub fn epoch_secs() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as f64 / 1e6
}

/// Sends events of one run: serializes the envelope `{type, timestamp, data}`.
#[derive(Debug, Clone)]
pub struct Emitter {
    tx: mpsc::Sender<String>,
    cancel: CancellationToken,
    flow_id: Arc<str>,
}

impl Emitter {
    pub fn new(tx: mpsc::Sender<String>, cancel: CancellationToken, flow_id: &str) -> Emitter {
        Emitter {
            tx,
            cancel,
            flow_id: flow_id.into(),
        }
    }

    /// The flow id of the run (the path's `flow_id`).
    pub fn flow_id(&self) -> &str {
        &self.flow_id
    }

    /// Has the run been cancelled?
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the run is cancelled.
    pub async fn wait_cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Send one event; fails when the run is cancelled or the writer is gone.
    pub async fn emit(&self, ty: &str, data: Value) -> Result<(), Stop> {
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let text = json!({"type": ty, "timestamp": epoch_secs(), "data": data}).to_string();
        tokio::select! {
            sent = self.tx.send(text) => sent.map_err(|_| Stop::Cancelled),
            _ = self.cancel.cancelled() => Err(Stop::Cancelled),
        }
    }
}

/// What an element may see of the run besides its inputs.
#[derive(Debug, Clone)]
pub struct RunEnv {
    pub config: Arc<EngineConfig>,
    /// The engine's outbound HTTP clients (the LLM endpoint, `rest_api`).
    pub http: Outbound,
    /// The `run` object of the config frame (`run_id`, `agent_id`, `user_id`, `version`), or empty.
    pub run: Map<String, Value>,
}

/// Which control children of a branching element may run.
#[derive(Debug, Clone)]
pub struct Route {
    /// Every branch key in declaration order (case ids, flow names).
    pub keys: Vec<String>,
    /// The chosen key; `None` takes the default branch.
    pub chosen: Option<String>,
}

/// What an element produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub outputs: Map<String, Value>,
    /// For branching elements: which control children may run.
    pub route: Option<Route>,
}

impl Outcome {
    pub(super) fn outputs(outputs: Map<String, Value>) -> Outcome {
        Outcome {
            outputs,
            route: None,
        }
    }
}
