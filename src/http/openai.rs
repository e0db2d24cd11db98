//! The `openai` dialect's routes (DIALECTS.md 4.2): `POST /v1/chat/completions` and
//! `GET /v1/models`. The flowgate JWT is the API key (`Authorization: Bearer`); errors are
//! OpenAI's `{"error": {message, type, param, code}}` with the statuses the SDKs turn into their
//! usual exceptions. A closed connection cancels the run (there is no resume).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::relay::context::AppState;
use crate::relay::dialect::openai::{self, Chunks, Completion};
use crate::relay::protocol::RunRequest;
use crate::relay::stream::Follower;
use crate::relay::turn::{self, OnDrop};

/// An OpenAI-shaped error response for a flowgate error code.
fn error(code: &str, message: &str, param: Option<&str>) -> Response {
    let (status, _, _) = openai::error_kind(code);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(openai::error_body(code, message, param))).into_response()
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<Identity, Box<Response>> {
    super::bearer::caller(
        &state.verifier,
        headers,
        "the flowgate token is the API key",
    )
    .map_err(|why| Box::new(error("unauthenticated", &why, None)))
}

/// `POST /v1/chat/completions`.
pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let c = match Completion::parse(&body) {
        Ok(c) => c,
        Err(bad) => {
            let param = (!bad.param.is_empty()).then_some(bad.param.as_str());
            return error("invalid_request", &bad.message, param);
        }
    };
    if let Err(why) = crate::store::check_agent_id(&c.model) {
        return error(
            "agent_not_found",
            &format!("the model `{}` does not exist: {why}", c.model),
            Some("model"),
        );
    }
    let limit = state.config.max_client_message_bytes;
    if c.message.len() > limit {
        let why = format!(
            "message too long: {} bytes, at most {limit}",
            c.message.len()
        );
        return error("invalid_request", &why, Some("messages"));
    }
    if let Err((code, why)) = turn::check_limit(&state, &identity) {
        return error(code.as_str(), &why, None);
    }
    let request = RunRequest {
        message: Some(c.message.clone()),
        conversation_history: Some(c.history.clone()),
        ..RunRequest::default()
    };
    let (stream, include_usage, model) = (c.stream, c.include_usage, c.model.clone());
    let started = Follower::start(
        &state,
        identity,
        c.model,
        request,
        OnDrop::Cancel,
        |run_id| Chunks::new(run_id, model, stream, include_usage),
    )
    .await;
    let (mut follower, mut payloads) = match started {
        Ok(started) => started,
        Err(f) => {
            let param = matches!(f.code.as_str(), "agent_not_found" | "workflow_not_found")
                .then_some("model");
            return error(&f.code, &f.message, param);
        }
    };
    let run_id = follower.run_id();
    if stream {
        return super::sse::response(follower, payloads, state.config.sse_heartbeat, |_| {});
    }
    while let Some(more) = follower.next().await {
        payloads.extend(more);
    }
    let Some(answer) = payloads.pop() else {
        return error("internal", "the run ended without an answer", None);
    };
    let v: Value = serde_json::from_str(&answer.data).unwrap_or(Value::Null);
    let status = match v["error"]["code"].as_str() {
        None => StatusCode::OK,
        Some("model_not_found") => StatusCode::NOT_FOUND,
        Some(code) => StatusCode::from_u16(openai::error_kind(code).0)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let mut response = (status, Json(v)).into_response();
    if let Ok(id) = HeaderValue::from_str(&run_id.to_string()) {
        response.headers_mut().insert("x-flowgate-run-id", id);
    }
    response
}

/// `GET /v1/models`: the agents the caller may run.
pub async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let identity = match caller(&state, &headers) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    match super::page::visible_agents(&state, &identity).await {
        Ok(agents) => {
            let data: Vec<Value> = agents.iter().map(|a| openai::model(&a.agent_id)).collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(why) => error("store_unavailable", why, None),
    }
}
