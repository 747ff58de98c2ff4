//! The sync's stand-in when a Safe keeps no Kubernetes Secrets.

use aegis_core::api::{KubeSync, KubeSyncSummary};
use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::SecretName;
use aegis_store::Store;
use aegis_store::{BoxFuture, Refusal, SecretSync};

/// Plugged in when the sync is off (no Kubernetes API, or turned off): a
/// `k8s:` write is refused with the reason and what to do, instead of being
/// stored and never becoming a Kubernetes Secret (VSecM always wrote one).
#[derive(Debug, Clone)]
pub struct SyncOff {
    reason: String,
}

impl SyncOff {
    /// A stand-in refusing `k8s:` writes; `reason` says why the Safe keeps no
    /// Kubernetes Secrets and what to do, and follows "NAME is not stored: ".
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }
}

impl SecretSync for SyncOff {
    fn check_write<'a>(
        &'a self,
        name: &'a SecretName,
        _value: &'a SecretValue,
        _meta: &'a SecretMeta,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        let why = format!("{name} is not stored: {}", self.reason);
        Box::pin(async move { Err(Refusal::NotKept(why)) })
    }

    fn start(&self, _store: Store) {}

    fn state(&self, _name: &SecretName, _revision: u64) -> Option<KubeSync> {
        None
    }

    fn summary(&self) -> KubeSyncSummary {
        KubeSyncSummary::default()
    }

    fn keeps_copies(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_write_is_refused_with_the_reason_and_nothing_is_reported() {
        let off = SyncOff::new("the sync is off; turn it on");
        let name = SecretName::parse("k8s:db").unwrap();
        let r = off
            .check_write(&name, &SecretValue::new("v"), &SecretMeta::defaults(time::OffsetDateTime::UNIX_EPOCH))
            .await;
        assert_eq!(r, Err(Refusal::NotKept("k8s:db is not stored: the sync is off; turn it on".to_owned())));
        assert!(!off.keeps_copies() && off.state(&name, 1).is_none());
    }
}
