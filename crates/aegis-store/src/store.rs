//! The public store API: reads from memory, changes through the writer task.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use aegis_core::secret::SecretDoc;
use aegis_core::SecretName;
use aegis_crypto::Keyring;
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use crate::entry::{Entry, LoadReport, Mutation};
use crate::shared::{Shared, StoreOptions};
use crate::writer::{self, Job};
use crate::{Backend, StoreError};

/// How often a Safe sharing its backend catches up even without a notice
/// (a notification lost with a connection is caught up by this, at the latest).
pub const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Asks the writer to take up other Safes' changes at each notice, and every
/// [`CATCH_UP_EVERY`]; ends with the store. A catch-up already queued covers
/// the notices that come before the writer takes it up, so a busy database
/// costs one catch-up per writer turn, not one per commit of the others.
async fn follow(mut notices: watch::Receiver<u64>, writer: mpsc::WeakSender<Job>, queued: Arc<AtomicBool>) {
    loop {
        tokio::select! {
            r = notices.changed() => if r.is_err() { return },
            () = tokio::time::sleep(CATCH_UP_EVERY) => {}
        }
        let Some(tx) = writer.upgrade() else { return };
        if !queued.swap(true, Ordering::SeqCst) && tx.try_send(Job::CatchUp).is_err() {
            queued.store(false, Ordering::SeqCst);
        }
    }
}

/// Every secret at one point, in name order (see [`Store::snapshot`]).
pub struct Snapshot {
    /// The store's commits (counted since it opened) whose changes it holds.
    pub commit: u64,
    /// When it was taken.
    pub taken_at: time::OffsetDateTime,
    /// The secrets, sorted by name.
    pub entries: Vec<Arc<Entry>>,
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Secrets written from the backup.
    pub secrets: usize,
    /// Of those, how many replaced a secret of the same name.
    pub replaced: usize,
    /// Secrets the store held that the backup does not (kept as they were).
    pub kept: usize,
}

/// All secrets, in memory, durably persisted. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
}

/// A handle on a [`Store`] that does not keep it open: a background task
/// that must end with the store holds one, so dropping the last [`Store`]
/// stops the writer and closes the backend.
#[derive(Clone)]
pub struct WeakStore {
    shared: Weak<Shared>,
    tx: mpsc::WeakSender<Job>,
}

impl WeakStore {
    /// The store, while some [`Store`] still holds it.
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store { shared: self.shared.upgrade()?, tx: self.tx.upgrade()? })
    }
}

impl Store {
    /// A handle that does not keep the store open (see [`WeakStore`]).
    pub fn downgrade(&self) -> WeakStore {
        WeakStore { shared: Arc::downgrade(&self.shared), tx: self.tx.downgrade() }
    }

    /// Loads every record from `backend`, quarantining those that fail, and starts the writer.
    pub async fn open(
        backend: Arc<dyn Backend>,
        keyring: Keyring,
        opts: StoreOptions,
    ) -> Result<(Self, LoadReport), StoreError> {
        let (mut map, report, log_seq, sealing) =
            writer::load(backend.clone(), keyring.clone(), opts.template_budget).await?;
        if opts.index_changes {
            map.index_changes();
        }
        let changes = AtomicU64::new(map.last_change());
        let keyring = match backend.shared() {
            Some(_) => crate::sealing::agree(&backend, opts.keys.as_ref(), keyring, sealing).await?,
            None => keyring,
        };
        let (seq, _) = watch::channel(0);
        let ring = Arc::new(keyring);
        let failures = AtomicU64::new(report.transform_failures as u64);
        let shared = Arc::new(Shared {
            map: RwLock::new(map),
            keyring: ArcSwap::new(ring.clone()),
            seq,
            opts,
            transform_failures: failures,
            watched: Arc::default(),
            log_seq: AtomicU64::new(log_seq),
            available: std::sync::atomic::AtomicBool::new(true),
            key_changes: watch::channel(ring).0,
            catch_up_queued: Arc::default(),
            changes,
        });
        let (tx, rx) = mpsc::channel(4096);
        if let Some(log) = backend.shared() {
            tokio::spawn(follow(log.notices(), tx.downgrade(), shared.catch_up_queued.clone()));
        }
        tokio::spawn(writer::run(shared.clone(), backend, rx));
        Ok((Self { shared, tx }, report))
    }

    /// Moves at every commit (this Safe's or, on a shared backend, another's)
    /// that changes a policy record.
    pub fn policy_changes(&self) -> watch::Receiver<u64> {
        self.shared.watched.policy_changes()
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
    pub async fn apply_group(&self, mut mutations: Vec<(SecretName, Mutation)>) -> Result<Vec<Arc<Entry>>, StoreError> {
        if mutations.len() == 1 {
            // One record is written atomically on its own: it joins the next
            // batch with other writers' changes instead of a commit of its own.
            if let Some((name, mutation)) = mutations.pop() {
                return self.apply(name, mutation).await.map(|entry| vec![entry]);
            }
        }
        let (reply, rx) = oneshot::channel();
        let ticket = crate::Ticket::current();
        self.tx.send(Job::Group { mutations, reply, ticket }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The last change number given: every secret written since gets a higher one.
    pub fn last_change(&self) -> u64 {
        self.shared.changes.load(Ordering::SeqCst)
    }

    /// Up to `limit` secrets in the order of their last change, from the
    /// first changed after `after` (change number, name; `Unbounded`: from the start), and whether more
    /// follow. Every secret visible now whose last change is after `after`
    /// is found by calls that go on from the last one returned. Without
    /// [`StoreOptions::index_changes`] every secret is scanned.
    pub fn changed_after(&self, after: Bound<(u64, SecretName)>, limit: usize) -> (Vec<Arc<Entry>>, bool) {
        let map = self.shared.map.read().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = map.changed_after(after.as_ref(), limit) {
            return found;
        }
        let past = |e: &Arc<Entry>| match &after {
            Bound::Excluded((seq, name)) => (e.doc.seq, &e.doc.name) > (*seq, name),
            Bound::Included((seq, name)) => (e.doc.seq, &e.doc.name) >= (*seq, name),
            Bound::Unbounded => true,
        };
        let mut all: Vec<&Arc<Entry>> = map.values().filter(|e| past(e)).collect();
        all.sort_by(|a, b| (a.doc.seq, &a.doc.name).cmp(&(b.doc.seq, &b.doc.name)));
        let more = all.len() > limit;
        (all.into_iter().take(limit).cloned().collect(), more)
    }

    /// Every secret as it is now, without stopping writes: the entries of
    /// every commit up to `commit`, so every write acknowledged before the call.
    pub fn snapshot(&self) -> Snapshot {
        // A commit puts its entries in the map before it bumps the counter and
        // before it answers: every change of commits up to `commit` is in the list.
        let commit = *self.shared.seq.borrow();
        Snapshot { commit, taken_at: time::OffsetDateTime::now_utc(), entries: self.list() }
    }

    /// Writes whole secrets (from a backup) in one all-or-nothing commit;
    /// see [`Restored`]. Refused with [`StoreError::NotEmpty`] when the store
    /// holds secrets, unless `replace`.
    pub async fn restore(&self, docs: Vec<SecretDoc>, replace: bool) -> Result<Restored, StoreError> {
        let (reply, rx) = oneshot::channel();
        let ticket = crate::Ticket::current();
        self.tx.send(Job::Restore { docs, replace, reply, ticket }).await.map_err(|_| StoreError::Closed)?;
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

    /// The keyring, each time it changes: a rotation made here, or one another
    /// Safe sharing the backend made and this one followed. Ends with the store.
    pub fn key_changes(&self) -> watch::Receiver<Arc<Keyring>> {
        self.shared.key_changes.subscribe()
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.shared.keyring.load_full()
    }

    /// A counter that increases after every committed batch (for what follows every change, such as the
    /// Kubernetes sync).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.seq.subscribe()
    }

    /// A watch on the secret `name`: woken by the commits that change it, not by others.
    pub fn watch_secret(&self, name: &SecretName) -> crate::SecretWatch {
        crate::SecretWatch::new(self.shared.watched.clone(), name.clone())
    }

    /// How many transformations were found over the template budget since
    /// start (at load, or when a rollback or undelete revived an old version);
    /// each such secret is served as an error.
    pub fn transform_failures(&self) -> u64 {
        self.shared.transform_failures.load(Ordering::Relaxed)
    }

    /// Whether the backend answered its last call (false while a database is
    /// unreachable: writes are refused with 503, reads are served from memory).
    pub fn backend_available(&self) -> bool {
        self.shared.available.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.opts
    }
}
