//! What the Safe records in the audit trail (see docs/AUDIT.md).
//!
//! Every request served over mTLS becomes one event, written when its answer
//! is known ([`finish`]). Handlers add what only they know — the secret names
//! and the version — with [`note_secret`] and [`note_version`]. An admin write
//! (anything that changes the store or the root key) first calls [`intent`]
//! or, when the change is a store commit, [`intent_before_commit`]: an
//! `intent` line made durable before anything changes, so a write the trail
//! cannot record is refused with 503 and changes nothing; its `done` line is
//! durable before the answer. A store commit makes the intent lines of all its
//! writes durable with one fsync of the trail just before it (`state.rs`'s `Trail`, the
//! store's commit barrier), and their `done` lines share the next one.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use aegis_audit::{Event, Phase};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::routes::action;
use crate::state::AppState;

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// The least time a write's `done` line may wait to become durable, even
/// when the request used up its deadline.
const MIN_DONE_WAIT: Duration = Duration::from_millis(50);

/// The audit record of one request while it is served.
pub(crate) struct Scope {
    request_id: Arc<str>,
    caller: Arc<str>,
    method: Method,
    route: &'static str,
    deadline: Instant,
    notes: Mutex<Notes>,
}

#[derive(Default)]
struct Notes {
    secrets: Vec<String>,
    version: Option<u64>,
    intent: bool,
    policy: Option<std::borrow::Cow<'static, str>>,
}

impl Scope {
    /// A request of `caller` to `route`, which must be answered by `deadline`.
    pub(crate) fn new(caller: Arc<str>, method: Method, route: &'static str, deadline: Instant) -> Arc<Self> {
        Arc::new(Self {
            request_id: next_request_id(),
            caller,
            method,
            route,
            deadline,
            notes: Mutex::new(Notes::default()),
        })
    }

    /// Runs `f` with this scope as the current request's. A plain function: as an `async fn`
    /// it would keep `f` twice in its state (its argument and the future it awaits).
    pub(crate) fn run<F: std::future::Future>(
        self: &Arc<Self>,
        f: F,
    ) -> tokio::task::futures::TaskLocalFuture<Arc<Self>, F> {
        SCOPE.scope(self.clone(), f)
    }

    /// The event of this request; an intent keeps the notes for the `done` line that follows.
    fn event(&self, status: u16, phase: Option<Phase>) -> Event {
        let (api, action) = action(&self.method, self.route);
        let last = phase != Some(Phase::Intent);
        let (secrets, version, policy) = self
            .notes
            .lock()
            .map(|mut n| {
                let secrets = if last { std::mem::take(&mut n.secrets) } else { n.secrets.clone() };
                (secrets, n.version, n.policy.clone())
            })
            .unwrap_or_default();
        Event {
            time: OffsetDateTime::now_utc(),
            request_id: self.request_id.clone(),
            caller: self.caller.clone(),
            action,
            api,
            route: self.route,
            secrets,
            version,
            status,
            phase,
            policy,
        }
    }
}

/// A request id: a per-process prefix (different at each start) and a counter.
fn next_request_id() -> Arc<str> {
    static PREFIX: LazyLock<u32> = LazyLock::new(|| {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        (nanos as u32) ^ std::process::id().rotate_left(16)
    });
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    Arc::from(format!("{:08x}-{:x}", *PREFIX, COUNTER.fetch_add(1, Ordering::Relaxed)))
}

fn with_notes(f: impl FnOnce(&mut Notes)) {
    let _ = SCOPE.try_with(|s| {
        if let Ok(mut n) = s.notes.lock() {
            f(&mut n);
        }
    });
}

/// Records that the current request concerns the secret `name`.
pub(crate) fn note_secret(name: &impl Display) {
    with_notes(|n| {
        let name = name.to_string();
        if !n.secrets.contains(&name) {
            n.secrets.push(name);
        }
    });
}

/// Records the policy that decided the current request (the last decision
/// made, which for a refused request is the refusal's). A built-in's name is
/// borrowed: a workload's fetch neither allocates nor touches a counter that
/// every core shares (a shared `Arc` here cost a kept-alive fetch about 2 µs).
pub(crate) fn note_policy(by: &aegis_core::policy::Decider) {
    use aegis_core::policy::Decider;
    use std::borrow::Cow;
    let name = match by {
        Decider::Policy(p) => Cow::Owned(p.to_string()),
        Decider::Builtin(b) => Cow::Borrowed(*b),
        Decider::Default => Cow::Borrowed("default-deny"),
    };
    with_notes(|n| n.policy = Some(name));
}

/// Records the secret's version after the current request.
pub(crate) fn note_version(version: u64) {
    with_notes(|n| n.version = Some(version));
}

/// Makes the current request's `intent` line durable before it changes
/// anything; 503 if the trail cannot be written within the request's deadline.
pub(crate) async fn intent(s: &AppState) -> Result<(), ApiError> {
    write_intent(s, true).await
}

/// Writes the current request's `intent` line for a change the store then
/// commits: the store's commit barrier (`Trail` in `state.rs`) makes it durable before the
/// commit, together with every other intent line of that commit, in one fsync.
/// 503 if the trail cannot be written within the request's deadline.
pub(crate) async fn intent_before_commit(s: &AppState) -> Result<(), ApiError> {
    write_intent(s, false).await
}

async fn write_intent(s: &AppState, durable: bool) -> Result<(), ApiError> {
    let Ok(scope) = SCOPE.try_with(Arc::clone) else { return Ok(()) };
    let wait = scope.deadline.saturating_duration_since(Instant::now());
    let event = scope.event(0, Some(Phase::Intent));
    let r = if durable { s.audit.record_durable(event, wait).await } else { s.audit.record_written(event, wait).await };
    if let Err(why) = r {
        tracing::error!(error = %why, request_id = %scope.request_id, "admin write refused: its audit line could not be written");
        return Err(ApiError::audit_unavailable());
    }
    with_notes(|n| n.intent = true);
    Ok(())
}

/// Records the answer of a request. An admin write whose `done` line cannot
/// be made durable within `grace` past the deadline gets a 503 saying it was applied.
pub(crate) async fn finish(s: &AppState, scope: &Scope, grace: Duration, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&scope.request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let wrote = scope.notes.lock().map(|n| n.intent).unwrap_or(false);
    if !wrote {
        record(s, scope, status);
        return resp;
    }
    let wait = (scope.deadline + grace).saturating_duration_since(Instant::now()).max(MIN_DONE_WAIT);
    match s.audit.record_durable(scope.event(status, Some(Phase::Done)), wait).await {
        Ok(()) => resp,
        Err(why) if status < 400 => {
            tracing::error!(error = %why, request_id = %scope.request_id, "an applied admin write could not be audited durably");
            ApiError::audit_after_commit(&scope.request_id).into_response()
        }
        Err(why) => {
            tracing::error!(error = %why, request_id = %scope.request_id, "a refused admin write could not be audited");
            resp
        }
    }
}

/// Records one replicated change: sent to the replica `peer`
/// (`replicate-send`, with the id of the request that sent it), or applied
/// (`replicate-apply`) or deleted (`replicate-delete`) from the source `peer`.
pub(crate) fn replicated(
    s: &AppState,
    action: &'static str,
    peer: &Arc<str>,
    secret: &aegis_core::SecretName,
    version: u64,
) {
    if !s.audit.is_on() {
        return;
    }
    let request_id = SCOPE.try_with(|sc| sc.request_id.clone()).unwrap_or_else(|_| next_request_id());
    s.audit.record(Event {
        time: OffsetDateTime::now_utc(),
        request_id,
        caller: peer.clone(),
        action,
        api: "native",
        route: crate::routes::REPLICATION_CHANGES,
        secrets: vec![secret.to_string()],
        version: Some(version),
        status: 200,
        phase: None,
        policy: None,
    });
}

/// Records the answer of a request that changed nothing (without waiting).
pub(crate) fn record(s: &AppState, scope: &Scope, status: u16) {
    if s.audit.is_on() {
        s.audit.record(scope.event(status, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_differ() {
        assert_ne!(next_request_id(), next_request_id());
    }
}
