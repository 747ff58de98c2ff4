//! Status codes tell the truth about writes: a timeout answer says whether the
//! write was applied, a failed multi-workload upsert stores nothing, and an
//! oversized body gets a 413 on HTTP/1.1 and HTTP/2 alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use aegis_core::api::{PutSecret, VsecmUpsert};
use aegis_core::secret::SecretValue;
use aegis_sdk::ClientError;
use common::*;

const PUTS: usize = 300;

/// The names of all live secrets, retrying while the Safe answers errors.
async fn names(safe: &Safe) -> BTreeSet<String> {
    let client = safe.client(&safe.admin_env()).await;
    for _ in 0..100 {
        if let Ok(list) = client.list(false).await {
            return list.secrets.into_iter().map(|s| s.name).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the Safe does not list its secrets; log:\n{}", safe.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_408_is_never_applied() {
    let mut safe = Safe::dev();
    safe.extra_env.insert("AEGIS_REQUEST_TIMEOUT_MS".into(), "20".into());
    safe.restart();
    safe.wait_ready();
    let client = safe.client(&safe.admin_env()).await;
    let value = "v".repeat(8192);
    let puts = (0..PUTS).map(|i| {
        let client = &client;
        let value = format!("{value}-{i}");
        async move {
            let name = format!("t{i}");
            let r = client.put(&name, &PutSecret::new(SecretValue::new(value))).await;
            (name, r)
        }
    });
    let results = futures::future::join_all(puts).await;
    let (mut ok, mut not_applied, mut maybe, mut other) = (BTreeSet::new(), BTreeSet::new(), 0, 0);
    let mut messages = Vec::new();
    for (name, r) in results {
        match r {
            Ok(_) => {
                ok.insert(name);
            }
            Err(ClientError::Refused { status: 408, message }) => {
                messages.push(message);
                not_applied.insert(name);
            }
            Err(ClientError::Refused { status: 503, message }) if message.contains("may have been applied") => {
                messages.push(message);
                maybe += 1;
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                other += 1;
            }
        }
    }
    eprintln!("200: {}, 408: {}, 503 may have applied: {maybe}, other: {other}", ok.len(), not_applied.len());
    assert!(!not_applied.is_empty(), "the test needs some writes to time out");
    // Let anything still queued reach the writer before looking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in ["before", "after"] {
        let stored = names(&safe).await;
        let applied_anyway: Vec<_> = not_applied.intersection(&stored).collect();
        assert!(applied_anyway.is_empty(), "{round} restart: answered 408 but stored: {applied_anyway:?}");
        let lost: Vec<_> = ok.difference(&stored).collect();
        assert!(lost.is_empty(), "{round} restart: answered 200 but missing: {lost:?}");
        safe.extra_env.remove("AEGIS_REQUEST_TIMEOUT_MS");
        safe.restart();
        safe.wait_ready();
    }
    for m in messages {
        assert!(m.contains("cas") && (m.contains("not applied") || m.contains("may have been applied")), "{m}");
    }
}

/// Unmounts (lazily) when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn upsert(workloads: &[&str], value: &str) -> VsecmUpsert {
    VsecmUpsert {
        workloads: Some(workloads.iter().map(|w| w.to_string()).collect()),
        value: SecretValue::new(value),
        ..VsecmUpsert::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_workload_upsert_that_does_not_fit_stores_nothing() {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: mounting a small file system needs root");
        return;
    }
    let mut safe = Safe::dev();
    safe.kill9();
    let data = safe.data_dir().join("data");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    if !mounted.success() {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(data);
    safe.start();
    safe.wait_ready();
    let client = safe.client(&safe.admin_env()).await;
    // Each record holds about 200 KiB: two fit in 512 KiB, three do not.
    let big = "x".repeat(200 * 1024);
    match client.vsecm_upsert(&upsert(&["a", "b", "c"], &big)).await {
        Err(ClientError::Refused { status: 507, message }) => {
            assert!(message.contains("disk is full") && message.contains("nothing was changed"), "{message}");
            assert!(!message.contains(&big[..64]), "the value must not be echoed");
        }
        other => panic!("expected 507, got {other:?}"),
    }
    assert!(names(&safe).await.is_empty(), "a refused upsert stored some workloads");
    // The Safe still serves, and a group that fits is stored whole.
    client.vsecm_upsert(&upsert(&["d", "e"], "small")).await.unwrap();
    let expected: BTreeSet<String> = ["d", "e"].map(String::from).into();
    assert_eq!(names(&safe).await, expected);
    safe.restart();
    safe.wait_ready();
    assert_eq!(names(&safe).await, expected);
}

/// Sends an oversized PUT over HTTP/2, with or without a Content-Length, and
/// returns the status and body the client reads.
async fn h2_oversized_put(safe: &Safe, content_length: bool) -> (u16, String) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Bytes, Frame};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tls = tls_connect(&safe.admin_env(), safe.port).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let total = 3 * 1024 * 1024;
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames = futures::stream::iter(
        (0..total / chunk.len()).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let mut req = hyper::Request::put("https://localhost/v1/secrets/x").header("content-type", "application/json");
    if content_length {
        req = req.header("content-length", total.to_string());
    }
    let resp = send.send_request(req.body(StreamBody::new(frames)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_over_http2_gets_413() {
    let safe = Safe::dev();
    for content_length in [true, false] {
        let (status, body) = h2_oversized_put(&safe, content_length).await;
        assert_eq!(status, 413, "content-length {content_length}: {body}");
        assert!(body.contains("larger than the limit"), "{body}");
    }
    // curl (nghttp2) gives up on a stream reset before it reads the answer.
    let env = safe.admin_env();
    let big = safe.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 3 * 1024 * 1024]).unwrap();
    for mode in ["--http2", "--http1.1"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", mode, "-k", "-X", "PUT", "-H", "content-type: application/json", "-w", "\n%{http_code}"])
            .arg("--cert")
            .arg(&env["AEGIS_SVID_CERT"])
            .arg("--key")
            .arg(&env["AEGIS_SVID_KEY"])
            .arg("--data-binary")
            .arg(format!("@{}", big.display()))
            .arg(format!("https://127.0.0.1:{}/v1/secrets/x", safe.port))
            .output();
        let out = out.expect("curl is needed for this test (scripts/test.sh installs it)");
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.ends_with("\n413") && text.contains("larger than the limit"), "{mode}: {text}");
    }
    // The Safe still serves; nothing was stored.
    assert!(names(&safe).await.is_empty());
}

/// `curl -v` over HTTP/1.1 with the workload's SVID: the response's status and
/// whether it says `connection: close`.
fn http1(safe: &Safe, env: &HashMap<String, String>, method: &str, path: &str, body: Option<&str>) -> (u16, bool) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sv", "--http1.1", "-k", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .arg("--cert")
        .arg(&env["AEGIS_SVID_CERT"])
        .arg("--key")
        .arg(&env["AEGIS_SVID_KEY"]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("https://127.0.0.1:{}{path}", safe.port)).output();
    let out = out.expect("curl is needed for this test (scripts/test.sh installs it)");
    let close = stderr(&out).lines().any(|l| l.to_ascii_lowercase().starts_with("< connection: close"));
    (stdout(&out).trim().parse().unwrap_or(0), close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_body_is_read_says_the_connection_closes() {
    // Found by schemathesis under load: a refusal on the head leaves the body unread, so the
    // HTTP/1.1 connection closes after the answer; a client that reused it saw it cut.
    let safe = Safe::dev();
    let workload = safe.workload_env("billing");
    for (method, path, body) in [
        ("POST", "/v1/admin/backup", r#"{"recipients": null}"#),
        ("DELETE", "/sentinel/v1/secrets", r#"{"workloads": ["0"]}"#),
        ("PUT", "/v1/secrets/x", r#"{"value": "v"}"#),
    ] {
        assert_eq!(http1(&safe, &workload, method, path, Some(body)), (403, true), "{method} {path}");
    }
    // Nothing to leave unread: the connection stays open.
    assert_eq!(http1(&safe, &workload, "GET", "/v1/secrets", None), (403, false));
    let admin = safe.admin_env();
    let (status, close) = http1(&safe, &admin, "PUT", "/v1/secrets/x", Some(r#"{"value": "v"}"#));
    assert!(status == 200 && !close, "{status} {close}");
}
