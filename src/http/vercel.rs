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
    let busy = || {
        refuse(
            "conflict",
            format!(
                "chat `{chat}` has a run in progress: resume it (GET /api/chat/{chat}/stream) or stop it (POST /api/chat/{chat}/stop)"
            ),
        )
    };
    // One run per chat across the gateways: the shared run log records the chat's run before
    // it starts, in one statement that refuses while the chat's last run is going; then any
    // gateway can resume or stop it.
    let run_id = uuid::Uuid::new_v4();
    if let crate::runlog::RunLog::Postgres(log) = &state.runlog {
        let pending = state.config.heartbeat_interval * 6;
        match log.claim_chat(&user, &chat, run_id, pending).await {
            Ok(true) => {}
            Ok(false) => return busy(),
            Err(e) => tracing::warn!(
                error = %crate::logfmt::chain(&e),
                "cannot record the chat's run: only this gateway can resume it or see it busy"
            ),
        }
    }
    // And on this gateway the check and the start are one step for the chat registry.
    let runs = state.runs.clone();
    let started = state.vercel_chats.start_if_idle(
        &user,
        &chat,
        |run_id| runs.get(run_id).is_some_and(|r| !r.is_finished()),
        || {
            let attached = turn::start_as(
                &state,
                identity,
                (run_id, agent_id.clone(), run),
                crate::relay::trace::TraceContext::new_root().child_header(),
                OnDrop::Policy,
            );
            (attached, run_id)
        },
    );
    let Ok(attached) = started else {
        return busy();
    };
    let encoder = UiParts::new(attached.shared.run_id, agent_id);
    let mut follower = Follower::new(attached, encoder, state.config.client_batch);
    match follower.started().await {
        Ok(first) => ui_stream(&state, follower, first),
        Err(f) => refuse(&f.code, f.message),
    }
}

/// Where the live run of a caller's chat is.
enum Live {
    /// On this gateway (its own run, or a mirror already following it).
    Here(std::sync::Arc<crate::relay::registry::RunShared>),
    /// Owned by another gateway (with `--nats-url`).
    Elsewhere(Box<crate::runlog::RunInfo>, uuid::Uuid),
}

/// The live run of a caller's chat, if any: this gateway's chats first, then the shared run
/// log (a chat started through another gateway).
async fn live_run(state: &AppState, identity: &Identity, chat: &str) -> Option<Live> {
    let here = |run_id: uuid::Uuid| {
        state
            .runs
            .get(&run_id)
            .filter(|r| !r.is_finished() && !r.is_stopping() && r.user_id == identity.user_id)
    };
    let local = state.vercel_chats.run_of(&identity.user_id, chat);
    if let Some(run) = local.and_then(here) {
        return Some(Live::Here(run));
    }
    let crate::runlog::RunLog::Postgres(log) = &state.runlog else {
        return None;
    };
    let run_id = log.chat_run(&identity.user_id, chat).await.ok().flatten()?;
    if let Some(run) = here(run_id) {
        return Some(Live::Here(run));
    }
    let info = state.runlog.run_owner(run_id).await.ok().flatten()?;
    let cluster = state.cluster.as_ref()?;
    let owner = info.owner.filter(|o| *o != cluster.node())?;
    (info.user_id == identity.user_id && !info.status.is_finished())
        .then(|| Live::Elsewhere(Box::new(info), owner))
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
    let attached = match live_run(&state, &identity, &chat).await {
        None => return StatusCode::NO_CONTENT.into_response(),
        Some(Live::Here(shared)) => match turn::follow(&state, shared, 0, OnDrop::Policy) {
            Some(attached) => attached,
            // Its follow stopped this instant (its clients all left): a new resume makes one.
            None => {
                return refuse(
                    "engine_unavailable",
                    format!("chat `{chat}`: the run's stream was restarting; resume again"),
                );
            }
        },
        Some(Live::Elsewhere(info, owner)) => {
            match crate::relay::remote::follow(&state, &info, owner, 0).await {
                // The mirror is attached for this stream already.
                Ok(shared) => turn::Attached {
                    lag_at_attach: shared.lag(0),
                    shared,
                    cursor: 0,
                    state: state.clone(),
                    on_drop: OnDrop::Policy,
                },
                Err(why) => return refuse("engine_unavailable", why),
            }
        }
    };
    state.metrics.resumes.inc();
    let encoder = UiParts::new(attached.shared.run_id, attached.shared.agent_id.clone());
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
    match live_run(&state, &identity, &chat).await {
        None => {}
        Some(Live::Here(shared)) => {
            tracing::info!(run_id = %shared.run_id, "stopped by the client (vercel stop route)");
            shared.cancel(CancelReason::Client);
        }
        Some(Live::Elsewhere(info, owner)) => {
            if let Some(cluster) = &state.cluster {
                crate::relay::remote::cancel_remote(&state, cluster, info.run_id, owner).await;
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
