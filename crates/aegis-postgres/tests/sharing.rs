//! Several Safes on one database: the sealing key that a root key rotation
//! replaces in commit order, a Safe following a rotation another one made, and
//! the duties only one Safe holds at a time. A real server (see `common`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::SecretName;
use aegis_crypto::{KeyId, Keyring, RootKey};
use aegis_store::{
    Backend, Duty, FileStore, Mutation, RootKeyStore, SealUnder, SharedLog, Store, StoreError, StoreOptions,
};
use common::Pg;

fn name(n: &str) -> SecretName {
    SecretName::parse(n).unwrap()
}

fn sealed(key: &Arc<RootKey>, n: &str, revision: u64) -> (SecretName, Vec<u8>) {
    (name(n), Keyring::new(key.clone()).seal(n, revision, b"opaque to the backend").unwrap())
}

fn put(value: &str) -> Mutation {
    let meta = SecretMeta::defaults(time::OffsetDateTime::now_utc());
    Mutation::Put { value: SecretValue::new(value), meta, cas: None, view: None, stamps: None }
}

fn key_of(backend: &dyn Backend, n: &str) -> KeyId {
    Keyring::header(n, &backend.read(&name(n)).unwrap()).unwrap().key_id
}

#[test]
fn a_record_sealed_under_a_retired_key_is_refused_from_the_commit_that_retired_it_on() {
    let pg = Pg::from_env();
    let b = pg.backend(&pg.new_db("fence"));
    let log: &dyn SharedLog = b.shared().unwrap();
    let (old, new) = (Arc::new(RootKey::generate()), Arc::new(RootKey::generate()));
    assert_eq!(log.changes_since(0, 100).unwrap().sealing_key, None, "no key is set before a Safe sets one");
    assert_eq!(log.seal_under(old.id(), SealUnder::IfUnset).unwrap(), old.id());
    // A second Safe starting with another key does not replace it: it is told which key is in force.
    assert_eq!(log.seal_under(new.id(), SealUnder::IfUnset).unwrap(), old.id());
    assert!(b.write_batch_expecting(&[sealed(&old, "a", 1)], &[0])[0].is_ok());

    assert_eq!(log.seal_under(new.id(), SealUnder::Replace).unwrap(), new.id());
    assert_eq!(log.changes_since(0, 100).unwrap().sealing_key, Some(new.id()));
    let refused = b.write_batch_expecting(&[sealed(&old, "a", 2), sealed(&old, "b", 1)], &[1, 0]);
    for r in refused {
        match r {
            Err(StoreError::KeyRetired { sealing, .. }) => assert_eq!(sealing, new.id()),
            other => panic!("a record under the retired key was not refused: {other:?}"),
        }
    }
    let group = b.write_group_expecting(&[sealed(&new, "c", 1), sealed(&old, "d", 1)], &[0, 0]).unwrap_err();
    assert!(matches!(group.error, StoreError::KeyRetired { .. }) && group.stored.is_empty(), "{:?}", group.error);
    assert!(b.read(&name("c")).is_err(), "nothing of a refused group is stored");
    // Under the new key, writes go on; the record under the old key is the one written before.
    assert!(b.write_batch_expecting(&[sealed(&new, "a", 2)], &[1])[0].is_ok());
    assert_eq!(key_of(&b, "a"), new.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safe_follows_a_rotation_another_safe_made_and_seals_under_the_new_key() {
    let pg = Pg::from_env();
    let db = pg.new_db("follow");
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn RootKeyStore> = Arc::new(FileStore::new(dir.path().join("root.key")));
    let (old, _) = keys.load_or_create(aegis_store::IfAbsent::Generate).await.unwrap();
    let opts = StoreOptions { keys: Some(keys.clone()), ..StoreOptions::default() };
    let (a, _) = Store::open(pg.shared_backend(&db), Keyring::new(old.clone()), opts.clone()).await.unwrap();
    let (b, _) = Store::open(pg.shared_backend(&db), Keyring::new(old.clone()), opts).await.unwrap();
    for i in 0..20 {
        a.apply(name(&format!("s{i}")), put(&format!("v{i}"))).await.unwrap();
    }
    // A rotates as the Safe does: the next key in the key store first.
    let new = Arc::new(RootKey::generate());
    keys.write_next(new.clone()).await.unwrap();
    assert_eq!(a.rotate(Keyring::new(new.clone())).await.unwrap(), 20);
    keys.promote_next().await.unwrap();
    // B writes at once: its write is sealed under the new key (it followed, from
    // the catch-up or from the refusal of its first attempt), and it reads A's re-sealed records.
    b.apply(name("from-b"), put("b")).await.unwrap();
    let backend = pg.backend(&db);
    assert_eq!(key_of(&backend, "from-b"), new.id());
    assert_eq!(b.keyring().current().id(), new.id());
    for i in [0, 19] {
        let e = b.get(&name(&format!("s{i}"))).unwrap();
        assert_eq!(e.doc.live().unwrap().1.expose(), format!("v{i}"));
        assert_eq!(key_of(&backend, &format!("s{i}")), new.id());
    }
    // A restart with the new key alone opens everything.
    drop((a, b));
    let (c, report) = Store::open(pg.shared_backend(&db), Keyring::new(new), StoreOptions::default()).await.unwrap();
    assert!(report.quarantined.is_empty());
    assert_eq!(c.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safe_whose_key_store_lacks_the_key_in_force_refuses_to_start() {
    let pg = Pg::from_env();
    let db = pg.new_db("foreign");
    let (k1, k2) = (Arc::new(RootKey::generate()), Arc::new(RootKey::generate()));
    let (a, _) = Store::open(pg.shared_backend(&db), Keyring::new(k1.clone()), StoreOptions::default()).await.unwrap();
    drop(a);
    let Err(e) = Store::open(pg.shared_backend(&db), Keyring::new(k2.clone()), StoreOptions::default()).await else {
        panic!("a Safe with another root key started on the database");
    };
    assert!(matches!(e, StoreError::ForeignKey { sealing, ours } if sealing == k1.id() && ours == k2.id()), "{e}");
    assert!(e.to_string().contains("same root key store"), "{e}");
}

#[test]
fn a_duty_is_held_by_one_safe_at_a_time_and_freed_when_its_connection_goes() {
    let pg = Pg::from_env();
    let db = pg.new_db("duty");
    let (one, two) = (pg.backend(&db), pg.backend(&db));
    let take = |b: &aegis_postgres::PgBackend, d| b.shared().unwrap().take_duty(d).unwrap();
    let held = take(&one, Duty::KubernetesSync).expect("a free duty is taken");
    assert!(held.still_held());
    assert!(take(&two, Duty::KubernetesSync).is_none(), "a duty held by one Safe was given to another");
    let rotation = take(&two, Duty::RootKeyRotation).expect("another duty is free");
    drop(held);
    let t = Instant::now();
    let again = loop {
        if let Some(h) = take(&two, Duty::KubernetesSync) {
            break h;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "a dropped duty was not freed");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The database ends the holder's connection: the holder sees it lost, and another Safe may take it.
    pg.psql(&db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'aegis-duty'");
    let t = Instant::now();
    while again.still_held() || rotation.still_held() {
        assert!(t.elapsed() < Duration::from_secs(5), "a duty whose connection ended still looks held");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(take(&one, Duty::KubernetesSync).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_is_read_page_by_page_and_a_start_up_loads_every_page() {
    let pg = Pg::from_env();
    let db = pg.new_db("pages");
    let b = pg.backend(&db);
    let key = Arc::new(RootKey::generate());
    let ring = Keyring::new(key.clone());
    // More records than a page of the loader (4096), written by a Safe, then one changed again.
    let (store, _) = Store::open(pg.shared_backend(&db), ring.clone(), StoreOptions::default()).await.unwrap();
    let group: Vec<(SecretName, Mutation)> = (0..5000).map(|i| (name(&format!("p{i:05}")), put("v1"))).collect();
    store.apply_group(group).await.unwrap();
    store.apply(name("p00000"), put("v2")).await.unwrap();
    drop(store);

    let log = b.shared().unwrap();
    let first = log.changes_since(0, 10).unwrap();
    assert_eq!(first.records.len(), 10);
    let next = log.changes_since(first.last, 10).unwrap();
    assert!(next.last > first.last);
    assert!(next.records.iter().all(|(n, _)| !first.records.iter().any(|(m, _)| m == n)), "pages overlap");
    let all = log.changes_since(0, 100_000).unwrap();
    assert_eq!(all.records.len(), 5000, "each name once, at its latest change");
    assert_eq!(all.records.last().unwrap().0.as_str(), "p00000", "the latest change comes last");

    let (store, report) = Store::open(pg.shared_backend(&db), ring, StoreOptions::default()).await.unwrap();
    assert_eq!((store.len(), report.loaded), (5000, 5000));
    assert!(report.quarantined.is_empty());
    assert_eq!(store.get(&name("p00000")).unwrap().doc.live().unwrap().1.expose(), "v2");
    assert_eq!(store.get(&name("p04999")).unwrap().doc.live().unwrap().1.expose(), "v1");
}
