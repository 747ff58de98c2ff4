//! The backend conformance suite run against the directory backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aegis_core::SecretName;
use aegis_store::conformance::Subject;
use aegis_store::{Backend, DirBackend};

/// Directory backends, each in a new temporary directory.
struct Dir;

impl Subject for Dir {
    type Place = tempfile::TempDir;

    fn empty(&self) -> Self::Place {
        tempfile::tempdir().unwrap()
    }

    fn open(&self, place: &Self::Place) -> Arc<dyn Backend> {
        Arc::new(DirBackend::open(place.path()).unwrap())
    }

    /// Flips a byte in the middle of the record file.
    fn damage(&self, place: &Self::Place, name: &SecretName) {
        let path = DirBackend::open(place.path()).unwrap().record_path(name.as_str());
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&path, bytes).unwrap();
    }
}

aegis_store::backend_conformance!(Dir);
