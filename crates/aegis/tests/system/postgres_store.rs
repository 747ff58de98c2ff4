//! The Safe on PostgreSQL: a real server (Debian's, started by
//! `scripts/postgres.sh` in a directory of each test's own), the real `aegis`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use serde_json::Value;

use crate::common::delivery::path_str;
use crate::common::postgres::Postgres;
use crate::common::*;

fn flags(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_live_in_postgresql_sealed_survive_a_restart_and_a_dump_holds_no_value() {
    let pg = Postgres::start();
    pg.create_db("safe_a");
    let f = pg.safe_flags("safe_a");
    let mut safe = Safe::dev_with(&flags(&f), None);
    let admin = safe.admin_env();
    let client = safe.client(&admin).await;
    let values: Vec<(String, String)> =
        (0..40).map(|i| (format!("pg-{i:02}"), format!("PLAINTEXT-MARKER-{i:02}-{}", "z".repeat(50)))).collect();
    for (n, v) in &values {
        client.put(n, &PutSecret::new(SecretValue::new(v.clone()))).await.unwrap();
    }
    client.put("pg-03", &PutSecret::new(SecretValue::new("PLAINTEXT-MARKER-second"))).await.unwrap();
    assert!(safe.log_text().contains("records in PostgreSQL"), "{}", safe.log_text());
    // No record file in the data directory: the records are in the database.
    assert!(!files_under(&safe.data_dir().join("data")).iter().any(|p| p.extension().is_some_and(|e| e == "rec")));

    safe.restart();
    safe.wait_ready();
    let client = safe.client(&admin).await;
    for (n, v) in values.iter().filter(|(n, _)| n != "pg-03") {
        assert_eq!(client.get(n, None).await.unwrap().value.expose(), v.as_str(), "{n}");
    }
    assert_eq!(client.history("pg-03").await.unwrap().versions.len(), 2);

    // pg_dump of the database: sealed records only, not one value.
    let out = pg.tool("pg_dump").arg(pg.url("safe_a")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("aegis_records") && dump.len() > 10_000, "a dump of {} bytes", dump.len());
    assert!(!dump.contains("PLAINTEXT-MARKER"), "the dump holds a value");
    assert!(!dump.contains("zzzzzzzzzz"), "the dump holds a value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_safe_s_backup_restores_into_a_postgresql_safe() {
    let dir_safe = Safe::dev();
    let admin = dir_safe.admin_env();
    for i in 0..50 {
        ok(dir_safe.aegis(&admin, &["put", &format!("b{i}"), "--value", &format!("value-{i}")]));
    }
    let work = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let id_file = work.path().join("id.txt");
    std::fs::write(&id_file, age::secrecy::ExposeSecret::expose_secret(&id.to_string())).unwrap();
    let file = work.path().join("dir.backup");
    ok(dir_safe.aegis(&admin, &["backup", "--out", path_str(&file), "--recipient", &id.to_public().to_string()]));

    let pg = Postgres::start();
    pg.create_db("restored");
    let f = pg.safe_flags("restored");
    let mut safe = Safe::dev_with(&flags(&f), None);
    let pg_admin = safe.admin_env();
    let done: Value =
        serde_json::from_str(&ok(safe
            .aegis(&pg_admin, &["restore", "--in", path_str(&file), "--identity", path_str(&id_file), "-o", "json"])))
        .unwrap();
    assert_eq!(done["restored"], 50);
    safe.restart();
    safe.wait_ready();
    for i in [0, 17, 49] {
        assert_eq!(ok(safe.aegis(&pg_admin, &["get", &format!("b{i}")])).trim(), format!("value-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_down_writes_fail_fast_with_503_reads_go_on_and_it_recovers_alone() {
    let pg = Postgres::start();
    pg.create_db("outage");
    let f = pg.safe_flags("outage");
    let safe = Safe::dev_with(&flags(&f), None);
    let admin = safe.admin_env();
    let client = safe.client(&admin).await;
    client.put("before", &PutSecret::new(SecretValue::new("kept"))).await.unwrap();

    pg.script("kill");
    let started = Instant::now();
    let err = client.put("during", &PutSecret::new(SecretValue::new("lost"))).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(err.to_string().contains("unavailable") && err.to_string().contains("nothing was changed"), "{err}");
    assert!(took < Duration::from_secs(5), "a write with the database down took {took:?}");
    // Reads are served from memory meanwhile, and the health port says degraded.
    assert_eq!(client.get("before", None).await.unwrap().value.expose(), "kept");
    let ready = http_ok(safe.health, "/readyz").expect("still ready: reads go on");
    assert!(ready.contains("degraded"), "{ready}");
    assert!(client.get("during", None).await.is_err(), "a refused write must not be visible");

    pg.script("resume");
    // The pool reconnects by itself: no restart of the Safe.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.put("after", &PutSecret::new(SecretValue::new("back"))).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.status(), Some(503), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the Safe did not recover after PostgreSQL came back: {e}"),
        }
    }
    assert_eq!(client.get("after", None).await.unwrap().value.expose(), "back");
    assert!(!http_ok(safe.health, "/readyz").unwrap().contains("degraded"));
}

/// Three Safes on one database, sharing the root key.
async fn replicas(pg: &Postgres, db: &str) -> Vec<Safe> {
    pg.create_db(db);
    let f = pg.safe_flags(db);
    let a = Safe::dev_with(&flags(&f), None);
    let key = a.data_dir().join("root.key");
    let b = Safe::dev_with_root_key(&flags(&f), &key);
    let c = Safe::dev_with_root_key(&flags(&f), &key);
    vec![a, b, c]
}

async fn wait_value(client: &aegis_sdk::Client, name: &str, want: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if let Ok(r) = client.get(name, None).await {
            if r.value.expose() == want {
                return t.elapsed();
            }
        }
        assert!(t.elapsed() < within, "{name} did not become {want:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_one_database_see_each_other_s_writes_and_never_lose_an_update() {
    let pg = Postgres::start();
    let safes = replicas(&pg, "replicas").await;
    let mut clients = Vec::new();
    for s in &safes {
        clients.push(s.client(&s.admin_env()).await);
    }
    // A write on A is read on B and C, pushed by the database's notification.
    let mut took = Vec::new();
    for i in 0..20 {
        let v = format!("from-a-{i}");
        clients[0].put("shared", &PutSecret::new(SecretValue::new(v.clone()))).await.unwrap();
        for c in &clients[1..] {
            took.push(wait_value(c, "shared", &v, Duration::from_secs(5)).await);
        }
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    assert!(p99 < Duration::from_millis(1000), "propagation p99 {p99:?} ({took:?})");

    // A workload's watcher on C is woken by a write on A.
    let workload = safes[2].workload_env("billing");
    let watcher = safes[2].client(&workload).await;
    clients[0].put("billing", &PutSecret::new(SecretValue::new("v1"))).await.unwrap();
    let t = Instant::now();
    loop {
        if let Ok(Some(s)) = watcher.fetch().await {
            if s.data.expose() == "v1" {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(5), "C's workload never saw A's write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Concurrent writes to one secret from all three: every acknowledged write
    // is a version of its own, the others are clean conflicts (409).
    let mut tasks = Vec::new();
    for (r, c) in clients.iter().enumerate() {
        for w in 0..4 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut conflicts = 0;
                for i in 0..15 {
                    let v = format!("r{r}-w{w}-{i}");
                    match c.put("contended", &PutSecret::new(SecretValue::new(v.clone()))).await {
                        Ok(info) => acked.push((info.version, v)),
                        Err(e) if e.status() == Some(409) => conflicts += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (acked, conflicts)
            }));
        }
    }
    let mut acked = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (a, c) = t.await.unwrap();
        acked.extend(a);
        conflicts += c;
    }
    assert!(!acked.is_empty());
    let mut versions: Vec<u64> = acked.iter().map(|(v, _)| *v).collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), acked.len(), "two acknowledged writes got the same version: a lost update");
    // Every Safe converges on the last acknowledged version.
    let (last_version, last_value) = acked.iter().max().unwrap().clone();
    for c in &clients {
        wait_value(c, "contended", &last_value, Duration::from_secs(5)).await;
        assert_eq!(c.get("contended", None).await.unwrap().info.version, last_version);
    }
    // The history kept (the last 10 versions) holds exactly the acknowledged values.
    let history = clients[1].history("contended").await.unwrap();
    for v in &history.versions {
        let want = acked.iter().find(|(n, _)| *n == v.version).map(|(_, val)| val.clone());
        if let Some(want) = want {
            let got = clients[1].get("contended", Some(v.version.try_into().unwrap())).await.unwrap();
            assert_eq!(got.value.expose(), want, "version {}", v.version);
        }
    }
    eprintln!("contended: {} acknowledged, {conflicts} conflicts; propagation p99 {p99:?}", acked.len());

    // Check-and-set across replicas: of two writers expecting the same version, one wins.
    let current = clients[0].get("contended", None).await.unwrap().info.version;
    let cas = |c: &aegis_sdk::Client, v: &str| {
        let (c, v) = (c.clone(), v.to_owned());
        tokio::spawn(async move {
            let mut req = PutSecret::new(SecretValue::new(v));
            req.cas = Some(current);
            c.put("contended", &req).await
        })
    };
    let (x, y) = (cas(&clients[0], "cas-a"), cas(&clients[1], "cas-b"));
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    assert!(x.is_ok() != y.is_ok(), "exactly one check-and-set must win: {x:?} {y:?}");
    let loser = if x.is_ok() { y } else { x };
    assert_eq!(loser.unwrap_err().status(), Some(409));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_32_writers_loses_no_acknowledged_write_and_a_deaf_one_catches_up() {
    let pg = Postgres::start();
    let mut safes = replicas(&pg, "killed").await;
    let mut clients = Vec::new();
    for s in &safes {
        clients.push(s.client(&s.admin_env()).await);
    }
    // 32 writers, spread over the three Safes, each writing names of its own.
    let acked: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (c, acked, stop) = (clients[w % 3].clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (n, v) = (format!("w{w}-{i}"), format!("value-{w}-{i}"));
                if c.put(&n, &PutSecret::new(SecretValue::new(v.clone()))).await.is_ok() {
                    acked.lock().unwrap().push((n, v));
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    safes[1].kill9();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "only {} writes acknowledged", acked.len());
    for c in [&clients[0], &clients[2]] {
        for (n, v) in &acked {
            wait_value(c, n, v, Duration::from_secs(5)).await;
        }
    }

    // C loses its notification connection: it still catches up (every second) and reconnects.
    let out = pg
        .tool("psql")
        .arg(pg.url("postgres"))
        .args([
            "-Atc",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'aegis-listen'",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    clients[0].put("after-deafness", &PutSecret::new(SecretValue::new("heard"))).await.unwrap();
    wait_value(&clients[2], "after-deafness", "heard", Duration::from_secs(5)).await;
    let t = Instant::now();
    while !safes[2].log_text().contains("lost the database's change notifications") {
        assert!(t.elapsed() < Duration::from_secs(5), "C never noticed it lost its notifications");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_directory_safe_to_postgresql_and_back_record_by_record() {
    let mut dir_safe = Safe::dev();
    let admin = dir_safe.admin_env();
    for i in 0..30 {
        ok(dir_safe.aegis(&admin, &["put", &format!("c{i}"), "--value", &format!("copied-{i}")]));
    }
    ok(dir_safe.aegis(&admin, &["put", "c7", "--value", "copied-7-b"]));
    dir_safe.terminate();
    let records = dir_safe.data_dir().join("data");

    let pg = Postgres::start();
    pg.create_db("copied");
    let pw = path_str(&pg.password_file()).to_owned();
    let copy = |from: &str, to: &str, extra: &[&str]| {
        let mut c = cmd(AEGIS, &HashMap::new());
        c.args(["store", "copy", "--from", from, "--to", to, "--store-password-file", &pw, "-o", "json"]).args(extra);
        c.output().unwrap()
    };
    let out: Value = serde_json::from_str(&ok(copy(path_str(&records), &pg.url("copied"), &[]))).unwrap();
    assert_eq!(out["records"], 30, "{out}");
    // Not again into a store that holds records, unless told.
    fails(copy(path_str(&records), &pg.url("copied"), &[]), 6, "--replace");

    // A Safe with the same root key on the database serves what was copied, history included.
    let f = pg.safe_flags("copied");
    let pg_safe = Safe::dev_with_root_key(&flags(&f), &dir_safe.data_dir().join("root.key"));
    let pg_admin = pg_safe.admin_env();
    assert_eq!(ok(pg_safe.aegis(&pg_admin, &["get", "c7"])).trim(), "copied-7-b");
    assert_eq!(ok(pg_safe.aegis(&pg_admin, &["get", "c29"])).trim(), "copied-29");
    let client = pg_safe.client(&pg_admin).await;
    assert_eq!(client.history("c7").await.unwrap().versions.len(), 2);
    drop(pg_safe);

    // And back into an empty directory.
    let back = tempfile::tempdir().unwrap();
    let out: Value = serde_json::from_str(&ok(copy(&pg.url("copied"), path_str(back.path()), &[]))).unwrap();
    assert_eq!(out["records"], 30);
    assert_eq!(files_under(back.path()).iter().filter(|p| p.extension().is_some_and(|e| e == "rec")).count(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_a_sidecar_move_to_another_replica_when_theirs_is_killed() {
    let pg = Postgres::start();
    pg.create_db("failover");
    let f = pg.safe_flags("failover");
    let mut a = Safe::dev_with(&flags(&f), None);
    let b = Safe::dev_replica_of(&flags(&f), &a);
    let both = format!("https://127.0.0.1:{},https://127.0.0.1:{}", a.port, b.port);
    let mut admin = a.admin_env();
    admin.insert("AEGIS_SAFE_URL".into(), both.clone());
    let mut workload = a.workload_env("billing");
    workload.insert("AEGIS_SAFE_URL".into(), both.clone());
    ok(a.aegis(&admin, &["put", "billing", "--value", "one"]));

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("billing.json");
    let mut sidecar = crate::common::delivery::Bg::spawn(
        &workload,
        &["sidecar", "--path", path_str(&file)],
        &work.path().join("sidecar.log"),
    );
    let wait_file = |want: &str| {
        let t = Instant::now();
        while crate::common::delivery::read(&file).as_deref().map(str::trim) != Some(want) {
            assert!(t.elapsed() < Duration::from_secs(10), "the sidecar's file never became {want:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    };
    wait_file("one");

    // A dies: fetches, admin commands and the sidecar go on through B.
    a.kill9();
    let t = Instant::now();
    assert_eq!(ok(a.aegis(&workload, &["fetch"])).trim(), "one");
    ok(a.aegis(&admin, &["put", "billing", "--value", "two"]));
    let moved = t.elapsed();
    assert!(moved < Duration::from_secs(5), "moving to B took {moved:?}");
    let took = wait_file("two");
    assert!(sidecar.running(), "the sidecar must keep running: {}", sidecar.log_text());
    assert!(took < Duration::from_secs(5), "the sidecar took {took:?} to follow B");
    drop(b);
}

/// The key id of a root key file (the id `aegis status` shows).
fn key_id_of(key_file: &std::path::Path) -> String {
    aegis_crypto::RootKey::parse(&std::fs::read_to_string(key_file).unwrap()).unwrap().id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_key_rotation_on_one_replica_is_followed_by_the_others_with_no_failed_read_or_write() {
    let pg = Postgres::start();
    pg.create_db("rotation");
    // One root key file for the three, as replicas share one Kubernetes Secret.
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("root.key");
    let mut f = pg.safe_flags("rotation");
    f.extend(["--root-key-file".to_owned(), path_str(&key_file).to_owned()]);
    let a = Safe::dev_with(&flags(&f), None);
    let mut safes = vec![a];
    for _ in 0..2 {
        let r = Safe::dev_replica_of(&flags(&f), &safes[0]);
        safes.push(r);
    }
    let mut clients = Vec::new();
    for s in &safes {
        clients.push(s.client(&s.admin_env()).await);
    }
    for i in 0..60 {
        clients[i % 3].put(&format!("s{i}"), &PutSecret::new(SecretValue::new(format!("v{i}")))).await.unwrap();
    }
    let old_key = keys.path().join("old.key");
    std::fs::copy(&key_file, &old_key).unwrap();
    let old_id = clients[1].status().await.unwrap().key_id.unwrap();

    // Writers on B and C and readers on all three, while A and B are asked to rotate at once.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (k, c) in clients.iter().enumerate().skip(1) {
        let (c, stop) = (c.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut last = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let v = format!("w{k}-{}", last + 1);
                if let Err(e) = c.put(&format!("writer-{k}"), &PutSecret::new(SecretValue::new(v))).await {
                    return Err(format!("a write on replica {k} failed during the rotation: {e}"));
                }
                last += 1;
            }
            Ok(last)
        }));
    }
    let mut readers = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        let (c, stop) = (c.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let i = n % 60;
                match c.get(&format!("s{i}"), None).await {
                    Ok(r) if r.value.expose() == format!("v{i}") => {}
                    Ok(_) => return Err(format!("replica {k} read a wrong value of s{i}")),
                    Err(e) => return Err(format!("a read on replica {k} failed during the rotation: {e}")),
                }
                n += 1;
            }
            Ok(n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ra, rb) = tokio::join!(clients[0].rotate_root_key(), clients[1].rotate_root_key());
    // Both may succeed one after the other; one refused must say another Safe is rotating.
    for r in [&ra, &rb] {
        if let Err(e) = r {
            assert_eq!(e.status(), Some(409), "{e}");
            assert!(e.to_string().contains("another Safe sharing the database is rotating"), "{e}");
        }
    }
    assert!(ra.is_ok() || rb.is_ok(), "no rotation succeeded: {ra:?} {rb:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut last = Vec::new();
    for w in writers {
        last.push(w.await.unwrap().unwrap());
    }
    for r in readers {
        assert!(r.await.unwrap().unwrap() > 0);
    }
    assert!(last.iter().all(|&n| n > 0), "the writers wrote nothing: {last:?}");

    // All three seal under the key now in the file, and every row is sealed under it.
    let new_id = key_id_of(&key_file);
    assert_ne!(new_id, old_id, "the key file still holds the old key");
    assert!(!keys.path().join("root.key.next").exists(), "the rotation was left unfinished");
    for (k, c) in clients.iter().enumerate() {
        let t = Instant::now();
        while c.status().await.unwrap().key_id.as_deref() != Some(new_id.as_str()) {
            assert!(t.elapsed() < Duration::from_secs(5), "replica {k} did not follow the rotation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let out = pg
        .tool("psql")
        .arg(pg.url("rotation"))
        .args(["-At", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("SELECT DISTINCT encode(substring(record from 6 for 8), 'hex') FROM aegis_records")
        .output()
        .unwrap();
    let ids = ok(out);
    assert_eq!(ids.trim(), new_id, "rows sealed under other keys: {ids}");

    // Every acknowledged write is there on every replica, and B and C restart on the new key alone.
    for (k, n) in last.iter().enumerate() {
        for c in &clients {
            wait_value(c, &format!("writer-{}", k + 1), &format!("w{}-{n}", k + 1), Duration::from_secs(5)).await;
        }
    }
    for s in &mut safes[1..] {
        s.restart();
    }
    for s in &safes[1..] {
        let c = s.client(&s.admin_env()).await;
        for i in [0, 29, 59] {
            assert_eq!(c.get(&format!("s{i}"), None).await.unwrap().value.expose(), format!("v{i}"));
        }
    }
    // B's audit trail (it followed the rotation) verifies with the old and the new key.
    safes[1].terminate();
    let out = safes[1].aegis(
        &HashMap::new(),
        &[
            "audit",
            "verify",
            "--data-dir",
            path_str(&safes[1].data_dir().join("data")),
            "--complete",
            "--root-key-file",
            path_str(&key_file),
            "--root-key-file",
            path_str(&old_key),
        ],
    );
    let text = ok(out);
    assert!(text.starts_with("ok:") && !text.contains("NOT checked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safe_reaches_postgresql_over_tls_checked_against_the_ca_given_and_nothing_else() {
    let pg = Postgres::start_tls();
    pg.create_db("tls");
    let url = format!("{}?sslmode=require", pg.url("tls"));
    let ca = pg.ca_file();
    let base = |url: &str| {
        vec![
            "--store-url".to_owned(),
            url.to_owned(),
            "--store-password-file".to_owned(),
            path_str(&pg.password_file()).to_owned(),
        ]
    };
    let mut f = base(&url);
    f.extend(["--store-ca-file".to_owned(), path_str(&ca).to_owned()]);
    let safe = Safe::dev_with(&flags(&f), None);
    let c = safe.client(&safe.admin_env()).await;
    c.put("over-tls", &PutSecret::new(SecretValue::new("v1"))).await.unwrap();
    assert_eq!(c.get("over-tls", None).await.unwrap().value.expose(), "v1");
    // The server says the Safe's connections are encrypted.
    let out = pg
        .tool("psql")
        .arg(pg.url("tls"))
        .env("PGSSLMODE", "require")
        .args(["-At", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'aegis%'",
        )
        .output()
        .unwrap();
    let counts = ok(out);
    let (tls, plain) = counts.trim().split_once('|').unwrap();
    assert!(tls.parse::<u32>().unwrap() >= 2 && plain == "0", "Safe connections with TLS|without: {counts}");
    drop(safe);

    // A certificate another CA signed is refused; so is sslmode=require without a CA.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(other.path().join("ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success());
    for (extra, want) in [
        (vec!["--store-ca-file".to_owned(), path_str(&other_ca).to_owned()], "certificate"),
        (Vec::new(), "needs the CA that signs the database's certificate"),
    ] {
        let mut f = base(&url);
        f.extend(extra);
        let dir = tempfile::tempdir().unwrap();
        // `timeout`: a Safe that wrongly starts is stopped rather than holding the test.
        let out = cmd("timeout", &HashMap::new())
            .args(["30", AEGIS, "dev", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--health-listen", &format!("127.0.0.1:{}", free_port())])
            .args(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_restart_under_writers_on_three_safes_gives_clean_refusals_then_recovers_with_nothing_lost() {
    let pg = Postgres::start();
    let safes = replicas(&pg, "restart").await;
    let mut clients = Vec::new();
    for s in &safes {
        clients.push(s.client(&s.admin_env()).await);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..12 {
        let (c, stop) = (clients[w % 3].clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut unavailable) = (0u64, 0u64);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match c.put(&format!("w{w}"), &PutSecret::new(SecretValue::new(format!("{n}")))).await {
                    Ok(_) => acked = n,
                    // Clean refusals, each saying what happened: the database is unavailable (503);
                    // the write waited in the queue past its deadline and was not applied (408); a
                    // commit cut off by the crash did commit, and the Safe took up that version (409).
                    Err(e) if matches!(e.status(), Some(503 | 408 | 409)) => {
                        let text = e.to_string();
                        let said = ["unavailable", "was not applied", "re-read it and retry"];
                        assert!(said.iter().any(|s| text.contains(s)), "writer {w}: {text}");
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("writer {w}: not a clean refusal while the database restarted: {e}"),
                }
            }
            (acked, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.script("kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.script("resume");
    // Writes succeed again without restarting any Safe.
    let t = Instant::now();
    loop {
        if clients[2].put("after", &PutSecret::new(SecretValue::new("ok"))).await.is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "writes did not recover after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total_503 = 0;
    for (w, h) in writers.into_iter().enumerate() {
        let (acked, unavailable) = h.await.unwrap();
        total_503 += unavailable;
        assert!(acked > 0, "writer {w} never succeeded");
        // The last acknowledged value (or a later one whose answer was lost) is on every Safe.
        for c in &clients {
            let t = Instant::now();
            loop {
                let got: u64 = c.get(&format!("w{w}"), None).await.unwrap().value.expose().parse().unwrap();
                if got >= acked {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(5), "w{w}: {got} on a Safe, {acked} acknowledged");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(total_503 > 0, "no write was refused while the database was down: the test did not test");
    for s in &safes {
        assert!(!http_ok(s.health, "/readyz").unwrap().contains("degraded"));
    }
    eprintln!(
        "PostgreSQL restart under 12 writers: {total_503} clean 503s; writes back {recovered:?} after it resumed"
    );
}

/// The failover benchmark of docs/BENCHMARKS.md: 50 workload clients given both
/// Safes' URLs fetch every 20 ms from A; A is killed (SIGKILL) and each client's
/// time from the kill to its first fetch answered by B is measured, five rounds.
/// `cargo test -p aegis --test system -- --ignored --nocapture postgres_store::bench_failover`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark (docs/BENCHMARKS.md), not a test"]
async fn bench_failover_of_clients_to_another_replica() {
    const CLIENTS: usize = 50;
    let pg = Postgres::start();
    pg.create_db("failover");
    let f = pg.safe_flags("failover");
    let mut a = Safe::dev_with(&flags(&f), None);
    let admin = a.client(&a.admin_env()).await;
    admin.put("billing", &PutSecret::new(SecretValue::new("v"))).await.unwrap();
    let mut times = Vec::new();
    for round in 0..5 {
        let b = Safe::dev_replica_of(&flags(&f), &a);
        let mut env = a.workload_env("billing");
        env.insert("AEGIS_SAFE_URL".into(), format!("https://127.0.0.1:{},https://127.0.0.1:{}", a.port, b.port));
        let killed: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let c = a.client(&env).await;
            assert!(c.fetch().await.unwrap().is_some(), "the client fetches from A before the kill");
            let killed = killed.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let ok = matches!(c.fetch().await, Ok(Some(_)));
                    let at = *killed.lock().unwrap();
                    if let (true, Some(t)) = (ok, at) {
                        return t.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        *killed.lock().unwrap() = Some(Instant::now());
        a.kill9();
        for t in tasks {
            times.push(
                tokio::time::timeout(Duration::from_secs(30), t).await.expect("a client never failed over").unwrap(),
            );
        }
        eprintln!("round {round}: {CLIENTS} clients moved to B");
        // B becomes the next round's A.
        a = b;
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    eprintln!(
        "failover of {} client fetches after SIGKILL of their Safe: p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        p(0.5),
        p(0.99),
        times[times.len() - 1]
    );
    assert!(p(0.99) < Duration::from_secs(5), "failover p99 {:?} over the 5 s target", p(0.99));
}

/// A policy written through one Safe is in force on the others sharing the
/// database within moments, on their kept-alive connections, and its delete too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_written_on_one_safe_is_in_force_on_the_others() {
    let pg = Postgres::start();
    let safes = replicas(&pg, "policies").await;
    let envs: Vec<_> = safes.iter().map(|s| s.admin_env()).collect();
    ok(safes[0].aegis(&envs[0], &["put", "held", "--value", "v1"]));
    let b = safes[1].client(&envs[1]).await;
    wait_value(&b, "held", "v1", Duration::from_secs(5)).await;
    // A deny on A: B's same connection is refused, naming the policy.
    let sentinel = "spiffe://vsecm.com/workload/vsecm-sentinel/*";
    ok(safes[0].aegis(
        &envs[0],
        &["policy", "put", "no-held", "--spiffe-id", sentinel, "--secret", "held", "--deny", "reveal"],
    ));
    let t = Instant::now();
    loop {
        match b.get("held", None).await {
            Err(e) if e.to_string().contains("policy 'no-held'") => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected refusal: {e}"),
        }
        assert!(t.elapsed() < Duration::from_secs(3), "B still reveals 'held' 3 s after the deny on A");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("a policy written on A was in force on B after {:?}", t.elapsed());
    let listed = ok(safes[2].aegis(&envs[2], &["policy", "list"]));
    assert!(listed.contains("no-held"), "{listed}");
    // Its delete reaches B too.
    ok(safes[2].aegis(&envs[2], &["policy", "delete", "no-held"]));
    wait_value(&b, "held", "v1", Duration::from_secs(3)).await;
}
