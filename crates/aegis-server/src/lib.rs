//! The Aegis Safe: an HTTPS server that accepts only mutual TLS with SPIFFE
//! X.509-SVIDs and serves the VSecM-compatible API and the native `/v1` API.
//!
//! - [`serve`] runs the accept loop: TLS handshake (with a deadline), the
//!   caller's SPIFFE ID and role decided once per connection, then HTTP/1.1 or
//!   HTTP/2 with head and request deadlines.
//! - [`router`] maps paths to handlers; [`error`] maps every failure to a
//!   status and a message.
//! - [`health`] serves probes and metrics on a separate plain port.

pub mod auth;
pub mod error;
mod extract;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod native;
pub mod path;
pub mod rootkey;
pub mod serve;
pub mod state;
pub mod sync;
pub mod vsecm;
pub mod watch;
mod watchconn;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

pub use rootkey::{FileStore, KeyStoreError, RootKeyStore};
pub use serve::{serve, start, start_with, Running};
pub use state::{AppState, RootKeyMode, Settings};
pub use sync::SecretSync;

/// Every route of the mTLS API.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/workload/v1/secrets", get(vsecm::fetch))
        .route("/sentinel/v1/secrets", get(vsecm::list).post(vsecm::upsert).delete(vsecm::delete))
        .route("/sentinel/v1/keys", post(vsecm::keys))
        .route("/sentinel/v1/keystone", get(vsecm::keystone))
        .route("/v1/secrets", get(native::list))
        .route("/v1/secrets/{name}", get(native::get).put(native::put).delete(native::delete))
        .route("/v1/secrets/{name}/undelete", post(native::undelete))
        .route("/v1/secrets/{name}/rollback", post(native::rollback))
        .route("/v1/secrets/{name}/versions", get(native::history))
        .route("/v1/secrets/{name}/versions/{version}", delete(native::destroy))
        .route("/v1/workload/secret", get(native::workload))
        .route("/v1/workload/watch", get(watch::watch))
        .route("/v1/encrypt", post(native::encrypt))
        .route("/v1/unseal", post(native::unseal))
        .route("/v1/status", get(native::status))
        .route("/v1/admin/rotate-root-key", post(native::rotate))
        .route("/v1/openapi.yaml", get(native::openapi))
        .fallback(|| async { error::ApiError::not_found("no such endpoint; the API is described at /v1/openapi.yaml") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A route label for metrics and logs (templates, never secret names).
pub fn route_label(path: &str) -> &'static str {
    const FIXED: [&str; 11] = [
        "/v1/workload/watch",
        "/workload/v1/secrets",
        "/sentinel/v1/secrets",
        "/sentinel/v1/keys",
        "/sentinel/v1/keystone",
        "/v1/secrets",
        "/v1/workload/secret",
        "/v1/encrypt",
        "/v1/unseal",
        "/v1/status",
        "/v1/admin/rotate-root-key",
    ];
    if let Some(f) = FIXED.iter().find(|f| **f == path) {
        return f;
    }
    if let Some(rest) = path.strip_prefix("/v1/secrets/") {
        return match rest.split('/').nth(1) {
            None => "/v1/secrets/{name}",
            Some("versions") => "/v1/secrets/{name}/versions",
            Some("undelete") => "/v1/secrets/{name}/undelete",
            Some("rollback") => "/v1/secrets/{name}/rollback",
            Some(_) => "/v1/secrets/{name}/other",
        };
    }
    "other"
}
