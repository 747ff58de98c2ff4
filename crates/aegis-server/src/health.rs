//! Probes and metrics on a plain-HTTP port (no secrets here).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// `/healthz` (alive), `/readyz` (unsealed and serving), `/metrics` (Prometheus).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    if s.is_sealed() {
        (StatusCode::SERVICE_UNAVAILABLE, "sealed: waiting for the root key\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    if let Ok(store) = s.store() {
        s.metrics.secrets.set(store.len() as i64);
        s.metrics.transform_failures.set(store.transform_failures() as i64);
    }
    s.metrics.connections_open.set(s.gate.open() as i64);
    s.metrics.set_audit(s.audit.stats());
    if let Some(sync) = s.sync() {
        s.metrics.set_kube_sync(&sync.summary());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
