//! Copies of secrets kept outside the Safe.
//!
//! A port: the Safe binary plugs in the Kubernetes Secret sync of `k8s:`
//! secrets (crate `aegis-kube`) through [`SecretSync`], so neither the store
//! nor the server talks to Kubernetes. The contract: a write is stored and
//! acknowledged first; the sync follows the store's commits afterwards ([`Store::subscribe`])
//! and never blocks or fails a write, except through [`SecretSync::check_write`],
//! which may refuse a write whose copy it knows it must never make.

use std::future::Future;
use std::pin::Pin;

use aegis_core::api::{KubeSync, KubeSyncSummary};
use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::SecretName;

use crate::Store;

/// Why [`SecretSync::check_write`] refuses a write; `error.rs` picks each
/// one's status (the server's). The messages never hold a value (nor a key taken from one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Copies the sync does not manage are in the way, one reason each
    /// (naming the copy and what to do): 409.
    #[error("{}; nothing was stored", .0.join("; "))]
    InTheWay(Vec<String>),
    /// The value (through its template) cannot become a copy: 409.
    #[error("secret '{secret}' cannot become a Kubernetes Secret: {why}; nothing was stored")]
    Unconvertible {
        /// The secret written.
        secret: SecretName,
        /// What is wrong with its data (never the data).
        why: String,
    },
    /// The check of the data could not be run: 409, the write is not taken.
    #[error("the Kubernetes Secret data check failed; see the Safe's log")]
    CheckFailed,
    /// The Safe keeps no Kubernetes Secrets (no Kubernetes API, or the sync
    /// is off), so a `k8s:` secret would never become one; the message says
    /// why and what to do: 409.
    #[error("{0}")]
    NotKept(String),
    /// The write would make the `k8s:` secrets name more namespaces than
    /// the sync may watch: 400.
    #[error(
        "secret '{secret}' names {named} namespaces, which would make the k8s: secrets name {total} or more \
         distinct namespaces together; the limit is {max} (setting AEGIS_K8S_MAX_NAMESPACES; each namespace costs \
         the Safe a watch on the Kubernetes API): name fewer namespaces or raise the limit; nothing was stored"
    )]
    TooManyNamespaces {
        /// The secret written.
        secret: SecretName,
        /// The namespaces it names.
        named: usize,
        /// The distinct namespaces all `k8s:` secrets would name together (at least).
        total: usize,
        /// The limit.
        max: usize,
    },
}

/// A boxed future, as trait objects return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Keeps copies of `k8s:` secrets outside the Safe.
pub trait SecretSync: Send + Sync {
    /// Runs before a write of `value` with `meta` to the `k8s:` secret `name`
    /// is stored. `Err` refuses the write with its message (a 409 or a 400,
    /// so it must never hold the value); it must answer within a short bound,
    /// and accept the write when it cannot know.
    fn check_write<'a>(
        &'a self,
        name: &'a SecretName,
        value: &'a SecretValue,
        meta: &'a SecretMeta,
    ) -> BoxFuture<'a, Result<(), Refusal>>;

    /// The store is open (the Safe was unsealed): follow its commits from now
    /// on, starting with every secret it holds. Called once per store.
    fn start(&self, store: Store);

    /// Where the `k8s:` secret `name`, now at `revision`, stands.
    fn state(&self, name: &SecretName, revision: u64) -> Option<KubeSync>;

    /// Totals over every `k8s:` secret.
    fn summary(&self) -> KubeSyncSummary;

    /// Stops (`true`) or resumes (`false`) writing copies, for a Safe that
    /// shares its backend and lost (or got back) the duty of writing them
    /// (only one of the Safes writes at a time). Resuming syncs every secret
    /// again, as a start does. Before [`SecretSync::start`], it only sets the state.
    fn pause(&self, paused: bool) {
        let _ = paused;
    }

    /// Whether copies are kept at all. A Safe whose sync is off plugs in a
    /// stand-in that only refuses `k8s:` writes, saying why; it answers
    /// `false` here so that the status and the metrics show no sync.
    fn keeps_copies(&self) -> bool {
        true
    }
}
