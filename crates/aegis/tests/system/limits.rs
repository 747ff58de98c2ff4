//! Connection limits and idle deadlines: no identity can exhaust the Safe's
//! file descriptors, and no connection is held open by sending nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use aegis_core::SpiffeId;
use aegis_identity::devca::DevCa;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

const WATCH: &[u8] = b"GET /v1/workload/watch?revision=999&wait_ms=1 HTTP/1.1\r\nhost: safe\r\n\r\n";

/// Reads one HTTP/1.1 answer head; `None` if the connection ends or stalls first.
async fn read_status(tls: &mut Tls) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                return Some((status, body.to_owned()));
            }
        }
    }
}

/// True once the Safe has closed the connection (EOF or reset) within `within`.
async fn closed_within(tls: &mut Tls, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(within, tls.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// Opens `n` connections as `env` at once and sends a watch on each; returns the ones
/// answered 200, how many were refused (503 with a reason, or closed), and the reasons.
async fn hold_watchers(env: &HashMap<String, String>, port: u16, n: usize) -> (Vec<Tls>, usize, Vec<String>) {
    let one = |env: HashMap<String, String>| async move {
        let mut tls = tokio::time::timeout(Duration::from_secs(5), tls_connect(&env, port)).await.ok()?.ok()?;
        tls.write_all(WATCH).await.ok()?;
        let answer = read_status(&mut tls).await?;
        Some((tls, answer))
    };
    let tries = (0..n).map(|_| tokio::spawn(one(env.clone())));
    let mut held = Vec::new();
    let mut refused = 0;
    let mut reasons = Vec::new();
    for r in futures::future::join_all(tries).await {
        match r.unwrap() {
            Some((tls, (200, _))) => held.push(tls),
            Some((_, (_, body))) => {
                refused += 1;
                reasons.push(body);
            }
            None => refused += 1,
        }
    }
    (held, refused, reasons)
}

fn timed(o: impl FnOnce() -> std::process::Output) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = o();
    (out, t.elapsed())
}

/// The review's reproduction: a Safe limited to 256 descriptors, and one workload
/// identity that opens 260 connections, sends one watch on each and keeps them open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_exhaust_the_safes_descriptors() {
    let safe = Safe::dev_with(&["--idle-timeout-ms", "4000"], Some(256));
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "billing", "--value", "billing-secret"]));
    ok(safe.aegis(&admin, &["put", "payroll", "--value", "payroll-secret"]));
    let billing = safe.workload_env("billing");
    let payroll = safe.workload_env("payroll");
    let log_before = safe.log_text().lines().count();

    let (mut held, refused, reasons) = hold_watchers(&billing, safe.port, 260).await;
    println!("billing holds {} connections, {refused} refused", held.len());
    assert!(!held.is_empty(), "some of billing's connections must be served");
    assert!(held.len() <= 64, "one identity holds {} of the Safe's ~192 connection slots", held.len());
    assert!(refused > 0, "one identity must not get 260 connections from a Safe limited to 256 descriptors");
    assert!(
        reasons.iter().any(|r| r.contains("this SPIFFE ID holds its limit")),
        "a refused client is told why: {reasons:?}"
    );

    // Meanwhile everybody else is served: another workload, the Sentinel's reads and writes.
    let (out, fetch_took) = timed(|| safe.aegis(&payroll, &["fetch"]));
    assert_eq!(ok(out).trim(), "payroll-secret");
    let (out, put_took) = timed(|| safe.aegis(&admin, &["put", "other", "--value", "written-meanwhile"]));
    ok(out);
    assert_eq!(ok(safe.aegis(&admin, &["get", "other"])).trim(), "written-meanwhile");
    println!("while held: workload fetch {fetch_took:?}, Sentinel write {put_took:?} (CLI process included)");

    let m = metrics(&safe);
    assert!(metric(&m, "aegis_connections_refused_total{reason=\"Identity\"}") >= 1.0, "{m}");
    assert!(metric(&m, "aegis_connections_open") >= held.len() as f64, "{m}");
    // Refusals are logged at most once a second, not once each.
    let log = safe.log_text();
    let refusal_lines = log.lines().skip(log_before).filter(|l| l.contains("connection refused by a limit")).count();
    assert!(refusal_lines <= 10, "{refusal_lines} refusal lines for {refused} refusals");

    // After the idle deadline the Safe closes every connection left sitting after its watch answer.
    let start = Instant::now();
    for tls in held.iter_mut() {
        assert!(closed_within(tls, Duration::from_secs(10)).await, "idle watch connection still open");
    }
    assert!(start.elapsed() >= Duration::from_secs(1), "closed too early: {:?}", start.elapsed());
    let m = metrics(&safe);
    assert!(metric(&m, "aegis_connections_idle_closed_total") >= held.len() as f64, "{m}");
    // And billing can connect again.
    assert_eq!(ok(safe.aegis(&billing, &["fetch"])).trim(), "billing-secret");
}

/// A connection of any identity that completes TLS and then sends nothing, or
/// goes quiet after a request, is closed: no role is exempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_of_every_role_are_closed() {
    let mut safe = Safe::server_manual();
    safe.args.extend(["--idle-timeout-ms".to_owned(), "1500".to_owned()]);
    safe.restart();
    let ca = DevCa::load_or_create(&safe.data_dir().join("ca"), "vsecm.com").unwrap();
    let id = SpiffeId::parse("spiffe://vsecm.com/unknown/thing").unwrap();
    let paths = ca.issue(&id, Duration::from_secs(3600)).unwrap().write_files(&safe.dir.path().join("u")).unwrap();
    let stranger = HashMap::from([
        ("AEGIS_SVID_CERT".to_owned(), paths.cert.display().to_string()),
        ("AEGIS_SVID_KEY".to_owned(), paths.key.display().to_string()),
        ("AEGIS_SVID_BUNDLE".to_owned(), paths.bundle.display().to_string()),
    ]);
    let admin = safe.admin_env();
    let billing = safe.workload_env("billing");

    // Unknown role, nothing sent: closed at the 1 s first-request deadline.
    let mut tls = tls_connect(&stranger, safe.port).await.unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut tls, Duration::from_secs(8)).await, "a silent unknown-role connection stays open");
    assert!(t.elapsed() >= Duration::from_millis(800), "closed after {:?}", t.elapsed());

    // The Sentinel after one request, and a workload after a watch answer: closed at the idle deadline.
    let mut sentinel = tls_connect(&admin, safe.port).await.unwrap();
    sentinel.write_all(b"GET /v1/status HTTP/1.1\r\nhost: safe\r\n\r\n").await.unwrap();
    assert_eq!(read_status(&mut sentinel).await.map(|s| s.0), Some(200));
    let mut watcher = tls_connect(&billing, safe.port).await.unwrap();
    watcher.write_all(WATCH).await.unwrap();
    assert!(read_status(&mut watcher).await.is_some(), "the watch is answered");
    let t = Instant::now();
    assert!(closed_within(&mut sentinel, Duration::from_secs(8)).await, "an idle Sentinel connection stays open");
    assert!(closed_within(&mut watcher, Duration::from_secs(8)).await, "an idle watch connection stays open");
    assert!(t.elapsed() >= Duration::from_millis(1200), "closed after {:?}", t.elapsed());

    // A handshake flood without certificates is counted and logged at most once a second.
    let log_before = safe.log_text().lines().count();
    let flood = Instant::now();
    for _ in 0..200 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", safe.port)).await.unwrap();
        let _ = tcp.write_all(b"\x16\x03\x01\x00\x05hello").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = safe.log_text();
    let lines = log.lines().skip(log_before).filter(|l| l.contains("TLS handshake refused")).count();
    // At most one line per second the flood and its aftermath lasted, plus the first.
    let most = flood.elapsed().as_secs() as usize + 2;
    assert!((1..=most).contains(&lines), "{lines} handshake log lines for 200 refused handshakes (at most {most})");
    let m = metrics(&safe);
    assert!(metric(&m, "aegis_tls_handshake_failures_total") >= 200.0, "{m}");
}

/// With limits set above the descriptor limit on purpose, a write still commits
/// through the open journal and its record file is written once a descriptor is
/// free (the log names the cause, not a full disk), failed accepts are logged at
/// most once a second, and the Safe recovers once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_reported_as_such() {
    let flags = ["--max-connections", "4000", "--max-handshakes", "1000"];
    let safe = Safe::dev_with(&flags, Some(256));
    let admin = safe.admin_env();
    let client = safe.client(&admin).await;
    client.put("before", &PutSecret::new(SecretValue::new("v1"))).await.unwrap();
    // Connections that never start TLS: the Safe accepts them until it has no descriptor left
    // (the kernel queues the rest), and holds each for the 10 s handshake deadline.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..400 {
        let held = held.clone();
        let port = safe.port;
        tokio::spawn(async move {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                held.lock().unwrap().push(s);
            }
        });
    }
    let t = Instant::now();
    // The health port shares the descriptor limit, so the log tells when accepts start failing.
    while !safe.log_text().contains("accept failed") {
        assert!(t.elapsed() < Duration::from_secs(8), "the Safe never ran out of descriptors");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    // A write needs no new descriptor to commit (the journal is open), so it is
    // acknowledged; only its record file waits for a free descriptor.
    client.put("during", &PutSecret::new(SecretValue::new("v2"))).await.unwrap();
    let log = safe.log_text();
    assert!(log.contains("could not be written") && log.contains("Too many open files"), "{log}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = safe.log_text();
    let accept_lines = log.lines().filter(|l| l.contains("accept failed")).count();
    let bound = started.elapsed().as_secs() as usize + 3;
    assert!((1..=bound).contains(&accept_lines), "{accept_lines} accept-failure lines in {:?}", started.elapsed());
    held.lock().unwrap().clear();
    // Freed descriptors: the handshake deadline (10 s in dev) closes the rest, then writes work again.
    let t = Instant::now();
    loop {
        match client.put("after", &PutSecret::new(SecretValue::new("v3"))).await {
            Ok(_) => break,
            Err(e) if t.elapsed() < Duration::from_secs(30) => {
                println!("still recovering: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the Safe did not recover: {e}"),
        }
    }
    assert_eq!(client.get("before", None).await.unwrap().value.expose(), "v1");
    assert_eq!(client.get("during", None).await.unwrap().value.expose(), "v2");
    // Retried before the next commit, once a descriptor was free.
    assert!(safe.data_dir().join("data").join("during.rec").is_file());
    let m = metrics(&safe);
    assert!(metric(&m, "aegis_accept_errors_total") > accept_lines as f64, "accept errors are counted: {m}");
}
