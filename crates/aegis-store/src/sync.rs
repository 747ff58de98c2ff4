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

/// Why [`SecretSync::check_write`] refuses a write. The messages never hold
/// a value (nor a key taken from one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A Kubernetes Secret is in the way, or the data cannot become one: 409.
    Conflict(String),
    /// The write breaks a limit of the sync (e.g. too many namespaces): 400.
    Limit(String),
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

    /// Whether copies are kept at all. A Safe whose sync is off plugs in a
    /// stand-in that only refuses `k8s:` writes, saying why; it answers
    /// `false` here so that the status and the metrics show no sync.
    fn keeps_copies(&self) -> bool {
        true
    }
}
