//! End to end through both CLIs and both APIs against a real `aegis dev`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use serde_json::Value;

#[test]
fn native_cli_put_get_list_delete_undelete_history_rollback_destroy() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    let info: Value =
        serde_json::from_str(&ok(safe.aegis(&admin, &["put", "billing", "--value", "v1", "-o", "json"]))).unwrap();
    assert_eq!(info["version"], 1);
    ok(safe.aegis(&admin, &["put", "billing", "--value", "v2"]));
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "v2");
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing", "--version", "1"])).trim(), "v1");
    let list: Value = serde_json::from_str(&ok(safe.aegis(&admin, &["list", "-o", "json"]))).unwrap();
    assert_eq!(list["secrets"][0]["name"], "billing");
    assert_eq!(list["secrets"][0]["version"], 2);

    ok(safe.aegis(&admin, &["delete", "billing"]));
    fails(safe.aegis(&admin, &["get", "billing"]), 3, "is deleted");
    assert!(ok(safe.aegis(&admin, &["list"])).contains("no secrets"));
    assert!(ok(safe.aegis(&admin, &["list", "--deleted"])).contains("billing"));
    ok(safe.aegis(&admin, &["undelete", "billing"]));
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "v2");

    ok(safe.aegis(&admin, &["rollback", "billing", "1"]));
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "v1");
    let h: Value = serde_json::from_str(&ok(safe.aegis(&admin, &["history", "billing", "-o", "json"]))).unwrap();
    let versions: Vec<u64> = h["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(h["versions"][2]["current"], true);

    ok(safe.aegis(&admin, &["destroy", "billing", "2"]));
    fails(safe.aegis(&admin, &["get", "billing", "--version", "2"]), 6, "destroyed");
    fails(safe.aegis(&admin, &["rollback", "billing", "2"]), 6, "destroyed");
    fails(safe.aegis(&admin, &["get", "billing", "--version", "9"]), 3, "no version 9");
    fails(safe.aegis(&admin, &["put", "billing", "--value", "x", "--cas", "1"]), 6, "is at version 3, not 1");
    ok(safe.aegis(&admin, &["put", "billing", "--value", "v4", "--cas", "3"]));

    // The workload sees its own secret through `aegis fetch`.
    let billing = safe.workload_env("billing");
    assert_eq!(ok(safe.aegis(&billing, &["fetch"])).trim(), "v4");
    let other = safe.workload_env("payroll");
    fails(safe.aegis(&other, &["fetch"]), 3, "no secret is registered");
}

#[test]
fn version_history_is_bounded_to_ten() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    for i in 1..=12 {
        ok(safe.aegis(&admin, &["put", "app", "--value", &format!("v{i}")]));
    }
    let h: Value = serde_json::from_str(&ok(safe.aegis(&admin, &["history", "app", "-o", "json"]))).unwrap();
    let arr = h["versions"].as_array().unwrap();
    assert_eq!(arr.len(), 10);
    assert_eq!(arr[0]["version"], 3);
    fails(safe.aegis(&admin, &["get", "app", "--version", "1"]), 3, "no version 1");
}

#[test]
fn safe_cli_register_list_encrypt_delete_and_messages() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    fails(safe.safe(&admin, &["-s", "x"]), 1, "Please provide a workload name.");
    fails(safe.safe(&admin, &["-w", "billing"]), 1, "Please provide a secret.");
    assert_eq!(
        ok(safe
            .safe(&admin, &["-w", "billing", "-s", r#"{"username":"admin","password":"VSecMRocks!"}"#, "-f", "yaml"]))
        .trim(),
        "OK"
    );
    let billing = safe.workload_env("billing");
    assert_eq!(ok(safe.aegis(&billing, &["fetch"])), "password: VSecMRocks!\nusername: admin\n", "one line break");

    // Encrypt-only, then register the ciphertext with -e.
    let ct = ok(safe.safe(&admin, &["-s", "from-git", "-e"])).trim().to_owned();
    assert!(!ct.contains("from-git") && ct.len() > 40, "{ct}");
    assert_eq!(ok(safe.safe(&admin, &["-w", "gitops", "-s", &ct, "-e"])).trim(), "OK");
    assert_eq!(ok(safe.aegis(&admin, &["get", "gitops"])).trim(), "from-git");
    fails(safe.safe(&admin, &["-w", "gitops", "-s", "not-a-ciphertext", "-e"]), 1, "safe -e");

    // gen: patterns are expanded by the CLI with the OS random source.
    ok(safe.safe(&admin, &["-w", "generated", "-s", "gen:tok-[a-z0-9]{12}"]));
    let v = ok(safe.aegis(&admin, &["get", "generated"])).trim().to_owned();
    assert!(v.starts_with("tok-") && v.len() == 16, "{v}");

    let list: Value = serde_json::from_str(&ok(safe.safe(&admin, &["-l"]))).unwrap();
    let names: Vec<&str> = list["secrets"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["billing", "generated", "gitops"]);
    assert_eq!(list["secrets"][0]["expiresAfter"], "9999-12-31T23:59:59Z");
    let enc: Value = serde_json::from_str(&ok(safe.safe(&admin, &["-l", "-e"]))).unwrap();
    assert_eq!(enc["algorithm"], "age");
    let revealed = enc["secrets"][0]["value"].as_str().unwrap();
    assert!(!revealed.contains("VSecMRocks"));

    assert_eq!(ok(safe.safe(&admin, &["-d", "-w", "billing"])).trim(), "OK");
    fails(safe.aegis(&billing, &["fetch"]), 3, "no secret");
    // A workload may not use the Sentinel command.
    fails(safe.safe(&billing, &["-w", "billing", "-s", "x"]), 4, "not the Sentinel");
}

#[test]
fn safe_cli_namespaces_and_several_workloads() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    let args = ["-w", "one", "-w", "two", "-n", "payments", "-n", "billing", "-s", "shared"];
    assert_eq!(ok(safe.safe(&admin, &args)).trim(), "OKOK", "one OK per workload, as VSecM answers");
    for name in ["one", "two"] {
        let read: Value = serde_json::from_str(&ok(safe.aegis(&admin, &["get", name, "-o", "json"]))).unwrap();
        assert_eq!(read["data"], "shared");
        assert_eq!(read["namespaces"], serde_json::json!(["payments", "billing"]));
    }
    ok(safe.safe(&admin, &["-w", "three", "-s", "alone"]));
    let read: Value = serde_json::from_str(&ok(safe.aegis(&admin, &["get", "three", "-o", "json"]))).unwrap();
    assert_eq!(read["namespaces"], serde_json::json!(["default"]));
}

/// What a workload receives, as VSecM's Go SDK reads it: the `data` string.
async fn workload_data(work: &aegis_sdk::Client) -> Option<String> {
    let (status, body) = work.raw(aegis_sdk::Method::GET, "/workload/v1/secrets", vec![]).await.unwrap();
    match status {
        404 => None,
        200 => Some(serde_json::from_str::<Value>(&body).unwrap()["data"].as_str().unwrap().to_owned()),
        _ => panic!("GET /workload/v1/secrets: {status} {body}"),
    }
}

/// Where Aegis answers VSecM's `safe` differently, or the same, on purpose
/// (docs/VSECM-COMPATIBILITY.md, "Deliberate differences").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_cli_deliberate_differences_from_vsecm() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    let work = safe.client(&safe.workload_env("billing")).await;
    let creds = r#"{"username":"admin","password":"VSecMRocks!"}"#;

    // `-f yaml`: the document ends with the line break yaml.v3 writes, as with VSecM.
    ok(safe.safe(&admin, &["-w", "billing", "-s", creds, "-f", "yaml"]));
    assert_eq!(workload_data(&work).await.unwrap(), "password: VSecMRocks!\nusername: admin\n");

    // A template key the value lacks: VSecM delivers `<no value>`, and so does Aegis.
    ok(safe.safe(&admin, &["-w", "billing", "-s", creds, "-t", r#"{"USER":"{{.user}}"}"#]));
    assert_eq!(workload_data(&work).await.unwrap(), r#"{"USER":"<no value>"}"#);

    // A template that does not parse is refused (VSecM stores it and serves the raw value).
    fails(safe.safe(&admin, &["-w", "billing", "-s", "raw-value-1", "-t", "{{.user"]), 1, "template");
    assert_eq!(workload_data(&work).await.unwrap(), r#"{"USER":"<no value>"}"#, "the refused write changed nothing");

    // `-E` in the past and a garbage time are refused (VSecM accepts both); nothing changes.
    fails(safe.safe(&admin, &["-w", "billing", "-s", "raw-value-2", "-E", "2001-01-01T00:00:00Z"]), 1, "expires");
    fails(safe.safe(&admin, &["-w", "billing", "-s", "raw-value-3", "-E", "tomorrow"]), 1, "RFC 3339");
    fails(safe.safe(&admin, &["-w", "billing", "-s", "raw-value-4", "-N", "soon"]), 1, "RFC 3339");
    assert_eq!(workload_data(&work).await.unwrap(), r#"{"USER":"<no value>"}"#);

    // `-N` in the future: stored, but withheld from the workload until then (VSecM serves it).
    ok(safe.safe(&admin, &["-w", "billing", "-s", "from-2999", "-N", "2999-01-01T00:00:00Z"]));
    assert_eq!(workload_data(&work).await, None, "not yet valid: the workload sees no secret");
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "from-2999", "stored all the same");
    let list: Value = serde_json::from_str(&ok(safe.safe(&admin, &["-l"]))).unwrap();
    assert_eq!(list["secrets"][0]["notBefore"], "2999-01-01T00:00:00Z");
    ok(safe.safe(&admin, &["-w", "billing", "-s", "from-now", "-E", "2999-01-01T00:00:00Z"]));
    assert_eq!(workload_data(&work).await.unwrap(), "from-now", "inside its window");

    let log = safe.log_text();
    for v in ["raw-value-1", "raw-value-2", "raw-value-3", "raw-value-4"] {
        assert!(!log.contains(v), "a refused value reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsecm_api_wire_format() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let work = safe.client(&safe.workload_env("billing")).await;
    assert!(work.vsecm_fetch().await.unwrap().is_none(), "404 means no secret");
    let (status, body) = work.raw(aegis_sdk::Method::GET, "/workload/v1/secrets", vec![]).await.unwrap();
    assert_eq!((status, body.as_str()), (404, ""));
    // Errors on VSecM's fetch route are plain text: VSecM's Go SDK would decode a JSON
    // error body as an empty secret instead of failing.
    let (status, body) = admin.raw(aegis_sdk::Method::GET, "/workload/v1/secrets", vec![]).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("is not a workload"), "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_err(), "must not be JSON: {body}");

    let up = br#"{"workloads":["billing","raw:db"],"namespaces":null,"value":"{\"a\":\"b\"}","template":"","format":"json","encrypt":false,"notBefore":"now","expires":"never"}"#;
    let (status, body) = admin.raw(aegis_sdk::Method::POST, "/sentinel/v1/secrets", up.to_vec()).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "OKOK"));
    let (status, body) = work.raw(aegis_sdk::Method::GET, "/workload/v1/secrets", vec![]).await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"], r#"{"a":"b"}"#);
    let created = v["created"].as_str().unwrap();
    assert!(created.starts_with('"') && created.ends_with("Z\"") && created.len() == 22, "{created}");

    // VSecM's CLI sends the query percent-encoded in the path.
    let (status, body) = admin.raw(aegis_sdk::Method::GET, "/sentinel/v1/secrets%3Freveal=true", vec![]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"algorithm\":\"age\""), "{body}");
    assert_eq!(admin.keystone().await.unwrap().status, "pending");
    let up = br#"{"workloads":["vsecm-keystone"],"value":"done","encrypt":false}"#;
    let (status, body) = admin.raw(aegis_sdk::Method::POST, "/sentinel/v1/secrets", up.to_vec()).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "OK"), "fields VSecM may omit take their defaults");
    assert_eq!(admin.keystone().await.unwrap().status, "ready");
    let (status, _) = admin
        .raw(aegis_sdk::Method::DELETE, "/sentinel/v1/secrets", br#"{"workloads":["billing"]}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(work.vsecm_fetch().await.unwrap().is_none());
}

#[test]
fn restart_reads_back_and_health_endpoints() {
    let mut safe = Safe::dev();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "persist", "--value", "survives-restart"]));
    ok(safe.aegis(&admin, &["delete", "persist"]));
    ok(safe.aegis(&admin, &["undelete", "persist"]));
    safe.restart();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "persist"])).trim(), "survives-restart");
    let h: Value = serde_json::from_str(&ok(safe.aegis(&admin, &["history", "persist", "-o", "json"]))).unwrap();
    assert_eq!(h["versions"].as_array().unwrap().len(), 1);
    let metrics = http_ok(safe.health, "/metrics").unwrap();
    assert!(metrics.contains("aegis_secrets 1"), "{metrics}");
    assert!(metrics.contains("aegis_requests_total"), "{metrics}");
    // Labels are route templates (from the route table), never secret names.
    assert!(metrics.contains(r#"aegis_requests_total{route="/v1/secrets/{name}",status="200"}"#), "{metrics}");
    assert!(metrics.contains(r#"route="/v1/secrets/{name}/versions""#), "{metrics}");
    assert!(!metrics.contains("persist"), "{metrics}");
}

#[test]
fn root_key_rotation_re_encrypts_and_survives_restart() {
    let mut safe = Safe::dev();
    let admin = safe.admin_env();
    for i in 0..20 {
        ok(safe.aegis(&admin, &["put", &format!("s{i}"), "--value", &format!("value-{i}")]));
    }
    let key_before = std::fs::read(safe.data_dir().join("root.key")).unwrap();
    let rec = safe.data_dir().join("data").join("s3.rec");
    let rec_before = std::fs::read(&rec).unwrap();
    let r: Value = serde_json::from_str(&ok(safe.aegis(&admin, &["rotate-root-key", "-o", "json"]))).unwrap();
    assert_eq!(r["records"], 20);
    assert_ne!(std::fs::read(safe.data_dir().join("root.key")).unwrap(), key_before);
    let rec_after = std::fs::read(&rec).unwrap();
    assert_ne!(rec_before[5..13], rec_after[5..13], "key id in the record header must change");
    assert_eq!(ok(safe.aegis(&admin, &["get", "s3"])).trim(), "value-3");
    safe.restart();
    safe.wait_ready();
    for i in 0..20 {
        assert_eq!(ok(safe.aegis(&admin, &["get", &format!("s{i}")])).trim(), format!("value-{i}"));
    }
    assert!(!safe.log_text().contains("quarantine"), "{}", safe.log_text());
}

#[test]
fn a_corrupt_record_is_quarantined_by_name_and_the_rest_loads() {
    let mut safe = Safe::dev();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "good", "--value", "fine"]));
    ok(safe.aegis(&admin, &["put", "broken", "--value", "will-be-damaged"]));
    // Damage after the idle checkpoint: before it, the journal still holds the
    // record and a restart writes it over a damaged file.
    let journal = safe.data_dir().join("data").join("journal");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&journal).unwrap().len() > 0 {
        assert!(std::time::Instant::now() < deadline, "the idle writer never checkpointed its journal");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    safe.kill9();
    let rec = safe.data_dir().join("data").join("broken.rec");
    let mut bytes = std::fs::read(&rec).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&rec, bytes).unwrap();
    safe.start();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "good"])).trim(), "fine");
    fails(safe.aegis(&admin, &["get", "broken"]), 3, "does not exist");
    let log = safe.log_text();
    assert!(log.contains("moved to quarantine") && log.contains("broken"), "{log}");
    let q = safe.data_dir().join("data").join("quarantine");
    let names: Vec<String> =
        std::fs::read_dir(&q).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n.starts_with("broken.rec.") && !n.ends_with(".reason")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".reason")), "{names:?}");
}

#[test]
fn a_record_damaged_before_the_checkpoint_is_rewritten_from_the_journal() {
    let mut safe = Safe::dev();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "fresh", "--value", "from-the-journal"]));
    // Killed at once: the record file was written without an fsync, and the
    // journal is what made the write durable.
    safe.kill9();
    let data = safe.data_dir().join("data");
    assert!(std::fs::metadata(data.join("journal")).unwrap().len() > 0, "the write must still be in the journal");
    std::fs::write(data.join("fresh.rec"), b"").unwrap();
    safe.start();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "fresh"])).trim(), "from-the-journal");
    let log = safe.log_text();
    assert!(log.contains("journal replayed") && !log.contains("quarantine"), "{log}");
}

#[test]
fn client_commands_print_only_their_answer_unless_asked() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "billing", "--value", "v1"]));
    let quiet = safe.aegis(&admin, &["get", "billing"]);
    assert_eq!(stderr(&quiet), "", "a client command logs nothing by default");
    assert_eq!(ok(quiet).trim(), "v1");
    assert_eq!(stderr(&safe.aegis(&admin, &["list"])), "");

    let verbose = safe.aegis(&admin, &["-v", "get", "billing"]);
    assert!(stderr(&verbose).contains("loaded SVID files"), "-v brings the INFO lines back: {}", stderr(&verbose));
    assert_eq!(ok(verbose).trim(), "v1");
    let after = safe.aegis(&admin, &["get", "billing", "--verbose"]);
    assert!(stderr(&after).contains("loaded SVID files"), "{}", stderr(&after));

    let mut env = admin.clone();
    env.insert("AEGIS_LOG".into(), "info".into());
    let asked = safe.aegis(&env, &["get", "billing"]);
    assert!(stderr(&asked).contains("loaded SVID files"), "AEGIS_LOG=info brings them back: {}", stderr(&asked));
    env.insert("AEGIS_LOG_FORMAT".into(), "json".into());
    let json = safe.aegis(&env, &["get", "billing"]);
    let line = stderr(&json).lines().next().map(str::to_owned).unwrap_or_default();
    let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(parsed["level"], "INFO");
}
