//! `/healthz` and `/readyz` (contract §8), read off the process's [`Status`](crate::serve::status::Status).

use axum::extract::State;
use axum::http::StatusCode;

pub async fn healthz(State(state): State<super::AppState>) -> (StatusCode, String) {
    match state.status.failed() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

pub async fn readyz(State(state): State<super::AppState>) -> (StatusCode, String) {
    match state.status.not_ready() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
