//! The sealed head: where the chain stood at its newest anchor, kept outside
//! the trail (with the store's records) and MACed under the audit key.
//!
//! An anchor authenticates the lines before it, but nothing in the trail can
//! prove that lines or files *after* a given anchor were not removed: a trail
//! cut back to any anchor is still a valid trail. So after every anchor the
//! writer also records that anchor's position and hash in the head file, in the
//! Safe's data directory (not in the audit directory, so that cutting or
//! deleting audit files does not reach it). `aegis audit verify` requires the
//! trail to reach the head, and the Safe compares the head with the trail when
//! it starts, so a cut is recorded instead of silently continued.

use std::io;
use std::path::{Path, PathBuf};

use aegis_crypto::AuditKey;
use serde::{Deserialize, Serialize};

/// The head file's name in the Safe's data directory.
pub const HEAD_FILE: &str = "audit.head";

/// The head file of a Safe whose records are in `data_dir`.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join(HEAD_FILE)
}

/// The newest anchor of a trail, as the writer recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The anchor line's `seq`.
    pub seq: u64,
    /// Hex SHA-256 of the anchor line (without its newline).
    pub hash: String,
    /// The audit file the trail was written to (a head of another trail is not compared).
    pub file: String,
    /// When the head was written (RFC 3339).
    pub time: String,
    /// The root key id the MAC is under.
    pub key_id: String,
    /// HMAC-SHA256 of [`Head::message`] under the audit key.
    pub mac: String,
}

impl Head {
    /// A head for the anchor at `seq` whose line hashes to `hash`, sealed under `key`.
    pub fn seal(key: &AuditKey, seq: u64, hash: &[u8; 32], file: &Path, time: String) -> Self {
        let mut h = Self {
            seq,
            hash: hex::encode(hash),
            file: file.display().to_string(),
            time,
            key_id: key.id().to_string(),
            mac: String::new(),
        };
        h.mac = hex::encode(key.mac(&h.message()));
        h
    }

    /// What the MAC covers: every field but the MAC.
    fn message(&self) -> Vec<u8> {
        format!("aegis-audit-head/v1\n{}\n{}\n{}\n{}\n{}", self.seq, self.hash, self.file, self.time, self.key_id)
            .into_bytes()
    }

    /// Whether the MAC matches under the key of its `key_id` among `keys`; `None` when that key is not given.
    pub fn authentic(&self, keys: &[AuditKey]) -> Option<bool> {
        let key = keys.iter().find(|k| k.id().to_string() == self.key_id)?;
        let tag = hex::decode(&self.mac).unwrap_or_default();
        Some(key.verify(&self.message(), &tag))
    }

    /// Reads the head at `path`; `None` when there is none.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not an audit head: {e}")))
    }

    /// Replaces the head at `path` atomically and durably (mode 0600).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        bytes.push(b'\n');
        aegis_fs::write_atomic(path, &bytes, 0o600).map_err(io::Error::other)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aegis_crypto::RootKey;

    use super::*;

    #[test]
    fn a_head_reads_back_and_only_its_own_key_authenticates_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HEAD_FILE);
        assert_eq!(Head::read(&path).unwrap(), None);
        let key = RootKey::generate();
        let head = Head::seal(&key.audit_key(), 7, &[1; 32], Path::new("/a/audit.log"), "t".into());
        head.write(&path).unwrap();
        let back = Head::read(&path).unwrap().unwrap();
        assert_eq!(back, head);
        assert_eq!(back.authentic(&[key.audit_key()]), Some(true));
        assert_eq!(back.authentic(&[RootKey::generate().audit_key()]), None);
        let moved = Head { seq: 6, ..back };
        assert_eq!(moved.authentic(&[key.audit_key()]), Some(false), "a head moved back is not authentic");
    }
}
