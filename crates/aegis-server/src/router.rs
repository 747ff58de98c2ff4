//! The axum router of the mTLS API, built from [`crate::routes::ROUTES`],
//! with the middleware every route shares: the route label put on each
//! answer, and the refusal of query parameters a native operation does not take.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodRouter};
use axum::Router;

use crate::error::ApiError;
use crate::routes::{allowed_query, route_label, Endpoint, Route, ROUTES};
use crate::state::AppState;
use crate::{backup, native, policy, vsecm, watch};

/// Every route of the mTLS API.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    ROUTES
        .iter()
        .fold(Router::new(), |app, r| app.route(r.path, method_router(r)))
        .layer(from_fn(strict_query))
        .layer(from_fn(label))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API is described at /v1/openapi.yaml") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The method router serving every operation of `route`.
fn method_router(route: &Route) -> MethodRouter<Arc<AppState>> {
    route.ops.iter().fold(MethodRouter::new(), |r, o| r.merge(handler(o.endpoint, o.method.filter())))
}

/// The handler of `endpoint` for `filter`, its method.
fn handler(endpoint: Endpoint, filter: axum::routing::MethodFilter) -> MethodRouter<Arc<AppState>> {
    use Endpoint as E;
    match endpoint {
        E::VsecmFetch => on(filter, vsecm::fetch),
        E::VsecmList => on(filter, vsecm::list),
        E::VsecmUpsert => on(filter, vsecm::upsert),
        E::VsecmDelete => on(filter, vsecm::delete),
        E::VsecmKeys => on(filter, vsecm::keys),
        E::VsecmKeystone => on(filter, vsecm::keystone),
        E::List => on(filter, native::list),
        E::Get => on(filter, native::get),
        E::Put => on(filter, native::put),
        E::Delete => on(filter, native::delete),
        E::Undelete => on(filter, native::undelete),
        E::Rollback => on(filter, native::rollback),
        E::History => on(filter, native::history),
        E::Destroy => on(filter, native::destroy),
        E::Workload => on(filter, native::workload),
        E::Watch => on(filter, watch::watch),
        E::Encrypt => on(filter, native::encrypt),
        E::Unseal => on(filter, native::unseal),
        E::Status => on(filter, native::status),
        E::Rotate => on(filter, native::rotate),
        E::Openapi => on(filter, native::openapi),
        E::Backup => on(filter, backup::backup),
        E::VerifyBackup => on(filter, backup::verify),
        E::Restore => on(filter, backup::restore),
        E::WorkloadNamed => on(filter, native::named),
        E::PolicyList => on(filter, policy::list),
        E::PolicyGet => on(filter, policy::get),
        E::PolicyPut => on(filter, policy::put),
        E::PolicyDelete => on(filter, policy::delete),
        E::Explain => on(filter, policy::explain),
        E::AuditTail => on(filter, native::audit_tail),
        E::Replication => on(filter, native::replication),
        E::ReplicationChanges => on(filter, crate::replication::changes),
    }
}

/// The route label of a served request, in the response's extensions
/// (`other` when no route matched).
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

/// The label of the route axum matched for `req`.
fn matched(req: &Request) -> &'static str {
    req.extensions().get::<MatchedPath>().map_or("other", |m| route_label(m.as_str()))
}

/// Puts the route axum matched in the response's extensions.
async fn label(req: Request, next: Next) -> Response {
    let route = matched(&req);
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(RouteLabel(route));
    resp
}

/// Refuses query parameters a native operation does not take (see
/// [`allowed_query`]) with a 400 that names the parameter.
async fn strict_query(req: Request, next: Next) -> Response {
    // Most requests carry no query: nothing to look up for them.
    if req.uri().query().is_none_or(str::is_empty) {
        return next.run(req).await;
    }
    let route = matched(&req);
    let Some(allowed) = allowed_query(req.method(), route) else { return next.run(req).await };
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri()).map(|q| q.0);
    let unknown = match &pairs {
        Ok(pairs) => pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())).map(|(k, _)| k.as_str()),
        Err(_) => Some(""),
    };
    let Some(key) = unknown else { return next.run(req).await };
    let shown: String = key.chars().take(40).collect();
    let takes = match allowed {
        [] => "takes no query parameters".to_owned(),
        keys => format!("takes only the query parameter {}", keys.join(", ")),
    };
    let why = if pairs.is_err() { "a query that is not form-encoded".to_owned() } else { format!("'{shown}'") };
    let method = req.method();
    ApiError::bad_request(format!("{method} {route} {takes}, not {why}; the API is described at /v1/openapi.yaml"))
        .into_response()
}
