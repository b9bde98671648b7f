//! HTTP in `serve` (contract §8): `/metrics`, `/healthz`, `/readyz`, `/api/stats`,
//! `/api/history`, `/api/status` and the dashboard at `/`.
//!
//! - `metrics.rs`: the Prometheus registry, updated where the work happens.
//! - `health.rs`: what the process knows of itself (loops, catch-up, lag, the last publish).
//! - `api.rs`: the JSON endpoints.
//! - `assets.rs`: the dashboard, compiled in.

pub mod api;
mod assets;
mod health;

use super::metrics::Metrics;
use super::node_history::NodeHistory;
use super::status::Status;
use crate::infra::shutdown::Shutdown;
use crate::Error;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use truebit_projections::Projections;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub db: Arc<Projections>,
    pub nodes: Arc<NodeHistory>,
    pub publish_interval: Duration,
    pub db_path: PathBuf,
}

/// Binds the HTTP address; an address in use (or not ours to take) is a usage error naming it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::HttpBind { addr, source })
}

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/stats", get(api::stats))
        .route("/api/history", get(api::history))
        .route("/api/status", get(api::status))
        .merge(assets::routes())
        .with_state(state)
}

/// Serves until `stop` turns true.
pub async fn run(listener: TcpListener, state: AppState, mut stop: Shutdown) {
    let app = router(state);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.recv().await;
    });
    if let Err(e) = served.await {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let m = &state.metrics;
    if let Some(p) = state.status.published() {
        let age = std::time::SystemTime::now()
            .duration_since(p.when)
            .unwrap_or_default();
        m.snapshot_age.set(age.as_secs_f64());
    }
    if let Ok(meta) = std::fs::metadata(&state.db_path) {
        m.database_bytes.set(meta.len() as i64);
    }
    m.ready.set(state.status.not_ready().is_none() as i64);
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        m.encode(openmetrics),
    )
}
