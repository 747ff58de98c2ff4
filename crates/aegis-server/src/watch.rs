//! Push: `GET /v1/workload/watch?revision=N[&wait_ms=T][&secret=NAME]`.
//!
//! A long poll: the answer comes as soon as the caller's secret is at another
//! revision than `N` (written, deleted, undeleted…), or when the wait ends
//! with the unchanged state. An idle watcher is one parked task waiting on its
//! own secret's change notice (a commit wakes only the watchers of the secrets
//! it changed): no CPU, a few hundred bytes plus its connection. With
//! `secret`, the watch follows that secret instead, for a caller a policy
//! allows to `read` it.

use std::sync::Arc;
use std::time::Duration;

use aegis_core::api::WatchEvent;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::native::workload_view;
use crate::state::AppState;
use aegis_core::policy::{Action, Target};

/// Longest wait a watcher may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Wait when none is given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);

/// Query of the watch endpoint (nothing else: a typo is refused, not ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    #[serde(default)]
    pub(crate) revision: u64,
    pub(crate) wait_ms: Option<u64>,
    /// A secret other than the caller's own (allowed by a policy).
    pub(crate) secret: Option<String>,
}

/// `GET /v1/workload/watch`.
pub async fn watch(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Arc<Caller>>,
    q: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WatchEvent>, ApiError> {
    let Query(q) = q.map_err(|_| bad_query())?;
    next_event(&s, &c, q).await.map(Json)
}

fn bad_query() -> ApiError {
    ApiError::bad_request("revision and wait_ms must be whole numbers")
}

/// Parses the query of a watch request.
pub fn parse_query(query: Option<&str>) -> Result<WatchQuery, ApiError> {
    let uri = format!("/?{}", query.unwrap_or(""));
    let uri: axum::http::Uri = uri.parse().map_err(|_| bad_query())?;
    Query::<WatchQuery>::try_from_uri(&uri).map(|Query(q)| q).map_err(|_| bad_query())
}

/// Waits until the caller's secret is at another revision than asked, or the wait ends.
pub async fn next_event(s: &AppState, c: &Caller, q: WatchQuery) -> Result<WatchEvent, ApiError> {
    let name = match q.secret.as_deref() {
        Some(raw) => crate::extract::address(s, raw)?,
        None => c.require_workload()?.secret_name()?,
    };
    crate::policy::allow(s, c, Action::Read, Target::Secret(&name))?;
    // Counted per identity and in total, over both HTTP/1.1 and HTTP/2.
    let _watch =
        s.in_flight.watches.take(c.id.as_str(), 1).map_err(|o| crate::inflight::refusal(&s.in_flight.watches, o))?;
    let store = s.store()?;
    // Leave room under the request deadline so the answer is never a timeout.
    let cap = s.settings.request_timeout.saturating_sub(Duration::from_secs(1)).min(MAX_WAIT);
    let wait = q.wait_ms.map_or(DEFAULT_WAIT, Duration::from_millis).min(cap);
    let deadline = tokio::time::Instant::now() + wait;
    let changes = store.watch_secret(&name);
    loop {
        // Listening before reading: a commit between the read and the wait still wakes this watcher.
        let changed = changes.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Only the revision is held while waiting: no copy of the value per idle watcher.
        if store.get(&name).map_or(0, |e| e.doc.revision) != q.revision {
            break;
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let (revision, secret) = workload_view(&store, &name)?;
    Ok(WatchEvent { revision, secret })
}
