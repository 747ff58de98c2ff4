//! The Aegis Safe: an HTTPS server that accepts only mutual TLS with SPIFFE
//! X.509-SVIDs and serves the VSecM-compatible API and the native `/v1` API.
//!
//! - [`serve`] runs the accept loop: TLS handshake (with a deadline), the
//!   caller's SPIFFE ID and role decided once per connection, then HTTP/1.1 or
//!   HTTP/2 with head and request deadlines.
//! - [`router`] maps paths to handlers; [`error`] maps every failure to a
//!   status and a message.
//! - [`health`] serves probes and metrics on a separate plain port.

pub mod audit;
pub mod auth;
pub mod error;
mod extract;
pub mod health;
pub mod inflight;
pub mod limits;
pub mod metrics;
pub mod native;
pub mod path;
pub mod serve;
pub mod state;
mod sync;
pub mod vsecm;
pub mod watch;
pub mod watchconn;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

pub use serve::{serve, start, Running};
pub use state::{Adapters, AppState, RootKeyMode, Settings};

/// The route templates of the mTLS API: the one table `router` is built from
/// and metric and log labels are taken from (templates, never secret names).
pub mod routes {
    /// VSecM's workload fetch.
    pub const WORKLOAD_SECRETS: &str = "/workload/v1/secrets";
    /// VSecM's Sentinel secrets (list, upsert, delete).
    pub const SENTINEL_SECRETS: &str = "/sentinel/v1/secrets";
    /// VSecM's root key (as Sentinel).
    pub const SENTINEL_KEYS: &str = "/sentinel/v1/keys";
    /// VSecM's keystone.
    pub const SENTINEL_KEYSTONE: &str = "/sentinel/v1/keystone";
    /// Secret list.
    pub const SECRETS: &str = "/v1/secrets";
    /// One secret.
    pub const SECRET: &str = "/v1/secrets/{name}";
    /// Undelete.
    pub const UNDELETE: &str = "/v1/secrets/{name}/undelete";
    /// Rollback.
    pub const ROLLBACK: &str = "/v1/secrets/{name}/rollback";
    /// Version history.
    pub const VERSIONS: &str = "/v1/secrets/{name}/versions";
    /// One version (destroy).
    pub const VERSION: &str = "/v1/secrets/{name}/versions/{version}";
    /// The calling workload's secret.
    pub const WORKLOAD_SECRET: &str = "/v1/workload/secret";
    /// The workload watch (served before axum on HTTP/1.1, see `watchconn`).
    pub const WORKLOAD_WATCH: &str = "/v1/workload/watch";
    /// Encrypt for git.
    pub const ENCRYPT: &str = "/v1/encrypt";
    /// Unseal.
    pub const UNSEAL: &str = "/v1/unseal";
    /// Status.
    pub const STATUS: &str = "/v1/status";
    /// Root key rotation.
    pub const ROTATE_ROOT_KEY: &str = "/v1/admin/rotate-root-key";
    /// The OpenAPI document.
    pub const OPENAPI: &str = "/v1/openapi.yaml";

    /// Every route, for labels.
    pub(crate) const ALL: [&str; 17] = [
        WORKLOAD_SECRETS,
        SENTINEL_SECRETS,
        SENTINEL_KEYS,
        SENTINEL_KEYSTONE,
        SECRETS,
        SECRET,
        UNDELETE,
        ROLLBACK,
        VERSIONS,
        VERSION,
        WORKLOAD_SECRET,
        WORKLOAD_WATCH,
        ENCRYPT,
        UNSEAL,
        STATUS,
        ROTATE_ROOT_KEY,
        OPENAPI,
    ];
}

/// Every route of the mTLS API.
pub fn router(state: Arc<AppState>) -> Router {
    use routes::*;
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route(WORKLOAD_SECRETS, get(vsecm::fetch))
        .route(SENTINEL_SECRETS, get(vsecm::list).post(vsecm::upsert).delete(vsecm::delete))
        .route(SENTINEL_KEYS, post(vsecm::keys))
        .route(SENTINEL_KEYSTONE, get(vsecm::keystone))
        .route(SECRETS, get(native::list))
        .route(SECRET, get(native::get).put(native::put).delete(native::delete))
        .route(UNDELETE, post(native::undelete))
        .route(ROLLBACK, post(native::rollback))
        .route(VERSIONS, get(native::history))
        .route(VERSION, delete(native::destroy))
        .route(WORKLOAD_SECRET, get(native::workload))
        .route(WORKLOAD_WATCH, get(watch::watch))
        .route(ENCRYPT, post(native::encrypt))
        .route(UNSEAL, post(native::unseal))
        .route(STATUS, get(native::status))
        .route(ROTATE_ROOT_KEY, post(native::rotate))
        .route(OPENAPI, get(native::openapi))
        .layer(axum::middleware::from_fn(strict_query))
        .layer(axum::middleware::from_fn(label))
        .fallback(|| async { error::ApiError::not_found("no such endpoint; the API is described at /v1/openapi.yaml") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The route label of a served request, in the response's extensions
/// (`other` when no route matched).
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

/// Puts the route axum matched in the response's extensions.
async fn label(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("other", |m| route_label(m.as_str()));
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(RouteLabel(route));
    resp
}

/// The query parameters each native operation takes; any other is refused
/// with a 400 that names it, so that a typo (`?versoin=2`) is not silently
/// ignored (and the current version answered). The watch parses its own
/// query, the VSecM routes keep VSecM's leniency, and a method a route does
/// not serve gets its 405.
fn allowed_query(method: &axum::http::Method, route: &str) -> Option<&'static [&'static str]> {
    use axum::http::Method;
    use routes::*;
    const NONE: &[&str] = &[];
    match (method, route) {
        (&Method::GET, SECRETS) => Some(&["deleted"]),
        (&Method::GET, SECRET) => Some(&["version"]),
        (&Method::PUT | &Method::DELETE, SECRET)
        | (&Method::POST, UNDELETE | ROLLBACK | ENCRYPT | UNSEAL | ROTATE_ROOT_KEY)
        | (&Method::GET, VERSIONS | WORKLOAD_SECRET | STATUS | OPENAPI)
        | (&Method::DELETE, VERSION) => Some(NONE),
        _ => None,
    }
}

/// Refuses query parameters a native route does not take (see [`allowed_query`]).
async fn strict_query(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Most requests carry no query: nothing to look up for them.
    if req.uri().query().is_none_or(str::is_empty) {
        return next.run(req).await;
    }
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("other", |m| route_label(m.as_str()));
    let Some(allowed) = allowed_query(req.method(), route) else { return next.run(req).await };
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri()).map(|q| q.0);
    let unknown = match &pairs {
        Ok(pairs) => pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())).map(|(k, _)| k.as_str()),
        Err(_) => Some(""),
    };
    if let Some(key) = unknown {
        let shown: String = key.chars().take(40).collect();
        let takes = match allowed {
            [] => "takes no query parameters".to_owned(),
            keys => format!("takes only the query parameter {}", keys.join(", ")),
        };
        let why = if pairs.is_err() { "a query that is not form-encoded".to_owned() } else { format!("'{shown}'") };
        let method = req.method().clone();
        return error::ApiError::bad_request(format!(
            "{method} {route} {takes}, not {why}; the API is described at /v1/openapi.yaml"
        ))
        .into_response();
    }
    next.run(req).await
}

/// The label of a route template: the template itself from [`routes`], else `other`.
pub fn route_label(template: &str) -> &'static str {
    routes::ALL.into_iter().find(|r| *r == template).unwrap_or("other")
}

/// The label of a request path before routing (for the request span, and
/// for answers given before axum routes, such as an oversized body or a
/// timeout): the template of [`routes`] it matches, else `other`.
pub fn path_label(path: &str) -> &'static str {
    routes::ALL.into_iter().find(|t| matches_template(t, path)).unwrap_or("other")
}

/// Whether `path` matches `template`, where `{x}` stands for one non-empty segment.
fn matches_template(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts == ps || (ts.starts_with('{') && !ps.is_empty()) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_their_template_and_never_a_name() {
        assert_eq!(path_label("/v1/secrets"), routes::SECRETS);
        assert_eq!(path_label("/v1/secrets/billing"), routes::SECRET);
        assert_eq!(path_label("/v1/secrets/billing/versions"), routes::VERSIONS);
        assert_eq!(path_label("/v1/secrets/billing/versions/3"), routes::VERSION);
        assert_eq!(path_label("/v1/workload/watch"), routes::WORKLOAD_WATCH);
        assert_eq!(path_label("/v1/secrets/billing/other"), "other");
        assert_eq!(path_label("/v1/secrets/"), "other");
        assert_eq!(path_label("/nope"), "other");
        assert_eq!(route_label("/v1/secrets/{name}"), routes::SECRET);
        assert_eq!(route_label("/v1/secrets/billing"), "other");
    }
}
