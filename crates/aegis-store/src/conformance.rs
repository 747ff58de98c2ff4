//! The backend conformance suite: one set of checks every [`Backend`] adapter
//! must pass unchanged (the directory backend today, PostgreSQL next).
//!
//! An adapter's test file implements [`Subject`] (how to get an empty place,
//! open a backend on it, and damage a record there) and calls
//! [`backend_conformance!`](crate::backend_conformance), which makes one test per
//! check. The checks go through the [`Store`] where the behaviour is the
//! store's (versions, deletes, rotation, restart) and through the backend
//! directly where it is the port's contract (round trips, groups, listing).
//! Built only with the `conformance` feature: test support, not product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aegis_core::secret::{SecretMeta, SecretValue, VersionNumber};
use aegis_core::SecretName;
use aegis_crypto::{Keyring, RootKey};
use time::OffsetDateTime;

use crate::{Backend, LoadReport, Mutation, SealedRecord, Store, StoreOptions};

/// A backend adapter under test.
pub trait Subject: Send + Sync {
    /// Where records live: a directory, a database schema.
    type Place: Send + Sync;

    /// A new, empty place.
    fn empty(&self) -> Self::Place;

    /// Opens the backend on `place`; called again to model a restart.
    fn open(&self, place: &Self::Place) -> Arc<dyn Backend>;

    /// Changes the stored bytes of `name`'s record, as a bad disk or a person
    /// editing the store would (the record must then fail to open).
    fn damage(&self, place: &Self::Place, name: &SecretName);
}

fn name(s: &str) -> SecretName {
    SecretName::parse_stored(s).unwrap_or_else(|e| panic!("test name {s:?}: {e}"))
}

fn keyring() -> Keyring {
    Keyring::new(Arc::new(RootKey::generate()))
}

fn put(value: &str) -> Mutation {
    let meta = SecretMeta::defaults(OffsetDateTime::now_utc());
    Mutation::Put { value: SecretValue::new(value), meta, cas: None, view: None, stamps: None }
}

async fn open<S: Subject>(s: &S, place: &S::Place, ring: &Keyring) -> (Store, LoadReport) {
    Store::open(s.open(place), ring.clone(), StoreOptions::default()).await.unwrap()
}

async fn write(store: &Store, n: &str, value: &str) {
    store.apply(name(n), put(value)).await.unwrap_or_else(|e| panic!("writing {n}: {e}"));
}

/// The live value of `n`, if it has one.
fn live(store: &Store, n: &str) -> Option<String> {
    let entry = store.get(&name(n))?;
    entry.doc.live().map(|(_, v)| v.expose().to_owned())
}

fn sorted(names: Vec<SecretName>) -> Vec<String> {
    let mut v: Vec<String> = names.into_iter().map(String::from).collect();
    v.sort();
    v
}

fn records(pairs: &[(&str, &[u8])]) -> Vec<SealedRecord> {
    pairs.iter().map(|(n, b)| (name(n), b.to_vec())).collect()
}

/// Records written are listed and read back byte for byte; an overwrite
/// replaces; a missing record is an error, not empty bytes.
pub async fn records_round_trip<S: Subject>(s: &S) {
    let place = s.empty();
    let b = s.open(&place);
    assert!(b.list().unwrap().names.is_empty(), "a new place holds no record");
    let written = records(&[("billing", b"one"), ("k8s:db", b"two"), ("raw:x", &[0, 255, 7])]);
    assert!(b.write_batch(&written).iter().all(Result::is_ok));
    assert_eq!(sorted(b.list().unwrap().names), ["billing", "k8s:db", "raw:x"]);
    for (n, bytes) in &written {
        assert_eq!(&b.read(n).unwrap(), bytes, "{n}");
    }
    assert!(b.write_batch(&records(&[("billing", b"one-b")]))[0].is_ok());
    assert_eq!(b.read(&name("billing")).unwrap(), b"one-b");
    assert!(b.read(&name("absent")).is_err(), "reading a missing record must fail");
    // One open backend per place at a time (the directory backend locks it).
    drop(b);
    let again = s.open(&place);
    assert_eq!(again.read(&name("billing")).unwrap(), b"one-b", "a reopened backend reads the same");
}

/// A group write stores every record; the store's groups are all visible
/// after a restart.
pub async fn group_writes_are_whole<S: Subject>(s: &S) {
    let place = s.empty();
    let b = s.open(&place);
    b.write_group(&records(&[("a", b"1"), ("b", b"1"), ("c", b"1")])).unwrap();
    b.write_group(&records(&[("a", b"2"), ("c", b"2")])).unwrap();
    let read = |n: &str| b.read(&name(n)).unwrap();
    assert_eq!((read("a"), read("b"), read("c")), (b"2".to_vec(), b"1".to_vec(), b"2".to_vec()));
    let (place, ring) = (s.empty(), keyring());
    let (store, _) = open(s, &place, &ring).await;
    let group = vec![(name("x"), put("vx")), (name("y"), put("vy")), (name("x"), put("vx2"))];
    assert_eq!(store.apply_group(group).await.unwrap().len(), 2);
    drop(store);
    let (store, report) = open(s, &place, &ring).await;
    assert!(report.quarantined.is_empty(), "{:?}", report.quarantined);
    assert_eq!((live(&store, "x"), live(&store, "y")), (Some("vx2".into()), Some("vy".into())));
}

/// Version history, with its bound, survives a restart.
pub async fn versions_survive_restart<S: Subject>(s: &S) {
    let place = s.empty();
    let ring = keyring();
    let opts = StoreOptions { max_versions: 3, ..StoreOptions::default() };
    let store = Store::open(s.open(&place), ring.clone(), opts.clone()).await.unwrap().0;
    for v in ["v1", "v2", "v3", "v4"] {
        write(&store, "billing", v).await;
    }
    drop(store);
    let store = Store::open(s.open(&place), ring, opts).await.unwrap().0;
    let doc = store.get(&name("billing")).unwrap().doc.clone();
    assert_eq!(doc.current, 4);
    let kept: Vec<u64> = doc.versions.iter().map(|v| v.number.get()).collect();
    assert_eq!(kept, [2, 3, 4], "three versions kept, oldest dropped");
    assert_eq!(doc.version(2).unwrap().value.as_ref().unwrap().expose(), "v2");
}

/// Delete, undelete and destroy are durable.
pub async fn deletes_and_destroys_survive_restart<S: Subject>(s: &S) {
    let place = s.empty();
    let ring = keyring();
    let (store, _) = open(s, &place, &ring).await;
    write(&store, "billing", "v1").await;
    write(&store, "billing", "v2").await;
    let one = VersionNumber::parse("1").unwrap();
    store.apply(name("billing"), Mutation::Destroy(one)).await.unwrap();
    store.apply(name("billing"), Mutation::Delete).await.unwrap();
    drop(store);
    let (store, _) = open(s, &place, &ring).await;
    let doc = store.get(&name("billing")).unwrap().doc.clone();
    assert!(doc.deleted.is_some(), "the delete survived");
    assert!(doc.version(1).unwrap().value.is_none(), "the destroyed value stays destroyed");
    assert_eq!(live(&store, "billing"), None);
    store.apply(name("billing"), Mutation::Undelete).await.unwrap();
    drop(store);
    let (store, _) = open(s, &place, &ring).await;
    assert_eq!(live(&store, "billing").as_deref(), Some("v2"));
}

/// A record that no longer opens is set aside and reported; the others load,
/// and the next start no longer sees it.
pub async fn a_damaged_record_is_set_aside<S: Subject>(s: &S) {
    let place = s.empty();
    let ring = keyring();
    let (store, _) = open(s, &place, &ring).await;
    write(&store, "good", "kept").await;
    write(&store, "bad", "lost").await;
    drop(store);
    s.damage(&place, &name("bad"));
    let (store, report) = open(s, &place, &ring).await;
    let aside: Vec<&str> = report.quarantined.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(aside, ["bad"]);
    assert!(!report.quarantined[0].reason.contains("lost"), "a reason never holds a value");
    assert_eq!((live(&store, "good").as_deref(), store.get(&name("bad")).is_none()), (Some("kept"), true));
    drop(store);
    let (store, report) = open(s, &place, &ring).await;
    assert!(report.quarantined.is_empty(), "set aside means out of the listing: {:?}", report.quarantined);
    write(&store, "bad", "new").await;
    assert_eq!(live(&store, "bad").as_deref(), Some("new"), "the name is free again");
}

/// After a root key rotation every record opens with the new key alone and
/// none with the old one.
pub async fn rotation_reseals_every_record<S: Subject>(s: &S) {
    let place = s.empty();
    let old = keyring();
    let (store, _) = open(s, &place, &old).await;
    for i in 0..40 {
        write(&store, &format!("s{i}"), &format!("v{i}")).await;
    }
    let new = keyring();
    assert_eq!(store.rotate(new.clone()).await.unwrap(), 40);
    drop(store);
    let (store, report) = open(s, &place, &new).await;
    assert_eq!((store.len(), report.quarantined.len()), (40, 0));
    assert_eq!(live(&store, "s39").as_deref(), Some("v39"));
    drop(store);
    assert!(Store::open(s.open(&place), old, StoreOptions::default()).await.is_err(), "the old key opens nothing");
}

/// Many writers at once: every acknowledged write is there after a restart,
/// in order per secret.
pub async fn concurrent_writers_lose_nothing<S: Subject>(s: &S) {
    let place = s.empty();
    let ring = keyring();
    let store = Arc::new(open(s, &place, &ring).await.0);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 1..=8 {
                    write(&store, &format!("own-{w}"), &format!("{i}")).await;
                    write(&store, "shared", &format!("{w}-{i}")).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let last_shared = live(&store, "shared");
    drop(store);
    let (store, _) = open(s, &place, &ring).await;
    for w in 0..16 {
        let doc = store.get(&name(&format!("own-{w}"))).unwrap().doc.clone();
        assert_eq!((doc.current, live(&store, &format!("own-{w}"))), (8, Some("8".to_owned())));
    }
    assert_eq!(store.get(&name("shared")).unwrap().doc.current, 128);
    assert_eq!(live(&store, "shared"), last_shared);
}

/// Long names, every prefix, non-ASCII and names older versions accepted
/// round-trip through the store and a restart.
pub async fn long_and_odd_names_round_trip<S: Subject>(s: &S) {
    let place = s.empty();
    let ring = keyring();
    let odd = [
        "n".repeat(253),
        format!("k8s:{}", "x".repeat(249)),
        "raw:a.b_c-d".to_owned(),
        "ünïcødé-名前".to_owned(),
        "a?b".to_owned(),
        "x@y%41=z".to_owned(),
        ".leading-dot".to_owned(),
        "=looks-hashed".to_owned(),
        "ü".repeat(126),
    ];
    let (store, _) = open(s, &place, &ring).await;
    for (i, n) in odd.iter().enumerate() {
        write(&store, n, &format!("value-{i}")).await;
    }
    drop(store);
    let (store, report) = open(s, &place, &ring).await;
    assert!(report.quarantined.is_empty(), "{:?}", report.quarantined);
    assert_eq!(store.len(), odd.len());
    for (i, n) in odd.iter().enumerate() {
        assert_eq!(live(&store, n), Some(format!("value-{i}")), "{n}");
    }
}

/// One `#[tokio::test]` per conformance check, for the subject `$subject`.
#[macro_export]
macro_rules! backend_conformance {
    ($subject:expr) => {
        $crate::backend_conformance!(@tests $subject;
            records_round_trip,
            group_writes_are_whole,
            versions_survive_restart,
            deletes_and_destroys_survive_restart,
            a_damaged_record_is_set_aside,
            rotation_reseals_every_record,
            concurrent_writers_lose_nothing,
            long_and_odd_names_round_trip
        );
    };
    (@tests $subject:expr; $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::$check(&$subject).await;
            }
        )+
    };
}
