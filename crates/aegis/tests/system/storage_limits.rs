//! Storage limits: names of every accepted length can be stored, and a root
//! key rotation that fails on a full disk never stops the Safe from starting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A small tmpfs mounted over a directory; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` over `dir`, keeping the files `dir` held.
    fn over(dir: &Path, size: &str) -> Self {
        let saved = dir.with_extension("saved");
        fs::rename(dir, &saved).unwrap();
        fs::create_dir(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount failed (tests need root)");
        let guard = Self(dir.to_owned());
        for e in fs::read_dir(&saved).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        guard
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with `<dir>/filler`.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

fn secrets() -> Vec<(String, String)> {
    (0..20).map(|i| (format!("rot-{i}"), format!("value-{i}-{}", "x".repeat(200)))).collect()
}

fn assert_all_readable(safe: &Safe, env: &std::collections::HashMap<String, String>) {
    for (name, value) in secrets() {
        assert_eq!(ok(safe.aegis(env, &["get", &name])).trim(), value, "{name}");
    }
}

#[test]
fn failed_rotation_on_a_full_disk_never_stops_start_up_and_is_finished_later() {
    let mut safe = Safe::dev();
    let env = safe.admin_env();
    for (name, value) in secrets() {
        ok(safe.aegis(&env, &["put", &name, "--value", &value]));
    }
    let root = safe.data_dir().join("root.key");
    let next = safe.data_dir().join("root.key.next");
    let data = safe.data_dir().join("data");
    safe.kill9();
    let _mount = Tmpfs::over(&data, "1m");
    // The audit trail elsewhere: on the full disk it would refuse the rotation before it starts (audit.rs).
    let audit = safe.dir.path().join("audit.log").display().to_string();
    safe.args.extend(["--audit-file".to_owned(), audit]);
    safe.start();
    safe.wait_ready();
    assert_all_readable(&safe, &env);

    // A rotation fails on the full disk and leaves its key behind.
    let filler = fill(&data);
    assert!(!safe.aegis(&env, &["rotate-root-key"]).status.success());
    let pending = fs::read(&next).expect("root.key.next is left by the failed rotation");
    // A second attempt reuses that key: never a new one over it.
    assert!(!safe.aegis(&env, &["rotate-root-key"]).status.success());
    assert_eq!(fs::read(&next).unwrap(), pending, "a new rotation replaced the pending key");
    assert_all_readable(&safe, &env);

    // With space again, the next rotate call finishes it with the same key.
    fs::remove_file(&filler).unwrap();
    ok(safe.aegis(&env, &["rotate-root-key"]));
    assert!(!next.exists());
    assert_eq!(fs::read(&root).unwrap(), pending);
    assert_all_readable(&safe, &env);

    // Fail again, then restart on the still-full disk: the Safe starts on the old key.
    let filler = fill(&data);
    assert!(!safe.aegis(&env, &["rotate-root-key"]).status.success());
    let pending = fs::read(&next).unwrap();
    safe.restart();
    safe.wait_ready();
    assert_all_readable(&safe, &env);
    assert!(next.exists());
    assert!(safe.log_text().contains("could not finish the interrupted root key rotation"), "{}", safe.log_text());

    // With space again, the next start finishes it.
    fs::remove_file(&filler).unwrap();
    safe.restart();
    safe.wait_ready();
    assert!(!next.exists());
    assert_eq!(fs::read(&root).unwrap(), pending);
    assert_all_readable(&safe, &env);
    safe.restart();
    safe.wait_ready();
    assert_all_readable(&safe, &env);
    safe.kill9();
}

#[test]
fn an_unreadable_next_key_no_record_needs_is_moved_aside() {
    let mut safe = Safe::dev();
    let env = safe.admin_env();
    ok(safe.aegis(&env, &["put", "kept", "--value", "v1"]));
    safe.kill9();
    let next = safe.data_dir().join("root.key.next");
    fs::write(&next, "not a key").unwrap();
    safe.start();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&env, &["get", "kept"])).trim(), "v1");
    assert!(!next.exists());
    let moved = fs::read_dir(safe.data_dir())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("root.key.next.unreadable-"));
    assert!(moved);
    assert!(safe.log_text().contains("moved it aside"));
    // A rotation now works normally.
    ok(safe.aegis(&env, &["rotate-root-key"]));
    safe.restart();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&env, &["get", "kept"])).trim(), "v1");
}

#[test]
fn an_unreadable_next_key_records_need_stops_start_up_with_a_clear_message() {
    let mut safe = Safe::dev();
    let env = safe.admin_env();
    ok(safe.aegis(&env, &["put", "kept", "--value", "v1"]));
    let root = safe.data_dir().join("root.key");
    let next = safe.data_dir().join("root.key.next");
    let old = fs::read(&root).unwrap();
    ok(safe.aegis(&env, &["rotate-root-key"]));
    safe.kill9();
    // Back on the old key, the records need a key only an unreadable next file could hold.
    fs::write(&root, old).unwrap();
    fs::write(&next, "not a key").unwrap();
    safe.start();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = safe.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "{}", safe.log_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = safe.log_text();
    assert!(log.contains("cannot be loaded without it") && log.contains("restore"), "{log}");
    assert!(next.exists(), "the unreadable key must stay where it is");
}

#[test]
fn longest_names_can_be_stored_and_fit_the_file_system() {
    let mut safe = Safe::dev_offline_kube();
    let env = safe.admin_env();
    let plain = format!("a{}", "b".repeat(252));
    let k8s = format!("k8s:{}", "c".repeat(236));
    assert_eq!(plain.len(), 253);
    assert_eq!(k8s.len(), 240);
    for name in [&plain, &k8s] {
        ok(safe.aegis(&env, &["put", name, "--value", "one"]));
        ok(safe.aegis(&env, &["put", name, "--value", "two"]));
        assert_eq!(ok(safe.aegis(&env, &["get", name])).trim(), "two");
        let h = ok(safe.aegis(&env, &["history", name, "-o", "json"]));
        let h: serde_json::Value = serde_json::from_str(&h).unwrap();
        assert_eq!(h["versions"].as_array().unwrap().len(), 2, "{h}");
        assert!(ok(safe.aegis(&env, &["list"])).contains(name.as_str()));
    }
    safe.restart();
    safe.wait_ready();
    for name in [&plain, &k8s] {
        assert_eq!(ok(safe.aegis(&env, &["get", name])).trim(), "two");
    }
    ok(safe.aegis(&env, &["delete", &plain]));
    safe.restart();
    safe.wait_ready();
    let list = ok(safe.aegis(&env, &["list"]));
    assert!(!list.contains(plain.as_str()) && list.contains(k8s.as_str()), "{list}");
    assert!(ok(safe.aegis(&env, &["list", "--deleted"])).contains(plain.as_str()));
    assert!(!safe.log_text().contains("quarantine"), "{}", safe.log_text());
    for f in files_under(&safe.data_dir().join("data")) {
        let len = f.file_name().unwrap().len();
        assert!(len <= 255, "{} is {len} bytes", f.display());
    }
}
