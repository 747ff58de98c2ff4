//! The second review's floods: memory before authorization, HTTP/2 streams,
//! watches and the health port. An authenticated caller with no role, a
//! workload and anybody who reaches the health port each try to take the
//! Safe's memory or connections; everybody else must still be served, and a
//! Safe held to 256 MiB (the Helm chart's default) must not be killed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aegis_core::SpiffeId;
use aegis_identity::devca::DevCa;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// SVID files of an identity the role rules grant nothing.
fn stranger(safe: &Safe, name: &str) -> HashMap<String, String> {
    let ca = DevCa::load_or_create(&safe.data_dir().join("ca"), "vsecm.com").unwrap();
    let id = SpiffeId::parse(&format!("spiffe://vsecm.com/unknown/{name}")).unwrap();
    let paths = ca.issue(&id, Duration::from_secs(3600)).unwrap().write_files(&safe.dir.path().join(name)).unwrap();
    HashMap::from([
        ("AEGIS_SVID_CERT".to_owned(), paths.cert.display().to_string()),
        ("AEGIS_SVID_KEY".to_owned(), paths.key.display().to_string()),
        ("AEGIS_SVID_BUNDLE".to_owned(), paths.bundle.display().to_string()),
    ])
}

/// An HTTP/2 connection to the Safe as the identity of `env`.
async fn h2(env: &HashMap<String, String>, port: u16) -> H2 {
    let tls = tls_connect(env, port).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Sends one request on `send`; the status and body, or `None` if the stream failed.
fn call(
    mut send: H2,
    method: &str,
    path: &str,
    body: Bytes,
) -> impl std::future::Future<Output = Option<(u16, String)>> + Send + 'static {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    async move {
        send.ready().await.ok()?;
        let resp = send.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `n` requests at once on one connection; the answers that came back.
async fn burst(send: &H2, n: usize, method: &'static str, path: &str, body: Bytes) -> Vec<(u16, String)> {
    let calls = (0..n).map(|_| tokio::spawn(call(send.clone(), method, path, body.clone())));
    futures::future::join_all(calls).await.into_iter().filter_map(|r| r.unwrap()).collect()
}

/// The watch path that waits: at the revision the workload's secret has now.
async fn waiting_watch(env: &HashMap<String, String>, port: u16) -> String {
    let (status, body) =
        call(h2(env, port).await, "GET", "/v1/workload/watch?revision=0&wait_ms=1", Bytes::new()).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
    let revision = event["revision"].as_u64().unwrap();
    format!("/v1/workload/watch?revision={revision}&wait_ms=20000")
}

fn count(answers: &[(u16, String)], status: u16) -> usize {
    answers.iter().filter(|a| a.0 == status).count()
}

/// A caller with no role sends a PUT head announcing 1 MiB and then nothing: the
/// Safe answers 403 at once, without waiting for (or reading) the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_never_read_before_the_caller_is_authorized() {
    let safe = Safe::dev();
    let nobody = stranger(&safe, "nobody");
    let billing = safe.workload_env("billing");
    for (env, who) in [(&nobody, "no role"), (&billing, "a workload")] {
        let mut tls = tls_connect(env, safe.port).await.unwrap();
        let head = "PUT /v1/secrets/x HTTP/1.1\r\nhost: safe\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n";
        tls.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{who}: the Safe waited for the body of a request it must refuse"))
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 403"), "{who}: {text}");
        assert!(text.contains("not the Sentinel"), "{who}: {text}");
    }
    // A workload's own routes take no body either: refused without reading one.
    let mut tls = tls_connect(&billing, safe.port).await.unwrap();
    tls.write_all(b"GET /v1/workload/secret HTTP/1.1\r\nhost: safe\r\ncontent-length: 1048576\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413") && text.contains("only the Sentinel sends request bodies"), "{text}");
}

/// One connection may open at most 32 streams at once, and the Sentinel's body
/// bytes in flight are bounded per identity: over it, a 429 that names the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_body_bytes_in_flight_are_bounded() {
    let safe = Safe::dev_with(&["--max-body-bytes-per-identity", "3000000"], None);
    let admin = safe.admin_env();
    let send = h2(&admin, safe.port).await;
    // Twenty 1 MiB bodies at once over one connection: at most two fit in 3 MB, as long as
    // they are held; the others are refused on their heads, none is lost half-way.
    let value = format!("{{\"value\":\"{}\"}}", "v".repeat(1_000_000));
    let answers = burst(&send, 20, "PUT", "/v1/secrets/big", Bytes::from(value)).await;
    assert_eq!(answers.len(), 20, "every stream is answered");
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(count(&answers, 200) >= 1, "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    assert_eq!(count(&answers, 200) + refused.len(), 20, "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    assert!(!refused.is_empty(), "twenty 1 MiB bodies must not all be in flight under a 3 MB budget");
    assert!(refused[0].1.contains("AEGIS_MAX_BODY_BYTES_PER_IDENTITY"), "{}", refused[0].1);
    // And the budget is given back: the next write goes through.
    let after = call(send.clone(), "PUT", "/v1/secrets/small", Bytes::from_static(b"{\"value\":\"v\"}")).await;
    assert_eq!(after.map(|a| a.0), Some(200));
}

/// Watches are counted per identity over all its connections and streams, HTTP/1.1
/// and HTTP/2 alike; another workload's watch and fetch still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_counted_per_identity_not_per_connection() {
    let safe = Safe::dev_with(&["--max-watches-per-identity", "20"], None);
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "billing", "--value", "b"]));
    ok(safe.aegis(&admin, &["put", "payroll", "--value", "p"]));
    let billing = safe.workload_env("billing");
    let watch = waiting_watch(&billing, safe.port).await;
    // Two HTTP/2 connections of 16 watches each (32 > 20), held while we look.
    let (a, b) = (h2(&billing, safe.port).await, h2(&billing, safe.port).await);
    let held: Vec<_> = [a, b]
        .into_iter()
        .flat_map(|c| (0..16).map(move |_| c.clone()))
        .map(|c| tokio::spawn(call(c, "GET", &watch, Bytes::new())))
        .collect();
    let t = Instant::now();
    let mut refused = Vec::new();
    // The refused ones come back at once; the others wait for a change.
    while refused.len() < 12 && t.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = held.iter().filter(|h| h.is_finished()).collect();
    }
    assert_eq!(refused.len(), 12, "20 of 32 watches are held, 12 refused");
    let m = metrics(&safe);
    assert_eq!(metric(&m, "aegis_watches_open"), 20.0, "{m}");
    // A watch over HTTP/1.1 counts against the same limit.
    let mut tls = tls_connect(&billing, safe.port).await.unwrap();
    tls.write_all(format!("GET {watch} HTTP/1.1\r\nhost: safe\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 429") && text.contains("AEGIS_MAX_WATCHES_PER_IDENTITY"), "{text}");
    // Another workload is not affected.
    let payroll = safe.workload_env("payroll");
    assert_eq!(ok(safe.aegis(&payroll, &["fetch"])).trim(), "p");
    // A change answers every held watch, and the count goes back to zero.
    ok(safe.aegis(&admin, &["put", "billing", "--value", "b2"]));
    let answers: Vec<_> = futures::future::join_all(held).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(answers.iter().filter(|a| a.as_ref().is_some_and(|a| a.0 == 200)).count(), 20);
    assert_eq!(answers.iter().filter(|a| a.as_ref().is_some_and(|a| a.0 == 429)).count(), 12);
    assert_eq!(metric(&metrics(&safe), "aegis_watches_open"), 0.0);
}

/// Connections from one address to the health port, sending half a request each:
/// held at most 8 at once and each closed at the head deadline; probes from
/// elsewhere and the API are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_has_its_own_limits_and_deadlines() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    let attacker = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let mut held = Vec::new();
    for _ in 0..60 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(attacker).unwrap();
        let mut tcp = sock.connect(([127, 0, 0, 1], safe.health).into()).await.unwrap();
        let _ = tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n").await;
        held.push(tcp);
    }
    // The Safe closes all but 8 at once, and those 8 by the 2 s head deadline.
    let t = Instant::now();
    let mut closed_at_once = 0;
    for tcp in held.iter_mut() {
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut b)).await {
            closed_at_once += 1;
        }
    }
    assert!(closed_at_once >= 52, "only {closed_at_once} of 60 connections from one address were refused");
    assert!(http_ok(safe.health, "/readyz").is_some(), "a probe from another address is answered");
    ok(safe.aegis(&admin, &["put", "billing", "--value", "served"]));
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "served", "the API is served meanwhile");
    for tcp in held.iter_mut() {
        let mut b = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(_)) | Ok(Err(_))), "a half-sent request holds the health port past its deadline");
    }
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    assert!(metric(&metrics(&safe), "aegis_health_connections_refused_total") >= 52.0);
}

/// A memory cgroup of `bytes` with the Safe's process in it (cgroup v2 or v1's memory
/// controller). Removed when dropped.
struct MemoryLimit {
    dir: PathBuf,
    v2: bool,
}

impl MemoryLimit {
    fn put(pid: u32, bytes: u64) -> Self {
        let name = format!("aegis-test-{}-{pid}", std::process::id());
        let v2_root = PathBuf::from("/sys/fs/cgroup");
        let (dir, v2, limit_file) = if v2_root.join("cgroup.controllers").exists() {
            (v2_root.join(&name), true, "memory.max")
        } else {
            (v2_root.join("memory").join(&name), false, "memory.limit_in_bytes")
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!("this test needs a writable memory cgroup (as root): cannot create {}: {e}", dir.display())
        });
        std::fs::write(dir.join(limit_file), bytes.to_string()).unwrap();
        if !v2 {
            std::fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string()).ok();
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        Self { dir, v2 }
    }

    /// The most the cgroup used, when the kernel says.
    fn peak(&self) -> Option<u64> {
        let file = if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        std::fs::read_to_string(self.dir.join(file)).ok()?.trim().parse().ok()
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The review's attacks at once against a Safe held to 256 MiB with the chart's
/// defaults: a no-role SVID with 2 connections × 200 streams of 1 MiB bodies, a
/// workload with HTTP/2 and HTTP/1.1 watch floods, and 1,200 half-sent requests
/// on the health port. The Safe survives and serves the Sentinel and another workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_safe_held_to_256_mib_survives_every_flood_and_serves_others() {
    let mut safe = Safe::dev();
    let pid = safe.child.as_ref().unwrap().id();
    let limit = MemoryLimit::put(pid, 256 << 20);
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "billing", "--value", "b"]));
    ok(safe.aegis(&admin, &["put", "payroll", "--value", "p"]));
    let nobody = stranger(&safe, "nobody");
    let billing = safe.workload_env("billing");
    let port = safe.port;

    // 1. No role: 2 connections × 200 streams, each a PUT of 1 MiB.
    let mib = Bytes::from(vec![b'x'; 1 << 20]);
    let no_role = {
        let mib = mib.clone();
        let nobody = nobody.clone();
        tokio::spawn(async move {
            let conns = [h2(&nobody, port).await, h2(&nobody, port).await];
            let all = conns.iter().map(|c| burst(c, 200, "PUT", "/v1/secrets/x", mib.clone()));
            futures::future::join_all(all).await.concat()
        })
    };
    // 2. A workload: 64 HTTP/2 connections × 32 watch streams, and 200 HTTP/1.1 watch connections.
    let watch = waiting_watch(&billing, port).await;
    let h2_watches = {
        let (billing, watch) = (billing.clone(), watch.clone());
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for _ in 0..64 {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), tls_connect(&billing, port)).await
                else {
                    continue;
                };
                let Ok((send, conn)) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await
                else {
                    continue;
                };
                tokio::spawn(conn);
                for _ in 0..32 {
                    calls.push(tokio::spawn(call(send.clone(), "GET", &watch, Bytes::new())));
                }
            }
            calls
        })
    };
    let mut h1_watchers = Vec::new();
    for _ in 0..200 {
        let (billing, watch) = (billing.clone(), watch.clone());
        h1_watchers.push(tokio::spawn(async move {
            let mut tls = tokio::time::timeout(Duration::from_secs(5), tls_connect(&billing, port)).await.ok()?.ok()?;
            tls.write_all(format!("GET {watch} HTTP/1.1\r\nhost: safe\r\n\r\n").as_bytes()).await.ok()?;
            Some(tls)
        }));
    }
    // 3. The health port: 1,200 half-sent requests, from another address than the probes'.
    let mut health = Vec::new();
    for _ in 0..1200 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from(([127, 0, 0, 3], 0))).unwrap();
        if let Ok(mut tcp) = sock.connect(([127, 0, 0, 1], safe.health).into()).await {
            let _ = tcp.write_all(b"GET /metrics HTTP/1.1\r\ncontent-length: 100000\r\n").await;
            health.push(tcp);
        }
    }

    // Meanwhile others are served: the Sentinel writes and reads, another workload fetches.
    let payroll = safe.workload_env("payroll");
    let client = safe.client(&admin).await;
    for i in 0..5 {
        let value = aegis_core::secret::SecretValue::new(format!("meanwhile-{i}"));
        client.put("other", &aegis_core::api::PutSecret::new(value)).await.unwrap();
        assert_eq!(ok(safe.aegis(&payroll, &["fetch"])).trim(), "p");
    }
    assert_eq!(client.get("other", None).await.unwrap().value.expose(), "meanwhile-4");

    let answers = tokio::time::timeout(Duration::from_secs(60), no_role).await.unwrap().unwrap();
    println!("no role: {} answers, {} of them 403", answers.len(), count(&answers, 403));
    assert!(answers.iter().all(|a| a.0 == 403), "a caller with no role gets 403 and nothing else");
    let calls = h2_watches.await.unwrap();
    let m = metrics(&safe);
    let open = metric(&m, "aegis_watches_open");
    println!("watches open during the flood: {open} (peak memory so far {:?})", limit.peak());
    assert!(open <= 32.0, "one workload holds {open} watches");
    drop(health);
    for c in calls {
        c.abort();
    }
    for w in h1_watchers {
        w.abort();
    }
    // Still alive, never killed, and ready.
    assert!(safe.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the Safe died: {}", tail(&safe.log, 20));
    assert!(http_ok(safe.health, "/readyz").is_some());
    println!("peak memory of the Safe's cgroup: {:?} bytes", limit.peak());
    safe.kill9();
}

/// A caller refused as fast as it can ask does not fill the log: refused requests get
/// at most ten INFO lines a second (with the number held back), and each one a DEBUG line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_logged_at_info_at_most_ten_times_a_second() {
    let safe = Safe::dev();
    let billing = safe.workload_env("billing");
    let send = h2(&billing, safe.port).await;
    let t = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.extend(burst(&send, 30, "GET", "/v1/secrets", Bytes::new()).await);
    }
    let took = t.elapsed();
    assert_eq!(count(&answers, 403), 300, "a workload may not list secrets");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = safe.plain_log_text();
    let refused: Vec<&str> =
        log.lines().filter(|l| l.contains("request refused") && l.contains("status=403")).collect();
    let info = refused.iter().filter(|l| l.contains(" INFO ")).count();
    let debug = refused.iter().filter(|l| l.contains(" DEBUG ")).count();
    let most = (took.as_secs_f64() * 10.0).ceil() as usize + 2;
    println!("300 refusals in {took:?}: {info} INFO lines, {debug} DEBUG lines");
    assert!((1..=most).contains(&info), "{info} INFO lines for 300 refusals in {took:?} (at most {most})");
    assert_eq!(info + debug, 300, "every refusal is logged once, at INFO or DEBUG");
    assert!(
        refused.iter().any(|l| l.contains(" INFO ") && l.contains("skipped=")),
        "INFO lines say how many were held back"
    );
}
