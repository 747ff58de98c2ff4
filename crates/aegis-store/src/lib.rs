//! Aegis storage: secrets in memory, made durable (encrypted) before a write
//! is acknowledged.
//!
//! [`Store`] holds every secret in memory for reads and funnels every change
//! through one writer task. The writer takes whatever changes are queued,
//! applies them in order, seals each touched secret with the [`Keyring`] and
//! persists the batch with one group commit through a [`Backend`]; only then
//! are the changes visible to readers and acknowledged to writers.
//!
//! [`Keyring`]: aegis_crypto::Keyring

mod backend;
pub mod backup;
#[cfg(feature = "conformance")]
pub mod conformance;
mod dir;
mod entries;
mod entry;
mod error;
mod journal;
pub mod record;
pub mod rootkey;
mod sealing;
mod shared;
mod store;
mod sync;
mod ticket;
mod watchers;
mod writer;

pub use backend::{
    Backend, Changes, CommitBarrier, Duty, GroupError, Held, Listing, SealUnder, SealedRecord, SetAside, SharedLog,
    Unnamed,
};
pub use dir::{file_name, name_header, name_of_file, read_name_header, DirBackend};
pub use entry::Stamps;
pub use entry::{Data, Entry, LoadReport, Mutation, Quarantined, Undeliverable};
pub use error::StoreError;
pub use rootkey::{FileStore, IfAbsent, KeyStoreError, KeyStoreResult, RootKeyStore};
pub use shared::StoreOptions;
pub use store::{Restored, Snapshot, Store, WeakStore};
pub use sync::{BoxFuture, Refusal, SecretSync};
pub use ticket::Ticket;
pub use watchers::SecretWatch;
