//! Probes and metrics on a plain-HTTP port (no secrets here).
//!
//! The port is unauthenticated, so it has limits of its own: connections in
//! all and per peer address, a deadline for the request head and one for the
//! whole connection, and a small read buffer. Its connections take
//! descriptors from the reserve kept for files (see `limits::FD_RESERVE`),
//! never from the API's connection slots.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::inflight::Tally;
use crate::limits::LogLimiter;
use crate::state::AppState;

/// Longest a health-port request head may take to arrive.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// Read buffer of a health-port connection (hyper's smallest).
const HEAD_BUFFER: usize = 8192;

/// Serves the health port until its listener fails for good.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) {
    let app = router(state.clone());
    let l = state.gate.limits();
    let held = Tally::new(
        "health connections",
        l.health_per_peer,
        l.health_connections,
        ["AEGIS_HEALTH_MAX_CONNECTIONS_PER_PEER", "AEGIS_HEALTH_MAX_CONNECTIONS"],
    );
    let (refused_log, accept_log) = (LogLimiter::new(Duration::from_secs(1)), LogLimiter::new(Duration::from_secs(1)));
    loop {
        let (tcp, peer) = crate::limits::accept(&listener, "health", &accept_log, || ()).await;
        // Refused at once, so a held port fails probes fast instead of stalling them.
        let Ok(slot) = held.take(&peer.ip().to_string(), 1) else {
            state.metrics.health_refused.inc();
            if let Some(skipped) = refused_log.hit() {
                tracing::warn!(%peer, skipped, "health port: connection refused by a limit");
            }
            continue;
        };
        let deadline = l.health_timeout;
        tokio::spawn(connection(tcp, peer, app.clone(), deadline, slot));
    }
}

/// One health-port connection, closed at `deadline` whatever it is doing.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    deadline: Duration,
    _slot: crate::inflight::Held,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let svc = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEAD_DEADLINE.min(deadline)).max_buf_size(HEAD_BUFFER);
    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
    match tokio::time::timeout(deadline, conn).await {
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "health connection ended with an error"),
        Err(_) => tracing::debug!(%peer, "health connection closed at its deadline"),
        Ok(Ok(())) => {}
    }
}

/// `/healthz` (alive), `/readyz` (unsealed and serving), `/metrics` (Prometheus).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    if s.is_sealed() {
        return ApiError::unavailable("sealed: waiting for the root key").plain_text();
    }
    let mut degraded: Vec<String> = s.replication.alerts();
    if s.store().is_ok_and(|store| !store.backend_available()) {
        degraded.insert(0, "the record store is unavailable; writes are refused with 503, reads go on".to_owned());
    }
    // Still ready when degraded: reads are served from memory; the body says what is wrong.
    if degraded.is_empty() {
        "ready\n".into_response()
    } else {
        format!("ready, degraded: {}\n", degraded.join("; ")).into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    if let Ok(store) = s.store() {
        s.metrics.secrets.set(store.len() as i64);
        s.metrics.transform_failures.set(store.transform_failures() as i64);
    }
    s.metrics.connections_open.set(s.gate.open() as i64);
    s.metrics.watches_open.set(s.in_flight.watches.held() as i64);
    s.metrics.set_audit(s.audit.stats());
    if let Some(sync) = s.sync().filter(|sync| sync.keeps_copies()) {
        s.metrics.set_kube_sync(&sync.summary());
    }
    if s.replication.is_on() {
        s.metrics.set_replication(&s.replication.status(s.store().map_or(0, |st| st.last_change())));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
