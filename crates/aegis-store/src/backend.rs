//! The storage port: where sealed records live.
//!
//! A backend stores opaque sealed records (the envelope of [`crate::record`],
//! bound to its name, revision and key id) under typed secret names; it never
//! sees a plaintext value or a key. The directory adapter ([`crate::DirBackend`])
//! is the default; another adapter passes the conformance suite
//! ([`crate::conformance`], feature `conformance`) unchanged.
//!
//! The trait is blocking on purpose: the store calls it only from blocking
//! threads (one writer at a time, the loader on every core), the directory
//! adapter's work is blocking system calls (`fsync`), and an adapter over an
//! async client (PostgreSQL) drives its futures there with
//! `tokio::runtime::Handle::block_on`. See docs/ARCHITECTURE.md, "Ports and adapters".

use aegis_core::SecretName;
use aegis_crypto::KeyId;

use crate::StoreError;

/// One sealed record, as the store hands it to a backend.
pub type SealedRecord = (SecretName, Vec<u8>);

/// What a backend holds, by name.
#[derive(Debug, Default)]
pub struct Listing {
    /// The name of every record the backend could name.
    pub names: Vec<SecretName>,
    /// Entries it could not name (damaged, or not records at all).
    pub unnamed: Vec<Unnamed>,
}

/// An entry a backend holds but cannot name: reported at start-up, left in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnamed {
    /// Where it is, in the backend's terms (a file name, a row key).
    pub locator: String,
    /// Why it cannot be named.
    pub reason: String,
}

/// Where a record that could not be opened was kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where its bytes are now, in the backend's terms (a path, a table and key).
    pub kept_at: String,
}

/// Why a group write failed, and which of its records were stored anyway
/// (empty unless replacing the records failed midway).
#[derive(Debug)]
pub struct GroupError {
    /// Names whose new record is in place (in the order given).
    pub stored: Vec<SecretName>,
    /// The failure.
    pub error: StoreError,
}

/// The changes a shared backend holds after a change number, in the order
/// they were committed ([`SharedLog::changes_since`]).
#[derive(Debug, Default)]
pub struct Changes {
    /// The records changed, each in its latest state, in commit order.
    pub records: Vec<SealedRecord>,
    /// The highest change number read (the `after` given when nothing changed).
    pub last: u64,
    /// The root key every Safe sharing the backend seals under now
    /// ([`SharedLog::seal_under`]); `None` before the first Safe set it.
    pub sealing_key: Option<KeyId>,
}

/// Work only one of the Safes sharing a backend may do at a time ([`SharedLog::take_duty`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// Rotating the root key (the root key store holds one next key).
    RootKeyRotation,
    /// Writing the Kubernetes copies of `k8s:` secrets.
    KubernetesSync,
}

/// A duty this Safe holds: released when dropped, and lost when this Safe
/// stops or loses its connection to the backend.
pub trait Held: Send + Sync {
    /// Whether it is still held (false once the backend may have given it to another Safe).
    fn still_held(&self) -> bool;
}

/// Whether [`SharedLog::seal_under`] replaces a sealing key already set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealUnder {
    /// Only when none is set (a Safe starting on a new backend).
    IfUnset,
    /// Always (a root key rotation).
    Replace,
}

/// A backend several Safes share (a database): what the others changed, and
/// a notice when they may have changed something.
pub trait SharedLog: Send + Sync {
    /// The records changed after change number `after`, in commit order, at
    /// most `max` of them ([`Changes::last`] says where the next read starts).
    fn changes_since(&self, after: u64, max: usize) -> Result<Changes, StoreError>;

    /// Ticks when another Safe may have committed something (a notification,
    /// or a reconnect after which notifications may have been missed).
    fn notices(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Sets the root key every Safe sharing the backend must seal under, in
    /// commit order: from then on a record sealed under another key is refused
    /// with [`StoreError::KeyRetired`], so that no Safe that has not yet
    /// followed a rotation writes under the retired key. Returns the key in
    /// force afterwards (another one with [`SealUnder::IfUnset`] when one was set).
    fn seal_under(&self, key: KeyId, mode: SealUnder) -> Result<KeyId, StoreError>;

    /// Takes `duty` if no other Safe holds it (`None`: one does); it is this
    /// Safe's until the returned value is dropped or [`Held::still_held`] turns false.
    fn take_duty(&self, duty: Duty) -> Result<Option<Box<dyn Held>>, StoreError>;

    /// A setting every Safe sharing the backend must agree on (the instance
    /// name of the Kubernetes copies): stores `value` under `name` unless a
    /// value is stored already, and returns the stored one.
    fn keep_setting(&self, name: &str, value: &str) -> Result<String, StoreError>;
}

/// What must be durable before any commit: the audit trail's `intent` lines
/// (docs/AUDIT.md). The store calls it on its commit thread just before each
/// commit; when it fails, the commit is not attempted and every change in it
/// fails with [`StoreError::Barrier`], so nothing changes that was not recorded first.
pub trait CommitBarrier: Send + Sync + std::fmt::Debug + 'static {
    /// Blocks until what must precede the commit is durable; the error says why it cannot be.
    fn before_commit(&self) -> Result<(), String>;
}

/// A durable home for sealed records, one per secret name.
///
/// Methods block; the store calls them from blocking threads.
pub trait Backend: Send + Sync + 'static {
    /// The names of every record; entries that cannot be named are listed
    /// apart instead of failing the load.
    fn list(&self) -> Result<Listing, StoreError>;

    /// One record's sealed bytes.
    fn read(&self, name: &SecretName) -> Result<Vec<u8>, StoreError>;

    /// [`Backend::read`] into `buf` (emptied first), so that a loader reading
    /// many records in a row reuses one buffer.
    fn read_into(&self, name: &SecretName, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        *buf = self.read(name)?;
        Ok(())
    }

    /// Writes the records durably and atomically per record: when this returns
    /// `Ok` for a record, it survives a crash; when it fails, the previous record is intact.
    fn write_batch(&self, records: &[SealedRecord]) -> Vec<Result<(), StoreError>>;

    /// Writes the records all or nothing: if any cannot be made durable,
    /// nothing is stored. Only if replacing the records then fails midway
    /// (a backend without multi-record transactions) are some stored: the
    /// error lists exactly which.
    fn write_group(&self, records: &[SealedRecord]) -> Result<(), GroupError>;

    /// [`Backend::write_batch`] for a backend several Safes may share: a record
    /// whose stored revision is not its `expected` one (0: none stored) was
    /// changed by another Safe and is refused with [`StoreError::Changed`]; the
    /// others are written. A backend with one writer ignores `expected`.
    fn write_batch_expecting(&self, records: &[SealedRecord], expected: &[u64]) -> Vec<Result<(), StoreError>> {
        let _ = expected;
        self.write_batch(records)
    }

    /// [`Backend::write_group`] with the expected stored revisions of
    /// [`Backend::write_batch_expecting`]: one record changed elsewhere refuses the whole group.
    fn write_group_expecting(&self, records: &[SealedRecord], expected: &[u64]) -> Result<(), GroupError> {
        let _ = expected;
        self.write_group(records)
    }

    /// The log of changes, for a backend several Safes share; `None` (the
    /// default) for a backend this Safe alone writes.
    fn shared(&self) -> Option<&dyn SharedLog> {
        None
    }

    /// Takes a record that cannot be opened out of service, keeping its bytes
    /// for inspection with `reason`, and says where they are. The name is
    /// then free: the record no longer loads.
    fn set_aside(&self, name: &SecretName, reason: &str) -> Result<SetAside, StoreError>;

    /// Makes every acknowledged write durable in its final place (a backend
    /// with a journal checkpoints it). The store calls it when its writer is
    /// idle and after a root key rotation, so no record sealed with a retired
    /// key stays behind; a backend that writes in place has nothing to do.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A short description for logs (e.g. the directory path).
    fn describe(&self) -> String;
}
