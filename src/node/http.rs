//! `GET /api/federation/network-stats` on `--http-addr`: the monitor's view reads it unchanged.

use super::network::{flattened, View};
use axum::routing::get;
use axum::{Json, Router};
use std::time::Duration;

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, view: View, publish_interval: Duration) {
    let app = Router::new().route(
        "/api/federation/network-stats",
        get(move || {
            let view = view.clone();
            async move {
                let now = chrono::Utc::now().timestamp_millis();
                Json(flattened(
                    view.lock().unwrap().as_ref(),
                    now,
                    publish_interval,
                ))
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the network-stats endpoint stopped");
    }
}
