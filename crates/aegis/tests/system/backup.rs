//! Backup and restore end to end: real Safes, the real `aegis` command, a
//! backup taken under concurrent writes and restored into another Safe with
//! another root key, and the files a restore must refuse.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use serde_json::Value;

use crate::common::delivery::{names, path_str};
use crate::common::*;

const BASE: usize = 300;
const WRITERS: usize = 8;

fn value(name: &str) -> String {
    // About 1 KiB each, so the file spans several of age's 64 KiB chunks.
    format!("{name}:{}", "v".repeat(1000))
}

/// Writes `BASE` secrets, then keeps `WRITERS` writers going while `during`
/// runs; returns what `during` gave and the names of the writes acknowledged before it started.
async fn under_writes<T: Send + 'static>(safe: &Safe, during: impl FnOnce() -> T + Send + 'static) -> (T, Vec<String>) {
    let admin = safe.admin_env();
    let client = safe.client(&admin).await;
    for i in 0..BASE {
        let name = format!("base-{i:04}");
        client.put(&name, &PutSecret::new(SecretValue::new(value(&name)))).await.unwrap();
    }
    client.put("base-0007", &PutSecret::new(SecretValue::new("second version"))).await.unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let name = format!("live-{w}-{i:05}");
                    client.put(&name, &PutSecret::new(SecretValue::new(value(&name)))).await.unwrap();
                    acked.lock().unwrap().push(name);
                    i += 1;
                }
            })
        })
        .collect();
    // Let the writers get going, then note what is acknowledged before the backup starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<String> = acked.lock().unwrap().clone();
    let out = tokio::task::spawn_blocking(during).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let after = acked.lock().unwrap().len();
    assert!(after > before.len(), "the writers must have gone on during the backup ({} then {after})", before.len());
    (out, before)
}

/// `BASE` secrets of about 1 KiB, `s-0000`…
async fn fill(client: &aegis_sdk::Client) {
    for i in 0..BASE {
        let name = format!("s-{i:04}");
        client.put(&name, &PutSecret::new(SecretValue::new(value(&name)))).await.unwrap();
    }
}

fn identity(dir: &Path) -> (std::path::PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join("backup-identity.txt");
    use age::secrecy::ExposeSecret;
    std::fs::write(&path, format!("# a backup recipient\n{}\n", id.to_string().expose_secret())).unwrap();
    (path, id.to_public().to_string())
}

fn secrets(safe: &Safe) -> usize {
    let s: Value = serde_json::from_str(&ok(safe.aegis(&safe.admin_env(), &["status", "-o", "json"]))).unwrap();
    s["secrets"].as_u64().unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_writes_restores_every_acknowledged_write_into_another_safe() {
    let a = Safe::dev();
    let work = tempfile::tempdir().unwrap();
    let (id_file, recipient) = identity(work.path());
    let file = work.path().join("a.backup");

    let (out, acked) = {
        let (aegis_env, file, recipient) = (a.admin_env(), file.clone(), recipient.clone());
        under_writes(&a, move || {
            cmd(AEGIS, &aegis_env)
                .args(["backup", "--out"])
                .arg(&file)
                .args(["--recipient", &recipient, "-o", "json"])
                .output()
                .unwrap()
        })
        .await
    };
    let summary: Value = serde_json::from_str(&ok(out)).unwrap();
    let in_file = summary["secrets"].as_u64().unwrap() as usize;
    assert!(in_file >= BASE + acked.len(), "{summary}: {} acknowledged before the backup", acked.len());
    assert!(!work.path().join("a.backup.partial").exists(), "the partial file must be renamed");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let raw = std::fs::read(&file).unwrap();
    assert!(!raw.windows(5).any(|w| w == b"vvvvv"), "the backup holds plaintext");

    // Checked by the Safe (root key) and here (identity), without restoring.
    let by_safe: Value =
        serde_json::from_str(&ok(a.aegis(&a.admin_env(), &["backup", "verify", path_str(&file), "-o", "json"])))
            .unwrap();
    assert_eq!(by_safe["secrets"].as_u64().unwrap() as usize, in_file);
    let here = ok(cmd(AEGIS, &HashMap::new())
        .args(["backup", "verify", path_str(&file), "--identity", path_str(&id_file)])
        .output()
        .unwrap());
    assert!(here.contains(&format!("backup OK: {in_file} secrets")), "{here}");

    // Another Safe, another root key: refused with the root key, restored with the identity.
    let mut b = Safe::dev();
    fails(b.aegis(&b.admin_env(), &["restore", "--in", path_str(&file)]), 1, "not encrypted to the Safe's root key");
    assert_eq!(secrets(&b), 0, "a refused restore must change nothing");
    let done: Value = serde_json::from_str(&ok(
        b.aegis(&b.admin_env(), &["restore", "--in", path_str(&file), "--identity", path_str(&id_file), "-o", "json"])
    ))
    .unwrap();
    assert_eq!(done["restored"].as_u64().unwrap() as usize, in_file, "{done}");
    b.restart();
    b.wait_ready();
    let client = b.client(&b.admin_env()).await;
    for name in acked.iter().chain(["base-0000".to_owned(), format!("base-{:04}", BASE - 1)].iter()) {
        let got = client.get(name, None).await.unwrap_or_else(|e| panic!("{name} acknowledged before the backup: {e}"));
        assert_eq!(got.value.expose(), value(name), "{name}");
    }
    let history = client.history("base-0007").await.unwrap();
    assert_eq!(history.versions.len(), 2, "every version is restored");
    assert_eq!(client.get("base-0007", None).await.unwrap().value.expose(), "second version");

    // A workload may not take a backup.
    let workload = a.workload_env("billing");
    fails(a.aegis(&workload, &["backup", "--out", path_str(&work.path().join("w.backup"))]), 4, "");

    // Each Safe's audit trail records the backup and the restore.
    let trail = |s: &Safe| std::fs::read_to_string(s.data_dir().join("data/audit/audit.log")).unwrap();
    assert!(trail(&a).contains("\"action\":\"backup\""), "no backup line in A's audit trail");
    assert!(trail(&b).contains("\"action\":\"restore\""), "no restore line in B's audit trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_cut_reordered_and_foreign_backups_are_refused_and_nothing_is_restored() {
    let a = Safe::dev();
    let admin = a.admin_env();
    let client = a.client(&admin).await;
    fill(&client).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("good.backup");
    ok(a.aegis(&admin, &["backup", "--out", path_str(&file)]));
    let good = std::fs::read(&file).unwrap();
    assert!(good.len() > 4 * 65_552, "the file must span several chunks ({} bytes)", good.len());

    // The payload starts after the header's MAC line and the 16-byte nonce; chunks are 64 KiB + 16.
    let mac_line = good.windows(4).position(|w| w == b"\n---").unwrap() + 1;
    let payload = mac_line + good[mac_line..].iter().position(|&c| c == b'\n').unwrap() + 1 + 16;
    let chunk = 65_552;
    let variants: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped",
            {
                let mut f = good.clone();
                f[payload + chunk + 100] ^= 1;
                f
            },
            "altered or damaged",
        ),
        ("cut", good[..good.len() - 2000].to_vec(), "cut short"),
        ("cut-at-chunk", good[..payload + 2 * chunk].to_vec(), "truncated (cut short)"),
        (
            "reordered",
            {
                let mut f = good.clone();
                let (one, two) = (payload + chunk, payload + 2 * chunk);
                let first = f[one..two].to_vec();
                f.copy_within(two..two + chunk, one);
                f[two..two + chunk].copy_from_slice(&first);
                f
            },
            "altered or damaged",
        ),
        (
            "header",
            {
                let mut f = good.clone();
                f[20] ^= 1;
                f
            },
            "header",
        ),
        ("not-a-backup", b"hello, I am not a backup\n".to_vec(), "not an Aegis backup"),
        ("empty", Vec::new(), "empty or cut short"),
    ];
    // Into an emptied Safe: a fresh one with the same root key is A itself after a wipe; use
    // A with --replace instead, and check that nothing changed.
    put_marker(&client).await;
    for (what, bytes, msg) in &variants {
        let path = work.path().join(format!("{what}.backup"));
        std::fs::write(&path, bytes).unwrap();
        let o = a.aegis(&admin, &["restore", "--replace", "--in", path_str(&path)]);
        assert!(!o.status.success(), "{what}: restored");
        let err = stderr(&o);
        assert!(err.contains(msg) && err.contains("nothing was restored"), "{what}: {err}");
        let o = a.aegis(&admin, &["backup", "verify", path_str(&path)]);
        assert!(!o.status.success() && stderr(&o).contains(msg), "{what} verify: {}", stderr(&o));
        assert_eq!(client.get("s-0001", None).await.unwrap().value.expose(), "marker", "{what} changed a secret");
    }
    // Without --replace, a Safe that holds secrets is refused before the file is sent.
    fails(a.aegis(&admin, &["restore", "--in", path_str(&file)]), 6, "--replace");
    // With it, the good file restores and replaces.
    let done: Value =
        serde_json::from_str(&ok(a.aegis(&admin, &["restore", "--replace", "--in", path_str(&file), "-o", "json"])))
            .unwrap();
    assert_eq!(done["replaced"].as_u64().unwrap() as usize, BASE);
    assert_eq!(client.get("s-0001", None).await.unwrap().value.expose(), value("s-0001"));
    // A backup is never written over an existing file.
    fails(a.aegis(&admin, &["backup", "--out", path_str(&file)]), 64, "exists");
}

async fn put_marker(client: &aegis_sdk::Client) {
    client.put("s-0001", &PutSecret::new(SecretValue::new("marker"))).await.unwrap();
}

use std::os::unix::fs::PermissionsExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transfer_runs_at_a_time_and_an_oversized_file_is_refused() {
    let a = Safe::dev_with(&["--max-restore-bytes", "250000"], None);
    let admin = a.admin_env();
    let client = a.client(&admin).await;
    fill(&client).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.backup");
    ok(a.aegis(&admin, &["backup", "--out", path_str(&file)]));
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 250_000 && bytes.len() < 500_000, "{} bytes", bytes.len());

    // Over --max-restore-bytes: refused with 413, and the client gets the answer.
    let o = a.aegis(&admin, &["restore", "--replace", "--in", path_str(&file)]);
    assert!(stderr(&o).contains("(413)") && stderr(&o).contains("larger than 250000 bytes"), "{}", stderr(&o));
    let o = a.aegis(&admin, &["backup", "verify", path_str(&file)]);
    assert!(stderr(&o).contains("larger than 250000 bytes"), "{}", stderr(&o));

    // A check whose file arrives slowly holds the one transfer slot: a backup meanwhile is refused.
    let first = bytes[..65_536].to_vec();
    let slow = futures::stream::unfold(0u8, move |step| {
        let first = first.clone();
        async move {
            match step {
                0 => Some((Ok(first), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    None
                }
                _ => None,
            }
        }
    });
    let checker = client.clone();
    let held = tokio::spawn(async move { checker.verify_backup(slow, None, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (env, out) = (admin.clone(), work.path().join("second.backup"));
    let o = tokio::task::spawn_blocking(move || cmd(AEGIS, &env).args(["backup", "--out"]).arg(&out).output().unwrap())
        .await
        .unwrap();
    fails(o, 6, "another backup, restore or check is running");
    assert!(!work.path().join("second.backup").exists() && !work.path().join("second.backup.partial").exists());
    let e = held.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("cut short") || e.contains("truncated"), "{e}");
    // Once it is over, the next one runs.
    ok(a.aegis(&admin, &["backup", "--out", path_str(&work.path().join("third.backup"))]));

    // Scheduled backups into a directory keep the newest N.
    let dir = work.path().join("scheduled");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a backup").unwrap();
    let mut taken = Vec::new();
    for _ in 0..3 {
        let o: Value = serde_json::from_str(&ok(
            a.aegis(&admin, &["backup", "--out-dir", path_str(&dir), "--keep", "2", "-o", "json"])
        ))
        .unwrap();
        taken.push(o["file"].as_str().unwrap().to_owned());
    }
    let mut left = names(&dir);
    left.sort();
    let newest: Vec<String> =
        taken[1..].iter().map(|f| Path::new(f).file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(left, [newest[0].clone(), newest[1].clone(), "notes.txt".to_owned()], "{taken:?}");
}
