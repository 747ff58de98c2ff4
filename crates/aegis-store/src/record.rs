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
    let parsed = before_opening(keyring, name, bytes)?;
    let (header, plain) = keyring.open(name, bytes).map_err(|e| OpenError::Bad(e.to_string()))?;
    document(&parsed, header.revision, &plain)
}

/// The stored name, once the record is known to be sealed under a loaded key.
fn before_opening(keyring: &Keyring, name: &str, bytes: &[u8]) -> Result<SecretName, OpenError> {
    let parsed = SecretName::parse_stored(name).map_err(|e| OpenError::Bad(e.to_string()))?;
    if let Ok(h) = Keyring::header(name, bytes) {
        if !keyring.knows(h.key_id) {
            let e = CryptoError::UnknownKey { name: name.to_owned(), key_id: h.key_id };
            return Err(OpenError::UnknownKey(e.into()));
        }
    }
    Ok(parsed)
}

/// The document in `plain`, which must be the one of `name` at `revision`.
fn document(name: &SecretName, revision: u64, plain: &[u8]) -> Result<SecretDoc, OpenError> {
    let doc: SecretDoc = serde_json::from_slice(plain).map_err(|e| OpenError::Bad(not_a_document(&e)))?;
    if doc.name != *name || doc.revision != revision {
        return Err(OpenError::Bad("record content does not match its name or revision".to_owned()));
    }
    Ok(doc)
}

/// [`open`] of the record in `buf`, decrypted where it lies; `buf` is wiped
/// and emptied afterwards (its capacity kept), whatever the outcome, so that
/// one buffer serves every record a loader thread opens.
pub fn open_in(keyring: &Keyring, name: &str, buf: &mut Vec<u8>) -> Result<SecretDoc, OpenError> {
    let opened = open_buffer(keyring, name, buf);
    zeroize::Zeroize::zeroize(buf);
    opened
}

fn open_buffer(keyring: &Keyring, name: &str, buf: &mut [u8]) -> Result<SecretDoc, OpenError> {
    let parsed = before_opening(keyring, name, buf)?;
    let (header, plain) = keyring.open_in_place(name, buf).map_err(|e| OpenError::Bad(e.to_string()))?;
    document(&parsed, header.revision, &buf[plain])
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

    #[test]
    fn opening_in_a_buffer_gives_the_same_document_and_wipes_the_buffer() {
        let ring = Keyring::new(Arc::new(RootKey::generate()));
        let plain = br#"{"name":"billing","versions":[],"current":0,"created":0,"updated":0,"revision":3}"#;
        let sealed = ring.seal("billing", 3, plain).unwrap();
        let mut buf = sealed.clone();
        let doc = open_in(&ring, "billing", &mut buf).unwrap();
        assert_eq!(doc.revision, open(&ring, "billing", &sealed).unwrap().revision);
        assert!(buf.is_empty() && buf.capacity() >= sealed.len(), "emptied, its capacity kept for the next record");
        // Refused the same way, and wiped too.
        let mut buf = sealed.clone();
        assert!(matches!(open_in(&ring, "payroll", &mut buf), Err(OpenError::Bad(_))));
        assert!(buf.is_empty());
        let other = Keyring::new(Arc::new(RootKey::generate()));
        let mut buf = sealed.clone();
        assert!(matches!(open_in(&other, "billing", &mut buf), Err(OpenError::UnknownKey(_))));
    }
}
