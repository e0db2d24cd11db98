//! `GET /healthz` (the process is alive) and `GET /readyz` (the store and the engine are
//! reachable; 503 with the reason otherwise). Both answer JSON.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::relay::context::AppState;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = match state.store.ping().await {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    let engine = match engine_reachable(&state).await {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    let ready = store["ok"] == true && engine["ok"] == true && !state.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Without NATS the gateway still serves its own clients: degraded, not unready.
    let cluster = state.cluster.as_ref().map(|c| match c.trouble() {
        None => json!({"ok": true, "node": c.node()}),
        Some(why) => json!({"ok": false, "node": c.node(), "error": why}),
    });
    let degraded = cluster.as_ref().is_some_and(|c| c["ok"] == false);
    let mut body = json!({
        "status": match (ready, degraded) {
            (false, _) => "not_ready",
            (true, true) => "degraded",
            (true, false) => "ready",
        },
        "store": store,
        "engine": engine,
        "shutting_down": state.shutdown.is_cancelled(),
    });
    if let Some(cluster) = cluster {
        body["cluster"] = cluster;
    }
    (status, Json(body))
}

/// A TCP connect to the engine's host and port, and for a `wss://` engine the TLS handshake
/// (its certificate checked as a run's connection checks it), bounded by the engine connect
/// timeout in all.
async fn engine_reachable(state: &AppState) -> Result<(), String> {
    let url = &state.config.engine_url;
    let (tls, rest) = match (url.strip_prefix("wss://"), url.strip_prefix("ws://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(format!("engine URL must start with ws:// or wss://: {url}")),
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, hostport) = match hostport.rsplit_once(':') {
        Some((host, _)) if !hostport.ends_with(']') => (host, hostport.to_owned()),
        _ => (
            hostport,
            format!("{hostport}:{}", if tls { 443 } else { 80 }),
        ),
    };
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(&hostport)
            .await
            .map_err(|e| format!("cannot connect to {hostport}: {e}"))?;
        if !tls {
            return Ok(());
        }
        let config = state
            .outbound_tls
            .clone()
            .ok_or("no TLS configuration for a wss:// engine")?;
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map(drop)
            .map_err(|e| match crate::tls::problem(&e) {
                Some(tls) => tls.sentence(&hostport, "--outbound-ca-file"),
                None => format!("TLS with {hostport} failed: {e}"),
            })
    };
    match tokio::time::timeout(state.config.engine_connect_timeout, probe).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no connection to {hostport} within the connect timeout"
        )),
    }
}

/// `GET /metrics`: Prometheus/OpenMetrics text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = state.runlog.stats();
    let m = &state.metrics;
    m.runlog_events_written.set(stats.events_written);
    m.runlog_events_dropped.set(stats.events_dropped);
    m.runlog_events_pending.set(stats.events_pending);
    m.runlog_write_lag_ms_max.set(stats.write_lag_ms_max);
    m.workflow_cache_hits.set(state.cache.hits());
    if let Some(cluster) = &state.cluster {
        let c = cluster.stats();
        m.cluster_frames_published
            .set(c.published.load(std::sync::atomic::Ordering::Relaxed));
        m.cluster_publish_failures.set(
            c.publish_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        m.cluster_ready.set(i64::from(cluster.ready()));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}
