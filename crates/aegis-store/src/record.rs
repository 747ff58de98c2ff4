//! One secret document as the store keeps it on disk: sealed with the
//! keyring's current key, bound to its name and revision, and checked when it
//! is read back.

use std::io;

use aegis_core::secret::SecretDoc;
use aegis_core::SecretName;
use aegis_crypto::{CryptoError, Keyring};
use zeroize::Zeroizing;

use crate::StoreError;

/// Why a record read back cannot be loaded.
#[derive(Debug)]
pub enum OpenError {
    /// Sealed under a key that is not loaded: the wrong root key was given.
    UnknownKey(StoreError),
    /// Corrupt, tampered, or not the document of this name and revision:
    /// quarantine it. The reason never holds a value from the record.
    Bad(String),
}

/// Seals `doc` under the keyring's current key, bound to its name and revision.
pub fn seal(keyring: &Keyring, doc: &SecretDoc) -> Result<Vec<u8>, StoreError> {
    let plain = Zeroizing::new(serde_json::to_vec(doc).map_err(|e| StoreError::Io {
        name: doc.name.to_string(),
        source: io::Error::other(format!("serialisation failed: {e}")),
    })?);
    Ok(keyring.seal(doc.name.as_str(), doc.revision, &plain)?)
}

/// Opens the record `bytes` stored under `name`: decrypts it with whichever
/// loaded key sealed it, parses the document and checks that it is the one
/// of `name` at the revision the record's header names. Names older versions
/// stored are accepted even where the current name rule refuses them.
pub fn open(keyring: &Keyring, name: &str, bytes: &[u8]) -> Result<SecretDoc, OpenError> {
    let parsed = SecretName::parse_stored(name).map_err(|e| OpenError::Bad(e.to_string()))?;
    if let Ok(h) = Keyring::header(name, bytes) {
        if !keyring.knows(h.key_id) {
            let e = CryptoError::UnknownKey { name: name.to_owned(), key_id: h.key_id };
            return Err(OpenError::UnknownKey(e.into()));
        }
    }
    let (header, plain) = keyring.open(name, bytes).map_err(|e| OpenError::Bad(e.to_string()))?;
    let doc: SecretDoc = serde_json::from_slice(&plain)
        .map_err(|e| OpenError::Bad(format!("record content is not a secret document: {e}")))?;
    if doc.name != parsed || doc.revision != header.revision {
        return Err(OpenError::Bad("record content does not match its name or revision".to_owned()));
    }
    Ok(doc)
}
