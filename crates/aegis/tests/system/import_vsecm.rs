//! `aegis import vsecm` against a data directory written by VSecM's own Safe.
//!
//! The fixtures in `tests/fixtures/vsecm-0.28.1/` were produced by
//! `scripts/vsecm-fixtures.sh` (see the README there): VSecM v0.28.1's Safe, run
//! with real SPIRE and a root key file, took its secrets from the Sentinel's
//! upsert and wrote the `<name>.age` files; `expected-fetches.json` holds what
//! each workload then fetched from VSecM with VSecM's own Go SDK. Here a real
//! Aegis Safe (`aegis dev`, real mTLS) imports them, and each workload fetches
//! through Aegis's VSecM-compatible API (`GET /workload/v1/secrets`). The last test
//! does it all over SPIRE: the Safe, the importing admin and the workloads get their
//! identities from a real SPIRE agent, and the workloads fetch with VSecM's own Go SDK
//! (`tools/vsecm-client`), the same client that recorded the fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::spire as harness;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use common::{ok, stderr, stdout, Safe};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vsecm-0.28.1")
}

fn expected() -> Value {
    serde_json::from_str(&fs::read_to_string(fixtures().join("expected-fetches.json")).unwrap()).unwrap()
}

/// Every secret name VSecM wrote.
fn written() -> Vec<String> {
    expected()["written"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn import(safe: &Safe, data: &Path, key: &Path, extra: &[&str]) -> std::process::Output {
    let mut args =
        vec!["import", "vsecm", "--data-dir", data.to_str().unwrap(), "--root-key-file", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    safe.aegis(&safe.admin_env(), &args)
}

/// The report lines as (label, name).
fn report(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let label = it.next()?;
            let name = it.next()?.trim_end_matches(':');
            matches!(label, "new" | "changed" | "unchanged" | "failed").then(|| (name.to_owned(), label.to_owned()))
        })
        .collect()
}

/// What Aegis serves where it differs from VSecM on purpose (docs/VSECM-COMPATIBILITY.md,
/// "Transformations"); `None`: Aegis serves exactly what VSecM served.
fn deliberate(workload: &str, field: &str) -> Option<&'static str> {
    match (workload, field) {
        // VSecM drops template output segments without a colon, so this template's
        // output became empty and VSecM fell back to the raw value; Aegis keeps it.
        ("reports", "data") => Some("bucket=r region=eu"),
        _ => None,
    }
}

async fn secret_names(safe: &Safe) -> Vec<String> {
    let c = safe.client(&safe.admin_env()).await;
    c.list(false).await.unwrap().secrets.into_iter().map(|s| s.name).collect()
}

fn no_values_in(text: &str) {
    for v in ["VSecMRocks", "s3cr3t", "4111", "maxmemory", "second version", "Grüße"] {
        assert!(!text.contains(v), "a secret value ({v}) was printed:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_secrets_fetch_as_from_vsecm() {
    let safe = Safe::dev_offline_kube();
    let fx = fixtures();
    let (data, key) = (fx.join("data"), fx.join("root-key.txt"));
    let before = secret_names(&safe).await;
    let names = written();

    // Dry run: every secret is new, nothing is written.
    let out = import(&safe, &data, &key, &["--dry-run"]);
    let text = ok(out);
    no_values_in(&text);
    let r = report(&text);
    for n in &names {
        assert_eq!(r.get(n).map(String::as_str), Some("new"), "{n} in:\n{text}");
    }
    assert!(text.contains("dry run"), "{text}");
    assert_eq!(secret_names(&safe).await, before, "the dry run wrote something");

    // Import.
    let t = Instant::now();
    let out = import(&safe, &data, &key, &[]);
    let took = t.elapsed();
    let text = ok(out);
    no_values_in(&text);
    let r = report(&text);
    for n in &names {
        assert_eq!(r.get(n).map(String::as_str), Some("new"), "{n} in:\n{text}");
    }
    eprintln!("import of {} VSecM secrets took {took:?}", names.len());

    // Every workload fetches from Aegis exactly what it fetched from VSecM.
    let exp = expected();
    let mut differences = Vec::new();
    for (workload, want) in exp["fetches"].as_object().unwrap() {
        let c = safe.client(&safe.workload_env(workload)).await;
        let got = c.vsecm_fetch().await.unwrap();
        match (want, got) {
            (Value::Null, None) => {}
            (Value::Null, Some(_)) => differences.push(format!("{workload}: no secret in VSecM, one in Aegis")),
            (_, None) => differences.push(format!("{workload}: fetched nothing from Aegis")),
            (want, Some(got)) => {
                for (field, got) in [("data", got.data.expose()), ("created", &got.created), ("updated", &got.updated)]
                {
                    let vsecm = want[field].as_str().unwrap();
                    let want = deliberate(workload, field).unwrap_or(vsecm);
                    if got != want {
                        differences.push(format!("{workload}.{field}: VSecM {want:?}, Aegis {got:?}"));
                    }
                }
            }
        }
    }
    assert!(differences.is_empty(), "workloads fetch differently from Aegis:\n{}", differences.join("\n"));

    // What no workload fetches: the metadata of the special names and the validity window.
    let c = safe.client(&safe.admin_env()).await;
    let k8s = c.get("k8s:db-credentials", None).await.unwrap();
    assert_eq!(k8s.info.namespaces, ["apps", "default"]);
    assert_eq!(k8s.info.template.as_deref(), Some(r#"{"USERNAME":"{{.user}}","PASSWORD":"{{.pass}}"}"#));
    assert_eq!(k8s.value.expose(), r#"{"user":"db","pass":"s3cr3t"}"#);
    let raw = c.get("raw:cache-config", None).await.unwrap();
    assert_eq!(raw.value.expose(), "maxmemory 2gb");
    let pay = c.get("payments", None).await.unwrap();
    assert_eq!(pay.info.namespaces, ["default", "payments"]);
    assert_eq!(
        (pay.info.not_before.as_str(), pay.info.expires_after.as_str()),
        ("2024-01-01T00:00:00Z", "2099-12-31T23:59:59Z")
    );
    let inv = c.get("inventory", None).await.unwrap();
    assert_eq!(inv.info.format, "yaml");

    // Importing again changes nothing: no new versions.
    let text = ok(import(&safe, &data, &key, &[]));
    let r = report(&text);
    for n in &names {
        assert_eq!(r.get(n).map(String::as_str), Some("unchanged"), "{n} in:\n{text}");
        let h = c.history(n).await.unwrap();
        assert_eq!(h.versions.len(), 1, "{n} has {} versions after a second import", h.versions.len());
    }

    // The report for scripts.
    let json: Value = serde_json::from_str(&ok(import(&safe, &data, &key, &["--dry-run", "-o", "json"]))).unwrap();
    assert_eq!(json["dry_run"], true);
    let rows = json["secrets"].as_array().unwrap();
    assert_eq!(rows.len(), names.len());
    assert!(rows.iter().all(|r| r["change"] == "unchanged"), "{json}");

    // A secret changed in Aegis since is reported as changed, and the import writes VSecM's value back.
    ok(safe.aegis(&safe.admin_env(), &["put", "billing", "--value", "edited in aegis"]));
    let r = report(&ok(import(&safe, &data, &key, &["--dry-run"])));
    assert_eq!(r["billing"], "changed");
    assert_eq!(r["orders"], "unchanged");
    let r = report(&ok(import(&safe, &data, &key, &[])));
    assert_eq!(r["billing"], "changed");
    let b = c.get("billing", None).await.unwrap();
    assert_eq!(b.info.version, 3);
    let vsecm_created = exp["fetches"]["billing"]["created"].as_str().unwrap().trim_matches('"').to_owned();
    assert_eq!(b.info.created, vsecm_created, "re-importing keeps the creation time");

    // The import times on the native API: both or neither, well-formed, in order.
    for (created, updated, why) in [
        (Some("2024-01-01T00:00:00Z"), None, "both created and updated"),
        (Some("yesterday"), Some("2024-01-01T00:00:00Z"), "created must be an RFC 3339 time"),
        (Some("2024-02-01T00:00:00Z"), Some("2024-01-01T00:00:00Z"), "created must not be after updated"),
    ] {
        let mut req = PutSecret::new(SecretValue::new("v"));
        req.created = created.map(str::to_owned);
        req.updated = updated.map(str::to_owned);
        let e = c.put("stamped", &req).await.unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    assert_eq!(b.value.expose(), r#"{"username":"admin","password":"VSecMRocks","port":5432}"#);
}

/// Copies the fixture data directory to a temporary one.
fn copy_data() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in fs::read_dir(fixtures().join("data")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_records_are_reported_by_name_and_the_rest_is_imported() {
    let safe = Safe::dev_offline_kube();
    let d = copy_data();
    // Damage one record in its payload (the age MAC fails) and cut another short.
    let p = d.path().join("billing.age");
    let mut bytes = fs::read(&p).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    fs::write(&p, bytes).unwrap();
    let p = d.path().join("reports.age");
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..40]).unwrap();
    // Backups VSecM keeps next to the records are not records.
    fs::write(d.path().join("orders-1-.age.backup"), b"ignored").unwrap();

    let out = import(&safe, d.path(), &fixtures().join("root-key.txt"), &[]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    let (text, err) = (stdout(&out), stderr(&out));
    no_values_in(&text);
    no_values_in(&err);
    let r = report(&text);
    assert_eq!(r["billing"], "failed", "{text}");
    assert_eq!(r["reports"], "failed", "{text}");
    assert!(err.contains("billing") && err.contains("reports") && err.contains("2 of 9"), "{err}");
    assert!(text.contains("billing: age file could not be decrypted"), "{text}");
    let imported = secret_names(&safe).await;
    for n in written() {
        let want = !matches!(n.as_str(), "billing" | "reports");
        assert_eq!(imported.contains(&n), want, "{n}: {imported:?}");
    }
}

/// A file name is whatever the directory holds: terminal escapes, line breaks, C1
/// controls and bidirectional overrides in it are shown escaped in the text report,
/// the JSON report and the error, so no file can forge or hide a line of the report.
#[tokio::test(flavor = "multi_thread")]
async fn file_names_cannot_forge_the_report() {
    let safe = Safe::dev();
    let d = copy_data();
    let evil = "x\u{1b}[2K\r\u{1b}[32mnew        billing (version 1)\nunchanged  fake\u{9b}31m\u{202e}gpj";
    fs::write(d.path().join(format!("{evil}.age")), b"not an age file").unwrap();
    let controls = |t: &str| t.chars().filter(|c| c.is_control() && *c != '\n' || *c == '\u{202e}').count();

    let out = import(&safe, d.path(), &fixtures().join("root-key.txt"), &["--dry-run"]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "stdout: {text}\nstderr: {err}");
    assert_eq!(controls(&text), 0, "raw controls in the report: {text:?}");
    assert_eq!(controls(&err), 0, "raw controls in the error: {err:?}");
    // One line per file and the summary: the name's line break forged none.
    assert_eq!(text.lines().count(), written().len() + 2, "{text}");
    let shown = "x\\u{1b}[2K\\r\\u{1b}[32mnew        billing (version 1)\\nunchanged  fake\\u{9b}31m\\u{202e}gpj";
    assert!(text.lines().any(|l| l.starts_with("failed") && l.contains(shown)), "{text}");
    assert!(err.contains(shown), "{err}");
    assert_eq!(report(&text).get("fake"), None, "{text}");

    let out = import(&safe, d.path(), &fixtures().join("root-key.txt"), &["--dry-run", "-o", "json"]);
    let text = stdout(&out);
    assert_eq!(controls(&text), 0, "raw controls in the JSON report: {text:?}");
    let json: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = json["secrets"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert!(names.contains(&evil), "the JSON report keeps the exact name: {names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_root_key_imports_nothing() {
    let safe = Safe::dev();
    let before = secret_names(&safe).await;
    let d = tempfile::tempdir().unwrap();
    let wrong = d.path().join("wrong-key.txt");
    fs::write(&wrong, aegis_crypto::RootKey::generate().to_text().as_bytes()).unwrap();
    let out = import(&safe, &fixtures().join("data"), &wrong, &[]);
    assert_eq!(out.status.code(), Some(64), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("wrong root key") && stderr(&out).contains("nothing was imported"),
        "{}",
        stderr(&out)
    );
    assert_eq!(secret_names(&safe).await, before);

    // A key file that is not a key: a clear error naming the file.
    let bad = d.path().join("bad-key.txt");
    fs::write(&bad, "not a key\n").unwrap();
    let out = import(&safe, &fixtures().join("data"), &bad, &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("invalid root key") && stderr(&out).contains("bad-key.txt"), "{}", stderr(&out));
    assert_eq!(secret_names(&safe).await, before);

    // The Safe out of reach: the import stops with the unreachable exit code and says where.
    let mut env = safe.admin_env();
    env.insert("AEGIS_SAFE_URL".into(), format!("https://127.0.0.1:{}", common::free_port()));
    let (data, key) = (fixtures().join("data"), fixtures().join("root-key.txt"));
    let args = ["import", "vsecm", "--data-dir", data.to_str().unwrap(), "--root-key-file", key.to_str().unwrap()];
    let out = safe.aegis(&env, &args);
    assert_eq!(out.status.code(), Some(7), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("stopped at '") && stderr(&out).contains("run the import again"), "{}", stderr(&out));
}

/// VSecM keeps its root key in the `vsecm-root-key` Secret: the import reads it from a
/// real kube-apiserver with the Safe's own (restricted) ServiceAccount, and writes nothing there.
#[tokio::test(flavor = "multi_thread")]
async fn the_root_key_can_come_from_vsecms_kubernetes_secret() {
    let cluster = common::kube::KubeCluster::start().await;
    let rbac = common::repo_root().join("deploy/kubernetes/safe-rbac.yaml");
    cluster.apply_yaml(rbac.to_str().unwrap()).await;
    let kubeconfig = cluster.service_account_kubeconfig("vsecm-system", "aegis-safe").await;
    let key_text = fs::read_to_string(fixtures().join("root-key.txt")).unwrap();
    let indented: String = key_text.lines().map(|l| format!("    {l}\n")).collect();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: vsecm-root-key\n  namespace: vsecm-system\n\
         type: Opaque\nstringData:\n  KEY_TXT: |\n{indented}"
    );
    let safe = Safe::dev_offline_kube();
    let data = fixtures().join("data");
    let run = |name: &str| {
        let args = [
            "import",
            "vsecm",
            "--data-dir",
            data.to_str().unwrap(),
            "--root-key-secret",
            name,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ];
        safe.aegis(&safe.admin_env(), &args)
    };

    // Not there yet: a clear error naming the Secret, nothing imported.
    let before = secret_names(&safe).await;
    let out = run("vsecm-root-key");
    assert_eq!(out.status.code(), Some(64), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("vsecm-system/vsecm-root-key") && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
    assert_eq!(secret_names(&safe).await, before);

    // VSecM's Secret holds the key: every secret is imported.
    cluster.apply_yaml(&secret).await;
    let text = ok(run("vsecm-root-key"));
    no_values_in(&text);
    assert!(!text.contains(key_text.lines().next().unwrap()), "the key was printed");
    let r = report(&text);
    for n in written() {
        assert_eq!(r.get(&n).map(String::as_str), Some("new"), "{n} in:\n{text}");
    }

    // A Secret the ServiceAccount may not read: the error says which verb is missing.
    let out = run("someone-elses");
    assert_eq!(out.status.code(), Some(64), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("may not get") && stderr(&out).contains("403"), "{}", stderr(&out));
}

/// The same import over real SPIRE: `aegis import` runs as the Sentinel's SPIFFE ID and
/// every workload fetches with VSecM's own Go SDK, as the fixtures were recorded.
#[test]
fn vsecms_go_sdk_fetches_the_imported_secrets_over_spire() {
    use harness::{env_or_build, spiffe_id, Spire, UidSafe, SAFE_UID, SENTINEL_UID};
    let client = env_or_build(
        "AEGIS_VSECM_CLIENT",
        "scripts/build-vsecm-client.sh",
        "the VSecM Go client is missing: run scripts/build-vsecm-client.sh or set AEGIS_VSECM_CLIENT",
    );
    let spire = Spire::start("import-vsecm", &[]);
    let staged = spire.bin("vsecm-client");
    fs::copy(&client, &staged).unwrap_or_else(|e| panic!("cannot copy {}: {e}", client.display()));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();

    let exp = expected();
    let fetches = exp["fetches"].as_object().unwrap();
    let workloads: Vec<(&str, u32)> = fetches.keys().enumerate().map(|(i, w)| (w.as_str(), 41100 + i as u32)).collect();
    spire.register("safe", "", SAFE_UID, &[]);
    spire.register("sentinel", "", SENTINEL_UID, &[]);
    for (w, uid) in &workloads {
        spire.register("workload", w, *uid, &[]);
    }
    spire.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
    spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    for (w, uid) in &workloads {
        spire.wait_svid(*uid, &spiffe_id("workload", w));
    }
    let safe = UidSafe::start_with_env(&spire, SAFE_UID, common::offline_kube_env());

    // The fixtures, where the Sentinel's uid can read them.
    let dir = spire.dir_for("vsecm", SENTINEL_UID);
    let data = dir.join("data");
    fs::create_dir(&data).unwrap();
    for e in fs::read_dir(fixtures().join("data")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), data.join(e.file_name())).unwrap();
    }
    let key = dir.join("root-key.txt");
    fs::copy(fixtures().join("root-key.txt"), &key).unwrap();
    let args = ["import", "vsecm", "--data-dir", data.to_str().unwrap(), "--root-key-file", key.to_str().unwrap()];
    let out = spire.run_as(SENTINEL_UID, "aegis", &safe.client_env(&spire), &args);
    assert!(out.status.success(), "import failed:\nstdout: {}\nstderr: {}", stdout(&out), stderr(&out));

    let env = HashMap::from([
        ("SPIFFE_ENDPOINT_SOCKET".to_owned(), spire.socket()),
        ("VSECM_SAFE_ENDPOINT_URL".to_owned(), format!("{}/", safe.url)),
    ]);
    let mut differences = Vec::new();
    for (w, uid) in &workloads {
        let out = spire.run_as(*uid, "vsecm-client", &env, &["fetch", "-json"]);
        let want = &fetches[*w];
        match (want, out.status.code()) {
            (Value::Null, Some(3)) => {}
            (Value::Null, _) => differences.push(format!("{w}: no secret in VSecM; from Aegis: {}", stdout(&out))),
            (want, Some(0)) => {
                let got: Value = serde_json::from_str(&stdout(&out)).unwrap();
                for field in ["data", "created", "updated"] {
                    let want = deliberate(w, field).unwrap_or(want[field].as_str().unwrap());
                    if got[field].as_str() != Some(want) {
                        differences.push(format!("{w}.{field}: want {want:?}, Aegis {:?}", got[field]));
                    }
                }
            }
            (_, code) => differences.push(format!("{w}: sentry.Fetch() exited {code:?}: {}", stderr(&out))),
        }
    }
    assert!(differences.is_empty(), "VSecM's SDK fetches differently from Aegis:\n{}", differences.join("\n"));
}
