//! Aegis cryptography.
//!
//! - [`RootKey`]: VSecM's three-part root key (age X25519 identity, its
//!   recipient, and a 256-bit key), generated from the OS random source.
//! - [`Keyring`]: record keys derived from root keys with HKDF-SHA256, and the
//!   record envelope: XChaCha20-Poly1305 with the secret's name, revision and
//!   key id bound as associated data.
//! - VSecM-compatible "encrypt for git" ciphertexts (age, base64), and the
//!   age files VSecM's Safe keeps its records in ([`RootKey::decrypt_age_file`]).
//! - [`backup`]: the encryption of backup files (age, to the root key and
//!   to recipients given at backup time).
//! - [`AuditKey`]: the HMAC-SHA256 key that anchors the audit trail, derived
//!   from the root key with HKDF.

mod audit;
pub mod backup;
mod record;
mod root;

pub use audit::AuditKey;
pub use record::{Keyring, RecordHeader};
pub use root::{KeyId, RootKey};

/// Everything that can go wrong in this crate. Messages never contain key
/// material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The root key text is malformed.
    #[error("invalid root key: {0}")]
    InvalidRootKey(&'static str),
    /// A record could not be decrypted (wrong key, tampered, or truncated).
    #[error("record for '{name}' could not be decrypted: {why}")]
    Record {
        /// The secret the record claims to hold.
        name: String,
        /// What failed.
        why: &'static str,
    },
    /// A record was written under a root key that is not loaded.
    #[error("record for '{name}' was sealed under root key {key_id}, which is not loaded: wrong root key? Give the Safe the root key its data was written with")]
    UnknownKey {
        /// The secret.
        name: String,
        /// The key id in the record header.
        key_id: KeyId,
    },
    /// A VSecM-style encrypted value could not be decrypted.
    #[error("encrypted value could not be decrypted: {0}; it must be the base64 output of `safe -e` under this Safe's root key")]
    Ciphertext(&'static str),
    /// A backup file cannot be written or opened; the reason says what to do.
    #[error("{0}")]
    Backup(String),
    /// An age file (a VSecM `<name>.age` record) could not be decrypted.
    #[error("age file could not be decrypted: {0}")]
    AgeFile(&'static str),
}
