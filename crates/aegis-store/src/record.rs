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
    // Sized for the document up front: a buffer grown by doubling would copy
    // the whole history several times, and leave each copy's plaintext behind.
    let values: usize = doc.versions.iter().map(|v| v.value.as_ref().map_or(0, |x| x.len())).sum();
    let mut plain = Zeroizing::new(Vec::with_capacity(values + values / 8 + 256 * (doc.versions.len() + 1)));
    serde_json::to_writer(&mut *plain, doc).map_err(|e| StoreError::Io {
        name: doc.name.to_string(),
        source: io::Error::other(format!("serialisation failed: {e}")),
    })?;
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
    let doc: SecretDoc = serde_json::from_slice(&plain).map_err(|e| OpenError::Bad(not_a_document(&e)))?;
    if doc.name != parsed || doc.revision != header.revision {
        return Err(OpenError::Bad("record content does not match its name or revision".to_owned()));
    }
    Ok(doc)
}

/// Why decrypted content is not a document, without serde_json's message,
/// which quotes the values it could not use (a secret, in a record).
fn not_a_document(e: &serde_json::Error) -> String {
    format!(
        "record content is not a secret document (invalid JSON or an unexpected field at line {} column {})",
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aegis_crypto::RootKey;

    use super::*;

    #[test]
    fn the_reason_a_record_is_refused_never_quotes_its_content() {
        // Found by the `record` fuzz target: serde_json's message quoted the
        // string it could not use, so a damaged record put its value in the log.
        let ring = Keyring::new(Arc::new(RootKey::generate()));
        let plain = br#"{"name":"billing","versions":"SECRETVALUE-not-a-list","current":0}"#;
        let sealed = ring.seal("billing", 1, plain).unwrap();
        let Err(OpenError::Bad(reason)) = open(&ring, "billing", &sealed) else { panic!("opened") };
        assert!(!reason.contains("SECRETVALUE"), "{reason}");
        assert!(reason.contains("not a secret document") && reason.contains("line 1"), "{reason}");
    }

    #[test]
    fn a_record_opens_only_as_its_own_name_and_revision() {
        let ring = Keyring::new(Arc::new(RootKey::generate()));
        let plain = br#"{"name":"payroll","versions":[],"current":0,"created":0,"updated":0,"revision":1}"#;
        let sealed = ring.seal("billing", 1, plain).unwrap();
        let Err(OpenError::Bad(reason)) = open(&ring, "billing", &sealed) else { panic!("opened") };
        assert!(reason.contains("does not match its name or revision"), "{reason}");
    }
}
