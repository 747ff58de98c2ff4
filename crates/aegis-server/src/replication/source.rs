//! The source side: `GET /v1/replication/changes`, answered only to the
//! replicas this Safe names.
//!
//! A long poll: the answer comes at once when secrets it replicates changed
//! after the replica's position (at most [`PAGE`] of them, or about
//! [`PAGE_BYTES`] of values), otherwise at the first commit that changes
//! one, or empty when the wait ends. A replica whose position cannot be
//! continued (its first request, a selection other than this Safe's, or a
//! position past this Safe's last change number, as after this Safe's data
//! was replaced) gets a snapshot: every replicated secret, from the start.

use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_core::api::{ReplicatedChange, ReplicationPage};
use aegis_core::secret::SecretDoc;
use aegis_core::SecretName;
use aegis_store::{Entry, Store};
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use time::OffsetDateTime;

use super::ReplicationSettings;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Most changes in one answer.
pub const PAGE: usize = 256;
/// An answer stops taking changes once their values pass this many bytes.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// A secret whose values pass this many bytes is measured as the replica reads it (its JSON).
const MEASURE_OVER: usize = 1024 * 1024;
/// Largest secret one change carries, as JSON: past it only the current version is sent,
/// and past it again nothing (a replica reads at most 64 MiB an answer; see `replica.rs`).
pub const MAX_CHANGE_BYTES: usize = 32 * 1024 * 1024;
/// Most secrets looked at for one answer (those not replicated are skipped).
const SCAN: usize = 64 * 1024;
/// Longest wait a replica may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The query: the replica's position and the selection it holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// The change number of the last change it applied (0: none).
    #[serde(default)]
    after: u64,
    /// That change's secret (changes numbered 0, from before change numbers existed, are ordered by name).
    after_name: Option<String>,
    /// The selection its state was sent under (0: none).
    #[serde(default)]
    selection: u64,
    /// How long to wait for a change, in milliseconds.
    wait_ms: Option<u64>,
}

/// `GET /v1/replication/changes`.
pub async fn changes(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Arc<Caller>>,
    q: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ReplicationPage>, ApiError> {
    let Some(state) = s.replication.replica(&c.id) else {
        return Err(ApiError::forbidden(format!(
            "{} is not a replica of this Safe: a source names the Safes it replicates to with --replicate-to \
             (AEGIS_REPLICATE_TO)",
            c.id
        )));
    };
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!("bad replication query ({e}); it takes after, after_name, selection and wait_ms"))
    })?;
    let position = match (q.after, q.after_name.as_deref()) {
        (_, Some(name)) => Some((
            q.after,
            SecretName::parse_stored(name).map_err(|e| ApiError::bad_request(format!("after_name: {e}")))?,
        )),
        (0, None) => None,
        (_, None) => return Err(ApiError::bad_request("after needs after_name, the secret of that change")),
    };
    let store = s.store()?;
    let settings = &s.settings.replication;
    let selection = settings.selection();
    let head = store.last_change();
    let snapshot = q.selection != selection || q.after > head;
    let from = if snapshot { None } else { position };
    {
        let mut r = state.lock().unwrap_or_else(|e| e.into_inner());
        r.last_seen = Some((OffsetDateTime::now_utc(), Instant::now()));
        if !snapshot {
            r.confirmed = q.after;
        }
    }
    let cap = s.settings.request_timeout.saturating_sub(Duration::from_secs(1)).min(MAX_WAIT);
    let wait = q.wait_ms.map_or(Duration::ZERO, Duration::from_millis).min(cap);
    let deadline = tokio::time::Instant::now() + wait;
    let mut commits = store.subscribe();
    let (found, more, next) = loop {
        // Marked seen before the scan: a commit during it still wakes this request.
        commits.borrow_and_update();
        let page = collect(&store, settings, from.clone());
        if !page.0.is_empty() || page.1 || snapshot {
            break page;
        }
        tokio::select! {
            r = commits.changed() => if r.is_err() { break page },
            () = tokio::time::sleep_until(deadline) => break page,
        }
    };
    for e in &found {
        crate::audit::replicated(&s, "replicate-send", &c.audit_name, &e.doc.name, e.doc.current);
    }
    state.lock().unwrap_or_else(|e| e.into_inner()).sent += found.len() as u64;
    let (next_seq, next_name) = match next {
        Some((seq, name)) => (seq, Some(name.to_string())),
        None => (0, None),
    };
    Ok(Json(ReplicationPage {
        source: s.replication.own(),
        head: store.last_change().max(head),
        selection,
        snapshot,
        more,
        next_seq,
        next_name,
        changes: found.iter().map(|e| fit(&e.doc, MAX_CHANGE_BYTES)).collect(),
    }))
}

/// The change that carries `doc`: the whole secret when its JSON fits in
/// `max` bytes, else only its current version, else no version at all
/// (marked, so that the replica says which secret it could not take).
fn fit(doc: &SecretDoc, max: usize) -> ReplicatedChange {
    let change =
        |doc: SecretDoc, history_trimmed, omitted| ReplicatedChange { seq: doc.seq, doc, history_trimmed, omitted };
    let fits = |d: &SecretDoc| raw_bytes(d) <= MEASURE_OVER || serde_json::to_vec(d).is_ok_and(|j| j.len() <= max);
    if fits(doc) {
        return change(doc.clone(), false, false);
    }
    let mut current = doc.clone();
    current.versions.retain(|v| v.number.get() == doc.current);
    if fits(&current) {
        tracing::warn!(secret = %doc.name, "replication: the secret's history is larger than one change may carry; only its current version is sent");
        return change(current, true, false);
    }
    tracing::warn!(secret = %doc.name, "replication: the secret's current version is larger than one change may carry; it is not replicated");
    current.versions.clear();
    change(current, false, true)
}

/// The bytes of a secret's values (every version kept).
fn raw_bytes(doc: &SecretDoc) -> usize {
    doc.versions.iter().filter_map(|v| v.value.as_ref()).map(|v| v.len()).sum()
}

/// The replicated secrets changed after `from`, in change order: at most a
/// page, whether more may follow, and the position to continue from (past
/// the secrets looked at and not replicated, so they are not looked at again).
fn collect(
    store: &Store,
    settings: &ReplicationSettings,
    from: Option<(u64, SecretName)>,
) -> (Vec<Arc<Entry>>, bool, Option<(u64, SecretName)>) {
    let mut out = Vec::new();
    let (mut bytes, mut scanned) = (0usize, 0usize);
    let mut cursor = from;
    loop {
        let bound = cursor.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let (found, more) = store.changed_after(bound, PAGE);
        for e in found {
            scanned += 1;
            cursor = Some((e.doc.seq, e.doc.name.clone()));
            if settings.replicates(&e.doc.name) {
                bytes += raw_bytes(&e.doc).min(MAX_CHANGE_BYTES);
                out.push(e);
                if out.len() >= PAGE || bytes >= PAGE_BYTES {
                    return (out, true, cursor);
                }
            }
        }
        if !more {
            return (out, false, cursor);
        }
        if scanned >= SCAN {
            return (out, true, cursor);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aegis_core::secret::{SecretMeta, SecretValue};

    fn doc(values: &[usize]) -> SecretDoc {
        let now = OffsetDateTime::now_utc();
        let mut d = SecretDoc::empty(SecretName::parse("big").unwrap(), now);
        for (i, n) in values.iter().enumerate() {
            d.put(SecretValue::new("x".repeat(*n)), SecretMeta::defaults(now), None, now, 10).unwrap();
            d.seq = i as u64 + 1;
        }
        d
    }

    #[test]
    fn a_secret_too_large_for_one_change_loses_its_history_then_its_values_never_silently() {
        let mb = 1024 * 1024;
        let whole = fit(&doc(&[10, 20]), 4 * mb);
        assert!(!whole.history_trimmed && !whole.omitted && whole.doc.versions.len() == 2);
        let trimmed = fit(&doc(&[3 * mb, 3 * mb]), 4 * mb);
        assert!(trimmed.history_trimmed && !trimmed.omitted, "only the current version");
        assert_eq!(trimmed.doc.versions.iter().map(|v| v.number.get()).collect::<Vec<_>>(), [2]);
        assert_eq!((trimmed.doc.current, trimmed.seq), (2, 2), "its number and change number are kept");
        let omitted = fit(&doc(&[2 * mb, 5 * mb]), 4 * mb);
        assert!(omitted.omitted && omitted.doc.versions.is_empty(), "no value at all");
        assert_eq!(omitted.doc.name.as_str(), "big", "named, so the replica can say which");
    }
}
