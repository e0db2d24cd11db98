//! The WebSocket upgrade of `GET /api/chat/execute/{agent_id}`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn upgrade(State(state): State<AppState>, Path(agent_id): Path<String>) -> Response {
    let _ = (state, agent_id);
    ().into_response()
}
