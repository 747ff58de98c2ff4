//! Storage errors.

use aegis_core::secret::OpError;
use aegis_crypto::CryptoError;

/// Why a storage operation failed. Messages name the secret or file, never a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation is not allowed in the secret's current state.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The secret does not exist.
    #[error("secret '{0}' does not exist")]
    NotFound(String),
    /// Reading or writing the backing store failed; nothing was changed.
    #[error("could not persist '{name}': {source}; the previous version is intact")]
    Io {
        /// The secret (or file) concerned.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A group write (all or nothing) failed after some of its records were
    /// stored: exactly these were, the others were not.
    #[error("could not persist all of {}: stored {}; not stored {}: {source}", list(.stored, .not_stored), quoted(.stored), quoted(.not_stored))]
    PartlyStored {
        /// The names whose new version is stored.
        stored: Vec<String>,
        /// The names left at their previous version.
        not_stored: Vec<String>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Opening the backing store failed.
    #[error("cannot use data directory {path}: {source}")]
    Open {
        /// The directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Encryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The request's deadline passed (or the request was given up) before the
    /// writer took the change up: nothing was applied.
    #[error("the request's deadline passed before the write was applied; nothing was changed, retry")]
    Expired,
    /// What must be durable before a commit (the audit trail's intent lines,
    /// see [`crate::CommitBarrier`]) could not be made so: nothing was changed.
    #[error("the change was refused because it could not be recorded first ({0}); nothing was changed")]
    Barrier(String),
    /// Another Safe sharing the store changed the secret since this one read
    /// it: nothing was written; this Safe now holds the newer version.
    #[error("secret '{0}' was changed by another Safe at the same time; nothing was written: re-read it and retry")]
    Changed(String),
    /// The backing store cannot be reached or did not answer in time (a
    /// database): nothing was changed; retry.
    #[error("{what} is unavailable: {why}; nothing was changed, retry")]
    Unavailable {
        /// Which store (never a password).
        what: String,
        /// What failed.
        why: String,
    },
    /// The record was sealed under a root key the Safes sharing the store no
    /// longer seal under (another Safe rotated the root key): nothing was
    /// written. The store follows the rotation and retries by itself; this
    /// reaches a caller only when it cannot follow.
    #[error(
        "could not write '{name}': the Safes sharing the store now seal under root key {sealing}, which this Safe \
         cannot load (another Safe rotated the root key); nothing was changed. Every Safe must use the same root \
         key store; see the Safe's log"
    )]
    KeyRetired {
        /// The secret.
        name: String,
        /// The key records must be sealed under.
        sealing: aegis_crypto::KeyId,
    },
    /// The Safes sharing the store seal under a root key this Safe's root key
    /// store does not hold: it would write records they cannot open.
    #[error(
        "the Safes sharing the store seal under root key {sealing}, but this Safe's root key store holds {ours} \
         (and no next key {sealing}): every Safe sharing a database must use the same root key store (the same \
         Kubernetes Secret or file); this Safe wrote nothing"
    )]
    ForeignKey {
        /// The key the others seal under.
        sealing: aegis_crypto::KeyId,
        /// This Safe's key.
        ours: aegis_crypto::KeyId,
    },
    /// A restore into a store that holds secrets, without `replace`.
    #[error("the Safe already holds {secrets} secrets; restore into an empty Safe, or replace the secrets the backup holds (aegis restore --replace; the others are kept)")]
    NotEmpty {
        /// Secrets held.
        secrets: usize,
    },
    /// The writer task has stopped (the Safe is shutting down).
    #[error("the store is shutting down; retry against a running Safe")]
    Closed,
    /// The secret is replicated from another Safe: only that Safe's changes replace it.
    #[error(
        "secret '{name}' is replicated from the Safe {from} and is read-only here; write it on that Safe \
         (its change reaches this one); nothing was changed"
    )]
    Replicated {
        /// The secret.
        name: String,
        /// The source Safe's SPIFFE ID.
        from: String,
    },
    /// A replicated change was not applied: a secret of the same name that is
    /// not from that source (this Safe's own, or another source's) is in the way.
    #[error(
        "secret '{name}' replicated from {from} was not applied: a secret of that name held by {held_by} is in \
         the way; rename or delete one of them"
    )]
    InTheWay {
        /// The secret.
        name: String,
        /// The source of the change.
        from: String,
        /// Who holds the secret in the way: "this Safe" or another source's SPIFFE ID.
        held_by: String,
    },
}

fn quoted(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

fn list(a: &[String], b: &[String]) -> String {
    quoted(&[a, b].concat())
}
