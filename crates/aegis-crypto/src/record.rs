//! The record envelope: every byte the store writes goes through here.
//!
//! Layout: `AEGS` | format 1 | key id (8) | revision (u64 BE) | nonce (24) | ciphertext+tag.
//! The associated data is the header followed by the secret's name, so a
//! record cannot be moved to another name, revision or key unnoticed.

use std::sync::Arc;

use chacha20poly1305::aead::{AeadCore, AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::{CryptoError, KeyId, RootKey};

const MAGIC: &[u8; 4] = b"AEGS";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 8 + 8;
const NONCE_LEN: usize = 24;
/// Poly1305's tag, after the ciphertext.
const TAG_LEN: usize = 16;

/// The clear header of a record: which key, which revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The root key the record was sealed under.
    pub key_id: KeyId,
    /// The secret's revision when sealed.
    pub revision: u64,
}

/// The loaded root keys: the current one (for sealing) and older ones still
/// needed to open records during a rotation.
#[derive(Clone, Debug)]
pub struct Keyring {
    current: Arc<RootKey>,
    older: Vec<Arc<RootKey>>,
}

fn header_bytes(key_id: KeyId, revision: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = FORMAT;
    h[5..13].copy_from_slice(&key_id.0);
    h[13..].copy_from_slice(&revision.to_be_bytes());
    h
}

fn aad(header: &[u8], name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + name.len());
    a.extend_from_slice(header);
    a.extend_from_slice(name.as_bytes());
    a
}

impl Keyring {
    /// A keyring with one key.
    pub fn new(current: Arc<RootKey>) -> Self {
        Self { current, older: Vec::new() }
    }

    /// Adds a key that can still open records but is not used for sealing.
    pub fn with_older(mut self, key: Arc<RootKey>) -> Self {
        if !self.knows(key.id()) {
            self.older.push(key);
        }
        self
    }

    /// The same keys with the one of id `id` used for sealing (the others
    /// still open records); `None` if no loaded key has that id.
    pub fn sealing_with(&self, id: KeyId) -> Option<Self> {
        if self.current.id() == id {
            return Some(self.clone());
        }
        let pos = self.older.iter().position(|k| k.id() == id)?;
        let mut older = self.older.clone();
        let current = older.remove(pos);
        older.insert(0, self.current.clone());
        Some(Self { current, older })
    }

    /// Every loaded key, the current one first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<RootKey>> {
        std::iter::once(&self.current).chain(self.older.iter())
    }

    /// The key used for sealing.
    pub fn current(&self) -> &Arc<RootKey> {
        &self.current
    }

    /// Whether a key with this id is loaded.
    pub fn knows(&self, id: KeyId) -> bool {
        self.find(id).is_some()
    }

    /// Every loaded key, the current one first.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &RootKey> {
        std::iter::once(&self.current).chain(self.older.iter()).map(|k| k.as_ref())
    }

    fn find(&self, id: KeyId) -> Option<&RootKey> {
        std::iter::once(&self.current).chain(self.older.iter()).find(|k| k.id() == id).map(|k| k.as_ref())
    }

    /// Encrypts a record for `name` at `revision` under the current key.
    pub fn seal(&self, name: &str, revision: u64, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let header = header_bytes(self.current.id(), revision);
        let cipher = XChaCha20Poly1305::new(self.current.record_key().into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ad = aad(&header, name);
        // Encrypted where it is sent: one buffer and one copy of the
        // plaintext, whatever the size of the record.
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        match cipher.encrypt_in_place_detached(&nonce, &ad, &mut out[HEADER_LEN + NONCE_LEN..]) {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(_) => {
                // The buffer still holds the plaintext: wiped before it is freed.
                zeroize::Zeroize::zeroize(&mut out);
                return Err(CryptoError::Record { name: name.to_owned(), why: "encryption failed" });
            }
        }
        Ok(out)
    }

    /// Reads a record's clear header without decrypting it.
    pub fn header(name: &str, data: &[u8]) -> Result<RecordHeader, CryptoError> {
        let bad = |why| CryptoError::Record { name: name.to_owned(), why };
        if data.len() < HEADER_LEN + NONCE_LEN + 16 {
            return Err(bad("the file is truncated"));
        }
        if &data[..4] != MAGIC || data[4] != FORMAT {
            return Err(bad("the file is not an Aegis record (bad magic or format)"));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&data[5..13]);
        let mut rev = [0u8; 8];
        rev.copy_from_slice(&data[13..HEADER_LEN]);
        Ok(RecordHeader { key_id: KeyId(id), revision: u64::from_be_bytes(rev) })
    }

    /// Decrypts a record that claims to hold `name`.
    pub fn open(&self, name: &str, data: &[u8]) -> Result<(RecordHeader, Zeroizing<Vec<u8>>), CryptoError> {
        // A copy decrypted in place; wiped on drop, its spare capacity too.
        let mut plain = Zeroizing::new(data.to_vec());
        let (header, range) = self.open_in_place(name, &mut plain)?;
        plain.truncate(range.end);
        plain.drain(..range.start);
        Ok((header, plain))
    }

    /// [`Keyring::open`] where the record lies: on success the plaintext is
    /// `data[range]` (the caller wipes it when done); on failure `data` is
    /// unchanged. Saves a buffer per record where many are opened in a row.
    pub fn open_in_place(
        &self,
        name: &str,
        data: &mut [u8],
    ) -> Result<(RecordHeader, std::ops::Range<usize>), CryptoError> {
        let header = Self::header(name, data)?;
        let key = self
            .find(header.key_id)
            .ok_or_else(|| CryptoError::UnknownKey { name: name.to_owned(), key_id: header.key_id })?;
        let cipher = XChaCha20Poly1305::new(key.record_key().into());
        let nonce = XNonce::clone_from_slice(&data[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        let ad = aad(&data[..HEADER_LEN], name);
        let tag_at = data.len() - TAG_LEN;
        let tag = chacha20poly1305::Tag::clone_from_slice(&data[tag_at..]);
        let body = HEADER_LEN + NONCE_LEN..tag_at;
        cipher.decrypt_in_place_detached(&nonce, &ad, &mut data[body.clone()], &tag).map_err(|_| {
            CryptoError::Record {
                name: name.to_owned(),
                why: "authentication failed (tampered, renamed, or sealed under another key)",
            }
        })?;
        Ok((header, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_in_place_gives_what_open_gives_and_leaves_a_bad_record_as_it_was() {
        let ring = Keyring::new(Arc::new(RootKey::generate()));
        let rec = ring.seal("billing", 7, b"plain-value").unwrap();
        let mut buf = rec.clone();
        let (h, range) = ring.open_in_place("billing", &mut buf).unwrap();
        assert_eq!(h.revision, 7);
        assert_eq!(&buf[range], b"plain-value");
        let mut wrong = rec.clone();
        assert!(ring.open_in_place("payroll", &mut wrong).is_err());
        assert_eq!(wrong, rec, "a record that does not open is left as it was");
        let mut tampered = rec.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let before = tampered.clone();
        assert!(ring.open_in_place("billing", &mut tampered).is_err());
        assert_eq!(tampered, before);
    }

    #[test]
    fn seal_open_round_trip() {
        let ring = Keyring::new(Arc::new(RootKey::generate()));
        let rec = ring.seal("billing", 7, b"plain-value").unwrap();
        assert!(!rec.windows(11).any(|w| w == b"plain-value"));
        let (h, pt) = ring.open("billing", &rec).unwrap();
        assert_eq!(h.revision, 7);
        assert_eq!(pt.as_slice(), b"plain-value");
    }

    #[test]
    fn binds_name_revision_and_detects_tampering() {
        let ring = Keyring::new(Arc::new(RootKey::generate()));
        let rec = ring.seal("billing", 7, b"v").unwrap();
        assert!(ring.open("payroll", &rec).is_err());
        let mut bumped = rec.clone();
        bumped[20] ^= 1; // revision byte
        assert!(ring.open("billing", &bumped).is_err());
        let mut flipped = rec.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(ring.open("billing", &flipped).is_err());
        assert!(ring.open("billing", &rec[..10]).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn older_keys_open_during_rotation() {
        let old = Arc::new(RootKey::generate());
        let rec = Keyring::new(old.clone()).seal("a", 1, b"x").unwrap();
        let new_only = Keyring::new(Arc::new(RootKey::generate()));
        assert!(matches!(new_only.open("a", &rec), Err(CryptoError::UnknownKey { .. })));
        let both = new_only.with_older(old.clone());
        assert_eq!(both.open("a", &rec).unwrap().1.as_slice(), b"x");
    }

    #[test]
    fn a_loaded_key_can_become_the_sealing_key() {
        let (old, new) = (Arc::new(RootKey::generate()), Arc::new(RootKey::generate()));
        let ring = Keyring::new(old.clone()).with_older(new.clone()).with_older(old.clone());
        assert_eq!(ring.all().count(), 2, "a key is loaded once");
        let turned = ring.sealing_with(new.id()).unwrap();
        assert_eq!(turned.current().id(), new.id());
        let rec = turned.seal("a", 1, b"x").unwrap();
        assert_eq!(Keyring::header("a", &rec).unwrap().key_id, new.id());
        assert!(turned.knows(old.id()), "the old key still opens records");
        assert!(ring.sealing_with(RootKey::generate().id()).is_none());
    }
}
