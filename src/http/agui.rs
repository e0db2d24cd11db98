//! The `agui` dialect's route (DIALECTS.md 4.4): `POST /agui/{agent_id}` with a
//! `RunAgentInput` and `Authorization: Bearer`, answered with AG-UI events over SSE. Failures
//! before `flow_started` are HTTP errors with `{"error", "code"}` (the client raises
//! `HTTP <status>: <body>`); a closed connection (`abortRun()`) cancels the run.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::relay::context::AppState;
use crate::relay::dialect::agui::{AguiEvents, RunInput};
use crate::relay::protocol::RunRequest;
use crate::relay::stream::Follower;
use crate::relay::turn::{self, OnDrop};

fn refuse(code: &str, error: impl Into<String>) -> Response {
    let status = super::adk::status_of(code);
    (status, Json(json!({"error": error.into(), "code": code}))).into_response()
}

/// `POST /agui/{agent_id}`.
pub async fn run(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let identity = match super::bearer::caller(&state.verifier, &headers, "HttpAgent's `headers`") {
        Ok(id) => id,
        Err(why) => return refuse("unauthenticated", why),
    };
    if let Err(why) = crate::store::check_agent_id(&agent_id) {
        return refuse("agent_not_found", format!("no such agent: {why}"));
    }
    let input = match RunInput::parse(&body) {
        Ok(i) => i,
        Err(why) => return refuse("invalid_request", why),
    };
    let limit = state.config.max_client_message_bytes;
    if input.message.len() > limit {
        let why = format!(
            "message too long: {} bytes, at most {limit}",
            input.message.len()
        );
        return refuse("invalid_request", why);
    }
    if let Err((code, why)) = turn::check_limit(&state, &identity) {
        return refuse(code.as_str(), why);
    }
    let request = RunRequest {
        message: Some(input.message.clone()),
        conversation_history: Some(input.history.clone()),
        ..RunRequest::default()
    };
    let started = Follower::start(
        &state,
        identity,
        agent_id,
        request,
        OnDrop::Cancel,
        |run_id| AguiEvents::new(&input, run_id),
    )
    .await;
    match started {
        Ok((follower, first)) => {
            super::sse::response(follower, first, state.config.sse_heartbeat, |_| {})
        }
        Err(f) => refuse(&f.code, f.message),
    }
}
