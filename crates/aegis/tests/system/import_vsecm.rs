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
//!
//! The `postgres_*` tests do the same from VSecM's PostgreSQL backing store: the rows
//! of `tests/fixtures/vsecm-0.28.1-postgres/`, written by VSecM's Safe run with
//! `VSECM_SAFE_BACKING_STORE=postgres` (`scripts/vsecm-fixtures.sh --postgres`), are
//! loaded into a real PostgreSQL of the test's own and imported from there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::postgres::Postgres;
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

/// VSecM's PostgreSQL backing store: the table's schema, its rows, the key, the fetches.
fn pg_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vsecm-0.28.1-postgres")
}

fn expected_in(dir: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(dir.join("expected-fetches.json")).unwrap()).unwrap()
}

fn expected() -> Value {
    expected_in(&fixtures())
}

/// Every secret name VSecM wrote (in `dir`'s fixtures).
fn written_in(dir: &Path) -> Vec<String> {
    expected_in(dir)["written"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn written() -> Vec<String> {
    written_in(&fixtures())
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
    for v in ["VSecMRocks", "s3cr3t", "4111", "maxmemory", "second version", "Grüße", "dataSourceName"] {
        assert!(!text.contains(v), "a secret value ({v}) was printed:\n{text}");
    }
}

/// How each workload's fetch from Aegis differs from what it fetched from VSecM (`exp`).
async fn fetch_differences(safe: &Safe, exp: &Value) -> Vec<String> {
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
    differences
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
    let differences = fetch_differences(&safe, &exp).await;
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

// ---- VSecM's PostgreSQL backing store

/// The fixture rows (`name\tdata`, COPY text format), as VSecM wrote them.
fn pg_rows() -> Vec<(String, String)> {
    fs::read_to_string(pg_fixtures().join("vsecm-secrets.copy"))
        .unwrap()
        .lines()
        .map(|l| {
            let (n, d) = l.split_once('\t').unwrap();
            (n.to_owned(), d.to_owned())
        })
        .collect()
}

/// Creates database `db` with VSecM's table (the fixture's schema.sql) holding `rows`.
fn load_vsecm_db(pg: &Postgres, db: &str, rows: &[(String, String)]) {
    pg.create_db(db);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("rows.copy");
    fs::write(&copy, rows.iter().map(|(n, d)| format!("{n}\t{d}\n")).collect::<String>()).unwrap();
    let schema = pg_fixtures().join("schema.sql");
    let out = pg
        .tool("psql")
        .arg(pg.url(db))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-f", schema.to_str().unwrap(), "-c"])
        .arg(format!(r#"\copy "vsecm-secrets" (name, data) FROM '{}'"#, copy.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "loading the fixture rows: {}", String::from_utf8_lossy(&out.stderr));
}

fn import_pg(safe: &Safe, pg: &Postgres, db: &str, key: &Path, extra: &[&str]) -> std::process::Output {
    let url = pg.url(db);
    let password = pg.password_file();
    let mut args = vec![
        "import",
        "vsecm",
        "--postgres-url",
        &url,
        "--postgres-password-file",
        password.to_str().unwrap(),
        "--root-key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    safe.aegis(&safe.admin_env(), &args)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_rows_import_and_fetch_as_from_vsecm() {
    let pg = Postgres::start();
    let rows = pg_rows();
    let names = written_in(&pg_fixtures());
    let mut stored: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
    stored.sort_unstable();
    let mut want = names.iter().map(String::as_str).collect::<Vec<_>>();
    want.sort_unstable();
    assert_eq!(stored, want, "the fixture's rows are not the secrets VSecM was given");
    load_vsecm_db(&pg, "vsecm", &rows);
    let safe = Safe::dev_offline_kube();
    let key = pg_fixtures().join("root-key.txt");

    // Dry run: every row is new, nothing is written.
    let before = secret_names(&safe).await;
    let text = ok(import_pg(&safe, &pg, "vsecm", &key, &["--dry-run"]));
    no_values_in(&text);
    let r = report(&text);
    for n in &names {
        assert_eq!(r.get(n).map(String::as_str), Some("new"), "{n} in:\n{text}");
    }
    assert_eq!(secret_names(&safe).await, before, "the dry run wrote something");

    let text = ok(import_pg(&safe, &pg, "vsecm", &key, &[]));
    no_values_in(&text);
    let r = report(&text);
    for n in &names {
        assert_eq!(r.get(n).map(String::as_str), Some("new"), "{n} in:\n{text}");
    }
    assert_eq!(r.len(), names.len(), "{text}");

    // Every workload fetches from Aegis exactly what it fetched from VSecM.
    let exp = expected_in(&pg_fixtures());
    assert_eq!(exp["backing_store"], "postgres");
    let differences = fetch_differences(&safe, &exp).await;
    assert!(differences.is_empty(), "workloads fetch differently from Aegis:\n{}", differences.join("\n"));

    // Metadata no workload fetches, and VSecM's internal config, imported as it was.
    let c = safe.client(&safe.admin_env()).await;
    let k8s = c.get("k8s:db-credentials", None).await.unwrap();
    assert_eq!(k8s.info.namespaces, ["apps", "default"]);
    assert_eq!(k8s.value.expose(), r#"{"user":"db","pass":"s3cr3t"}"#);
    let pay = c.get("payments", None).await.unwrap();
    assert_eq!(
        (pay.info.not_before.as_str(), pay.info.expires_after.as_str()),
        ("2024-01-01T00:00:00Z", "2099-12-31T23:59:59Z")
    );
    let config: Value = serde_json::from_str(c.get("vsecm-safe", None).await.unwrap().value.expose()).unwrap();
    assert_eq!(config["config"]["backingStore"], "postgres");

    // The import only reads: the table is as it was. Importing again changes nothing.
    let out = pg
        .tool("psql")
        .arg(pg.url("vsecm"))
        .args(["-X", "-At", "-c", r#"SELECT name || E'\t' || data FROM "vsecm-secrets" ORDER BY name"#])
        .output()
        .unwrap();
    let now: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let mut was: Vec<String> = rows.iter().map(|(n, d)| format!("{n}\t{d}")).collect();
    was.sort();
    assert_eq!(now, was, "the import changed VSecM's table");
    let r = report(&ok(import_pg(&safe, &pg, "vsecm", &key, &[])));
    for n in &names {
        assert_eq!(r.get(n).map(String::as_str), Some("unchanged"), "{n}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_damaged_rows_are_reported_by_name_and_the_rest_is_imported() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pg = Postgres::start();
    let key_file = pg_fixtures().join("root-key.txt");
    let key_text = fs::read_to_string(&key_file).unwrap();
    let recipient: age::x25519::Recipient = key_text.lines().nth(1).unwrap().parse().unwrap();
    let mut rows = pg_rows();
    let data_of = |rows: &[(String, String)], n: &str| rows.iter().find(|(m, _)| m == n).unwrap().1.clone();
    let shipping = data_of(&rows, "shipping");
    for (name, data) in rows.iter_mut() {
        match name.as_str() {
            // Not base64.
            "billing" => *data = "this is not base64!".to_owned(),
            // The age payload damaged: its MAC fails.
            "reports" => {
                let mut bytes = b64.decode(&*data).unwrap();
                let last = bytes.len() - 10;
                bytes[last] ^= 0xff;
                *data = b64.encode(bytes);
            }
            // Another secret's record under this name.
            "orders" => data.clone_from(&shipping),
            // Encrypted to the right key, but not VSecM's JSON.
            "legacy" => *data = b64.encode(age::encrypt(&recipient, b"{not json").unwrap()),
            _ => {}
        }
    }
    load_vsecm_db(&pg, "vsecm", &rows);
    let safe = Safe::dev_offline_kube();

    let out = import_pg(&safe, &pg, "vsecm", &key_file, &[]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    let (text, err) = (stdout(&out), stderr(&out));
    no_values_in(&text);
    no_values_in(&err);
    let r = report(&text);
    let damaged = ["billing", "legacy", "orders", "reports"];
    for n in damaged {
        assert_eq!(r.get(n).map(String::as_str), Some("failed"), "{n} in:\n{text}");
        assert!(err.contains(n), "{err}");
    }
    let total = rows.len();
    assert!(err.contains(&format!("4 of {total}")), "{err}");
    assert!(text.contains("billing: its data is not base64"), "{text}");
    assert!(text.contains("reports: age file could not be decrypted"), "{text}");
    assert!(text.contains("orders: the row is named orders but holds the secret 'shipping'"), "{text}");
    assert!(text.contains("legacy: not a VSecM 0.28 secret document: it is not valid JSON"), "{text}");
    let imported = secret_names(&safe).await;
    for (n, _) in &rows {
        assert_eq!(imported.contains(n), !damaged.contains(&n.as_str()), "{n}: {imported:?}");
    }

    // A row over --max-file-bytes is reported by name and not even fetched.
    let out = import_pg(&safe, &pg, "vsecm", &key_file, &["--dry-run", "--max-file-bytes", "100"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("shipping: its data is") && text.contains("over the limit of 100"), "{text}");
    // More rows than --max-secrets: nothing is imported.
    let out = import_pg(&safe, &pg, "vsecm", &key_file, &["--max-secrets", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("more than 3 rows") && stderr(&out).contains("--max-secrets"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_wrong_root_key_imports_nothing() {
    let pg = Postgres::start();
    load_vsecm_db(&pg, "vsecm", &pg_rows());
    let safe = Safe::dev();
    let before = secret_names(&safe).await;
    let d = tempfile::tempdir().unwrap();
    let wrong = d.path().join("wrong-key.txt");
    fs::write(&wrong, aegis_crypto::RootKey::generate().to_text().as_bytes()).unwrap();
    let out = import_pg(&safe, &pg, "vsecm", &wrong, &[]);
    assert_eq!(out.status.code(), Some(64), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("wrong root key") && err.contains("nothing was imported"), "{err}");
    assert!(err.contains(r#"the table "vsecm-secrets" at 127.0.0.1:"#), "{err}");
    assert_eq!(secret_names(&safe).await, before);
    // The fixture's own key imports them (the key, not the rows, was wrong).
    let key = pg_fixtures().join("root-key.txt");
    ok(import_pg(&safe, &pg, "vsecm", &key, &["--dry-run"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_missing_table_or_database_gives_a_clear_error() {
    let pg = Postgres::start();
    pg.create_db("empty");
    let safe = Safe::dev();
    let key = pg_fixtures().join("root-key.txt");
    let before = secret_names(&safe).await;
    let fails = |out: std::process::Output, code: i32, want: &[&str]| {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {err}", stdout(&out));
        for w in want {
            assert!(err.contains(w), "{w:?} not in: {err}");
        }
        let password = fs::read_to_string(pg.password_file()).unwrap();
        assert!(!err.contains(password.trim()), "the database password was printed: {err}");
    };

    // No table "vsecm-secrets" in this database: say so and what to do.
    fails(
        import_pg(&safe, &pg, "empty", &key, &[]),
        64,
        &[
            r#"the table "vsecm-secrets" at 127.0.0.1:"#,
            "/empty does not exist",
            "--postgres-table",
            "nothing was imported",
        ],
    );
    fails(import_pg(&safe, &pg, "empty", &key, &["--postgres-table", "other"]), 64, &[r#""other""#, "does not exist"]);

    // A database that does not exist, a wrong password, a server that is not there.
    fails(
        import_pg(&safe, &pg, "nosuchdb", &key, &[]),
        7,
        &["cannot read VSecM's database", "nosuchdb", "--postgres-url"],
    );
    let d = tempfile::tempdir().unwrap();
    let wrong = d.path().join("wrong-password");
    fs::write(&wrong, "not-the-password\n").unwrap();
    let url = pg.url("empty");
    let args = |url: &str, pw: &Path| {
        vec![
            "import".to_owned(),
            "vsecm".to_owned(),
            "--postgres-url".to_owned(),
            url.to_owned(),
            "--postgres-password-file".to_owned(),
            pw.to_str().unwrap().to_owned(),
            "--root-key-file".to_owned(),
            key.to_str().unwrap().to_owned(),
        ]
    };
    let run = |a: Vec<String>| safe.aegis(&safe.admin_env(), &a.iter().map(String::as_str).collect::<Vec<_>>());
    fails(run(args(&url, &wrong)), 7, &["cannot read VSecM's database", "password authentication failed"]);
    let gone = format!("postgres://aegis@127.0.0.1:{}/vsecm", common::free_port());
    fails(run(args(&gone, &pg.password_file())), 7, &["cannot read VSecM's database at 127.0.0.1:"]);

    // Exactly one source.
    let data = fixtures().join("data");
    let mut both = args(&url, &pg.password_file());
    both.extend(["--data-dir".to_owned(), data.to_str().unwrap().to_owned()]);
    fails(run(both), 64, &["not both"]);
    let neither = ["import", "vsecm", "--root-key-file", key.to_str().unwrap()];
    fails(safe.aegis(&safe.admin_env(), &neither), 64, &["--data-dir", "--postgres-url"]);
    assert_eq!(secret_names(&safe).await, before);
}
