//! The chat page (embedded in the binary) and the agent list it uses.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn index() -> Response {
    (StatusCode::OK, "flowgate\n").into_response()
}

pub async fn asset(Path(file): Path<String>) -> Response {
    let _ = file;
    StatusCode::NOT_FOUND.into_response()
}

pub async fn agents(State(state): State<AppState>) -> Response {
    let _ = state;
    StatusCode::NOT_FOUND.into_response()
}
