//! The policies in force (see docs/POLICIES.md): the built-ins, the policy
//! file's and the stored ones, indexed into one `PolicySet` that every request
//! reads, rebuilt whenever a policy record changes (here, on another Safe
//! sharing the database, or by a restore). The routes that manage them and the
//! per-request decision are in `policy.rs`.

use std::sync::Arc;

use aegis_core::policy::{Builtins, Policy, PolicySet};
use aegis_core::SecretKind;
use aegis_store::Store;
use arc_swap::ArcSwap;

/// What the Safe is started with: the built-ins in force and the policy file's policies.
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    /// Which built-in policies are on.
    pub builtins: Builtins,
    /// The policies of the policy file (cannot be changed over the API).
    pub from_file: Vec<Arc<Policy>>,
    /// The request rate of identities no policy gives one (`None`: unlimited).
    pub rate: Option<aegis_core::policy::Rate>,
}

/// The policies in force.
pub struct Policies {
    settings: PolicySettings,
    current: ArcSwap<PolicySet>,
    reload: tokio::sync::Mutex<()>,
}

impl Policies {
    /// The built-ins and the file's policies (the stored ones come at unseal).
    pub fn new(settings: PolicySettings) -> Self {
        let set = PolicySet::new(settings.from_file.clone(), settings.builtins);
        Self { settings, current: ArcSwap::from_pointee(set), reload: tokio::sync::Mutex::new(()) }
    }

    /// The set in force now, for one request: a guard that takes no shared
    /// reference count (held only while deciding, never across an await).
    pub fn current(&self) -> arc_swap::Guard<Arc<PolicySet>> {
        self.current.load()
    }

    /// The set in force now, to keep.
    pub fn current_full(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    pub(crate) fn in_file(&self, name: &str) -> bool {
        self.settings.from_file.iter().any(|p| p.name.as_str() == name)
    }

    /// Rebuilds the set from the store's policy records and the file's.
    pub async fn reload(&self, store: &Store) {
        let _one = self.reload.lock().await;
        let mut policies = self.settings.from_file.clone();
        for e in store.list().iter().filter(|e| e.doc.name.kind() == SecretKind::Policy) {
            let Some((_, raw)) = e.doc.live() else { continue };
            match Policy::from_json(raw.expose().as_bytes()) {
                Ok(p) if self.in_file(p.name.as_str()) => {
                    tracing::warn!(policy = %p.name, "a stored policy has the name of one in the policy file; the file's is in force");
                }
                Ok(p) => policies.push(Arc::new(p)),
                Err(why) => {
                    tracing::error!(record = %e.doc.name, error = %why, "a stored policy cannot be read; it is not in force")
                }
            }
        }
        let count = policies.len();
        self.current.store(Arc::new(PolicySet::new(policies, self.settings.builtins)));
        tracing::debug!(policies = count, "policies in force");
    }

    /// Follows the policy records of `store` (changes made by other Safes
    /// sharing the database, a restore) until the store is dropped.
    pub fn follow(self: &Arc<Self>, store: &Store) {
        let me = self.clone();
        let mut changes = store.policy_changes();
        // A weak handle: holding the store here would keep it (its writer,
        // its open files) alive for as long as the runtime runs.
        let store = store.downgrade();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(store) = store.upgrade() else { return };
                me.reload(&store).await;
            }
        });
    }
}
