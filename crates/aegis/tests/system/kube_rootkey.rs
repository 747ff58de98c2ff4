//! The root key in a Kubernetes Secret, against a real kube-apiserver
//! (`scripts/build-kube.sh`). The Safe under test runs as the `aegis-safe`
//! ServiceAccount bound to deploy/kubernetes/safe-rbac.yaml, never as the admin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use ::kube::api::{Api, PostParams};
use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use aegis_crypto::RootKey;
use common::kube::KubeCluster;
use common::repo_root;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

const NS: &str = "vsecm-system";
const NAME: &str = "vsecm-root-key";
/// The exit code for bad configuration (crates/aegis/src/exit.rs).
const CONFIG: i32 = 64;

/// A cluster with the Safe's RBAC applied, and the kubeconfig of `aegis-safe`.
async fn cluster() -> (KubeCluster, PathBuf) {
    let cluster = KubeCluster::start().await;
    let rbac = repo_root().join("deploy/kubernetes/safe-rbac.yaml");
    cluster.apply_yaml(rbac.to_str().unwrap()).await;
    let kubeconfig = cluster.service_account_kubeconfig(NS, "aegis-safe").await;
    (cluster, kubeconfig)
}

/// An unstarted `aegis server` keeping its root key in the Secret, as the ServiceAccount of `kubeconfig`.
fn kube_safe(kubeconfig: &Path) -> Safe {
    Safe::server_unstarted(&["--root-key-store", "kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap()])
}

fn secrets_api(cluster: &KubeCluster) -> Api<Secret> {
    Api::namespaced(cluster.admin_client(), NS)
}

/// The Secret's data, as the admin sees it.
async fn secret_data(cluster: &KubeCluster) -> Option<BTreeMap<String, Vec<u8>>> {
    let s = secrets_api(cluster).get_opt(NAME).await.unwrap()?;
    Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// The root key in `KEY_TXT`; panics unless it is a valid three-line key.
async fn stored_key(cluster: &KubeCluster) -> RootKey {
    let data = secret_data(cluster).await.expect("the root key Secret exists");
    let text = String::from_utf8(data["KEY_TXT"].clone()).unwrap();
    assert_eq!(text.lines().filter(|l| !l.trim().is_empty()).count(), 3, "three lines");
    RootKey::parse(&text).expect("KEY_TXT holds a valid root key")
}

async fn put_secret(cluster: &KubeCluster, data: BTreeMap<String, ByteString>) {
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    let api = secrets_api(cluster);
    match api.get_opt(NAME).await.unwrap() {
        None => drop(api.create(&PostParams::default(), &secret).await.unwrap()),
        Some(old) => {
            let mut s = secret;
            s.metadata.resource_version = old.metadata.resource_version;
            api.replace(NAME, &PostParams::default(), &s).await.unwrap();
        }
    }
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// Waits (bounded) for the Safe process to exit and returns its status.
fn wait_exit(safe: &mut Safe, within: Duration) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = safe.child.as_mut().unwrap().try_wait().unwrap() {
            safe.child = None;
            return s;
        }
        assert!(t.elapsed() < within, "the Safe did not exit within {within:?}; log:\n{}", safe.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The age secret key and the AES key in hex: neither may appear in any log.
fn assert_no_key_material(log: &str, keys: &[&RootKey]) {
    assert!(!log.contains("AGE-SECRET-KEY-1"), "an age secret key is in the log:\n{log}");
    for k in keys {
        let text = k.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!log.contains(lines[0]), "the age secret key is in the log");
        assert!(!log.contains(lines[2]), "the AES key (hex) is in the log");
        assert!(!log.to_ascii_lowercase().contains(&lines[2].to_ascii_lowercase()), "the AES key is in the log");
    }
}

/// `text` without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The key ids the Safe logged when it loaded or generated its root key.
fn logged_key_ids(log: &str) -> Vec<String> {
    plain(log)
        .lines()
        .filter(|l| l.contains("generated a new root key") || l.contains("loaded the root key"))
        .filter_map(|l| l.split("key_id=").nth(1)?.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn secrets() -> Vec<(String, String)> {
    (0..20).map(|i| (format!("rot-{i}"), format!("value-{i}"))).collect()
}

fn assert_all_readable(safe: &Safe, env: &HashMap<String, String>, list: &[(String, String)]) {
    for (name, value) in list {
        assert_eq!(ok(safe.aegis(env, &["get", name])).trim(), value, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_creates_the_key_and_a_restart_reuses_it() {
    let (cluster, kubeconfig) = cluster().await;
    assert!(secret_data(&cluster).await.is_none());
    let mut safe = kube_safe(&kubeconfig);
    safe.start();
    safe.wait_ready();
    let key = stored_key(&cluster).await;
    assert_eq!(logged_key_ids(&safe.log_text()), vec![key.id().to_string()]);
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "persist", "--value", "survives-restart"]));

    safe.restart();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "persist"])).trim(), "survives-restart");
    assert_eq!(stored_key(&cluster).await.id(), key.id(), "a restart must reuse the key");
    let log = safe.log_text();
    assert!(log.contains("loaded the root key"), "{log}");
    assert_eq!(log.matches("generated a new root key").count(), 1, "{log}");
    assert_no_key_material(&log, &[&key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_holding_vsecms_placeholder_gets_a_key_and_keeps_its_other_data() {
    let (cluster, kubeconfig) = cluster().await;
    // What VSecM's chart creates, plus a data key of someone else's.
    put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes("{}")), ("NOTE".into(), bytes("kept"))])).await;
    let mut safe = kube_safe(&kubeconfig);
    safe.start();
    safe.wait_ready();
    let key = stored_key(&cluster).await;
    assert_eq!(secret_data(&cluster).await.unwrap()["NOTE"], b"kept");
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "a", "--value", "1"]));
    safe.restart();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "a"])).trim(), "1");
    assert_eq!(stored_key(&cluster).await.id(), key.id());
    // An empty KEY_TXT is a placeholder too.
    safe.kill9();
    put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes(""))])).await;
    let mut fresh = kube_safe(&kubeconfig);
    fresh.start();
    fresh.wait_ready();
    assert_ne!(stored_key(&cluster).await.id(), key.id());
    assert_no_key_material(&safe.log_text(), &[&key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_safes_racing_end_with_one_key_and_both_use_it() {
    let (cluster, kubeconfig) = cluster().await;
    for round in 0..3 {
        if round == 1 {
            put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes("{}"))])).await;
        }
        let mut a = kube_safe(&kubeconfig);
        let mut b = kube_safe(&kubeconfig);
        a.start();
        b.start();
        a.wait_ready();
        b.wait_ready();
        let key = stored_key(&cluster).await;
        let id = key.id().to_string();
        assert_eq!(logged_key_ids(&a.log_text()), vec![id.clone()], "round {round}: {}", a.log_text());
        assert_eq!(logged_key_ids(&b.log_text()), vec![id.clone()], "round {round}: {}", b.log_text());
        let generated = [&a, &b].iter().filter(|s| s.log_text().contains("generated a new root key")).count();
        assert_eq!(generated, 1, "round {round}: exactly one Safe's key is kept");
        let lost = [&a, &b].iter().filter(|s| s.log_text().contains("another Safe")).count();
        eprintln!("round {round}: {lost} Safe(s) lost a write race (409) and used the winner's key");
        // Both sealed their records with that key: after a restart (which reads the Secret) they open.
        for (s, name) in [(&a, "from-a"), (&b, "from-b")] {
            ok(s.aegis(&s.admin_env(), &["put", name, "--value", name]));
        }
        for (s, name) in [(&mut a, "from-a"), (&mut b, "from-b")] {
            s.restart();
            s.wait_ready();
            assert_eq!(ok(s.aegis(&s.admin_env(), &["get", name])).trim(), name);
            assert!(!s.log_text().contains("quarantine"), "{}", s.log_text());
        }
        assert_eq!(stored_key(&cluster).await.id(), key.id());
        drop((a, b));
        secrets_api(&cluster).delete(NAME, &Default::default()).await.unwrap();
        // Deletion is immediate for a Secret (no finalizers); round 1 recreates it with `{}`.
        if round == 0 {
            assert!(secret_data(&cluster).await.is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_writes_the_secret_and_a_crash_at_any_point_loses_nothing() {
    let (cluster, kubeconfig) = cluster().await;
    let mut safe = kube_safe(&kubeconfig);
    safe.start();
    safe.wait_ready();
    let admin = safe.admin_env();
    let list = secrets();
    for (name, value) in &list {
        ok(safe.aegis(&admin, &["put", name, "--value", value]));
    }
    let first = stored_key(&cluster).await;

    // A normal rotation: KEY_TXT changes, KEY_TXT_NEXT is gone, everything reads.
    ok(safe.aegis(&admin, &["rotate-root-key"]));
    let second = stored_key(&cluster).await;
    assert_ne!(second.id(), first.id());
    assert!(!secret_data(&cluster).await.unwrap().contains_key("KEY_TXT_NEXT"));
    assert_all_readable(&safe, &admin, &list);

    // Crash after the next key was written, before any record was re-sealed.
    safe.kill9();
    let pending = RootKey::generate();
    let mut data = secret_data(&cluster).await.unwrap();
    data.insert("KEY_TXT_NEXT".into(), pending.to_text().as_bytes().to_vec());
    put_secret(&cluster, data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()).await;
    safe.start();
    safe.wait_ready();
    assert!(safe.log_text().contains("finishing a root key rotation that was interrupted"), "{}", safe.log_text());
    assert_eq!(stored_key(&cluster).await.id(), pending.id(), "the pending key is promoted");
    assert!(!secret_data(&cluster).await.unwrap().contains_key("KEY_TXT_NEXT"));
    assert_all_readable(&safe, &admin, &list);

    // Crash in the middle of re-sealing: kill the Safe as soon as KEY_TXT_NEXT appears.
    let many: Vec<(String, String)> = (0..300).map(|i| (format!("bulk-{i}"), format!("bulk-value-{i}"))).collect();
    let client = safe.client(&admin).await;
    for (n, v) in &many {
        client.put(n, &PutSecret::new(SecretValue::new(v.as_str()))).await.unwrap();
    }
    let rotate = cmd(AEGIS, &admin).arg("rotate-root-key").spawn().unwrap();
    let api = secrets_api(&cluster);
    let t = Instant::now();
    let next = loop {
        let s = api.get(NAME).await.unwrap();
        if let Some(v) = s.data.as_ref().and_then(|d| d.get("KEY_TXT_NEXT")) {
            break v.0.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "KEY_TXT_NEXT never appeared");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    safe.kill9();
    let _ = rotate.wait_with_output();
    let finished_before = safe.log_text().matches("finishing a root key rotation that was interrupted").count();
    let next = RootKey::parse(std::str::from_utf8(&next).unwrap()).unwrap();
    safe.start();
    safe.wait_ready();
    assert_eq!(stored_key(&cluster).await.id(), next.id(), "the interrupted rotation is finished with its key");
    let finished =
        safe.log_text().matches("finishing a root key rotation that was interrupted").count() > finished_before;
    eprintln!(
        "killed during re-sealing: the restart {} the rotation",
        if finished { "finished" } else { "found no unfinished" }
    );
    assert!(!secret_data(&cluster).await.unwrap().contains_key("KEY_TXT_NEXT"));
    assert_all_readable(&safe, &admin, &list);
    let client = safe.client(&admin).await;
    for (n, v) in &many {
        assert_eq!(client.get(n, None).await.unwrap().value.expose(), v, "{n}");
    }
    safe.restart();
    safe.wait_ready();
    assert_all_readable(&safe, &admin, &list);
    assert!(!safe.log_text().contains("quarantine"), "{}", safe.log_text());
    assert_no_key_material(&safe.log_text(), &[&first, &second, &pending, &next]);
}

/// A root key Secret deleted or emptied while the data directory holds records: the
/// Safe stops (exit 64) saying to restore the key, and writes nothing; the restored
/// key starts it again with every secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_root_key_is_never_replaced_while_records_exist() {
    let (cluster, kubeconfig) = cluster().await;
    let mut safe = kube_safe(&kubeconfig);
    safe.start();
    safe.wait_ready();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "kept", "--value", "kept-value"]));
    let key = stored_key(&cluster).await;
    safe.kill9();

    secrets_api(&cluster).delete(NAME, &Default::default()).await.unwrap();
    safe.start();
    assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG), "{}", safe.log_text());
    assert!(secret_data(&cluster).await.is_none(), "no Secret was created");
    let log = safe.log_text();
    assert!(log.contains("the root key Secret vsecm-system/vsecm-root-key does not exist"), "{log}");
    assert!(log.contains("1 sealed record(s)") && log.contains("Restore it from your backup"), "{log}");

    // Emptied, or VSecM's placeholder: the same, and the Secret is left as it was.
    for placeholder in ["", "{}"] {
        put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes(placeholder))])).await;
        safe.start();
        assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG), "{}", safe.log_text());
        assert_eq!(secret_data(&cluster).await.unwrap()["KEY_TXT"], placeholder.as_bytes(), "nothing was written");
        assert!(safe.log_text().contains("holds no key in KEY_TXT"), "{}", safe.log_text());
    }
    assert_eq!(safe.log_text().matches("generated a new root key").count(), 1, "{}", safe.log_text());

    put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes(&key.to_text()))])).await;
    safe.start();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "kept"])).trim(), "kept-value");
    assert_no_key_material(&safe.log_text(), &[&key]);
}

/// The same rule for the file store: a deleted key file is not replaced while records exist.
#[test]
fn a_lost_root_key_file_is_never_replaced_while_records_exist() {
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("root.key");
    let mut safe = Safe::server_unstarted(&["--root-key-file", file.to_str().unwrap()]);
    safe.start();
    safe.wait_ready();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "kept", "--value", "kept-value"]));
    safe.kill9();
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();

    safe.start();
    assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG), "{}", safe.log_text());
    assert!(!file.exists(), "no key file was written");
    let log = safe.log_text();
    assert!(log.contains(&format!("root key file {} does not exist", file.display())), "{log}");
    assert!(log.contains("1 sealed record(s)") && log.contains("Restore it from your backup"), "{log}");

    std::fs::write(&file, saved).unwrap();
    safe.start();
    safe.wait_ready();
    assert_eq!(ok(safe.aegis(&admin, &["get", "kept"])).trim(), "kept-value");
}

/// An empty `KUBECONFIG` is unset, as kubectl reads it: the Safe uses its pod's
/// ServiceAccount for both the root key and the `k8s:` sync. The pod is made real
/// enough: a private mount namespace (the tests run as root) with the token, CA and
/// namespace files at the in-cluster path, and the in-cluster environment variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_kubeconfig_means_the_pods_service_account() {
    let (cluster, kubeconfig) = cluster().await;
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let token = text.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("a token in the kubeconfig");
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), token).unwrap();
    std::fs::copy(cluster.ca_file(), sa.path().join("ca.crt")).unwrap();
    std::fs::write(sa.path().join("namespace"), NS).unwrap();

    let mut safe = Safe::server_unstarted(&["--root-key-store", "kubernetes", "--k8s-secrets"]);
    let env = HashMap::from([
        ("AEGIS_LOG".to_owned(), "debug".to_owned()),
        ("KUBECONFIG".to_owned(), String::new()),
        ("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), cluster.port.to_string()),
        ("AEGIS_TEST_SA_DIR".to_owned(), sa.path().display().to_string()),
    ]);
    let pod = "mount -t tmpfs tmpfs /run && d=/run/secrets/kubernetes.io/serviceaccount && mkdir -p $d && \
               cp \"$AEGIS_TEST_SA_DIR\"/* $d/ && exec \"$@\"";
    let log = std::fs::File::create(&safe.log).unwrap();
    let child = cmd("unshare", &env)
        .args(["--mount", "--propagation", "private", "sh", "-c", pod, "sh", AEGIS])
        .args(&safe.args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run unshare (util-linux)");
    safe.child = Some(child);
    safe.wait_ready();
    stored_key(&cluster).await;
    ok(safe.aegis(&safe.admin_env(), &["put", "k8s:in-cluster", "--value", "v", "--namespace", "default"]));
    let api: Api<Secret> = Api::namespaced(cluster.admin_client(), "default");
    let t = Instant::now();
    while api.get_opt("in-cluster").await.unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "the sync never wrote the Secret:\n{}", safe.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_missing_a_right_gets_an_error_naming_it() {
    let (cluster, _) = cluster().await;
    // No Role at all: the first call, get, is refused.
    let none = cluster.service_account_kubeconfig(NS, "aegis-no-rights").await;
    let mut safe = kube_safe(&none);
    safe.start();
    let status = wait_exit(&mut safe, Duration::from_secs(60));
    assert_eq!(status.code(), Some(CONFIG), "{}", safe.log_text());
    let log = safe.log_text();
    assert!(log.contains("may not get the root key Secret vsecm-system/vsecm-root-key"), "{log}");
    assert!(
        log.contains("grant the verb \"get\" on secrets with resourceNames [vsecm-root-key] in namespace vsecm-system"),
        "{log}"
    );

    // Only get: filling VSecM's placeholder needs update.
    cluster
        .apply_yaml(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: read-root-key\n  namespace: vsecm-system\n\
             rules:\n  - apiGroups: [\"\"]\n    resources: [\"secrets\"]\n    resourceNames: [\"vsecm-root-key\"]\n    verbs: [\"get\"]\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: read-root-key\n  namespace: vsecm-system\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: read-root-key\n\
             subjects:\n  - kind: ServiceAccount\n    name: aegis-get-only\n    namespace: vsecm-system\n",
        )
        .await;
    let get_only = cluster.service_account_kubeconfig(NS, "aegis-get-only").await;
    put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes("{}"))])).await;
    let mut safe = kube_safe(&get_only);
    safe.start();
    assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG));
    let log = safe.log_text();
    assert!(log.contains("may not update the root key Secret vsecm-system/vsecm-root-key"), "{log}");
    assert!(log.contains("grant the verb \"update\""), "{log}");

    // Absent Secret: creating it needs create (which RBAC cannot limit by name).
    secrets_api(&cluster).delete(NAME, &Default::default()).await.unwrap();
    safe.start();
    assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG));
    let log = safe.log_text();
    assert!(log.contains("grant the verb \"create\" on secrets in namespace vsecm-system"), "{log}");
    assert!(secret_data(&cluster).await.is_none(), "nothing was written");
}

/// A namespace that does not exist: the error names it and says what to do. (The
/// documented Role lives in vsecm-system, so this ServiceAccount gets a ClusterRole.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_does_not_exist_is_named_in_the_error() {
    let (cluster, _) = cluster().await;
    cluster
        .apply_yaml(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: aegis-root-key-anywhere\n\
             rules:\n  - apiGroups: [\"\"]\n    resources: [\"secrets\"]\n    verbs: [\"get\", \"update\", \"create\"]\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: aegis-root-key-anywhere\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: aegis-root-key-anywhere\n\
             subjects:\n  - kind: ServiceAccount\n    name: aegis-anywhere\n    namespace: vsecm-system\n",
        )
        .await;
    let kubeconfig = cluster.service_account_kubeconfig(NS, "aegis-anywhere").await;
    let mut safe = Safe::server_unstarted(&[
        "--root-key-store",
        "kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--root-key-namespace",
        "no-such-ns",
    ]);
    safe.start();
    assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG), "{}", safe.log_text());
    let log = safe.log_text();
    assert!(log.contains("Secret no-such-ns/vsecm-root-key: namespace no-such-ns does not exist"), "{log}");
    assert!(log.contains("kubectl create namespace no-such-ns"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_stops_the_safe_without_showing_the_key() {
    let (cluster, kubeconfig) = cluster().await;
    let real = RootKey::generate();
    let real_text = real.to_text();
    let lines: Vec<&str> = real_text.lines().collect();
    // A real secret key and AES key, with a public key that does not belong to them.
    let other = RootKey::generate().age_public();
    let malformed = format!("{}\n{other}\n{}\n", lines[0], lines[2]);
    put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes(&malformed))])).await;
    let mut safe = kube_safe(&kubeconfig);
    safe.start();
    assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG), "{}", safe.log_text());
    let log = safe.log_text();
    assert!(log.contains("Secret vsecm-system/vsecm-root-key (data key KEY_TXT)"), "{log}");
    assert!(
        log.contains("does not belong to the age secret key") && log.contains("restore it from your backup"),
        "{log}"
    );
    assert_no_key_material(&log, &[&real]);
    assert!(!log.contains(&other), "{log}");

    // Garbage: the text is not echoed either.
    put_secret(&cluster, BTreeMap::from([("KEY_TXT".into(), bytes("hunter2-not-a-key"))])).await;
    safe.start();
    assert_eq!(wait_exit(&mut safe, Duration::from_secs(60)).code(), Some(CONFIG));
    let log = safe.log_text();
    assert!(log.contains("expected three lines"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    // The Secret is left as it was.
    assert_eq!(secret_data(&cluster).await.unwrap()["KEY_TXT"], b"hunter2-not-a-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_retried_for_a_bounded_time() {
    let (mut cluster, kubeconfig) = cluster().await;
    cluster.stop_apiserver();
    // Down for good: the Safe retries for the configured time, then exits with a clear error.
    let mut safe = kube_safe(&kubeconfig);
    safe.extra_env.insert("AEGIS_KUBE_START_WAIT_MS".into(), "3000".into());
    safe.extra_env.insert("AEGIS_KUBE_API_TIMEOUT_MS".into(), "1000".into());
    let t = Instant::now();
    safe.start();
    let status = wait_exit(&mut safe, Duration::from_secs(30));
    let took = t.elapsed();
    assert_eq!(status.code(), Some(CONFIG), "{}", safe.log_text());
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(15), "took {took:?}");
    let log = safe.log_text();
    assert!(
        log.contains("cannot reach the Kubernetes API server to get the root key Secret vsecm-system/vsecm-root-key"),
        "{log}"
    );
    assert!(log.contains("gave up after") && log.contains("--kube-start-wait-ms"), "{log}");
    assert!(log.matches("retrying").count() >= 2, "{log}");

    // Down for a moment: the Safe waits and starts once it is back.
    safe.extra_env.insert("AEGIS_KUBE_START_WAIT_MS".into(), "60000".into());
    safe.start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(safe.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the Safe gave up early:\n{}", safe.log_text());
    cluster.start_apiserver().await;
    safe.wait_ready();
    stored_key(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_root_key_material() {
    let (cluster, kubeconfig) = cluster().await;
    let mut safe = kube_safe(&kubeconfig);
    assert!(safe.extra_env.get("AEGIS_LOG").is_none_or(|l| l == "trace"));
    safe.start();
    safe.wait_ready();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "x", "--value", "y"]));
    let first = stored_key(&cluster).await;
    ok(safe.aegis(&admin, &["rotate-root-key"]));
    let second = stored_key(&cluster).await;
    safe.restart();
    safe.wait_ready();
    let log = safe.log_text();
    assert!(log.contains("TRACE"), "the Safe did not log at trace level");
    assert!(log.contains("kube"), "the Kubernetes client's own trace lines are in the log too");
    assert_no_key_material(&log, &[&first, &second]);
}

/// Start-up time to ready (spawn to /readyz answering 200) with the key in the
/// Secret; the median is printed for docs/BENCHMARKS.md. A benchmark, not a
/// timed test: run it on purpose with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (docs/BENCHMARKS.md)"]
async fn bench_start_up_with_the_key_in_kubernetes() {
    let (cluster, kubeconfig) = cluster().await;
    let mut safe = kube_safe(&kubeconfig);
    safe.extra_env.insert("AEGIS_LOG".into(), "info".into());
    safe.start();
    safe.wait_ready();
    let admin = safe.admin_env();
    ok(safe.aegis(&admin, &["put", "x", "--value", "y"]));
    let mut times = Vec::new();
    for _ in 0..7 {
        safe.kill9();
        let t = Instant::now();
        safe.start();
        safe.wait_ready();
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "start-up to ready with the root key in Kubernetes: median {median:?} over {} runs: {times:?}",
        times.len()
    );
    stored_key(&cluster).await;
}
