//! The `omni2` widget's SSE twin, `POST /api/v1/chat/stream` (DIALECTS.md 2.1): the widget posts
//! `{"message":"…","user_id":"…"}` with `Authorization: Bearer` whenever its socket is not open
//! (`user_id` is ignored: identity is the token's). Per chunk `event: token` /
//! `data: {"text":…}`, at the end `event: done` / `data: {result}`; an error before the stream is
//! an HTTP status with `{"error","code"}`, after it `event: error`. The conversation of these
//! turns is the user's (there is no socket to key it on).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::relay::context::AppState;
use crate::relay::dialect::omni2::Omni2Events;
use crate::relay::protocol::{ErrorCode, RunRequest};
use crate::relay::stream::Follower;
use crate::relay::trace::TraceContext;
use crate::relay::turn::{self, OnDrop};

/// The memory key of a user's SSE turns.
const CONVERSATION: &str = "omni2-sse";

fn refuse(code: &str, error: impl Into<String>) -> Response {
    let status = super::adk::status_of(code);
    (status, Json(json!({"error": error.into(), "code": code}))).into_response()
}

pub async fn stream(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let token = super::bearer::bearer_token(&headers);
    let Some(token) = token else {
        return refuse(
            ErrorCode::Unauthenticated.as_str(),
            "no token: send `Authorization: Bearer <jwt>`",
        );
    };
    let identity = match state.verifier.verify(token) {
        Ok(id) => id,
        Err(e) => return refuse(ErrorCode::Unauthenticated.as_str(), e.to_string()),
    };
    let message = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("message") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            _ => {
                return refuse(
                    ErrorCode::InvalidRequest.as_str(),
                    "`message` must be the message text: send {\"message\":\"…\"}",
                );
            }
        },
        Err(e) => {
            return refuse(
                ErrorCode::InvalidRequest.as_str(),
                format!("the body is not JSON ({e}): send {{\"message\":\"…\"}}"),
            );
        }
    };
    if message.len() > state.config.max_client_message_bytes {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({
                "error": format!("message too long: {} bytes, at most {}", message.len(), state.config.max_client_message_bytes),
                "code": "invalid_request",
            })),
        )
            .into_response();
    }
    if let Err((code, why)) = turn::check_limit(&state, &identity) {
        return refuse(code.as_str(), why);
    }
    let Some(agent_id) = state.config.omni2_agent_id.clone() else {
        return refuse("agent_not_found", "the omni2 route has no agent");
    };
    let request = RunRequest {
        message: Some(message.clone()),
        conversation_history: Some(state.conversations.history(&identity.user_id, CONVERSATION)),
        ..RunRequest::default()
    };
    let user = identity.user_id.clone();
    let attached = turn::start(
        &state,
        identity,
        agent_id,
        request,
        TraceContext::new_root().child_header(),
        OnDrop::Cancel,
    );
    let mut follower = Follower::new(attached, Omni2Events::default(), state.config.client_batch);
    let first = match follower.started().await {
        Ok(first) => first,
        Err(f) => return refuse(&f.code, f.message),
    };
    let heartbeat = state.config.sse_heartbeat;
    super::sse::response(follower, first, heartbeat, move |encoder: &Omni2Events| {
        if let Some(answer) = &encoder.turn.finished {
            state
                .conversations
                .remember(&user, CONVERSATION, &message, answer);
        }
    })
}
