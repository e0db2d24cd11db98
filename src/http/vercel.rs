//! The `vercel` dialect's routes (DIALECTS.md 4.3): `POST /api/chat` (the AI SDK's
//! `DefaultChatTransport`), `GET /api/chat/{chat_id}/stream` (resume: 204 when the chat has no
//! run in progress, else the whole message from the run's first event, then live) and
//! `POST /api/chat/{chat_id}/stop` (204; the run ends with `abort`). A closed connection is not a
//! stop (the UI's stop only aborts the fetch): the run goes on detached under the gateway's
//! policy, so it can be resumed. Errors before the stream are one readable sentence (the
//! transport throws an `Error` with the body as its message).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::Identity;
use crate::relay::context::AppState;
use crate::relay::dialect::vercel::{ChatRequest, UiParts};
use crate::relay::protocol::RunRequest;
use crate::relay::registry::CancelReason;
use crate::relay::stream::Follower;
use crate::relay::turn::{self, OnDrop};

/// A refusal: the status of `code` and `<code>: <sentence>` as plain text.
fn refuse(code: &str, why: impl std::fmt::Display) -> Response {
    let status = match code {
        "conflict" => StatusCode::CONFLICT,
        _ => super::adk::status_of(code),
    };
    (status, format!("{code}: {why}\n")).into_response()
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<Identity, Box<Response>> {
    super::bearer::caller(&state.verifier, headers, "the transport's `headers` option")
        .map_err(|why| Box::new(refuse("unauthenticated", why)))
}

fn ui_stream(
    state: &AppState,
    follower: Follower<UiParts>,
    first: Vec<crate::relay::stream::Payload>,
) -> Response {
    let mut response = super::sse::response(follower, first, state.config.sse_heartbeat, |_| {});
    response.headers_mut().insert(
        "x-vercel-ai-ui-message-stream",
        HeaderValue::from_static("v1"),
    );
    response
}

/// `POST /api/chat`.
pub async fn chat(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let request = match ChatRequest::parse(&body) {
        Ok(r) => r,
        Err(why) => return refuse("invalid_request", why),
    };
    let Some(agent_id) = request
        .agent_id
        .clone()
        .or_else(|| state.config.vercel_agent_id.clone())
    else {
        return refuse(
            "invalid_request",
            "no agent named: send `agentId` in the body (the transport's `body` option), or run flowgate with --vercel-agent-id",
        );
    };
    if let Err(why) = crate::store::check_agent_id(&agent_id) {
        return refuse("agent_not_found", format!("no such agent: {why}"));
    }
    let limit = state.config.max_client_message_bytes;
    if request.message.len() > limit {
        let why = format!(
            "message too long: {} bytes, at most {limit}",
            request.message.len()
        );
        return refuse("invalid_request", why);
    }
    if let Err((code, why)) = turn::check_limit(&state, &identity) {
        return refuse(code.as_str(), why);
    }
    let user = identity.user_id.clone();
    let chat = request.chat_id.clone();
    let run = RunRequest {
        message: Some(request.message),
        conversation_history: Some(request.history),
        ..RunRequest::default()
    };
    // One run per chat: the check and the start are one step for the chat registry.
    let runs = state.runs.clone();
    let started = state.vercel_chats.start_if_idle(
        &user,
        &chat,
        |run_id| runs.get(run_id).is_some_and(|r| !r.is_finished()),
        || {
            let attached = turn::start(
                &state,
                identity,
                agent_id.clone(),
                run,
                crate::relay::trace::TraceContext::new_root().child_header(),
                OnDrop::Policy,
            );
            let run_id = attached.shared.run_id;
            (attached, run_id)
        },
    );
    let Ok(attached) = started else {
        return refuse(
            "conflict",
            format!(
                "chat `{chat}` has a run in progress: resume it (GET /api/chat/{chat}/stream) or stop it (POST /api/chat/{chat}/stop)"
            ),
        );
    };
    let encoder = UiParts::new(attached.shared.run_id, agent_id);
    let mut follower = Follower::new(attached, encoder, state.config.client_batch);
    match follower.started().await {
        Ok(first) => ui_stream(&state, follower, first),
        Err(f) => refuse(&f.code, f.message),
    }
}

/// The live run of a chat of this caller, if any.
fn live_run(
    state: &AppState,
    identity: &Identity,
    chat: &str,
) -> Option<std::sync::Arc<crate::relay::registry::RunShared>> {
    let run_id = state.vercel_chats.run_of(&identity.user_id, chat)?;
    state
        .runs
        .get(&run_id)
        .filter(|r| !r.is_finished() && r.user_id == identity.user_id)
}

/// `GET /api/chat/{chat_id}/stream`: 204 when the chat has no run in progress, else the
/// whole message from the run's first event, then live.
pub async fn resume(
    State(state): State<AppState>,
    Path(chat): Path<String>,
    headers: HeaderMap,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let Some(shared) = live_run(&state, &identity, &chat) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    state.metrics.resumes.inc();
    let agent_id = shared.agent_id.clone();
    let encoder = UiParts::new(shared.run_id, agent_id);
    let attached = turn::follow(&state, shared, 0, OnDrop::Policy);
    let mut follower = Follower::new(attached, encoder, state.config.client_batch);
    match follower.started().await {
        Ok(first) => ui_stream(&state, follower, first),
        // It failed before it started meanwhile: nothing to resume.
        Err(_) => StatusCode::NO_CONTENT.into_response(),
    }
}

/// `POST /api/chat/{chat_id}/stop`: cancel the chat's run in progress (204 either way).
pub async fn stop(
    State(state): State<AppState>,
    Path(chat): Path<String>,
    headers: HeaderMap,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    if let Some(shared) = live_run(&state, &identity, &chat) {
        tracing::info!(run_id = %shared.run_id, "stopped by the client (vercel stop route)");
        shared.cancel(CancelReason::Client);
    }
    StatusCode::NO_CONTENT.into_response()
}
