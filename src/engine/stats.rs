//! The engine's counters, shared by the entry point (`Engine::stats`), the server and the executor.

use std::sync::atomic::AtomicUsize;

/// Counters tests and operators can read while the engine runs.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Elements that sent `element_started`, over all runs.
    pub elements_started: AtomicUsize,
    /// Runs whose executor has finished (terminal event sent, failed, or stopped).
    pub runs_ended: AtomicUsize,
}
