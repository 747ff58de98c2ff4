//! The in-memory view of all secrets and the public store API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue, DEFAULT_MAX_VERSIONS};
use aegis_core::transform::{Budget, TemplateError};
use aegis_core::SecretName;
use aegis_crypto::Keyring;
use arc_swap::ArcSwap;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use crate::writer::{self, Job};
use crate::{Backend, StoreError};

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Versions kept per secret (default 10).
    pub max_versions: usize,
    /// Most changes committed in one group commit (default 512).
    pub max_batch: usize,
    /// What computing a workload's view may cost (template budget).
    pub template_budget: Budget,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { max_versions: DEFAULT_MAX_VERSIONS, max_batch: 512, template_budget: Budget::default() }
    }
}

/// What a workload receives, computed once per write (or load).
#[derive(Debug, Clone)]
pub enum Data {
    /// The transformation left the raw value unchanged (saves a copy).
    Same,
    /// The transformed value.
    Transformed(SecretValue),
    /// The stored template is over the template budget (it was stored by an
    /// older version, or the budget was lowered): the workload gets an error,
    /// never the raw value. The reason names the bound, never a value.
    Failed(String),
}

impl Data {
    /// Computes the view of `value` under `meta`'s template and format within
    /// `budget`; an error when the template is over the budget (the write
    /// should then be refused).
    pub fn compute(value: &SecretValue, meta: &SecretMeta, budget: &Budget) -> Result<Data, TemplateError> {
        let out = aegis_core::transform::transform(value.expose(), meta.template.as_deref(), meta.format, budget)?;
        Ok(if out == value.expose() { Data::Same } else { Data::Transformed(SecretValue::new(out)) })
    }
}

/// One secret as readers see it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The secret with its history.
    pub doc: SecretDoc,
    /// The workload's view of the current version.
    pub data: Data,
}

impl Entry {
    /// The entry for `doc`, with the workload's view computed within `budget`
    /// unless `data` (computed for the live version already) is given. A view
    /// over the budget becomes [`Data::Failed`] and is logged.
    pub(crate) fn new(mut doc: SecretDoc, data: Option<Data>, budget: &Budget) -> Self {
        // Deserialising and pushing grow the history vector to 4 slots or more;
        // held for every secret, the spare slots would cost ~450 bytes each.
        doc.versions.shrink_to_fit();
        let data = match (doc.live(), data) {
            (Some(_), Some(data)) => data,
            (Some((v, value)), None) => Data::compute(value, &v.meta, budget).unwrap_or_else(|e| {
                tracing::error!(
                    secret = %doc.name,
                    reason = %e.reason(),
                    "the stored template cannot be rendered within the template budget; \
                     the workload gets an error until the secret is written again"
                );
                Data::Failed(e.reason().to_owned())
            }),
            (None, _) => Data::Same,
        };
        Self { doc, data }
    }

    /// The value a workload receives: the current version transformed, if the
    /// secret is live and its transformation did not fail.
    pub fn workload_value(&self) -> Option<&SecretValue> {
        let (_, raw) = self.doc.live()?;
        match &self.data {
            Data::Same => Some(raw),
            Data::Transformed(v) => Some(v),
            Data::Failed(_) => None,
        }
    }

    /// Why the live version's transformation failed (over the template
    /// budget), if it did; such a secret is served as an error.
    pub fn transform_error(&self) -> Option<&str> {
        self.doc.live()?;
        match &self.data {
            Data::Failed(why) => Some(why),
            _ => None,
        }
    }
}

/// Times an import keeps from the system it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    /// The secret's creation time, used when the write creates the secret.
    pub created: OffsetDateTime,
    /// The time of the new version and of the secret's last update.
    pub updated: OffsetDateTime,
}

/// A change to one secret.
#[derive(Debug)]
pub enum Mutation {
    /// Write a new version; `cas` is the expected current version (0: must not exist).
    Put {
        /// The raw value.
        value: SecretValue,
        /// Delivery metadata.
        meta: SecretMeta,
        /// Check-and-set.
        cas: Option<u64>,
        /// The workload's view of this value, computed (and its template
        /// checked against the budget) before the write, so the writer does
        /// not render; `None`: the writer validates and renders.
        view: Option<Data>,
        /// Times to keep instead of now (imports); `None` for ordinary writes.
        stamps: Option<Stamps>,
    },
    /// Soft delete.
    Delete,
    /// Undo a soft delete.
    Undelete,
    /// Destroy one version's value.
    Destroy(u64),
    /// Write an earlier version again as the newest.
    Rollback(u64),
}

/// A record that could not be loaded and was moved aside.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// The secret name (or file name when even that is unreadable).
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The outcome of loading the store at start-up.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Secrets loaded.
    pub loaded: usize,
    /// Records that failed and were quarantined.
    pub quarantined: Vec<Quarantined>,
    /// Secrets loaded whose names the current name rule refuses (stored by
    /// an older version): readable and deletable, but they take no new value.
    pub legacy_names: Vec<String>,
    /// Secrets loaded whose transformation is over the template budget; they
    /// are served as errors.
    pub transform_failures: usize,
}

pub(crate) struct Shared {
    pub(crate) map: RwLock<HashMap<SecretName, Arc<Entry>>>,
    pub(crate) keyring: ArcSwap<Keyring>,
    pub(crate) seq: watch::Sender<u64>,
    pub(crate) opts: StoreOptions,
    /// Transformations found over the template budget since start.
    pub(crate) transform_failures: AtomicU64,
}

impl Shared {
    pub(crate) fn get(&self, name: &SecretName) -> Option<Arc<Entry>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
}

/// All secrets, in memory, durably persisted. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
}

impl Store {
    /// Loads every record from `backend`, quarantining those that fail, and starts the writer.
    pub async fn open(
        backend: Arc<dyn Backend>,
        keyring: Keyring,
        opts: StoreOptions,
    ) -> Result<(Self, LoadReport), StoreError> {
        let (map, report) = writer::load(backend.clone(), keyring.clone(), opts.template_budget).await?;
        let (seq, _) = watch::channel(0);
        let failures = AtomicU64::new(report.transform_failures as u64);
        let shared = Arc::new(Shared {
            map: RwLock::new(map),
            keyring: ArcSwap::from_pointee(keyring),
            seq,
            opts,
            transform_failures: failures,
        });
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer::run(shared.clone(), backend, rx));
        Ok((Self { shared, tx }, report))
    }

    /// One secret (live or soft-deleted).
    pub fn get(&self, name: &SecretName) -> Option<Arc<Entry>> {
        self.shared.get(name)
    }

    /// All secrets, sorted by name.
    pub fn list(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<_> = self.shared.map.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.doc.name.cmp(&b.doc.name));
        all
    }

    /// Number of secrets held.
    pub fn len(&self) -> usize {
        self.shared.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a change; returns once it is durable and visible.
    ///
    /// Inside [`Ticket::scope`](crate::Ticket::scope), the change is refused
    /// with [`StoreError::Expired`] (and not applied) if the writer reaches it
    /// after the ticket's deadline or after the request was abandoned.
    pub async fn apply(&self, name: SecretName, mutation: Mutation) -> Result<Arc<Entry>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let ticket = crate::Ticket::current();
        self.tx.send(Job::Mutate { name, mutation, reply, ticket }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Applies several changes all or nothing, in one commit: if any change is
    /// refused, or any record cannot be written, none is stored. (Should
    /// replacing the records fail midway, the error is
    /// [`StoreError::PartlyStored`], naming exactly which were stored.)
    /// Returns the entries in the order of their first change.
    pub async fn apply_group(&self, mutations: Vec<(SecretName, Mutation)>) -> Result<Vec<Arc<Entry>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let ticket = crate::Ticket::current();
        self.tx.send(Job::Group { mutations, reply, ticket }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Re-seals every record under `keyring`'s current key; returns how many.
    /// Reads go on meanwhile; writes wait for the rotation to finish.
    pub async fn rotate(&self, keyring: Keyring) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        let ticket = crate::Ticket::current();
        self.tx.send(Job::Rotate { keyring, reply, ticket }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.shared.keyring.load_full()
    }

    /// A counter that increases after every committed batch (for watchers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.seq.subscribe()
    }

    /// How many transformations were found over the template budget since
    /// start (at load, or when a rollback or undelete revived an old version);
    /// each such secret is served as an error.
    pub fn transform_failures(&self) -> u64 {
        self.shared.transform_failures.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.opts
    }
}
