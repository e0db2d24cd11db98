//! The WebSocket upgrades: `GET /api/chat/execute/{agent_id}` (the native protocol) and, when
//! enabled, `GET /ws/{client_id}` (`adk`). Each finds the token (header, subprotocol, or query
//! when allowed), verifies it, and hands the socket to the relay's session in its client
//! protocol. The query string and the subprotocol header are never logged.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::relay::context::AppState;
use crate::relay::dialect::NeuraLabs;
use crate::relay::dialect::adk::{Adk, AdkSocket};
use crate::relay::dialect::citizen::Citizen;
use crate::relay::dialect::copilot::Copilot;
use crate::relay::dialect::omni2::Omni2;
use crate::relay::session::{self, Authn};

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Header,
    Subprotocol,
    Query,
}

impl Transport {
    /// The name in logs.
    fn as_str(self) -> &'static str {
        match self {
            Transport::Header => "header",
            Transport::Subprotocol => "subprotocol",
            Transport::Query => "query",
        }
    }
}

fn find_token(
    headers: &HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Option<(String, Transport)> {
    if let Some(t) = super::bearer::bearer_token(headers) {
        return Some((t.to_owned(), Transport::Header));
    }
    if let Some(v) = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.split(',').map(str::trim);
        if parts
            .next()
            .is_some_and(|p| p.eq_ignore_ascii_case("bearer"))
            && let Some(t) = parts.next()
            && !t.is_empty()
        {
            return Some((t.to_owned(), Transport::Subprotocol));
        }
    }
    if allow_query && let Some(q) = query {
        for pair in q.split('&') {
            if let Some(t) = pair.strip_prefix("token=")
                && !t.is_empty()
            {
                // Some frontends (barka) store the header value, `Bearer ` included.
                let t = percent_decode(t);
                let t = t
                    .strip_prefix("Bearer ")
                    .or_else(|| t.strip_prefix("bearer "))
                    .unwrap_or(&t)
                    .trim()
                    .to_owned();
                return Some((t, Transport::Query));
            }
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Is this browser origin allowed? No `Origin` (a non-browser client) is; otherwise it must be
/// in the allow-list, or, with an empty list, name the same host as the `Host` header.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        return !host.is_empty() && origin_host.eq_ignore_ascii_case(host);
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Which client protocol an upgrade speaks.
enum Route {
    Native,
    Adk(AdkSocket),
    Omni2,
    Copilot,
    /// A citizen socket: its session id.
    Citizen(String),
}

/// What every upgrade reads from its request besides its path: the peer, the query (token,
/// ids), the headers, the connection's admission place and the upgrade itself.
#[derive(axum::extract::FromRequestParts)]
pub struct Upgrade {
    peer: ConnectInfo<std::net::SocketAddr>,
    query: RawQuery,
    headers: HeaderMap,
    admission: Option<axum::Extension<std::sync::Arc<super::server::Admission>>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
}

impl Upgrade {
    fn query(&self) -> Option<&str> {
        self.query.0.as_deref()
    }
}

/// `GET /api/chat/execute/{agent_id}`: the native protocol.
pub async fn upgrade(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    up: Upgrade,
) -> Response {
    // Before any session, span or log line: an id no agent can have is refused here.
    if let Err(why) = crate::store::check_agent_id(&agent_id) {
        return (StatusCode::NOT_FOUND, format!("no such agent: {why}\n")).into_response();
    }
    open(state, agent_id, Route::Native, up)
}

/// `GET /ws/{client_id}?token=…[&conversation_id=…]`: the `adk` dialect (barka/ovara). The
/// agent is `--adk-agent-id`; the client and conversation ids only key the conversation memory
/// (with the token's user: a user reaches only their own conversations).
pub async fn upgrade_adk(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    up: Upgrade,
) -> Response {
    let Some(agent_id) = state.config.adk_agent_id.clone() else {
        return (StatusCode::NOT_FOUND, "the adk route is off\n").into_response();
    };
    if let Err(why) = check_key("client id", &client_id) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    let conversation_id =
        query_param(up.query(), "conversation_id").unwrap_or_else(|| "default".to_owned());
    if let Err(why) = check_key("conversation_id", &conversation_id) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    let route = Route::Adk(AdkSocket {
        client_id,
        conversation_id,
    });
    open(state, agent_id, route, up)
}

/// `GET /ws/chat?token=…`: the `omni2` dialect (the OMNI2 dashboard widget), running
/// `--omni2-agent-id`; the token may also come as `Authorization: Bearer` or the `bearer`
/// subprotocol.
pub async fn upgrade_omni2(State(state): State<AppState>, up: Upgrade) -> Response {
    let agent = state.config.omni2_agent_id.clone();
    one_agent(state, agent, Route::Omni2, up)
}

/// `GET /copilot?userId=…&token=…`: the `copilot` dialect (the OmniTrack copilot hook),
/// running `--copilot-agent-id`; `userId` is ignored (identity is the token's).
pub async fn upgrade_copilot(State(state): State<AppState>, up: Upgrade) -> Response {
    let agent = state.config.copilot_agent_id.clone();
    one_agent(state, agent, Route::Copilot, up)
}

/// `GET /` when the citizen socket lives there: an upgrade is a citizen socket, anything else
/// gets the chat page.
pub async fn root(state: State<AppState>, up: Upgrade) -> Response {
    if up.ws.is_err() {
        return super::page::index(up.headers).await;
    }
    upgrade_citizen(state, up).await
}

/// The citizen socket (`--citizen-path`, `?sessionId=` of a minted session), running
/// `--citizen-agent-id` as the session's user.
pub async fn upgrade_citizen(State(state): State<AppState>, up: Upgrade) -> Response {
    let session = query_param(up.query(), "sessionId").unwrap_or_default();
    let agent = state.config.citizen_agent_id.clone();
    one_agent(state, agent, Route::Citizen(session), up)
}

/// A proxy hop's path (`--hop PATH=UPSTREAM`): verify the token, then relay to the upstream.
pub async fn upgrade_hop(
    State(state): State<AppState>,
    matched: axum::extract::MatchedPath,
    up: Upgrade,
) -> Response {
    let Upgrade {
        peer: ConnectInfo(peer),
        query: RawQuery(query),
        headers,
        admission,
        ws,
    } = up;
    let Some(upstream) = state
        .config
        .hops
        .iter()
        .find(|h| h.path == matched.as_str())
        .map(|h| h.upstream.clone())
    else {
        return (StatusCode::NOT_FOUND, "no such hop\n").into_response();
    };
    let (ws, addr) = match admit(&state, peer, &headers, ws) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    if let Some(refused) = too_many_refusals(&state, addr) {
        return refused;
    }
    let found = find_token(&headers, query.as_deref(), true);
    let (identity, token) = match found {
        None => (
            Err("no token was presented: connect with ?token=, `Authorization: Bearer` or the `bearer` subprotocol".to_owned()),
            String::new(),
        ),
        Some((token, _)) => (
            state.verifier.verify(&token).map_err(|e| e.to_string()),
            token,
        ),
    };
    if identity.is_err() {
        state.refusals.allow(addr);
    }
    // The client's subprotocols go upstream, except flowgate's `bearer` and the token after it.
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let bearer = offered
        .first()
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer"));
    let protocols = if bearer {
        offered[2.min(offered.len())..].to_vec()
    } else {
        offered
    };
    let client = crate::relay::hop::Client {
        identity,
        token,
        addr,
        origin: headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        protocols,
    };
    let span = tracing::info_span!("hop", path = %matched.as_str());
    // The upstream leg opens before the client's upgrade is answered (with the subprotocol the
    // upstream chose); a refusal is written to the client after the upgrade (rule 11).
    let full = state
        .open_sessions
        .load(std::sync::atomic::Ordering::SeqCst)
        >= state.config.max_sessions;
    let opened = if full {
        // `hold_a_place` closes it with 1013: no upstream leg for a client that cannot stay.
        crate::relay::hop::Opened::not_opened()
    } else {
        crate::relay::hop::open(&state, &upstream, client)
            .instrument(span.clone())
            .await
    };
    let mut ws = ws
        .max_message_size(state.config.max_client_message_bytes)
        .max_frame_size(state.config.max_client_message_bytes);
    if let Some(chosen) = opened.protocol() {
        ws = ws.protocols([chosen.to_owned()]);
    } else if bearer {
        ws = ws.protocols(["bearer"]);
    }
    let sessions = state.sessions.clone();
    ws.on_upgrade(move |socket| {
        sessions.track_future(
            async move {
                let _admission = admission;
                let serving = state.clone();
                hold_a_place(&state, socket, move |socket| {
                    crate::relay::hop::serve(serving, socket, opened)
                })
                .await;
            }
            .instrument(span),
        )
    })
}

/// Serve a socket while it holds one of the `--max-sessions` places (counted in the
/// `sessions_open` metric); past the limit it is closed with 1013 at once.
async fn hold_a_place<F, Fut>(state: &AppState, socket: axum::extract::ws::WebSocket, serve: F)
where
    F: FnOnce(axum::extract::ws::WebSocket) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let open = state
        .open_sessions
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    state.metrics.sessions_open.inc();
    if open >= state.config.max_sessions {
        tracing::warn!(open, "too many sessions: closing with 1013");
        session::refuse(
            socket,
            crate::close::CloseCode::TryAgain,
            "overloaded: try again later",
            state.config.client_write_timeout,
        )
        .await;
    } else {
        serve(socket).await;
    }
    state
        .open_sessions
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    state.metrics.sessions_open.dec();
}

/// A dialect route's frame cap: four times its message limit, at most 64 MiB.
fn hard_cap(limit: usize) -> usize {
    limit.saturating_mul(4).min(64 << 20).max(limit)
}

/// The checks every upgrade passes before its socket exists: a real upgrade, not shutting
/// down, an allowed `Origin`, the per-address rate.
fn admit(
    state: &AppState,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<(WebSocketUpgrade, std::net::IpAddr), Box<Response>> {
    let refuse = |status: StatusCode, text: String| Err(Box::new((status, text).into_response()));
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let why = format!("this endpoint is a WebSocket: {rejection}\n");
            return refuse(StatusCode::UPGRADE_REQUIRED, why);
        }
    };
    if state.shutdown.is_cancelled() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    if !origin_allowed(headers, &state.config.allowed_origins) {
        tracing::warn!(%peer, "upgrade refused: Origin not allowed");
        let why = "this Origin may not open a flowgate socket (see --allowed-origins)\n";
        return refuse(StatusCode::FORBIDDEN, why.into());
    }
    let client = super::address::client_addr(peer.ip(), headers, &state.config.trusted_proxies);
    if !state.upgrade_limits.allow(client) {
        let why = "too many connection attempts: slow down\n";
        return refuse(StatusCode::TOO_MANY_REQUESTS, why.into());
    }
    Ok((ws, client))
}

/// An address that keeps presenting refused credentials is refused before the upgrade
/// (DIALECTS.md rule 11: reconnecting clients count failed connects, not closes).
fn too_many_refusals(state: &AppState, client: std::net::IpAddr) -> Option<Response> {
    if state.refusals.has_left(client) {
        return None;
    }
    let why = format!(
        "too many refused tokens from this address (--refused-tokens-per-minute {}): get a new token\n",
        state.config.refused_tokens_per_minute
    );
    Some((StatusCode::UNAUTHORIZED, why).into_response())
}

/// A route that runs one configured agent (its clients name none).
fn one_agent(state: AppState, agent: Option<String>, route: Route, up: Upgrade) -> Response {
    match agent {
        Some(agent_id) => open(state, agent_id, route, up),
        None => (
            StatusCode::NOT_FOUND,
            "this route is off
",
        )
            .into_response(),
    }
}

/// A client-chosen key (client id, conversation id): 1 to 128 letters, digits, `-`, `_`, `.`.
pub(super) fn check_key(what: &str, key: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what}: use 1 to 128 letters, digits, `-`, `_` or `.`\n"
        ))
    }
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then(|| percent_decode(v))
    })
}

fn open(state: AppState, agent_id: String, route: Route, up: Upgrade) -> Response {
    let Upgrade {
        peer: ConnectInfo(peer),
        query: RawQuery(query),
        headers,
        admission,
        ws,
    } = up;
    let (ws, addr) = match admit(&state, peer, &headers, ws) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    let dialect = !matches!(route, Route::Native);
    if dialect && let Some(refused) = too_many_refusals(&state, addr) {
        return refused;
    }
    // The other dialects' clients send their token in the query (their contract).
    let (allow_query, user_claim) = match &route {
        Route::Native => (state.config.allow_query_token, None),
        Route::Adk(_) => (true, Some(state.config.adk_jwt_user_claim.as_str())),
        Route::Omni2 | Route::Copilot | Route::Citizen(_) => (true, None),
    };
    let found = find_token(&headers, query.as_deref(), allow_query);
    let authn = match (&route, &found) {
        // A citizen socket's credential is its minted session (which may carry a user).
        (Route::Citizen(session), found) => match state.citizen_sessions.open(session) {
            Some(identity) if state.config.citizen_require_token => {
                let token_user = found
                    .as_ref()
                    .and_then(|(t, _)| state.verifier.verify(t).ok())
                    .map(|id| id.user_id);
                if token_user.as_deref() == Some(identity.user_id.as_str()) {
                    Authn::Ok(identity)
                } else {
                    Authn::Rejected(
                        "this session needs the token of its user (--citizen-require-token): connect with ?sessionId=…&token=<jwt>".into(),
                    )
                }
            }
            Some(identity) => Authn::Ok(identity),
            None => Authn::Rejected(
                "unknown or expired sessionId: POST /api/agent/session for a session, then connect with ?sessionId=<it>".into(),
            ),
        },
        (_, found) => match found {
        None if state.config.auth.allow_anonymous => Authn::Ok(crate::auth::Identity::anonymous()),
        None => Authn::Missing,
        Some((token, _)) => match state.verifier.verify_as(token, user_claim) {
            Ok(id) => Authn::Ok(id),
            Err(e) => Authn::Refused(e),
        },
        },
    };
    // The omni2 backend position (DIALECTS.md 3.3, 4): a trusted proxy's `X-User-Id` must name
    // the token's user (the token is still verified); anyone else's header is ignored.
    let authn = match (&route, authn) {
        (Route::Omni2, Authn::Ok(id))
            if state.config.trusted_proxies.contains(&peer.ip())
                && headers.contains_key("x-user-id") =>
        {
            let named = headers.get("x-user-id").and_then(|v| v.to_str().ok());
            if named == Some(id.user_id.as_str()) {
                Authn::Ok(id)
            } else {
                Authn::Forbidden("the proxy's X-User-Id is not the token's user".into())
            }
        }
        (_, authn) => authn,
    };
    if dialect && matches!(authn, Authn::Refused(_) | Authn::Rejected(_)) {
        state.refusals.allow(addr);
    }
    let transport = found.as_ref().map(|(_, t)| *t);
    // The dialects answer a long message with an error and keep the socket (rule 12): their
    // frame cap is a few times their message limit.
    let max_message = match route {
        Route::Native => state.config.max_client_message_bytes,
        Route::Citizen(_) => hard_cap(state.config.citizen_max_message_bytes),
        _ => hard_cap(state.config.max_client_message_bytes),
    };
    let mut ws = ws
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(state.config.ws_read_buffer_bytes)
        .write_buffer_size(state.config.ws_write_buffer_bytes);
    if transport == Some(Transport::Subprotocol) {
        ws = ws.protocols(["bearer"]);
    }
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::relay::trace::TraceContext::parse)
        .unwrap_or_else(crate::relay::trace::TraceContext::new_root);
    let span = tracing::info_span!(
        "session",
        trace_id = %trace.trace_id,
        agent_id = %agent_id,
        user_id = tracing::field::Empty,
        transport = transport.map(Transport::as_str),
    );
    let sessions = state.sessions.clone();
    ws.on_upgrade(move |socket| {
        sessions.track_future(
            async move {
                // The connection keeps its place under --max-connections until the session ends.
                let _admission = admission;
                let serving = state.clone();
                hold_a_place(&state, socket, move |socket| async move {
                    let state = serving;
                    match route {
                        Route::Native => {
                            let dialect = NeuraLabs;
                            session::serve(state.clone(), socket, dialect, agent_id, authn, trace)
                                .await;
                        }
                        Route::Citizen(session) => {
                            let sessions = state.citizen_sessions.clone();
                            let deltas = state.config.citizen_stream_deltas;
                            let dialect = Citizen::new(session, sessions, deltas);
                            session::serve(state.clone(), socket, dialect, agent_id, authn, trace)
                                .await;
                        }
                        Route::Copilot => {
                            let dialect = Copilot::new();
                            session::serve(state.clone(), socket, dialect, agent_id, authn, trace)
                                .await;
                        }
                        Route::Omni2 => {
                            let c = &state.config;
                            let dialect = Omni2::new(&c.omni2_welcome_text, c.omni2_welcome_as);
                            session::serve(state.clone(), socket, dialect, agent_id, authn, trace)
                                .await;
                        }
                        Route::Adk(at) => {
                            let dialect = Adk::new(at);
                            session::serve(state.clone(), socket, dialect, agent_id, authn, trace)
                                .await;
                        }
                    }
                })
                .await;
            }
            .instrument(span),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_found_in_each_transport() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(
            find_token(&h, None, true),
            Some(("abc".into(), Transport::Header))
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "bearer, x.y.z".parse().unwrap(),
        );
        assert_eq!(
            find_token(&h, None, true),
            Some(("x.y.z".into(), Transport::Subprotocol))
        );
        let h = HeaderMap::new();
        assert_eq!(
            find_token(&h, Some("a=1&token=t%2Bk"), true),
            Some(("t+k".into(), Transport::Query))
        );
        assert_eq!(find_token(&h, Some("token=t"), false), None);
    }
}
