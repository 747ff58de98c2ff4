//! Authorization matrix, bad input, sealed start and no plaintext anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use aegis_core::SpiffeId;
use aegis_identity::devca::DevCa;
use aegis_sdk::Method;
use common::*;
use time::OffsetDateTime;

fn env_for(
    safe: &Safe,
    ca: &DevCa,
    id: &str,
    valid: Option<(OffsetDateTime, OffsetDateTime)>,
    dir: &str,
) -> HashMap<String, String> {
    let id = SpiffeId::parse(id).unwrap();
    let svid = match valid {
        Some((nb, na)) => ca.issue_with_validity(&id, nb, na).unwrap(),
        None => ca.issue(&id, Duration::from_secs(3600)).unwrap(),
    };
    let paths = svid.write_files(&safe.dir.path().join(dir)).unwrap();
    HashMap::from([
        ("AEGIS_SAFE_URL".to_owned(), format!("https://127.0.0.1:{}", safe.port)),
        ("AEGIS_SVID_CERT".to_owned(), paths.cert.display().to_string()),
        ("AEGIS_SVID_KEY".to_owned(), paths.key.display().to_string()),
        ("AEGIS_SVID_BUNDLE".to_owned(), paths.bundle.display().to_string()),
    ])
}

#[test]
fn authorization_matrix() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "billing", "--value", "billing-secret"]));
    ok(safe.aegis(&admin, &["put", "payroll", "--value", "payroll-secret"]));
    let wl = |n: &str| format!("spiffe://vsecm.com/workload/{n}/ns/default/sa/{n}/n/{n}-0");

    // Admin role: allowed.
    assert_eq!(ok(safe.aegis(&admin, &["get", "payroll"])).trim(), "payroll-secret");
    // Workload A sees only its own secret, never B's.
    let billing = safe.workload_env("billing");
    assert_eq!(ok(safe.aegis(&billing, &["fetch"])).trim(), "billing-secret");
    fails(safe.aegis(&billing, &["get", "payroll"]), 4, "may not reveal");
    // A workload trying to write, list or delete.
    fails(safe.aegis(&billing, &["put", "billing", "--value", "x"]), 4, "not the Sentinel");
    fails(safe.aegis(&billing, &["list"]), 4, "not the Sentinel");
    fails(safe.aegis(&billing, &["delete", "payroll"]), 4, "not the Sentinel");
    // A trusted ID that matches no role.
    let own_ca = DevCa::load_or_create(&safe.data_dir().join("ca"), "vsecm.com").unwrap();
    let stranger = env_for(&safe, &own_ca, "spiffe://vsecm.com/unknown/thing", None, "stranger");
    fails(safe.aegis(&stranger, &["fetch"]), 4, "is not a workload");
    fails(safe.aegis(&stranger, &["list"]), 4, "not the Sentinel");
    // Untrusted CA (same trust domain name, different key): refused at the handshake.
    let rogue_ca = DevCa::load_or_create(&safe.dir.path().join("rogue-ca"), "vsecm.com").unwrap();
    let rogue = env_for(&safe, &rogue_ca, &wl("billing"), None, "rogue");
    fails(safe.aegis(&rogue, &["fetch"]), 7, "cannot reach the Safe");
    // Another trust domain, even with the Safe's bundle copied in.
    let other_ca = DevCa::load_or_create(&safe.dir.path().join("other-ca"), "other.org").unwrap();
    let other =
        env_for(&safe, &other_ca, "spiffe://other.org/workload/billing/ns/default/sa/billing/n/x", None, "other");
    fails(safe.aegis(&other, &["fetch"]), 7, "cannot reach the Safe");
    // Expired certificate from the right CA.
    let now = OffsetDateTime::now_utc();
    let expired = env_for(
        &safe,
        &own_ca,
        &wl("billing"),
        Some((now - time::Duration::days(2), now - time::Duration::days(1))),
        "expired",
    );
    fails(safe.aegis(&expired, &["fetch"]), 7, "cannot reach the Safe");
    // A Safe impostor: the client refuses a server whose SPIFFE ID is not the Safe's.
    let mut impostor_env = billing.clone();
    impostor_env.insert("VSECM_SPIFFEID_PREFIX_SAFE".into(), "spiffe://vsecm.com/workload/not-the-safe/".into());
    fails(safe.aegis(&impostor_env, &["fetch"]), 7, "cannot reach the Safe");
    // Nothing was changed by any of the refused calls.
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "billing-secret");
    assert!(safe.log_text().contains("TLS handshake refused"), "refusals are logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let put = |v: &str| format!(r#"{{"value":"{v}"}}"#).into_bytes();
    let (s, _) = admin.raw(Method::PUT, "/v1/secrets/keep", put("kept")).await.unwrap();
    assert_eq!(s, 200);

    let long = "a".repeat(300);
    let cases: Vec<(Method, String, Vec<u8>, u16, &str)> = vec![
        (Method::PUT, format!("/v1/secrets/{long}"), put("x"), 400, "the limit is 253"),
        (Method::PUT, "/v1/secrets/a..b".into(), put("x"), 400, "'..'"),
        (Method::PUT, "/v1/secrets/a%0Ab".into(), put("x"), 400, "(U+000A) at byte 1"),
        (Method::PUT, "/v1/secrets/a%20b".into(), put("x"), 400, "' ' (U+0020)"),
        (Method::PUT, "/v1/secrets/keep".into(), b"{not json".to_vec(), 400, "malformed JSON"),
        (Method::PUT, "/v1/secrets/keep".into(), b"".to_vec(), 400, "body is empty"),
        (Method::PUT, "/v1/secrets/keep".into(), br#"{"valu":"x"}"#.to_vec(), 400, "field 'valu'"),
        (Method::PUT, "/v1/secrets/keep".into(), br#"{"value":42}"#.to_vec(), 400, "expected fields or types"),
        (Method::PUT, "/v1/secrets/keep".into(), put(""), 400, "value is empty"),
        (Method::PUT, "/v1/secrets/keep".into(), br#"{"value":"x","format":"xml"}"#.to_vec(), 400, "unknown format"),
        (Method::PUT, "/v1/secrets/keep".into(), br#"{"value":"x","template":"{{.a"}"#.to_vec(), 400, "template"),
        (Method::PUT, "/v1/secrets/keep".into(), br#"{"value":"x","not_before":"soon"}"#.to_vec(), 400, "RFC 3339"),
        (
            Method::PUT,
            "/v1/secrets/keep".into(),
            br#"{"value":"x","namespaces":["Bad NS"]}"#.to_vec(),
            400,
            "invalid namespace",
        ),
        (Method::PUT, "/v1/secrets/keep".into(), br#"{"value":"x","cas":7}"#.to_vec(), 409, "not 7"),
        (Method::GET, "/v1/secrets/keep?version=99".into(), vec![], 404, "no version 99"),
        (Method::GET, "/v1/secrets/keep?version=abc".into(), vec![], 400, "whole number"),
        (Method::GET, "/v1/secrets/missing".into(), vec![], 404, "does not exist"),
        (Method::DELETE, "/v1/secrets/keep/versions/zero".into(), vec![], 400, "whole number"),
        (Method::POST, "/v1/secrets/keep/rollback".into(), br#"{"version":5}"#.to_vec(), 404, "no version 5"),
        (Method::POST, "/v1/secrets/keep/undelete".into(), vec![], 409, "is not deleted"),
        (Method::GET, "/v1/nothing-here".into(), vec![], 404, "no such endpoint"),
        (
            Method::POST,
            "/sentinel/v1/secrets".into(),
            br#"{"workloads":null,"value":"x"}"#.to_vec(),
            400,
            "no workloads",
        ),
        (
            Method::POST,
            "/sentinel/v1/secrets".into(),
            br#"{"workloads":["../x"],"value":"x"}"#.to_vec(),
            400,
            "invalid secret name",
        ),
        (
            Method::POST,
            "/sentinel/v1/keys".into(),
            br#"{"ageSecretKey":"x","agePublicKey":"y","aesCipherKey":"z"}"#.to_vec(),
            400,
            "age secret key",
        ),
    ];
    for (m, path, body, status, msg) in cases {
        let (s, text) = admin.raw(m.clone(), &path, body).await.unwrap();
        assert_eq!(s, status, "{m} {path}: {text}");
        assert!(text.contains(msg), "{m} {path}: expected {msg:?} in {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        assert!(v["error"].is_string(), "{text}");
    }
    let big = vec![b'a'; 1024 * 1024 + 10];
    let mut body = br#"{"value":""#.to_vec();
    body.extend_from_slice(&big);
    body.extend_from_slice(br#""}"#);
    let (s, text) = admin.raw(Method::PUT, "/v1/secrets/keep", body).await.unwrap();
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("larger than the limit of 1048576 bytes"), "{text}");
    // The stored secret is untouched.
    let r = admin.get("keep", None).await.unwrap();
    assert_eq!((r.value.expose(), r.info.version), ("kept", 1));
    assert!(!safe.log_text().contains("panicked"), "{}", safe.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_start_and_unseal() {
    let mut safe = Safe::server_manual();
    assert!(http_ok(safe.health, "/readyz").is_none(), "sealed Safe must not be ready");
    let admin = safe.admin_env();
    fails(safe.aegis(&admin, &["list"]), 5, "the Safe is sealed");
    // VSecM answers `safe -l` on a sealed Safe with an empty 400; Aegis says why.
    fails(safe.safe(&admin, &["-l"]), 5, "safe -i");
    let client = safe.client(&admin).await;
    let (s, text) = client.raw(Method::GET, "/sentinel/v1/secrets", vec![]).await.unwrap();
    assert_eq!(s, 503, "{text}");
    assert!(text.contains("safe -i"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert!(v["error"].as_str().is_some_and(|e| e.contains("sealed")), "{text}");
    let workload = safe.client(&safe.workload_env("billing")).await;
    let (s, text) = workload.raw(Method::GET, "/workload/v1/secrets", vec![]).await.unwrap();
    assert_eq!(s, 503, "{text}");
    assert!(text.contains("sealed") && serde_json::from_str::<serde_json::Value>(&text).is_err(), "{text}");
    let e = workload.vsecm_fetch().await.unwrap_err().to_string();
    assert!(e.contains("sealed"), "{e}");

    let key = aegis_crypto::RootKey::generate();
    let key_text = key.to_text();
    assert_eq!(ok(safe.safe(&admin, &["-i", &key_text])).trim(), "OK");
    safe.wait_ready();
    ok(safe.aegis(&admin, &["put", "sealed-app", "--value", "behind-the-seal"]));

    safe.restart();
    fails(safe.aegis(&admin, &["get", "sealed-app"]), 5, "sealed");
    // The wrong key is refused and nothing is quarantined.
    let wrong = aegis_crypto::RootKey::generate().to_text();
    let key_file = safe.dir.path().join("wrong.key");
    std::fs::write(&key_file, wrong.as_bytes()).unwrap();
    fails(safe.aegis(&admin, &["unseal", "--root-key-file", key_file.to_str().unwrap()]), 1, "wrong root key");
    let right_file = safe.dir.path().join("right.key");
    std::fs::write(&right_file, key_text.as_bytes()).unwrap();
    assert!(ok(safe.aegis(&admin, &["unseal", "--root-key-file", right_file.to_str().unwrap()])).contains("1 secrets"));
    assert_eq!(ok(safe.aegis(&admin, &["get", "sealed-app"])).trim(), "behind-the-seal");
    // Unsealing again with another key is a conflict.
    fails(safe.aegis(&admin, &["unseal", "--root-key-file", key_file.to_str().unwrap()]), 6, "already unsealed");
    // The manual-mode Safe wrote no key to disk.
    for f in files_under(safe.dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        let aes = key_text.lines().nth(2).unwrap();
        assert!(!bytes.windows(aes.len()).any(|w| w == aes.as_bytes()) || f == right_file, "{}", f.display());
    }
}

#[test]
fn slow_clients_are_cut_off() {
    use std::io::Read;
    let safe = Safe::server_manual();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", safe.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the Safe must close a connection that never sends a TLS hello");
    assert!(start.elapsed() < Duration::from_secs(5), "closed after {:?}", start.elapsed());
}

#[test]
fn no_plaintext_on_disk_or_in_logs() {
    let mut safe = Safe::dev();
    let admin = safe.admin_env();
    let values = [
        "PLAINTEXT-CANARY-native-7f3a",
        "PLAINTEXT-CANARY-safe-91bc",
        "PLAINTEXT-CANARY-git-55d0",
        "PLAINTEXT-CANARY-tmpl-2e61",
    ];
    ok(safe.aegis(&admin, &["put", "native", "--value", values[0]]));
    ok(safe.safe(&admin, &["-w", "viasafe", "-s", values[1]]));
    let ct = ok(safe.safe(&admin, &["-s", values[2], "-e"])).trim().to_owned();
    ok(safe.safe(&admin, &["-w", "viagit", "-s", &ct, "-e"]));
    let tmpl = format!(r#"{{"user":"{}"}}"#, values[3]);
    ok(safe.safe(&admin, &["-w", "tmpl", "-s", &tmpl, "-t", r#"{"U":"{{.user}}"}"#, "-f", "yaml"]));
    let w = safe.workload_env("native");
    assert_eq!(ok(safe.aegis(&w, &["fetch"])).trim(), values[0]);
    ok(safe.aegis(&admin, &["put", "native", "--value", "second-version"]));
    ok(safe.aegis(&admin, &["rotate-root-key"]));
    safe.restart();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "native", "--version", "1"])).trim(), values[0]);
    let log = safe.log_text();
    assert!(log.contains("TRACE") && log.contains("request"), "logs must be captured at trace level");
    let files = files_under(safe.dir.path());
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "rec")), "records must exist");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for v in values {
            assert!(!bytes.windows(v.len()).any(|w| w == v.as_bytes()), "{v} found in {}", f.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_sends_nothing_after_the_handshake_is_cut_off() {
    use tokio::io::AsyncReadExt;
    let safe = Safe::server_manual();
    let env = safe.workload_env("billing");
    let mut tls = tls_connect(&env, safe.port).await.unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the Safe must close an authenticated connection that sends no request");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "closed after {took:?}");
}

/// VSecM's `safe` drops the body of every refusal, so the Safe's own log must say why
/// (and never with a value in it).
#[test]
fn the_safes_log_says_why_a_request_was_refused() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    let out = safe.safe(&admin, &["-w", "billing", "-s", "refused-value-123", "-E", "not-a-time"]);
    assert!(!out.status.success());
    let billing = safe.workload_env("billing");
    fails(safe.aegis(&billing, &["list"]), 4, "not the Sentinel");
    let log = safe.plain_log_text();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("request refused")).collect();
    assert!(refused.iter().any(|l| l.contains("expires") && l.contains("status=400")), "{refused:#?}");
    assert!(refused.iter().any(|l| l.contains("is not the Sentinel") && l.contains("status=403")), "{refused:#?}");
    assert!(!log.contains("refused-value-123"), "a refused value reached the log");
}
