//! The client protocol of docs/neuralabs.md sections 2 and 5: client frames, error codes, close codes,
//! and the server frames the gateway itself writes.

use serde::Deserialize;
use serde_json::{Value, json};

/// Error codes of contract v1 (`data.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    AgentNotFound,
    WorkflowNotFound,
    InvalidWorkflow,
    InvalidRequest,
    StoreUnavailable,
    EngineUnavailable,
    EngineTimeout,
    EngineLost,
    /// The gateway serving the run stopped (another gateway ended the run for it).
    GatewayLost,
    EngineProtocolError,
    TooManyRuns,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AgentNotFound => "agent_not_found",
            ErrorCode::WorkflowNotFound => "workflow_not_found",
            ErrorCode::InvalidWorkflow => "invalid_workflow",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::EngineUnavailable => "engine_unavailable",
            ErrorCode::EngineTimeout => "engine_timeout",
            ErrorCode::EngineLost => "engine_lost",
            ErrorCode::GatewayLost => "gateway_lost",
            ErrorCode::EngineProtocolError => "engine_protocol_error",
            ErrorCode::TooManyRuns => "too_many_runs",
            ErrorCode::Internal => "internal",
        }
    }

    /// The close code that follows this error, when the error ends the connection.
    pub fn close_code(self) -> Option<CloseCode> {
        match self {
            ErrorCode::Unauthenticated => Some(CloseCode::Unauthenticated),
            ErrorCode::Forbidden => Some(CloseCode::Forbidden),
            ErrorCode::AgentNotFound => Some(CloseCode::AgentNotFound),
            _ => None,
        }
    }
}

pub use crate::close::CloseCode;

/// Is this frame text a run's terminal event (`flow_completed`, `flow_error`,
/// `flow_cancelled`)?
pub fn is_terminal_frame(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Kind>(text).is_ok_and(|k| {
        matches!(
            k.kind.as_ref(),
            "flow_completed" | "flow_error" | "flow_cancelled"
        )
    })
}

/// A run request (the first frame, or any later frame without `type`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunRequest {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub conversation_history: Option<Vec<Value>>,
    #[serde(default)]
    pub initial_inputs: Option<serde_json::Map<String, Value>>,
    /// Self-asserted identity of the original protocol; ignored (the token decides).
    #[serde(default)]
    pub user_id: Option<Value>,
    /// Must equal the path's agent id when present.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// `published` or `draft`; default: the agent's status decides.
    #[serde(default)]
    pub version: Option<String>,
    /// What a dialect's decoder read next to the message (never from a native frame): the
    /// turn's conversation and form, carried with the request through the dialect's queue.
    #[serde(skip)]
    pub tag: Option<TurnTag>,
}

/// A dialect's per-message settings (see [`RunRequest::tag`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnTag {
    /// The conversation the message belongs to (the dialect's id; with the user, the memory key).
    pub conversation: Option<String>,
    /// Stream the answer (`true`) or send it whole.
    pub streaming: bool,
    /// Which of the dialect's request forms the message came in (the reply follows it).
    pub form: Option<&'static str>,
    /// A paragraph the answer starts with (e.g. which attachments were not processed).
    pub notice: Option<String>,
}

/// Every frame a client may send.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    Run(Box<RunRequest>),
    Cancel,
    Resume {
        run_id: uuid::Uuid,
        after_seq: u64,
    },
    Auth {
        token: String,
    },
    /// An application-level ping of a dialect that has one (answered with its pong frame).
    Ping,
}

/// A client frame that could not be understood; the text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadFrame(pub String);

impl ClientFrame {
    /// Parse one text frame. Never panics; every failure says which field was wrong.
    pub fn parse(text: &str) -> Result<ClientFrame, BadFrame> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| BadFrame(format!("the frame is not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(BadFrame("the frame must be a JSON object".into()));
        };
        let kind = match map.get("type") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(BadFrame("`type` must be a string".into())),
        };
        match kind {
            None | Some("run") => {
                let req: RunRequest = serde_json::from_value(Value::Object(map))
                    .map_err(|e| BadFrame(format!("invalid run request: {e}")))?;
                if let Some(v) = &req.version
                    && v != "published"
                    && v != "draft"
                {
                    return Err(BadFrame(
                        "`version` must be \"published\" or \"draft\"".into(),
                    ));
                }
                Ok(ClientFrame::Run(Box::new(req)))
            }
            Some("cancel") => Ok(ClientFrame::Cancel),
            Some("resume") => {
                let run_id = map
                    .get("run_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| BadFrame("`resume` needs a `run_id` string".into()))?;
                let run_id = uuid::Uuid::parse_str(run_id)
                    .map_err(|_| BadFrame("`run_id` is not a UUID".into()))?;
                let after_seq = match map.get("after_seq") {
                    None => 0,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        BadFrame("`after_seq` must be a non-negative integer".into())
                    })?,
                };
                Ok(ClientFrame::Resume { run_id, after_seq })
            }
            Some("auth") => {
                let token = map
                    .get("token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| BadFrame("`auth` needs a `token` string".into()))?;
                Ok(ClientFrame::Auth {
                    token: token.to_owned(),
                })
            }
            Some(other) => Err(BadFrame(format!(
                "unknown frame type `{}`: expected a run request, cancel, resume or auth",
                truncate(other, 40)
            ))),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Seconds since the epoch as a float (the envelope's `timestamp`).
pub fn now_ts() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `{"type":"error","data":{"error","code"}}` (not part of a run).
pub fn error_frame(code: ErrorCode, message: &str) -> String {
    json!({"type": "error", "timestamp": now_ts(), "data": {"error": message, "code": code.as_str()}})
        .to_string()
}

/// A compat `status` frame.
pub fn status_value(message: &str) -> Value {
    json!({"type": "status", "timestamp": now_ts(), "data": {"message": message}})
}

pub const STATUS_RETRIEVING: &str = "Retrieving workflow...";
pub const STATUS_PREPARING: &str = "Preparing workflow for execution...";
pub const STATUS_STARTING: &str = "Starting execution...";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_without_type_is_a_run_request() {
        let f = ClientFrame::parse(r#"{"message":"hi","user_id":"x"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Run(r) if r.message.as_deref() == Some("hi")));
    }

    #[test]
    fn malformed_frames_say_what_is_wrong() {
        assert!(
            ClientFrame::parse("nope")
                .unwrap_err()
                .0
                .contains("not valid JSON")
        );
        assert!(
            ClientFrame::parse("[1]")
                .unwrap_err()
                .0
                .contains("JSON object")
        );
        assert!(
            ClientFrame::parse(r#"{"type":"resume"}"#)
                .unwrap_err()
                .0
                .contains("run_id")
        );
        assert!(
            ClientFrame::parse(r#"{"message":5}"#)
                .unwrap_err()
                .0
                .contains("run request")
        );
        assert!(
            ClientFrame::parse(r#"{"version":"old"}"#)
                .unwrap_err()
                .0
                .contains("version")
        );
        assert!(
            ClientFrame::parse(r#"{"type":"dance"}"#)
                .unwrap_err()
                .0
                .contains("dance")
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            ".{0,20}".prop_map(Value::String),
            prop_oneof![
                Just("run"),
                Just("cancel"),
                Just("resume"),
                Just("auth"),
                Just("x")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("message".to_string()),
                        Just("run_id".to_string()),
                        Just("after_seq".to_string()),
                        Just("token".to_string()),
                        Just("conversation_history".to_string()),
                        Just("initial_inputs".to_string()),
                        Just("version".to_string()),
                        Just("agent_id".to_string()),
                        ".{0,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary text never panics, and a refusal always says something.
        #[test]
        fn any_text_parses_or_is_refused_with_a_reason(text in ".{0,200}") {
            if let Err(BadFrame(why)) = ClientFrame::parse(&text) {
                prop_assert!(!why.is_empty());
            }
        }

        /// Arbitrary JSON (shaped like client frames) never panics; refusals are explained.
        #[test]
        fn any_json_parses_or_is_refused_with_a_reason(v in json_value()) {
            if let Err(BadFrame(why)) = ClientFrame::parse(&v.to_string()) {
                prop_assert!(!why.is_empty());
                prop_assert!(why.len() < 2000, "an error message must stay short");
            }
        }
    }
}
