//! The chat page (embedded in the binary) and the agent list it uses.
//!
//! Owns `GET /` (the page), `GET /static/{file}` (its script, client library and stylesheet,
//! compiled in with `include_str!`, no build step) and `GET /api/agents` (the agents the caller
//! may run, for the page's picker). Every page response carries a strict Content-Security-Policy
//! (no inline script or style, connections only to this origin), `nosniff`, no framing and no
//! referrer; assets are revalidated by `ETag` so an upgraded binary is picked up at once.
//! `/api/agents` requires `Authorization: Bearer <jwt>` (the [`BearerUser`] extractor, verified
//! with [`AppState::verifier`]); it lists active agents plus the caller's own unpublished ones.

use std::sync::LazyLock;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Identity;
use crate::relay::context::AppState;

/// The Content-Security-Policy of the page and its assets.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    etag: LazyLock<String>,
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../../static/", $name)),
            etag: LazyLock::new(|| etag(include_str!(concat!("../../static/", $name)))),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static ASSETS: [Asset; 3] = [
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("flowgate-client.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
];

fn etag(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("\"{}\"", hex::encode(&digest[..12]))
}

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = asset.etag.as_str();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    security_headers(headers);
    // Revalidate every time: the names are not content-hashed, and an answer is a cheap 304.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    response
}

/// `GET /`: the chat page.
pub async fn index(request: HeaderMap) -> Response {
    serve(&INDEX, &request)
}

/// `GET /static/{file}`: one of the page's assets, 404 for anything else.
pub async fn asset(Path(file): Path<String>, request: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &request),
        None => {
            let mut r = (StatusCode::NOT_FOUND, "not found\n").into_response();
            security_headers(r.headers_mut());
            r
        }
    }
}

/// One entry of `GET /api/agents`.
#[derive(Debug, Serialize)]
pub struct AgentSummary {
    pub agent_id: String,
    pub name: String,
    pub description: Option<String>,
    pub status: String,
}

fn json_error(status: StatusCode, code: &str, error: String) -> Response {
    let body = serde_json::json!({"error": error, "code": code});
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller of a JSON endpoint, authenticated by `Authorization: Bearer <jwt>`.
/// Rejects with 401 `{"error", "code": "unauthenticated"}`.
#[derive(Debug, Clone)]
pub struct BearerUser(pub Identity);

impl FromRequestParts<AppState> for BearerUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let unauthenticated =
            |text: String| json_error(StatusCode::UNAUTHORIZED, "unauthenticated", text);
        let token = bearer(&parts.headers).ok_or_else(|| {
            unauthenticated("send the token as `Authorization: Bearer <jwt>`".into())
        })?;
        let identity = state
            .verifier
            .verify(token)
            .map_err(|e| unauthenticated(e.to_string()))?;
        Ok(BearerUser(identity))
    }
}

/// The agents `identity` may run (published ones and its own drafts), ordered by id; the
/// error is the sentence for a store that cannot answer.
pub async fn visible_agents(
    state: &AppState,
    identity: &crate::auth::Identity,
) -> Result<Vec<crate::store::AgentRecord>, &'static str> {
    let listed = tokio::time::timeout(state.config.store_timeout, state.store.list_agents()).await;
    let records = match listed {
        Ok(Ok(records)) => records,
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::logfmt::chain(&e), "cannot list agents");
            return Err("the agent store is unavailable, try again later");
        }
        Err(_) => {
            tracing::warn!(timeout = ?state.config.store_timeout, "listing agents timed out");
            return Err("the agent store did not answer in time, try again later");
        }
    };
    Ok(records
        .into_iter()
        .filter(|a| a.status == "Active" || a.owner == identity.user_id)
        .collect())
}

/// `GET /api/agents`: `[{agent_id, name, description, status}]` of the agents the caller may run.
pub async fn agents(State(state): State<AppState>, BearerUser(identity): BearerUser) -> Response {
    let records = match visible_agents(&state, &identity).await {
        Ok(records) => records,
        Err(why) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                why.into(),
            );
        }
    };
    let visible: Vec<AgentSummary> = records
        .into_iter()
        .map(|a| AgentSummary {
            agent_id: a.agent_id,
            name: a.name,
            description: a.description,
            status: a.status,
        })
        .collect();
    let mut r = Json(visible).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
