//! What the sync knows of each `k8s:` secret: the revision it must reach,
//! the one Kubernetes holds, and why it is behind.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aegis_core::api::{KubeSync, KubeSyncSummary, SyncState};
use aegis_core::SecretName;

/// The first pause before a failed secret is tried again.
pub const RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between two tries (the backoff doubles up to it).
pub const RETRY_CAP: Duration = Duration::from_secs(10);

/// Why a secret is not synced. The texts never hold a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Passing trouble (the API server is unreachable, a write raced): retried soon.
    Transient(String),
    /// Something an admin must fix (a permission, a missing namespace): retried slowly.
    Error(String),
    /// A Secret Aegis does not manage is in the way.
    Conflict(String),
}

impl Problem {
    /// The reason, for users and the log.
    pub fn reason(&self) -> &str {
        match self {
            Problem::Transient(r) | Problem::Error(r) | Problem::Conflict(r) => r,
        }
    }

    fn state(&self) -> SyncState {
        match self {
            Problem::Transient(_) => SyncState::Pending,
            Problem::Error(_) => SyncState::Error,
            Problem::Conflict(_) => SyncState::Conflict,
        }
    }
}

#[derive(Debug, Default)]
struct Track {
    /// The newest revision of the secret seen in the store.
    seen: u64,
    /// The revision Kubernetes matches (0: none yet).
    synced: u64,
    /// The version Kubernetes holds (None: no copy, e.g. deleted).
    synced_version: Option<u64>,
    /// Since when `synced < seen`.
    behind_since: Option<Instant>,
    problem: Option<Problem>,
    attempts: u32,
    /// Namespaces the last sync wrote copies to.
    namespaces: BTreeSet<String>,
}

impl Track {
    fn view(&self, revision: u64) -> (SyncState, Option<&Problem>) {
        match &self.problem {
            Some(p) => (p.state(), Some(p)),
            None if self.synced >= revision && self.synced > 0 => (SyncState::Synced, None),
            None => (SyncState::Pending, None),
        }
    }
}

/// Every `k8s:` secret's track.
#[derive(Default)]
pub struct Book {
    tracks: Mutex<HashMap<SecretName, Track>>,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SecretName, Track>> {
        self.tracks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `name` is at `revision` in the store; `true` if that is new
    /// (the secret must be synced).
    pub fn saw(&self, name: &SecretName, revision: u64) -> bool {
        let mut tracks = self.lock();
        let t = tracks.entry(name.clone()).or_default();
        if revision <= t.seen {
            return false;
        }
        t.seen = revision;
        if t.synced < revision && t.behind_since.is_none() {
            t.behind_since = Some(Instant::now());
        }
        t.attempts = 0;
        true
    }

    /// Kubernetes matches `revision` of `name` (holding `version`, or no copy),
    /// with copies in `namespaces`.
    pub fn synced(&self, name: &SecretName, revision: u64, version: Option<u64>, namespaces: BTreeSet<String>) {
        let mut tracks = self.lock();
        let t = tracks.entry(name.clone()).or_default();
        t.seen = t.seen.max(revision);
        if revision >= t.synced {
            t.synced = revision;
            t.synced_version = version;
            t.namespaces = namespaces;
        }
        t.problem = None;
        t.attempts = 0;
        if t.synced >= t.seen {
            t.behind_since = None;
        }
    }

    /// Syncing `name` failed; returns the pause before the next try, and
    /// whether the problem is new (worth a log line).
    pub fn failed(&self, name: &SecretName, revision: u64, problem: Problem) -> (Duration, bool) {
        let mut tracks = self.lock();
        let t = tracks.entry(name.clone()).or_default();
        t.seen = t.seen.max(revision);
        if t.behind_since.is_none() {
            t.behind_since = Some(Instant::now());
        }
        let first = if matches!(problem, Problem::Transient(_)) { RETRY_FIRST } else { RETRY_FIRST * 5 };
        let new = t.problem.as_ref() != Some(&problem);
        t.problem = Some(problem);
        t.attempts = t.attempts.saturating_add(1);
        (backoff(first, t.attempts), new)
    }

    /// Forgets `name`: it is not in the store, so it is not counted.
    pub fn forget(&self, name: &SecretName) {
        self.lock().remove(name);
    }

    /// Namespaces the last sync of `name` wrote copies to.
    pub fn namespaces(&self, name: &SecretName) -> BTreeSet<String> {
        self.lock().get(name).map(|t| t.namespaces.clone()).unwrap_or_default()
    }

    /// Secrets not synced now.
    pub fn behind(&self) -> Vec<SecretName> {
        self.lock().iter().filter(|(_, t)| t.view(t.seen).0 != SyncState::Synced).map(|(n, _)| n.clone()).collect()
    }

    /// Where `name`, at `revision` in the store, stands.
    pub fn state(&self, name: &SecretName, revision: u64) -> KubeSync {
        let tracks = self.lock();
        let Some(t) = tracks.get(name) else {
            return KubeSync { state: SyncState::Pending, synced_version: None, reason: None };
        };
        let (state, problem) = t.view(revision);
        KubeSync { state, synced_version: t.synced_version, reason: problem.map(|p| p.reason().to_owned()) }
    }

    /// Totals over every secret.
    pub fn summary(&self) -> KubeSyncSummary {
        let tracks = self.lock();
        let mut s = KubeSyncSummary::default();
        let now = Instant::now();
        for t in tracks.values() {
            s.add(t.view(t.seen).0);
            if let Some(since) = t.behind_since {
                let ms = u64::try_from(now.duration_since(since).as_millis()).unwrap_or(u64::MAX);
                s.oldest_pending_ms = s.oldest_pending_ms.max(ms);
            }
        }
        s
    }
}

/// `first` doubled for each attempt after the first, at most [`RETRY_CAP`].
pub fn backoff(first: Duration, attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    first.saturating_mul(1 << shift).min(RETRY_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> SecretName {
        SecretName::parse("k8s:db").unwrap()
    }

    #[test]
    fn a_new_revision_is_pending_until_synced() {
        let b = Book::default();
        assert!(b.saw(&n(), 1));
        assert!(!b.saw(&n(), 1), "the same revision is not news");
        assert_eq!(b.state(&n(), 1).state, SyncState::Pending);
        assert_eq!(b.summary().pending, 1);
        b.synced(&n(), 1, Some(1), BTreeSet::from(["default".to_owned()]));
        let s = b.state(&n(), 1);
        assert_eq!((s.state, s.synced_version), (SyncState::Synced, Some(1)));
        assert_eq!(b.state(&n(), 2).state, SyncState::Pending, "a later revision is not synced yet");
        let sum = b.summary();
        assert_eq!((sum.synced, sum.pending, sum.oldest_pending_ms), (1, 0, 0));
    }

    #[test]
    fn problems_are_shown_with_their_reason_and_cleared_by_success() {
        let b = Book::default();
        b.saw(&n(), 3);
        b.failed(&n(), 3, Problem::Conflict("in the way".into()));
        let s = b.state(&n(), 3);
        assert_eq!((s.state, s.reason.as_deref()), (SyncState::Conflict, Some("in the way")));
        assert_eq!(b.summary().conflicts, 1);
        b.failed(&n(), 3, Problem::Error("forbidden".into()));
        assert_eq!(b.summary().errors, 1);
        b.failed(&n(), 3, Problem::Transient("down".into()));
        assert_eq!(b.state(&n(), 3).state, SyncState::Pending);
        assert_eq!(b.behind(), vec![n()]);
        b.synced(&n(), 3, Some(2), BTreeSet::new());
        assert_eq!(b.state(&n(), 3).state, SyncState::Synced);
        assert!(b.behind().is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(RETRY_FIRST, 1), RETRY_FIRST);
        assert_eq!(backoff(RETRY_FIRST, 2), RETRY_FIRST * 2);
        assert_eq!(backoff(RETRY_FIRST, 3), RETRY_FIRST * 4);
        assert_eq!(backoff(RETRY_FIRST, 40), RETRY_CAP);
        let b = Book::default();
        let waits: Vec<_> = (0..3).map(|_| b.failed(&n(), 1, Problem::Transient("x".into()))).collect();
        assert_eq!(waits, vec![(RETRY_FIRST, true), (RETRY_FIRST * 2, false), (RETRY_FIRST * 4, false)]);
    }
}
