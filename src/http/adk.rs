//! The `adk` dialect's HTTP side (DIALECTS.md 2.4.2): ADK's session routes, `POST /run_sse`
//! (an SSE stream of ADK `Event`s) and `POST /run` (the same events as one JSON array, without
//! partials). The caller (barka's backend, a test) sends `Authorization: Bearer <jwt>`; the
//! path's or body's `user_id` must be the token's user. Errors are ADK's `{"detail": "…"}`
//! with a real HTTP status: anything that fails before `flow_started` is not a 200.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::relay::context::AppState;
use crate::relay::dialect::adk_http::{AdkEvents, RunAgentRequest, Session, SessionError};
use crate::relay::protocol::RunRequest;
use crate::relay::stream::{Follower, Payload};
use crate::relay::trace::TraceContext;
use crate::relay::turn::{self, OnDrop};

/// A refusal: an HTTP status and ADK's `{"detail": "…"}`.
struct Refusal {
    status: StatusCode,
    detail: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"detail": self.detail}))).into_response()
    }
}

fn detail(status: StatusCode, text: impl Into<String>) -> Refusal {
    Refusal {
        status,
        detail: text.into(),
    }
}

/// The HTTP status of a flowgate error code.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "agent_not_found" | "workflow_not_found" => StatusCode::NOT_FOUND,
        "invalid_request" | "invalid_workflow" => StatusCode::BAD_REQUEST,
        "too_many_runs" => StatusCode::TOO_MANY_REQUESTS,
        "store_unavailable" | "engine_unavailable" | "engine_timeout" | "cancelled" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "engine_lost" | "gateway_lost" | "engine_protocol_error" | "flow_error" => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The caller, from `Authorization: Bearer` (user claim `--adk-jwt-user-claim`).
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Identity, Refusal> {
    let token = super::bearer::bearer_token(headers);
    let Some(token) = token else {
        return Err(detail(
            StatusCode::UNAUTHORIZED,
            "no token: send `Authorization: Bearer <jwt>`",
        ));
    };
    state
        .verifier
        .verify_as(token, Some(&state.config.adk_jwt_user_claim))
        .map_err(|e| detail(StatusCode::UNAUTHORIZED, e.to_string()))
}

/// The path's or body's user must be the token's; the app must be an agent id.
fn check_names(identity: &Identity, app: &str, user: &str) -> Result<(), Refusal> {
    if let Err(why) = crate::store::check_agent_id(app) {
        return Err(detail(StatusCode::NOT_FOUND, format!("no such app: {why}")));
    }
    if user != identity.user_id {
        return Err(detail(
            StatusCode::FORBIDDEN,
            format!("user `{user}` is not the token's user"),
        ));
    }
    Ok(())
}

fn session_error(e: SessionError) -> Refusal {
    match e {
        SessionError::NotFound => detail(StatusCode::NOT_FOUND, "Session not found"),
        SessionError::Exists => detail(StatusCode::BAD_REQUEST, "Session already exists"),
        SessionError::TooMany(n) => detail(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {n} sessions: delete old ones first"),
        ),
    }
}

/// `{}` or `{"state": {…}}` (an empty body counts as `{}`).
fn initial_state(body: &Bytes) -> Result<Value, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        detail(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON ({e}): send {{}} or {{\"state\": {{…}}}}"),
        )
    })?;
    match v.get("state") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(s @ Value::Object(_)) => Ok(s.clone()),
        Some(_) => Err(detail(StatusCode::BAD_REQUEST, "`state` must be an object")),
    }
}

/// A session id chosen by the client (the rule of the WebSocket route's ids).
fn check_session_id(id: &str) -> Result<(), Refusal> {
    super::ws::check_key("session id", id)
        .map_err(|why| detail(StatusCode::BAD_REQUEST, why.trim_end()))
}

/// `POST /apps/{app_name}/users/{user_id}/sessions`
pub async fn create_session(
    State(state): State<AppState>,
    Path((app, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    session_route(&state, &headers, &app, &user, |sessions| {
        let initial = initial_state(&body)?;
        sessions
            .create(&app, &user, None, initial)
            .map(|s| Json(s.to_json()).into_response())
            .map_err(session_error)
    })
}

/// `POST|GET|DELETE /apps/{app_name}/users/{user_id}/sessions/{session_id}`
pub async fn create_session_with_id(
    State(state): State<AppState>,
    Path((app, user, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    session_route(&state, &headers, &app, &user, |sessions| {
        check_session_id(&id)?;
        let initial = initial_state(&body)?;
        sessions
            .create(&app, &user, Some(&id), initial)
            .map(|s| Json(s.to_json()).into_response())
            .map_err(session_error)
    })
}

pub async fn get_session(
    State(state): State<AppState>,
    Path((app, user, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    session_route(&state, &headers, &app, &user, |sessions| {
        sessions
            .get(&app, &user, &id)
            .map(|s| Json(s.to_json()).into_response())
            .map_err(session_error)
    })
}

pub async fn delete_session(
    State(state): State<AppState>,
    Path((app, user, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    session_route(&state, &headers, &app, &user, |sessions| {
        sessions
            .delete(&app, &user, &id)
            .map(|()| Json(Value::Null).into_response())
            .map_err(session_error)
    })
}

fn session_route(
    state: &AppState,
    headers: &HeaderMap,
    app: &str,
    user: &str,
    answer: impl FnOnce(&crate::relay::dialect::adk_http::Sessions) -> Result<Response, Refusal>,
) -> Response {
    let run = || {
        let identity = caller(state, headers)?;
        check_names(&identity, app, user)?;
        answer(&state.adk_sessions)
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

/// What `/run_sse` and `/run` check before a run starts.
struct Prepared {
    identity: Identity,
    request: RunAgentRequest,
    text: String,
    session: Session,
}

fn prepare(state: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<Prepared, Refusal> {
    let identity = caller(state, headers)?;
    let request =
        RunAgentRequest::parse(body).map_err(|why| detail(StatusCode::BAD_REQUEST, why))?;
    check_names(&identity, &request.app_name, &request.user_id)?;
    let text = request
        .text()
        .map_err(|why| detail(StatusCode::BAD_REQUEST, why))?;
    let session = state
        .adk_sessions
        .get(&request.app_name, &request.user_id, &request.session_id)
        .map_err(session_error)?;
    if text.len() > state.config.max_client_message_bytes {
        return Err(detail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "message too long: {} bytes, at most {} (--max-client-message-bytes)",
                text.len(),
                state.config.max_client_message_bytes
            ),
        ));
    }
    turn::check_limit(state, &identity)
        .map_err(|(code, why)| detail(status_of(code.as_str()), why))?;
    Ok(Prepared {
        identity,
        request,
        text,
        session,
    })
}

/// Start the run and read it until `flow_started`: a failure before it is an HTTP error.
async fn start(
    state: &AppState,
    prepared: &Prepared,
    streaming: bool,
) -> Result<(Follower<AdkEvents>, Vec<Payload>), Refusal> {
    let p = prepared;
    let conversation = p.session.conversation();
    let request = RunRequest {
        message: Some(p.text.clone()),
        conversation_history: Some(
            state
                .conversations
                .history(&p.identity.user_id, &conversation),
        ),
        ..RunRequest::default()
    };
    state.adk_sessions.touch(
        &p.request.app_name,
        &p.request.user_id,
        &p.request.session_id,
    );
    let attached = turn::start(
        state,
        p.identity.clone(),
        p.request.app_name.clone(),
        request,
        TraceContext::new_root().child_header(),
        OnDrop::Cancel,
    );
    let encoder = AdkEvents::new(p.request.app_name.clone(), streaming);
    let mut follower = Follower::new(attached, encoder, state.config.client_batch);
    match follower.started().await {
        Ok(first) => Ok((follower, first)),
        Err(f) => Err(detail(
            status_of(&f.code),
            format!("{}: {}", f.code, f.message),
        )),
    }
}

fn remember(state: &AppState, p: &Prepared, encoder: &AdkEvents) {
    if let Some(answer) = &encoder.finished {
        state.conversations.remember(
            &p.identity.user_id,
            &p.session.conversation(),
            &p.text,
            answer,
        );
    }
}

/// `POST /run_sse`: `data: <Event JSON>` per event.
pub async fn run_sse(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = match prepare(&state, &headers, &body) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let (follower, first) = match start(&state, &prepared, prepared.request.streaming).await {
        Ok(started) => started,
        Err(refused) => return refused.into_response(),
    };
    let heartbeat = state.config.sse_heartbeat;
    super::sse::response(follower, first, heartbeat, move |encoder: &AdkEvents| {
        remember(&state, &prepared, encoder);
    })
}

/// `POST /run`: the run's events as one JSON array, without partials.
pub async fn run(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = match prepare(&state, &headers, &body) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let (mut follower, mut payloads) = match start(&state, &prepared, false).await {
        Ok(started) => started,
        Err(refused) => return refused.into_response(),
    };
    while let Some(more) = follower.next().await {
        payloads.extend(more);
    }
    remember(&state, &prepared, follower.encoder());
    let mut events = Vec::with_capacity(payloads.len());
    for p in payloads {
        let event: Value = serde_json::from_str(&p.data).unwrap_or(Value::Null);
        if let Some(error) = event.get("error").and_then(Value::as_str) {
            let code = error.split(':').next().unwrap_or("internal");
            return detail(status_of(code), error).into_response();
        }
        events.push(event);
    }
    Json(Value::Array(events)).into_response()
}
