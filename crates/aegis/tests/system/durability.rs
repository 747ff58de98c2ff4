//! kill -9 while many writers write: every acknowledged write survives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

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
