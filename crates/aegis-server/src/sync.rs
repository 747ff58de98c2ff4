//! Copies of secrets kept outside the Safe.
//!
//! The Safe binary plugs in the Kubernetes Secret sync of `k8s:` secrets
//! (crate `aegis-kube`) through [`SecretSync`], so this crate never talks to
//! Kubernetes. The contract: a write is stored and acknowledged first; the
//! sync follows the store's commits afterwards ([`aegis_store::Store::subscribe`])
//! and never blocks or fails a write, except through [`SecretSync::check_write`],
//! which may refuse a write whose copy it knows it must never make.

use std::future::Future;
use std::pin::Pin;

use aegis_core::api::{KubeSync, KubeSyncSummary};
use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::{SecretKind, SecretName};
use aegis_store::Store;
use axum::http::StatusCode;

use crate::error::ApiError;

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

/// Asks `sync` whether a write of `name` may be stored; only `k8s:` secrets are checked.
pub(crate) async fn check(
    sync: Option<&dyn SecretSync>,
    name: &SecretName,
    value: &SecretValue,
    meta: &SecretMeta,
) -> Result<(), ApiError> {
    if name.kind() != SecretKind::Kubernetes {
        return Ok(());
    }
    // Stored but never synced would be a silent trap: the workload waits for a
    // Kubernetes Secret that never comes. The binary plugs in a stand-in that
    // says why; this is the answer of a Safe built without one.
    let Some(sync) = sync else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{name} is not stored: this Safe keeps no Kubernetes Secrets, so its Kubernetes Secret would never \
                 be written; give the Safe a Kubernetes API with the sync on, or store the secret without the k8s: prefix"
            ),
        ));
    };
    sync.check_write(name, value, meta).await.map_err(|r| match r {
        Refusal::Conflict(why) => ApiError::new(StatusCode::CONFLICT, why),
        Refusal::Limit(why) => ApiError::bad_request(why),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_sync_k8s_writes_are_refused_and_others_pass() {
        let (value, meta) = (SecretValue::new("v"), SecretMeta::defaults(time::OffsetDateTime::UNIX_EPOCH));
        let plain = SecretName::parse("db").unwrap();
        assert!(check(None, &plain, &value, &meta).await.is_ok());
        let k8s = SecretName::parse("k8s:db").unwrap();
        let e = check(None, &k8s, &value, &meta).await.err().unwrap();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.message().contains("k8s:db is not stored") && e.message().contains("k8s: prefix"), "{}", e.message());
    }
}
