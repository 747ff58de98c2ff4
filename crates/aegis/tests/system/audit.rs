//! The audit trail, against the real Safe over real mTLS: every action is one
//! event and no value ever reaches it; tampering of each kind is named by
//! `aegis audit verify`; rotation and restarts carry the chain; a full disk
//! or a blocked audit file refuses admin writes with 503 within the deadline
//! while fetches go on, and the gap is recorded when the file recovers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis_core::api::{PutSecret, VsecmUpsert};
use aegis_core::secret::SecretValue;
use aegis_sdk::ClientError;
use common::*;
use serde_json::Value;

/// A value and a template output that must never appear in the trail or on standard output.
const VALUE_MARK: &str = "Zq7-VALUE-MARKER";
const TEMPLATE_MARK: &str = "TPL-OUT";

/// Stops the Safe with SIGTERM (a clean shutdown writes the last anchor).
fn stop(safe: &mut Safe) {
    safe.terminate();
}

fn trail(safe: &Safe) -> PathBuf {
    safe.data_dir().join("data/audit/audit.log")
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn requests<'a>(all: &'a [Value], action: &str) -> Vec<&'a Value> {
    all.iter().filter(|e| e["type"] == "request" && e["action"] == action).collect()
}

fn verify(safe: &Safe, args: &[&str]) -> std::process::Output {
    let mut a = vec!["audit", "verify"];
    a.extend(args);
    safe.aegis(&HashMap::new(), &a)
}

/// The Safe's sealed audit head, kept with its records.
fn head_file(safe: &Safe) -> String {
    safe.data_dir().join("data/audit.head").display().to_string()
}

fn root_key(safe: &Safe) -> String {
    safe.data_dir().join("root.key").display().to_string()
}

/// The value of the audit metric `name` (which must be there).
fn audit_metric(safe: &Safe, name: &str) -> f64 {
    let text = metrics(safe);
    assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "no {name} in the metrics:\n{text}");
    metric(&text, &format!("{name} "))
}

fn put(value: &str) -> PutSecret {
    PutSecret::new(SecretValue::new(value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_is_one_event_and_no_value_or_template_output_is_written() {
    let mut safe = Safe::dev_with(&["--audit-stdout"], None);
    let admin = safe.client(&safe.admin_env()).await;
    let workload = safe.client(&safe.workload_env("billing")).await;
    let value = format!("{{\"pw\":\"{VALUE_MARK}\"}}");
    let mut templated = put(&value);
    templated.template = Some(format!("{{\"x\":\"{TEMPLATE_MARK}-{{{{.pw}}}}\"}}"));
    admin.put("billing", &templated).await.unwrap();
    let fetched = workload.fetch().await.unwrap().unwrap();
    assert!(fetched.data.expose().contains(TEMPLATE_MARK), "the template did not run: {}", fetched.data.expose());
    workload.vsecm_fetch().await.unwrap().unwrap();
    workload.watch_once(0, Duration::from_millis(10)).await.unwrap();
    admin.put("billing", &put(&format!("{VALUE_MARK}-2"))).await.unwrap();
    admin.get("billing", None).await.unwrap();
    admin.list(false).await.unwrap();
    admin.history("billing").await.unwrap();
    admin.rollback("billing", 1.try_into().unwrap()).await.unwrap();
    admin.destroy("billing", 2.try_into().unwrap()).await.unwrap();
    admin.delete("billing").await.unwrap();
    admin.undelete("billing").await.unwrap();
    admin.encrypt(SecretValue::new(VALUE_MARK)).await.unwrap();
    admin.status().await.unwrap();
    let upsert = VsecmUpsert {
        workloads: Some(vec!["billing".into(), "orders".into()]),
        value: SecretValue::new(format!("{VALUE_MARK}-vsecm")),
        ..VsecmUpsert::default()
    };
    admin.vsecm_upsert(&upsert).await.unwrap();
    admin.vsecm_list(true).await.unwrap();
    admin.vsecm_delete(vec!["orders".into()]).await.unwrap();
    let denied = workload.put("billing", &put(VALUE_MARK)).await.unwrap_err();
    assert!(matches!(denied, ClientError::Refused { status: 403, .. }), "{denied}");
    let old_key = safe.dir.path().join("root.key.before-rotation");
    std::fs::copy(root_key(&safe), &old_key).unwrap();
    admin.rotate_root_key().await.unwrap();
    stop(&mut safe);

    let all = events(&trail(&safe));
    let sentinel = admin.spiffe_id();
    for (action, api, min) in [
        ("write", "native", 2),
        ("fetch", "native", 1),
        ("fetch", "vsecm", 1),
        ("watch", "native", 1),
        ("read", "native", 1),
        ("list", "native", 1),
        ("history", "native", 1),
        ("rollback", "native", 1),
        ("destroy", "native", 1),
        ("delete", "native", 1),
        ("undelete", "native", 1),
        ("encrypt", "native", 1),
        ("status", "native", 1),
        ("write", "vsecm", 1),
        ("list", "vsecm", 1),
        ("delete", "vsecm", 1),
        ("rotate-root-key", "native", 1),
    ] {
        let done: Vec<_> =
            requests(&all, action).into_iter().filter(|e| e["api"] == api && e["phase"] != "intent").collect();
        assert!(done.len() >= min, "no {api} {action} event in the trail");
        for e in done {
            for field in ["time", "request_id", "caller", "route", "result", "status", "secrets", "prev"] {
                assert!(!e[field].is_null(), "{action}: no {field} in {e}");
            }
        }
    }
    let rollback = requests(&all, "rollback")[1].clone();
    assert_eq!(
        (rollback["caller"].as_str(), rollback["secrets"][0].as_str()),
        (Some(sentinel.as_str()), Some("billing"))
    );
    assert_eq!((rollback["version"].as_u64(), rollback["result"].as_str()), (Some(3), Some("ok")));
    let fetch = requests(&all, "fetch")[0];
    assert_eq!((fetch["caller"].as_str(), fetch["version"].as_u64()), (Some(workload.spiffe_id().as_str()), Some(1)));
    let vsecm_write =
        requests(&all, "write").into_iter().find(|e| e["api"] == "vsecm" && e["phase"] == "done").unwrap();
    assert_eq!(vsecm_write["secrets"], serde_json::json!(["billing", "orders"]));
    let refused = requests(&all, "write").into_iter().find(|e| e["result"] == "denied").expect("the denied write");
    assert_eq!(
        (refused["status"].as_u64(), refused["caller"].as_str()),
        (Some(403), Some(workload.spiffe_id().as_str()))
    );
    assert!(refused["phase"].is_null(), "a denied write never reaches its intent: {refused}");
    // Each admin write: an intent line before, a done line after, with the same request id.
    for e in all.iter().filter(|e| e["phase"] == "intent") {
        let done = all.iter().filter(|d| d["phase"] == "done" && d["request_id"] == e["request_id"]).count();
        assert_eq!(done, 1, "intent without its done line: {e}");
    }
    let trail_text = std::fs::read_to_string(trail(&safe)).unwrap();
    let log = safe.log_text();
    let stdout_lines = log.lines().filter(|l| l.starts_with("{\"seq\":")).count();
    assert!(stdout_lines >= all.len() - 1, "--audit-stdout prints the lines: {stdout_lines} of {}", all.len());
    for (what, text) in [("the audit trail", &trail_text), ("the Safe's output", &log)] {
        assert!(!text.contains(VALUE_MARK), "a secret value is in {what}");
        assert!(!text.contains(TEMPLATE_MARK), "a template or its output is in {what}");
    }
    let out = verify(
        &safe,
        &[
            "--data-dir",
            &safe.data_dir().join("data").display().to_string(),
            "--complete",
            "--root-key-file",
            &root_key(&safe),
            "--root-key-file",
            &old_key.display().to_string(),
        ],
    );
    let text = ok(out);
    assert!(text.starts_with("ok:") && !text.contains("NOT checked"), "{text}");
}

/// Writes and fetches, then a clean stop: a trail with several anchors.
async fn busy_trail(safe: &mut Safe) {
    let admin = safe.client(&safe.admin_env()).await;
    let workload = safe.client(&safe.workload_env("billing")).await;
    for i in 0..30 {
        admin.put("billing", &put(&format!("v{i}"))).await.unwrap();
        workload.fetch().await.unwrap();
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

/// Runs `aegis audit verify` on `lines` written to a copy; returns (exit code, stderr).
fn verify_copy(safe: &Safe, lines: &[String], extra: &[&str]) -> (Option<i32>, String) {
    let copy = safe.dir.path().join("tampered.log");
    std::fs::write(&copy, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let mut args = vec![copy.to_str().unwrap(), "--root-key-file"];
    let key = root_key(safe);
    args.push(&key);
    let head = head_file(safe);
    if !extra.contains(&"--no-head") {
        args.extend(["--head", &head]);
    }
    args.extend(extra);
    let out = verify(safe, &args);
    (out.status.code(), stderr(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aegis_audit_verify_names_the_first_line_changed_removed_reordered_truncated_or_forged() {
    let mut safe = Safe::dev();
    busy_trail(&mut safe).await;
    stop(&mut safe);
    let good = lines_of(&trail(&safe));
    assert!(good.len() > 60, "{} lines", good.len());
    assert_eq!(verify_copy(&safe, &good, &["--complete"]).0, Some(0));
    let copy = safe.dir.path().join("tampered.log").display().to_string();
    // A done line of a write in the middle of the trail.
    let k = (20..good.len()).find(|&i| good[i].contains("\"result\":\"ok\"")).unwrap();
    let changed = |l: &mut Vec<String>, k: usize| l[k] = l[k].replace("\"result\":\"ok\"", "\"result\":\"denied\"");
    let removed = |l: &mut Vec<String>, k: usize| drop(l.remove(k));
    let reordered = |l: &mut Vec<String>, k: usize| l.swap(k, k + 1);
    let cut_end = |l: &mut Vec<String>, _: usize| drop(l.pop());
    type Tamper = fn(&mut Vec<String>, usize);
    let n = k + 1;
    let cases: [(&str, Tamper, String); 4] = [
        ("changed", changed, format!("{copy}:{n}: this line was changed")),
        ("removed", removed, format!("{copy}:{n}: 1 line(s) removed")),
        ("reordered", reordered, format!("{copy}:{n}: event")),
        ("cut at the end", cut_end, "the newest lines or files were removed".to_owned()),
    ];
    for (what, tamper, expect) in cases {
        let mut l = good.clone();
        tamper(&mut l, k);
        assert!(l[k] != good[k] || what == "cut at the end", "{what}: the test changes line {n}");
        let (code, err) = verify_copy(&safe, &l, &["--complete"]);
        assert_eq!(code, Some(1), "{what} not detected: {err}");
        assert!(err.contains(&expect), "{what}: expected {expect:?} in {err}");
    }
    assert!(verify_copy(&safe, &good, &["--complete"]).1.is_empty());
    // A line cut in the middle (the file ends without its newline).
    let mut text = good.iter().map(|l| format!("{l}\n")).collect::<String>();
    text.truncate(text.len() - 10);
    std::fs::write(&copy, &text).unwrap();
    let out = verify(&safe, &[&copy]);
    fails(out, 1, &format!("{copy}:{}: the file ends in the middle of this line: truncated", good.len()));
    // A forged MAC: the anchor's own line is named.
    let anchor = good.iter().rposition(|l| l.contains("\"type\":\"anchor\"")).unwrap();
    let mut forged = good.clone();
    let at = forged[anchor].find("\"mac\":\"").unwrap() + 7;
    let flip = if &forged[anchor][at..=at] == "a" { "b" } else { "a" };
    forged[anchor].replace_range(at..=at, flip);
    let (code, err) = verify_copy(&safe, &forged, &[]);
    assert_eq!(code, Some(1), "forged MAC not detected");
    assert!(err.contains(&format!("{copy}:{}: this anchor's MAC does not match", anchor + 1)), "{err}");
    // A rewritten chain (every hash recomputed) is caught by the anchor's MAC.
    let rewritten = rechain(&good, k);
    let (code, err) = verify_copy(&safe, &rewritten, &[]);
    assert_eq!(code, Some(1), "a rewritten chain was accepted");
    assert!(err.contains("MAC does not match"), "{err}");
    // Without the root key only the chain is checked, and the output says so.
    let out = verify(&safe, &[trail(&safe).to_str().unwrap()]);
    assert!(ok(out).contains("MACs NOT checked"));
}

/// Changes line `at` and recomputes every later `prev`, as a forger without the key would.
fn rechain(lines: &[String], at: usize) -> Vec<String> {
    use sha2::Digest;
    let mut out: Vec<String> = lines.to_vec();
    out[at] = out[at].replace("\"result\":\"ok\"", "\"result\":\"error\"");
    for i in at + 1..out.len() {
        let prev = hex::encode(sha2::Sha256::digest(out[i - 1].as_bytes()));
        let v: Value = serde_json::from_str(&out[i]).unwrap();
        let old = v["prev"].as_str().unwrap().to_owned();
        out[i] = out[i].replace(&old, &prev);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_chain_across_files_and_a_restart_continues_it() {
    let mut safe = Safe::dev_with(&["--audit-max-file-bytes", "4096"], None);
    busy_trail(&mut safe).await;
    safe.restart();
    safe.wait_ready();
    busy_trail(&mut safe).await;
    stop(&mut safe);
    let files = aegis_audit::files::trail_files(&trail(&safe)).unwrap();
    assert!(files.len() >= 5, "rotated into {} files", files.len());
    let all: Vec<String> = files.iter().flat_map(|f| lines_of(f)).collect();
    let restarts = all.iter().filter(|l| l.contains("goes on from the trail's last line")).count();
    assert_eq!(restarts, 1, "the restart continued the chain");
    let data = safe.data_dir().join("data").display().to_string();
    let text = ok(verify(&safe, &["--data-dir", &data, "--root-key-file", &root_key(&safe), "--complete"]));
    assert!(text.contains(&format!("in {} file(s), chain intact", files.len())), "{text}");
    // The first file of a new one carries the hash of the last line of the one before.
    let first_of_second = lines_of(&files[1])[0].clone();
    let last_of_first = lines_of(&files[0]).pop().unwrap();
    use sha2::Digest;
    assert!(first_of_second.contains(&hex::encode(sha2::Sha256::digest(last_of_first.as_bytes()))));
    // A middle file left out is named.
    let mut gap: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    gap.remove(1);
    let out = verify(&safe, &gap);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains(&format!("{}:1:", files[2].display())), "{}", stderr(&out));
}

/// Unmounts (lazily) when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A small tmpfs; the test fails (never skips) where it cannot be mounted.
fn small_tmpfs(dir: &Path) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run mount: {e}; this test needs root and mount(8)"));
    assert!(status.success(), "mounting a 256 KiB tmpfs failed ({status}); this test needs root (CAP_SYS_ADMIN)");
    Mount(dir.to_owned())
}

/// Fills the file system holding `dir` until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 512];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => return path,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
}

/// Asserts `r` is the 503 of an unwritable audit trail.
fn audit_503<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) {
    match r {
        Err(ClientError::Refused { status: 503, message }) => {
            assert!(
                message.contains("audit trail unavailable") && message.contains("nothing was changed"),
                "{message}"
            );
            assert!(message.contains("docs/AUDIT.md"), "the message says where to look: {message}");
        }
        other => panic!("{what}: expected 503 audit trail unavailable, got {other:?}"),
    }
}

fn gap_lines(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|e| e["type"] == "gap").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_admin_writes_with_503_changes_nothing_and_fetches_go_on() {
    let mnt = tempfile::tempdir().unwrap();
    let _mount = small_tmpfs(mnt.path());
    let audit = mnt.path().join("audit.log");
    // A line per fetch (no folding): folded, the 40 fetches would make one line, which can still fit
    // in the last page of the full tmpfs; a line each runs out of space.
    // No reserve: this test fills the disk to the last byte (the reserve has its own test).
    let args = ["--audit-file", audit.to_str().unwrap(), "--audit-fold-ms", "0", "--audit-reserve-bytes", "0"];
    let mut safe = Safe::dev_with(&args, None);
    let admin = safe.client(&safe.admin_env()).await;
    let workload = safe.client(&safe.workload_env("billing")).await;
    admin.put("billing", &put("v1")).await.unwrap();
    let filler = fill(mnt.path());
    let fetches = 40;
    for _ in 0..fetches {
        assert_eq!(workload.fetch().await.unwrap().unwrap().data.expose(), "v1", "fetches are served from memory");
    }
    let t = Instant::now();
    audit_503("native put", admin.put("billing", &put("v2")).await);
    audit_503("native delete", admin.delete("billing").await);
    audit_503("rollback", admin.rollback("billing", 1.try_into().unwrap()).await);
    audit_503("rotation", admin.rotate_root_key().await);
    let upsert = VsecmUpsert {
        workloads: Some(vec!["billing".into()]),
        value: SecretValue::new("v3"),
        ..VsecmUpsert::default()
    };
    audit_503("VSecM upsert", admin.vsecm_upsert(&upsert).await);
    audit_503("VSecM delete", admin.vsecm_delete(vec!["billing".into()]).await);
    assert!(t.elapsed() < Duration::from_secs(5), "refusals took {:?}", t.elapsed());
    assert_eq!(audit_metric(&safe, "aegis_audit_available"), 0.0, "the metrics say the trail is unavailable");
    assert!(audit_metric(&safe, "aegis_audit_refused_writes_total") >= 6.0);
    assert!(audit_metric(&safe, "aegis_audit_lost_events_total") > 0.0);
    let read = admin.get("billing", None).await.unwrap();
    assert_eq!((read.info.version, read.value.expose()), (1, "v1"), "a refused write changed the store");
    assert_eq!(admin.history("billing").await.unwrap().versions.len(), 1);
    // Space again: writes succeed once the writer retries (within about a second).
    std::fs::remove_file(filler).unwrap();
    let t = Instant::now();
    while admin.put("billing", &put("v2")).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "writes did not resume; log:\n{}", safe.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(audit_metric(&safe, "aegis_audit_available"), 1.0, "available again");
    stop(&mut safe);
    let all = events(&audit);
    let gaps = gap_lines(&all);
    assert_eq!(gaps.len(), 1, "one gap line: {gaps:?}");
    let (lost, refused) = (gaps[0]["lost"].as_u64().unwrap(), gaps[0]["refused"].as_u64().unwrap());
    // Lost: the fetches, reads and the answers of refused writes made while the disk was full.
    assert!(lost > 0 && lost <= fetches + 30, "lost {lost}: {}", gaps[0]);
    assert!(refused >= 6, "refused {refused}: {}", gaps[0]);
    assert!(gaps[0]["from"].as_str().unwrap() <= gaps[0]["time"].as_str().unwrap());
    let head = head_file(&safe);
    let text = ok(verify(
        &safe,
        &[audit.to_str().unwrap(), "--root-key-file", &root_key(&safe), "--head", &head, "--complete"],
    ));
    assert!(text.starts_with("ok:"), "{text}");
    assert!(safe.log_text().contains("the audit trail cannot be written"), "the log says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_audit_file_never_holds_a_request_past_its_deadline() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Duration::from_millis(3000);
    let mut safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    admin.put("billing", &put("v1")).await.unwrap();
    // The audit file becomes a FIFO that nobody reads.
    let fifo = safe.dir.path().join("audit.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    // A line per fetch (no folding), so that fetches alone fill the pipe.
    safe.args.extend(["--audit-file", fifo.to_str().unwrap(), "--audit-fold-ms", "0"].map(str::to_owned));
    safe.extra_env.insert("AEGIS_REQUEST_TIMEOUT_MS".into(), deadline.as_millis().to_string());
    safe.restart();
    safe.wait_ready();
    let admin = safe.client(&safe.admin_env()).await;
    let workload = safe.client(&safe.workload_env("billing")).await;
    let refused_fast = |what: &str, took: Duration| {
        assert!(took < deadline + Duration::from_millis(500), "{what} took {took:?}, past the {deadline:?} deadline");
    };
    // No reader: the file cannot even be opened.
    let t = Instant::now();
    audit_503("put, no reader", admin.put("billing", &put("v2")).await);
    refused_fast("put, no reader", t.elapsed());
    for _ in 0..20 {
        assert_eq!(workload.fetch().await.unwrap().unwrap().data.expose(), "v1");
    }
    // A reader that never reads: the writer fills the pipe and blocks in write(2).
    let stuck = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    for _ in 0..600 {
        workload.fetch().await.unwrap().unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(20), "600 fetches took {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let puts = (0..8).map(|i| {
        let admin = &admin;
        async move {
            let t = Instant::now();
            let r = admin.put("billing", &put(&format!("blocked-{i}"))).await;
            (t.elapsed(), r)
        }
    });
    let fetches = (0..30).map(|_| {
        let workload = &workload;
        async move {
            let t = Instant::now();
            let r = workload.fetch().await;
            (t.elapsed(), r)
        }
    });
    let (puts, fetches) = tokio::join!(futures::future::join_all(puts), futures::future::join_all(fetches));
    for (took, r) in puts {
        refused_fast("put, blocked", took);
        audit_503("put, blocked", r);
    }
    for (took, r) in fetches {
        assert_eq!(r.unwrap().unwrap().data.expose(), "v1");
        assert!(took < Duration::from_secs(1), "a fetch took {took:?} while the audit file was blocked");
    }
    // Blocked for over five seconds now: a write is refused at once instead of waiting for its deadline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t = Instant::now();
    audit_503("put, stalled", admin.put("billing", &put("stalled")).await);
    assert!(t.elapsed() < Duration::from_millis(500), "a write to a stalled trail took {:?}", t.elapsed());
    // Someone reads again: the writer goes on, and writes are accepted again.
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::fs::File::open(reader_path).unwrap().read_to_end(&mut bytes).unwrap();
        bytes
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stuck);
    let t = Instant::now();
    while admin.put("billing", &put("v2")).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "writes did not resume; log:\n{}", safe.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(workload.fetch().await.unwrap().unwrap().data.expose(), "v2");
    stop(&mut safe);
    let bytes = reader.join().unwrap();
    let copy = safe.dir.path().join("from-fifo.log");
    std::fs::write(&copy, &bytes).unwrap();
    let all = events(&copy);
    let gaps = gap_lines(&all);
    assert!(!gaps.is_empty(), "a gap line records the outage");
    let lost: u64 = gaps.iter().map(|g| g["lost"].as_u64().unwrap()).sum();
    let refused: u64 = gaps.iter().map(|g| g["refused"].as_u64().unwrap()).sum();
    let audit_log: Vec<String> = safe.log_text().lines().filter(|l| l.contains("audit")).map(str::to_owned).collect();
    assert!(lost >= 20 && refused >= 2, "lost {lost}, refused {refused}; log:\n{}", audit_log.join("\n"));
    // Writes that waited for their deadline are in the trail: an intent, then their 503.
    let refused_writes = requests(&all, "write").into_iter().filter(|e| e["status"] == 503).count();
    assert!(refused_writes >= 8, "{refused_writes} refused writes recorded");
    assert!(requests(&all, "fetch").len() >= 600, "fetches queued while blocked are written afterwards");
    let head = head_file(&safe);
    let text = ok(verify(
        &safe,
        &[copy.to_str().unwrap(), "--root-key-file", &root_key(&safe), "--head", &head, "--complete"],
    ));
    assert!(text.starts_with("ok:"), "{text}");
}

/// How many requests the lines stand for (a folded line counts its repeats).
fn counted(lines: &[&Value]) -> u64 {
    lines.iter().map(|l| l["count"].as_u64().unwrap_or(1)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_flood_is_folded_into_counted_lines_and_every_fetch_is_counted() {
    let mut safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let workload = safe.client(&safe.workload_env("billing")).await;
    admin.put("billing", &put("v1")).await.unwrap();
    let flood = 400;
    let t = Instant::now();
    for i in 0..flood {
        workload.fetch().await.unwrap().unwrap();
        if i == flood / 2 {
            admin.put("billing", &put("v2")).await.unwrap();
        }
    }
    let took = t.elapsed();
    assert!(workload.vsecm_fetch().await.unwrap().is_some());
    assert_eq!(audit_metric(&safe, "aegis_audit_available"), 1.0);
    // The writer folds what it is handed in batches: wait until it has taken every event.
    let mut folded = audit_metric(&safe, "aegis_audit_folded_requests_total");
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = audit_metric(&safe, "aegis_audit_folded_requests_total");
        if now == folded {
            break;
        }
        folded = now;
    }
    assert!(audit_metric(&safe, "aegis_audit_lines_total") >= 5.0);
    stop(&mut safe);
    let all = events(&trail(&safe));
    let fetches = requests(&all, "fetch");
    let native: Vec<&Value> = fetches.iter().copied().filter(|e| e["api"] == "native").collect();
    assert_eq!(counted(&native), flood, "every fetch is counted: {native:?}");
    // The metric counts exactly the repeats the folded lines stand for: every
    // fetch but the first of each window has been folded.
    let repeats: u64 = all.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert_eq!(folded, repeats as f64, "requests folded in the metrics against the trail's counts");
    assert!(repeats > flood / 2, "only {repeats} of {flood} fetches folded, in {} lines", native.len());
    for version in [1, 2] {
        let series: Vec<&Value> = native.iter().copied().filter(|e| e["version"] == version).collect();
        // The first fetch of a series has its line; the repeats of each fold window (1 s) one more.
        let most = 2 * (took.as_secs() + 2);
        assert!(series.len() as u64 <= most, "{} lines for version {version} in {took:?}", series.len());
        assert!(series[0].get("count").is_none(), "{}", series[0]);
    }
    let repeats = native.iter().find(|e| e.get("count").is_some()).expect("a folded line");
    assert!(repeats["since"].as_str().unwrap() <= repeats["time"].as_str().unwrap(), "{repeats}");
    assert_eq!(counted(&fetches.iter().copied().filter(|e| e["api"] == "vsecm").collect::<Vec<_>>()), 1);
    let writes = requests(&all, "write").into_iter().filter(|e| e["phase"] == "done").count();
    assert_eq!(writes, 2, "admin writes are never folded");
    let data = safe.data_dir().join("data").display().to_string();
    let text = ok(verify(&safe, &["--data-dir", &data, "--root-key-file", &root_key(&safe), "--complete"]));
    assert!(text.starts_with("ok:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aegis_audit_tail_filters_by_caller_and_secret_and_follows_the_file() {
    use std::io::{BufRead, BufReader};
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let workload = safe.client(&safe.workload_env("billing")).await;
    admin.put("billing", &put("v1")).await.unwrap();
    admin.put("orders", &put("v1")).await.unwrap();
    workload.fetch().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let data = safe.data_dir().join("data").display().to_string();
    let caller = workload.spiffe_id();
    let out = ok(safe.aegis(&HashMap::new(), &["audit", "tail", "--data-dir", &data, "--caller", &caller]));
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty() && lines.iter().all(|e| e["caller"] == caller.as_str()), "{out}");
    let out = ok(safe.aegis(&HashMap::new(), &["audit", "tail", "--data-dir", &data, "--secret", "orders", "-n", "1"]));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("\"secrets\":[\"orders\"]") && out.contains("\"phase\":\"done\""), "{out}");
    // -f prints lines written after it started.
    let mut follow = cmd(AEGIS, &HashMap::new())
        .args(["audit", "tail", "-f", "-n", "0", "--secret", "late", "--data-dir", &data])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.put("late", &put("v1")).await.unwrap();
    let stdout = follow.stdout.take().unwrap();
    let reader =
        std::thread::spawn(move || BufReader::new(stdout).lines().take(2).map(Result::unwrap).collect::<Vec<_>>());
    let t = Instant::now();
    while !reader.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(10), "tail -f printed nothing for the new write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let got = reader.join().unwrap();
    assert!(got.iter().all(|l| l.contains("\"secrets\":[\"late\"]")), "{got:?}");
    assert!(got[0].contains("\"intent\"") && got[1].contains("\"done\""), "{got:?}");
}

/// Every line of `files`, in order.
fn all_lines(files: &[PathBuf]) -> Vec<String> {
    files.iter().flat_map(|f| lines_of(f)).collect()
}

/// Removes every anchor and recomputes the chain, as a forger without the key would.
fn without_anchors(lines: &[String]) -> Vec<String> {
    use sha2::Digest;
    let mut out: Vec<String> = Vec::new();
    for l in lines.iter().filter(|l| !l.contains("\"type\":\"anchor\"")) {
        let mut v: Value = serde_json::from_str(l).unwrap();
        let (seq, prev) = match out.last() {
            Some(p) => {
                let pv: Value = serde_json::from_str(p).unwrap();
                (pv["seq"].as_u64().unwrap() + 1, hex::encode(sha2::Sha256::digest(p.as_bytes())))
            }
            None => (0, "0".repeat(64)),
        };
        v["seq"] = seq.into();
        v["prev"] = prev.into();
        out.push(serde_json::to_string(&v).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_cut_back_rewritten_or_missing_its_newest_files_is_refused_and_a_restart_records_the_cut() {
    let mut safe = Safe::dev_with(&["--audit-max-file-bytes", "4096"], None);
    busy_trail(&mut safe).await;
    stop(&mut safe);
    let data = safe.data_dir().join("data").display().to_string();
    let key = root_key(&safe);
    let files = aegis_audit::files::trail_files(&trail(&safe)).unwrap();
    assert!(files.len() >= 4, "rotated into {} files", files.len());
    let text = ok(verify(&safe, &["--data-dir", &data, "--root-key-file", &key, "--complete"]));
    assert!(text.contains("proven: the trail reaches the Safe's sealed head"), "{text}");
    let good = all_lines(&files);
    // Cut back to an earlier anchor: a valid trail by itself, even with --complete.
    let anchors: Vec<usize> = (0..good.len()).filter(|&i| good[i].contains("\"type\":\"anchor\"")).collect();
    let earlier = anchors[anchors.len() / 2];
    let (code, err) = verify_copy(&safe, &good[..=earlier], &["--complete"]);
    assert_eq!(code, Some(1), "a trail cut back to an anchor was accepted: {err}");
    assert!(err.contains("the newest lines or files were removed"), "{err}");
    // Rewritten without anchors (the whole chain recomputed).
    let (code, err) = verify_copy(&safe, &without_anchors(&good), &[]);
    assert_eq!(code, Some(1), "a trail rewritten without anchors was accepted: {err}");
    // With the root key, verify needs the head, and says why.
    let (code, err) = verify_copy(&safe, &good, &["--no-head"]);
    assert_eq!(code, Some(0), "{err}");
    let out = verify(&safe, &[files[0].to_str().unwrap(), "--root-key-file", &key]);
    fails(out, 1, "no audit head at");
    // The newest file deleted.
    let newest = files.last().unwrap();
    let kept = std::fs::read(newest).unwrap();
    std::fs::remove_file(newest).unwrap();
    let out = verify(&safe, &["--data-dir", &data, "--root-key-file", &key]);
    fails(out, 1, "the newest lines or files were removed");
    // A restart does not silently go on from what is left: its start line records the cut.
    safe.start();
    safe.wait_ready();
    stop(&mut safe);
    let after = all_lines(&aegis_audit::files::trail_files(&trail(&safe)).unwrap());
    let start = after.iter().find(|l| l.contains("cut_head_seq")).unwrap_or_else(|| panic!("no cut recorded"));
    assert!(start.contains("\"type\":\"start\"") && start.contains("the trail was cut back"), "{start}");
    assert!(safe.log_text().contains("the audit trail was cut back"), "the log says so");
    let out = verify(&safe, &["--data-dir", &data, "--root-key-file", &key]);
    fails(out, 1, "the trail ended before event");
    // Deleting the head too is recorded as well.
    std::fs::write(newest, kept).unwrap();
    std::fs::remove_file(head_file(&safe)).unwrap();
    safe.start();
    safe.wait_ready();
    stop(&mut safe);
    let after = all_lines(&aegis_audit::files::trail_files(&trail(&safe)).unwrap());
    assert!(after.iter().any(|l| l.contains("\"head_missing\":true")), "a missing head is recorded");
}

/// Peak resident memory (KiB) of `aegis args`, from the kernel's accounting of the child (GNU time).
fn peak_rss_kib(args: &[&str]) -> (std::process::Output, u64) {
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak-rss-kib=%M", AEGIS])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run /usr/bin/time (GNU time measures the memory of verify): {e}"));
    let err = stderr(&out);
    let kib = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak-rss-kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time gave no peak RSS: {err}"));
    (out, kib)
}

/// A trail of at least `bytes` written by the real sink under `key`, with its head at `dir/audit.head`.
async fn large_trail(dir: &Path, key: &aegis_crypto::RootKey, bytes: u64) -> PathBuf {
    use aegis_audit::{Event, Phase, Sink, SinkConfig};
    let path = dir.join("audit/audit.log");
    let cfg =
        SinkConfig { fold: Duration::ZERO, head: Some(dir.join("audit.head")), ..SinkConfig::new(Some(path.clone())) };
    let sink = Sink::start(cfg).unwrap();
    sink.set_key(key.audit_key());
    // 64 names make lines of about 1.5 KB.
    let names: Vec<String> = (0..64).map(|i| format!("a-rather-long-secret-name-{i:04}")).collect();
    let event = |i: usize| Event {
        time: time::OffsetDateTime::now_utc(),
        request_id: format!("r{i}").into(),
        caller: "spiffe://vsecm.com/workload/billing/ns/default/sa/billing/n/billing-0".into(),
        action: "list",
        api: "native",
        route: "/v1/secrets",
        secrets: names.clone(),
        version: None,
        status: 200,
        phase: None,
        policy: None,
    };
    // The sink rotates files while this runs: a file listed may be renamed before its
    // length is read (it is counted at its new name the next time round).
    let size = || -> u64 {
        let files = aegis_audit::files::trail_files(&path).unwrap();
        files.iter().map(|f| f.metadata().map_or(0, |m| m.len())).sum()
    };
    let mut i = 0;
    while size() < bytes {
        for _ in 0..4000 {
            sink.record(event(i));
            i += 1;
        }
        let done = Event { phase: Some(Phase::Done), ..event(i) };
        sink.record_durable(done, Duration::from_secs(60)).await.unwrap();
    }
    sink.close(Duration::from_secs(30)).await;
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aegis_audit_verify_streams_a_large_trail_in_bounded_memory() {
    const TRAIL: u64 = 96 << 20;
    const BOUND_KIB: u64 = 32 << 10;
    let dir = tempfile::tempdir().unwrap();
    let key = aegis_crypto::RootKey::generate();
    let path = large_trail(dir.path(), &key, TRAIL).await;
    let key_file = dir.path().join("root.key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_file).unwrap();
        std::io::Write::write_all(&mut f, key.to_text().as_bytes()).unwrap();
    }
    let head = dir.path().join("audit.head");
    let (out, kib) = peak_rss_kib(&[
        "audit",
        "verify",
        "--audit-file",
        path.to_str().unwrap(),
        "--head",
        head.to_str().unwrap(),
        "--root-key-file",
        key_file.to_str().unwrap(),
        "--complete",
    ]);
    let text = stdout(&out);
    eprintln!("verify of a {} MiB trail: peak RSS {kib} KiB", TRAIL >> 20);
    assert!(out.status.success(), "verify failed: {text}{}", stderr(&out));
    assert!(text.contains("proven: the trail reaches the Safe's sealed head"), "{text}");
    assert!(kib < BOUND_KIB, "verify of a {} MiB trail peaked at {kib} KiB (bound {BOUND_KIB} KiB)", TRAIL >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_flood_cannot_use_the_reserve_and_admin_writes_are_recorded_to_the_last() {
    let mnt = tempfile::tempdir().unwrap();
    let _mount = small_tmpfs(mnt.path());
    let audit = mnt.path().join("audit.log");
    // A line per fetch (no folding), so that the flood alone would fill the 256 KiB disk.
    let args = [
        "--audit-file",
        audit.to_str().unwrap(),
        "--audit-fold-ms",
        "0",
        "--audit-reserve-bytes",
        "131072",
        "--audit-max-file-bytes",
        "1048576",
        "--audit-max-total-bytes",
        "2097152",
    ];
    let mut safe = Safe::dev_with(&args, None);
    let admin = safe.client(&safe.admin_env()).await;
    let workload = safe.client(&safe.workload_env("billing")).await;
    admin.put("billing", &put("v1")).await.unwrap();
    for _ in 0..1000 {
        workload.fetch().await.unwrap().unwrap();
    }
    let t = Instant::now();
    while audit_metric(&safe, "aegis_audit_lost_events_total") == 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the flood never reached the reserve; log:\n{}",
            safe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 2..22 {
        admin.put("billing", &put(&format!("v{i}"))).await.unwrap_or_else(|e| panic!("admin write {i} refused: {e}"));
    }
    assert_eq!(audit_metric(&safe, "aegis_audit_available"), 1.0);
    stop(&mut safe);
    let all = events(&audit);
    let writes: Vec<_> = requests(&all, "write").into_iter().filter(|e| e["phase"] == "done").collect();
    assert_eq!(writes.len(), 21, "every admin write is in the trail");
    let fetched = requests(&all, "fetch").len();
    assert!(fetched < 1000, "fetch lines stopped at the reserve ({fetched} written)");
    assert!(safe.log_text().contains("less free space than its reserve"), "the log says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_oldest_rotated_files_and_verify_accepts_what_it_kept() {
    let mut safe = Safe::dev_with(&["--audit-max-file-bytes", "4096", "--audit-max-total-bytes", "16384"], None);
    busy_trail(&mut safe).await;
    busy_trail(&mut safe).await;
    stop(&mut safe);
    let files = aegis_audit::files::trail_files(&trail(&safe)).unwrap();
    let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(total <= 16384 + 4096, "the trail is {total} bytes in {} files", files.len());
    assert!(!files[0].to_str().unwrap().ends_with(".000001"), "the oldest files were deleted: {files:?}");
    let all = all_lines(&files);
    assert!(all.iter().any(|l| l.contains("\"type\":\"retention\"")), "a retention line records the deletion");
    let data = safe.data_dir().join("data").display().to_string();
    let key = root_key(&safe);
    let text = ok(verify(&safe, &["--data-dir", &data, "--root-key-file", &key, "--complete"]));
    assert!(text.contains("deleted by the Safe's retention"), "{text}");
    // Deleting more than retention did is not accepted.
    std::fs::remove_file(&files[0]).unwrap();
    let out = verify(&safe, &["--data-dir", &data, "--root-key-file", &key]);
    fails(out, 1, "no retention line of the Safe records their deletion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_or_deleted_audit_file_is_reopened_and_an_unwritable_one_drops_the_metric() {
    let mnt = tempfile::tempdir().unwrap();
    let dir = mnt.path().join("audit");
    let audit = dir.join("audit.log");
    let safe = Safe::dev_with(&["--audit-file", audit.to_str().unwrap()], None);
    let admin = safe.client(&safe.admin_env()).await;
    admin.put("billing", &put("v1")).await.unwrap();
    let written = |version: u64| {
        let all = events(&audit);
        let done = all.iter().any(|e| e["phase"] == "done" && e["version"] == version);
        assert!(done, "the write of version {version} is not in {}", audit.display());
        assert!(all[0]["note"].as_str().unwrap().contains("moved or deleted"), "{}", all[0]);
    };
    std::fs::rename(&audit, mnt.path().join("moved.log")).unwrap();
    admin.put("billing", &put("v2")).await.unwrap();
    written(2);
    std::fs::remove_file(&audit).unwrap();
    admin.put("billing", &put("v3")).await.unwrap();
    written(3);
    // The directory replaced by a file: no line can be written, and the metric says so at once.
    // (The writer may make the directory again between the two steps: then try again.)
    let replaced = (0..20).any(|_| {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::write(&dir, b"not a directory").is_ok()
    });
    assert!(replaced, "could not replace the audit directory by a file");
    let t = Instant::now();
    while audit_metric(&safe, "aegis_audit_available") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the metric stayed 1; log:\n{}", safe.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    audit_503("put, audit directory gone", admin.put("billing", &put("v4")).await);
    std::fs::remove_file(&dir).unwrap();
    let t = Instant::now();
    while admin.put("billing", &put("v4")).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "writes did not resume; log:\n{}", safe.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(audit_metric(&safe, "aegis_audit_available"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rotation_is_logged_once_with_a_count_not_every_tick() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let backing = dir.path().join("backing");
    std::fs::write(&audit, b"").unwrap();
    std::fs::write(&backing, b"").unwrap();
    // A file bind-mounted on the audit file (as a Kubernetes subPath is) cannot be renamed: rotation fails.
    let status = std::process::Command::new("mount").arg("--bind").arg(&backing).arg(&audit).status().unwrap();
    assert!(status.success(), "bind-mounting a file failed ({status}); this test needs root (CAP_SYS_ADMIN)");
    let _mount = Mount(audit.clone());
    let mut safe = Safe::dev_with(&["--audit-file", audit.to_str().unwrap(), "--audit-max-file-bytes", "4096"], None);
    busy_trail(&mut safe).await;
    // Rotation is due at every tick (100 ms) from now on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = safe.plain_log_text();
    let errors = log.lines().filter(|l| l.contains("could not rotate the audit file")).count();
    assert!(errors >= 1, "the failure is logged; log:\n{log}");
    assert!(errors <= 2, "a failing rotation was logged {errors} times in 4 s");
}

#[test]
fn an_audit_trail_limit_below_two_files_is_refused_at_start_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let env = HashMap::from([
        ("AEGIS_AUDIT_MAX_FILE_BYTES".to_owned(), "8192".to_owned()),
        ("AEGIS_AUDIT_MAX_TOTAL_BYTES".to_owned(), "8192".to_owned()),
    ]);
    // `timeout`: a Safe that wrongly starts is stopped rather than holding the test.
    let out = cmd("timeout", &env)
        .args(["30", AEGIS, "dev", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--health-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("AEGIS_AUDIT_MAX_TOTAL_BYTES"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varied_requests_past_a_callers_share_of_series_fold_into_one_counted_line() {
    // A long window: without the per-caller limit every distinct request would be a line of its own.
    let mut safe = Safe::dev_with(&["--audit-fold-ms", "60000", "--audit-fold-series-per-caller", "16"], None);
    let admin = safe.client(&safe.admin_env()).await;
    let reads = 400;
    for i in 0..reads {
        let r = admin.get(&format!("nothing-{i}"), None).await;
        assert!(matches!(r, Err(ClientError::Refused { status: 404, .. })), "{r:?}");
    }
    stop(&mut safe);
    let all = events(&trail(&safe));
    let lines = requests(&all, "read");
    let catch_all: Vec<_> = lines.iter().filter(|l| l["varied"] == true).collect();
    assert!(lines.len() <= 16 + 1, "{} lines for {reads} varied reads", lines.len());
    assert_eq!(catch_all.len(), 1, "{catch_all:?}");
    assert_eq!(counted(&lines), reads, "every read is counted");
    assert!(catch_all[0]["secrets"].is_null() && catch_all[0]["caller"] == admin.spiffe_id().as_str());
}
