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

use crate::error::ApiError;

/// Why [`SecretSync::check_write`] refuses a write; `error.rs` picks each
/// one's status. The messages never hold a value (nor a key taken from one).
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
    /// is stored. `Err` refuses the write (its message must never hold the
    /// value); it must answer within a short bound,
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
}

/// Asks `sync` whether a write of `name` may be stored; only `k8s:` secrets are checked.
pub(crate) async fn check(
    sync: Option<&dyn SecretSync>,
    name: &SecretName,
    value: &SecretValue,
    meta: &SecretMeta,
) -> Result<(), ApiError> {
    let Some(sync) = sync else { return Ok(()) };
    if name.kind() != SecretKind::Kubernetes {
        return Ok(());
    }
    sync.check_write(name, value, meta).await.map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn each_refusal_gets_its_status_and_says_nothing_was_stored() {
        let secret = SecretName::parse("k8s:db").unwrap();
        let cases = [
            (Refusal::InTheWay(vec!["'a/db' is in the way".into(), "'b/db' too".into()]), StatusCode::CONFLICT),
            (Refusal::Unconvertible { secret: secret.clone(), why: "not an object".into() }, StatusCode::CONFLICT),
            (Refusal::TooManyNamespaces { secret, named: 3, total: 9, max: 8 }, StatusCode::BAD_REQUEST),
        ];
        for (refusal, status) in cases {
            let text = refusal.to_string();
            assert!(text.ends_with("nothing was stored"), "{text}");
            assert_eq!(ApiError::from(refusal).status(), status, "{text}");
        }
        assert_eq!(ApiError::from(Refusal::CheckFailed).status(), StatusCode::CONFLICT);
        let two = Refusal::InTheWay(vec!["one".into(), "two".into()]).to_string();
        assert_eq!(two, "one; two; nothing was stored");
    }
}
