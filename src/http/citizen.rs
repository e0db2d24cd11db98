//! `POST /api/agent/session`: the citizen dialect's session minting (DIALECTS.md 2.3). No body
//! is needed; a valid `Authorization: Bearer` token makes the session that user's (a refused one
//! is 401), otherwise the session is a principal of its own that runs published agents only.
//! Rate-limited per client address (with the upgrades' limit).

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::relay::context::AppState;

fn refuse(status: StatusCode, code: &str, error: impl Into<String>) -> Response {
    let error = error.into();
    (status, Json(json!({"error": error, "code": code}))).into_response()
}

pub async fn mint(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let client = super::address::client_addr(peer.ip(), &headers, &state.config.trusted_proxies);
    if !state.upgrade_limits.allow(client) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_runs",
            "too many session requests from this address: slow down",
        );
    }
    let caller = match super::bearer::bearer_token(&headers) {
        None => None,
        Some(token) => match state.verifier.verify(token) {
            Ok(id) => Some(id),
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
        },
    };
    if caller.is_none() && state.config.citizen_require_token {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this gateway requires a token for citizen sessions (--citizen-require-token): send `Authorization: Bearer <jwt>`",
        );
    }
    let Some((session_id, _)) = state.citizen_sessions.mint(caller) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_runs",
            "the session registry is full: try again later",
        );
    };
    let config = &state.config;
    let agent_id = config.citizen_agent_id.clone().unwrap_or_default();
    let name = match state.store.agent(&agent_id).await {
        Ok(Some(agent)) if !agent.name.trim().is_empty() => agent.name,
        _ => agent_id,
    };
    let websocket_url = config.citizen_websocket_url.clone().unwrap_or_else(|| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        // Behind a trusted TLS-terminating proxy the page is https: the socket is wss.
        let tls = config.trusted_proxies.contains(&peer.ip())
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.eq_ignore_ascii_case("https"));
        let scheme = if tls { "wss" } else { "ws" };
        format!("{scheme}://{host}{}", config.citizen_path)
    });
    Json(json!({
        "sessionId": session_id,
        "message": format!("Hello! I am {name}. How can I help you today?"),
        "websocketUrl": websocket_url,
        "agent": name,
    }))
    .into_response()
}
