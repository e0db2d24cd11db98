//! Why a run or a resume failed, and what each party is told.
//!
//! [`verdict`] is the one place that turns an error into what the client and the
//! operator see: the `data.code` of the error frame (also the metric label of the run's end),
//! the close code that follows it (if the error ends the connection) and the sentence the client
//! reads. The cause — a database, socket or OS error, an address of the engine hop — stays in
//! the error's `source()` chain and reaches the log only ([`chain`]), never a client.

use super::engine_client::EngineError;
use super::protocol::{CloseCode, ErrorCode};
use crate::runlog::RunLogError;
use crate::store::StoreError;

/// An error from one of the relay's dependencies.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    Store(&'a StoreError),
    Engine(&'a EngineError),
    RunLog(&'a RunLogError),
}

/// What a failure means on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub code: ErrorCode,
    /// The sentence the client reads (flowgate's own words).
    pub sentence: String,
}

impl Verdict {
    /// The close code that follows the error frame, when the error ends the connection.
    pub fn close(&self) -> Option<CloseCode> {
        self.code.close_code()
    }

    /// The `code` label of `flowgate_runs_finished_total` (the same word as `data.code`).
    pub fn label(&self) -> &'static str {
        self.code.as_str()
    }
}

/// What `failure` means on the wire: its code and the client's sentence.
pub fn verdict(failure: Failure<'_>) -> Verdict {
    let (code, sentence) = match failure {
        Failure::Store(StoreError::Unavailable { .. }) => (
            ErrorCode::StoreUnavailable,
            "the workflow store is unavailable right now: try again later".to_owned(),
        ),
        Failure::Store(e @ StoreError::InvalidAgentId(_)) => {
            (ErrorCode::AgentNotFound, e.to_string())
        }
        Failure::Store(StoreError::Corrupt { .. }) => (
            ErrorCode::Internal,
            "this agent's stored workflow cannot be read (the gateway's log says why)".to_owned(),
        ),
        Failure::Engine(e) => match e {
            EngineError::Unavailable(_) => (ErrorCode::EngineUnavailable, e.to_string()),
            EngineError::Unreachable(_) => (
                ErrorCode::EngineUnavailable,
                "the execution engine is unavailable right now: try again later".to_owned(),
            ),
            EngineError::Timeout(_) => (ErrorCode::EngineTimeout, e.to_string()),
            EngineError::Protocol { .. } => (ErrorCode::EngineProtocolError, e.to_string()),
            EngineError::Lost { .. } => (ErrorCode::EngineLost, e.to_string()),
        },
        Failure::RunLog(_) => (
            ErrorCode::StoreUnavailable,
            "the run log is unavailable right now: try again later".to_owned(),
        ),
    };
    Verdict { code, sentence }
}

pub use crate::logfmt::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_reach_the_log_and_never_the_sentence() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by 10.0.0.7");
        let e = EngineError::Unreachable(tokio_tungstenite::tungstenite::Error::Io(io));
        let v = verdict(Failure::Engine(&e));
        assert_eq!(v.code, ErrorCode::EngineUnavailable);
        assert_eq!(v.label(), "engine_unavailable");
        assert_eq!(v.close(), None);
        assert!(!v.sentence.contains("10.0.0.7"), "{}", v.sentence);
        assert!(chain(&e).contains("10.0.0.7"), "{}", chain(&e));
    }

    #[test]
    fn a_lost_engine_names_what_happened_without_the_os_text() {
        let e = EngineError::lost(
            "the connection broke",
            Some(tokio_tungstenite::tungstenite::Error::Io(
                std::io::Error::other("EPIPE on fd 9"),
            )),
        );
        let v = verdict(Failure::Engine(&e));
        assert_eq!(v.code, ErrorCode::EngineLost);
        assert_eq!(
            v.sentence,
            "the connection to the execution engine was lost: the connection broke"
        );
        assert!(chain(&e).ends_with("EPIPE on fd 9"));
    }

    #[test]
    fn store_failures_keep_database_texts_out_of_the_sentence() {
        let e = StoreError::unavailable("password authentication failed");
        let v = verdict(Failure::Store(&e));
        assert_eq!(v.code, ErrorCode::StoreUnavailable);
        assert!(!v.sentence.contains("password"));
        let e = StoreError::Unavailable {
            what: "the database did not answer".into(),
            cause: Some(sqlx::Error::PoolTimedOut),
        };
        assert!(!verdict(Failure::Store(&e)).sentence.contains("pool"));
        assert!(chain(&e).contains("pool timed out"), "{}", chain(&e));
        let e = StoreError::InvalidAgentId("`../x`: not allowed".into());
        assert_eq!(verdict(Failure::Store(&e)).code, ErrorCode::AgentNotFound);
        assert_eq!(
            verdict(Failure::Store(&e)).close(),
            Some(CloseCode::AgentNotFound)
        );
        let e = RunLogError::Unavailable {
            what: "no answer within 5s".into(),
            cause: None,
        };
        assert_eq!(
            verdict(Failure::RunLog(&e)).code,
            ErrorCode::StoreUnavailable
        );
    }
}
