//! kill -9 while many writers write: every acknowledged write survives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use common::*;

const WRITERS: usize = 16;
/// Writes acknowledged before the kill.
const MIN_ACKED: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_writes_keeps_every_acknowledged_write() {
    let mut safe = Safe::dev();
    let admin_env = safe.admin_env();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = safe.client(&admin_env).await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 1u64.. {
                let req = PutSecret::new(SecretValue::new(format!("{i}:{}", "p".repeat(200))));
                if client.put(&format!("writer-{w}"), &req).await.is_err() {
                    return;
                }
                acked[w].store(i, Ordering::SeqCst);
            }
        }));
    }
    // Kill once enough writes are acknowledged, however fast this machine's
    // disk is; a Safe that acknowledges too few within a minute fails below.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.iter().map(|a| a.load(Ordering::SeqCst)).sum::<u64>() <= MIN_ACKED
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little longer, so the kill lands while every writer is mid-write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    safe.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let total: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert!(total > MIN_ACKED, "too few writes acknowledged within a minute: {total}");
    safe.start();
    safe.wait_ready();
    let admin = safe.client(&admin_env).await;
    for w in 0..WRITERS {
        let last = acked[w].load(Ordering::SeqCst);
        let r = admin.get(&format!("writer-{w}"), None).await.unwrap();
        let seen: u64 = r.value.expose().split(':').next().unwrap().parse().unwrap();
        assert!(seen == last || seen == last + 1, "writer {w}: acknowledged {last}, found {seen}");
        assert_eq!(r.info.version, seen, "versions count every write");
    }
    let log = safe.log_text();
    assert!(!log.contains("quarantine"), "no record may be half-written:\n{log}");
    let leftovers: Vec<_> = files_under(&safe.data_dir().join("data"))
        .into_iter()
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Under strace, the order of the Safe's system calls shows that each write's
/// `intent` line was durable in the audit trail before the journal frame that
/// commits the write was written: an fsync of the trail began after the line was
/// written and ended before the frame's write began (docs/AUDIT.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_s_intent_line_is_durable_before_the_commit_that_makes_it() {
    let trace_dir = tempfile::tempdir().unwrap();
    let trace = trace_dir.path().join("trace");
    let t = trace.display().to_string();
    let strace = ["strace", "-f", "-qq", "-y", "-s", "65536", "-e", "trace=write,pwrite64,fdatasync,fsync", "-o", &t];
    let mut safe = Safe::dev_under(&strace);
    let admin_env = safe.admin_env();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = safe.client(&admin_env).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let req = PutSecret::new(SecretValue::new(format!("{i}:{}", "p".repeat(200))));
                client.put(&format!("writer-{w}"), &req).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // strace 6.1 leaves its tracee running when it is killed: the Safe first, then strace.
    let strace_pid = safe.child.as_ref().unwrap().id();
    let children = std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    for pid in children.split_whitespace() {
        let pid = nix::unistd::Pid::from_raw(pid.parse().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    safe.kill9();
    let text = std::fs::read_to_string(&trace).unwrap();
    let (checked, missing) = intents_synced_before_commit(&text);
    assert!(missing.is_empty(), "writes committed before their intent line was durable:\n{}", missing.join("\n"));
    assert!(checked >= 240, "only {checked} committed writes found in the trace; is strace tracing the Safe?");
}

/// Checks a `strace -f -y` trace: for every secret name in a journal frame, the
/// newest `intent` line naming it was fsynced before the frame was written.
/// Returns how many names were checked and a description of each failure.
fn intents_synced_before_commit(trace: &str) -> (usize, Vec<String>) {
    // Per process: the call waiting for its result (name, text of its entry, where it began).
    let mut pending: HashMap<String, (String, String, usize)> = HashMap::new();
    let mut last_intent: HashMap<String, usize> = HashMap::new();
    let mut syncs: Vec<(usize, usize)> = Vec::new();
    let (mut checked, mut missing) = (0, Vec::new());
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        let (call, entry, began, done) = if let Some(r) = rest.strip_prefix("<... ") {
            let call = r.split(' ').next().unwrap_or_default().to_owned();
            match pending.remove(pid) {
                Some((c, entry, began)) if c == call => (c, entry, began, true),
                _ => continue,
            }
        } else {
            let call = rest.split('(').next().unwrap_or_default().to_owned();
            let done = !rest.ends_with("<unfinished ...>");
            if !done {
                pending.insert(pid.to_owned(), (call.clone(), rest.to_owned(), i));
            }
            (call, rest.to_owned(), i, done)
        };
        let audit = entry.contains("audit.log>");
        let journal = entry.contains("/journal>");
        match call.as_str() {
            "write" | "pwrite64" if audit && done => {
                let marker = r#"\"phase\":\"intent\",\"secrets\":[\""#;
                for (at, _) in entry.match_indices(marker) {
                    if let Some(n) = writer_names(&entry[at + marker.len()..]).next() {
                        last_intent.insert(n.to_owned(), i);
                    }
                }
            }
            "fdatasync" | "fsync" if audit && done && rest.contains("= 0") => syncs.push((began, i)),
            "write" | "pwrite64" if journal && began == i => {
                let names: std::collections::BTreeSet<&str> = writer_names(&entry).collect();
                for n in names {
                    checked += 1;
                    let Some(&w) = last_intent.get(n) else {
                        missing.push(format!("line {}: {n} committed with no intent line written before", i + 1));
                        continue;
                    };
                    if !syncs.iter().any(|&(s, e)| s > w && e < i) {
                        missing.push(format!(
                            "line {}: {n} committed while its intent line (written at line {}) was not yet fsynced",
                            i + 1,
                            w + 1
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    (checked, missing)
}

/// The names `writer-N` in `text`, in order (`N` all the digits that follow).
fn writer_names(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices("writer-").map(move |(at, _)| {
        let digits = text[at + 7..].bytes().take_while(u8::is_ascii_digit).count();
        &text[at..at + 7 + digits]
    })
}

/// A clean stop (SIGTERM) writes the journal out to the record files and empties
/// it, so the next start has nothing to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_an_empty_journal_and_every_record_in_its_file() {
    let mut safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    for i in 0..20 {
        admin.put(&format!("stop-{i}"), &PutSecret::new(SecretValue::new(format!("v{i}")))).await.unwrap();
    }
    let data = safe.data_dir().join("data");
    assert!(
        std::fs::metadata(data.join("journal")).unwrap().len() > 0,
        "the writes are in the journal before the stop"
    );
    safe.terminate();
    assert_eq!(std::fs::metadata(data.join("journal")).unwrap().len(), 0, "log:\n{}", safe.log_text());
    assert!(data.join("stop-19.rec").is_file());
    safe.start();
    safe.wait_ready();
    let admin = safe.client(&safe.admin_env()).await;
    assert_eq!(admin.get("stop-19", None).await.unwrap().value.expose(), "v19");
}
