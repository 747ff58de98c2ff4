//! A backup of one store restored into another, through the encryption and
//! the content format, and the refusals of a restore.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::Arc;

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue};
use aegis_core::SecretName;
use aegis_crypto::backup::{decrypt_backup, encrypt_backup, Unlock};
use aegis_crypto::{Keyring, RootKey};
use aegis_store::backup::{BackupReader, BackupWriter, Header};
use aegis_store::{DirBackend, Mutation, Store, StoreError, StoreOptions};
use time::OffsetDateTime;

async fn open(dir: &std::path::Path, key: Arc<RootKey>) -> Store {
    let backend = Arc::new(DirBackend::open(dir).unwrap());
    Store::open(backend, Keyring::new(key), StoreOptions::default()).await.unwrap().0
}

async fn put(store: &Store, name: &str, value: &str) {
    let meta = SecretMeta::defaults(OffsetDateTime::now_utc());
    let m = Mutation::Put { value: SecretValue::new(value), meta, cas: None, view: None, stamps: None };
    store.apply(SecretName::parse(name).unwrap(), m).await.unwrap();
}

fn backup_of(store: &Store) -> Vec<u8> {
    let snap = store.snapshot();
    let header = Header::of(&snap);
    let enc = encrypt_backup(store.keyring().current(), &[], Vec::new()).unwrap();
    let mut w = BackupWriter::new(enc, &header).unwrap();
    for e in &snap.entries {
        w.secret(&e.doc).unwrap();
    }
    let mut enc = w.finish().unwrap();
    enc.flush().unwrap();
    enc.finish().unwrap()
}

fn docs_of(file: &[u8], ring: &Keyring) -> Vec<SecretDoc> {
    let (plain, _) = decrypt_backup(file, Unlock::Keyring(ring)).unwrap();
    let mut r = BackupReader::open(std::io::BufReader::new(plain)).unwrap();
    let mut out = Vec::new();
    while let Some(d) = r.next_secret().unwrap() {
        out.push(d);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_every_version_into_an_empty_store_and_replaces_only_when_told() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = Arc::new(RootKey::generate());
    let a = open(a_dir.path(), key.clone()).await;
    for i in 0..50 {
        put(&a, &format!("s{i:02}"), &format!("v{i}")).await;
    }
    put(&a, "s07", "seven-b").await;
    let file = backup_of(&a);
    let docs = docs_of(&file, &a.keyring());
    assert_eq!(docs.len(), 50);

    // Into an empty store (same root key here; another key restores through an identity).
    let b = open(b_dir.path(), key.clone()).await;
    let done = b.restore(docs.clone(), false).await.unwrap();
    assert_eq!((done.secrets, done.replaced, done.kept), (50, 0, 0));
    let s07 = b.get(&SecretName::parse("s07").unwrap()).unwrap();
    assert_eq!(s07.doc.versions.len(), 2);
    assert_eq!(s07.workload_value().unwrap().expose(), "seven-b");

    // Not again without replace, and nothing changes.
    put(&b, "zz-only-here", "kept").await;
    let err = b.restore(docs.clone(), false).await.unwrap_err();
    assert!(matches!(err, StoreError::NotEmpty { secrets: 51 }), "{err}");
    assert!(err.to_string().contains("--replace"), "{err}");

    // With replace: the backup's secrets at a higher revision, the others kept.
    put(&b, "s01", "newer").await;
    let before = b.get(&SecretName::parse("s01").unwrap()).unwrap().doc.revision;
    let done = b.restore(docs, true).await.unwrap();
    assert_eq!((done.secrets, done.replaced, done.kept), (50, 50, 1));
    let s01 = b.get(&SecretName::parse("s01").unwrap()).unwrap();
    assert_eq!(s01.workload_value().unwrap().expose(), "v1");
    assert!(s01.doc.revision > before, "a replaced secret must move forward for its watchers");
    drop(b);

    // Durable: a store reopened on the directory holds what was restored.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let again = open(b_dir.path(), key).await;
    assert_eq!(again.len(), 51);
    assert_eq!(again.get(&SecretName::parse("s49").unwrap()).unwrap().workload_value().unwrap().expose(), "v49");
}
