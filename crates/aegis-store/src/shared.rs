//! The state the store's readers and its single writer share.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use aegis_core::secret::DEFAULT_MAX_VERSIONS;
use aegis_core::transform::Budget;
use aegis_core::SecretName;
use aegis_crypto::Keyring;
use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::entries::Entries;
use crate::entry::Entry;
use crate::{CommitBarrier, RootKeyStore};

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Versions kept per secret (default 10).
    pub max_versions: usize,
    /// Most changes committed in one group commit (default 512).
    pub max_batch: usize,
    /// What computing a workload's view may cost (template budget).
    pub template_budget: Budget,
    /// Made durable before each commit (the audit trail's intent lines); `None`: nothing.
    pub barrier: Option<Arc<dyn CommitBarrier>>,
    /// Where the root key lives, so that a Safe sharing its backend can load
    /// the key another Safe rotated to; `None`: it cannot (manual key mode).
    pub keys: Option<Arc<dyn RootKeyStore>>,
    /// Keep the secrets in the order of their last change, so that the
    /// changes after a given one are found without a scan (a replication
    /// source; about 60 bytes a secret).
    pub index_changes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_versions: DEFAULT_MAX_VERSIONS,
            max_batch: 512,
            template_budget: Budget::default(),
            barrier: None,
            keys: None,
            index_changes: false,
        }
    }
}

/// The map of entries, the keyring and the change counter, behind one `Arc`.
pub(crate) struct Shared {
    pub(crate) map: RwLock<Entries>,
    pub(crate) keyring: ArcSwap<Keyring>,
    pub(crate) seq: watch::Sender<u64>,
    pub(crate) opts: StoreOptions,
    /// Transformations found over the template budget since start.
    pub(crate) transform_failures: AtomicU64,
    /// The change notices of watched secrets.
    pub(crate) watched: Arc<crate::watchers::Watched>,
    /// The last change number of a shared backend taken up (0 for a backend this Safe alone writes).
    pub(crate) log_seq: AtomicU64,
    /// False while the backend cannot be reached (its last call failed with
    /// [`crate::StoreError::Unavailable`]): writes are refused, reads go on.
    pub(crate) available: std::sync::atomic::AtomicBool,
    /// Set while a catch-up job is queued for the writer (one is enough).
    pub(crate) catch_up_queued: Arc<std::sync::atomic::AtomicBool>,
    /// The keyring, sent each time it changes (a rotation, made here or followed).
    pub(crate) key_changes: watch::Sender<Arc<Keyring>>,
    /// The last change number given (see [`aegis_core::secret::SecretDoc::seq`]).
    pub(crate) changes: AtomicU64,
}

impl Shared {
    /// Uses `ring` from now on, and tells those who follow the keyring.
    pub(crate) fn set_keyring(&self, ring: Keyring) {
        let ring = Arc::new(ring);
        self.keyring.store(ring.clone());
        self.key_changes.send_replace(ring);
    }

    /// The next change number, for a secret about to be written.
    pub(crate) fn next_change(&self) -> u64 {
        self.changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    pub(crate) fn get(&self, name: &SecretName) -> Option<Arc<Entry>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
}
