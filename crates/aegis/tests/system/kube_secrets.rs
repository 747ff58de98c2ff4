//! `k8s:` secrets as Kubernetes Secrets, against a real etcd + kube-apiserver +
//! controller manager (`common::kube`). The Safe runs `aegis dev` with
//! `AEGIS_K8S_SECRETS=true` and the kubeconfig of the `aegis-safe`
//! ServiceAccount bound to the Role of deploy/kubernetes/safe-rbac.yaml, never
//! as the admin. Every wait polls for its condition with a deadline.
//!
//! The two benchmarks of docs/BENCHMARKS.md are the ignored tests `bench_*`:
//! `cargo test --release -p aegis --test system -- --ignored --nocapture kube_secrets::bench_`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use aegis_core::api::{PutSecret, SecretInfo};
use aegis_core::secret::SecretValue;
use base64::Engine;
use common::kube::KubeCluster;
use common::repo_root;
use common::Safe;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;

/// How long Kubernetes may take to catch up in these tests.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Polls `f` every 25 ms until it yields `Some`, or fails after `limit` saying `what`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The Role and RoleBinding of safe-rbac.yaml's `k8s:` template, for `ns`.
fn role_for(ns: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("deploy/kubernetes/safe-rbac.yaml")).unwrap();
    let (_, template) = text.split_once("# Template:").expect("safe-rbac.yaml has a '# Template:' section");
    let template = template.split_once('\n').unwrap().1;
    assert!(template.contains("namespace: default"), "the template targets namespace default");
    template.replace("namespace: default", &format!("namespace: {ns}"))
}

/// A cluster with safe-rbac.yaml applied, the Role granted in `granted`
/// (besides `default`), and the namespaces `bare` created without it.
struct Setup {
    cluster: KubeCluster,
    kubeconfig: std::path::PathBuf,
}

impl Setup {
    async fn new(granted: &[&str], bare: &[&str]) -> Self {
        let cluster = KubeCluster::start().await;
        cluster.apply_yaml(repo_root().join("deploy/kubernetes/safe-rbac.yaml").to_str().unwrap()).await;
        for ns in granted {
            cluster.create_namespace(ns).await;
            cluster.apply_yaml(&role_for(ns)).await;
        }
        for ns in bare {
            cluster.create_namespace(ns).await;
        }
        let kubeconfig = cluster.service_account_kubeconfig("vsecm-system", "aegis-safe").await;
        Self { cluster, kubeconfig }
    }

    fn safe_env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = HashMap::from([
            ("AEGIS_K8S_SECRETS".to_owned(), "true".to_owned()),
            ("KUBECONFIG".to_owned(), self.kubeconfig.display().to_string()),
        ]);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// A dev Safe syncing into this cluster as the `aegis-safe` ServiceAccount.
    fn safe(&self, extra: &[(&str, &str)]) -> Safe {
        let env = self.safe_env(extra);
        tokio::task::block_in_place(|| Safe::dev_with_env(&[], None, env))
    }

    fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.cluster.admin_client(), ns)
    }

    /// The Secret's data as text, if it exists.
    async fn data(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let s = self.secrets(ns).get_opt(name).await.unwrap()?;
        Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect())
    }

    /// Waits until `ns/name` holds exactly `want`.
    async fn wait_data(&self, ns: &str, name: &str, want: &[(&str, &str)]) -> Secret {
        let want: BTreeMap<String, String> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        eventually(&format!("Secret {ns}/{name} holding keys {:?}", want.keys()), CATCH_UP, || async {
            (self.data(ns, name).await.as_ref() == Some(&want)).then_some(())
        })
        .await;
        self.secrets(ns).get(name).await.unwrap()
    }

    async fn wait_gone(&self, ns: &str, name: &str) {
        eventually(&format!("Secret {ns}/{name} deleted"), CATCH_UP, || async {
            self.secrets(ns).get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
}

fn put(value: &str, namespaces: &[&str], template: Option<&str>) -> PutSecret {
    let mut p = PutSecret::new(SecretValue::new(value));
    if !namespaces.is_empty() {
        p.namespaces = Some(namespaces.iter().map(|s| s.to_string()).collect());
    }
    p.template = template.map(str::to_owned);
    p
}

async fn info(c: &aegis_sdk::Client, name: &str) -> SecretInfo {
    c.list(true).await.unwrap().secrets.into_iter().find(|i| i.name == name).unwrap()
}

/// Waits until `aegis list` says `name` is in `state`; returns its info.
async fn wait_state(c: &aegis_sdk::Client, name: &str, state: &str) -> SecretInfo {
    eventually(&format!("{name} in state {state}"), CATCH_UP, || async {
        let i = info(c, name).await;
        (i.kubernetes.as_ref().map(|k| k.state.as_str()) == Some(state)).then_some(i)
    })
    .await
}

/// Fails if any of `values` (or its base64, as Kubernetes carries it) is in the Safe's log.
fn assert_no_values_in_log(safe: &Safe, values: &[&str]) {
    let log = safe.log_text();
    assert!(log.contains("TRACE"), "the Safe must log at trace level here");
    for v in values {
        let b64 = base64::engine::general_purpose::STANDARD.encode(v);
        assert!(!log.contains(v), "the value {v} is in the Safe's log");
        assert!(!log.contains(&b64), "the base64 of {v} is in the Safe's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_secrets_follow_creates_updates_templates_namespace_changes_and_deletes() {
    let k = Setup::new(&["payments", "billing"], &[]).await;
    let safe = k.safe(&[]);
    let admin = safe.admin_env();
    let c = safe.client(&admin).await;
    let v1 = r#"{"username": "admin", "password": "CANARY-pw-71c3"}"#;

    // Create: a JSON object of strings becomes one key per field.
    let i = c.put("k8s:db-creds", &put(v1, &["payments"], None)).await.unwrap();
    assert!(i.kubernetes.is_some(), "the write answers with the sync state");
    let s = k.wait_data("payments", "db-creds", &[("username", "admin"), ("password", "CANARY-pw-71c3")]).await;
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "aegis");
    let ann = s.metadata.annotations.clone().unwrap();
    assert_eq!(ann["aegis.dev/secret"], "k8s:db-creds");
    assert_eq!(ann["aegis.dev/version"], "1");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let managers: Vec<String> = s.metadata.managed_fields.unwrap().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.iter().any(|m| m == "aegis"), "{managers:?}");
    let i = wait_state(&c, "k8s:db-creds", "synced").await;
    assert_eq!(i.kubernetes.unwrap().synced_version, Some(1));

    // Update: anything but an object of strings is the single key VALUE.
    c.put("k8s:db-creds", &put("CANARY-plain-5d20", &["payments"], None)).await.unwrap();
    let s = k.wait_data("payments", "db-creds", &[("VALUE", "CANARY-plain-5d20")]).await;
    assert_eq!(s.metadata.annotations.unwrap()["aegis.dev/version"], "2");

    // Template: its output object is the data.
    let tmpl = r#"{"USER":"{{.username}}", "PASS":"{{.password}}"}"#;
    c.put("k8s:db-creds", &put(v1, &["payments"], Some(tmpl))).await.unwrap();
    k.wait_data("payments", "db-creds", &[("USER", "admin"), ("PASS", "CANARY-pw-71c3")]).await;

    // Namespace change: the copy in a dropped namespace is deleted.
    c.put("k8s:db-creds", &put(v1, &["billing"], Some(tmpl))).await.unwrap();
    k.wait_data("billing", "db-creds", &[("USER", "admin"), ("PASS", "CANARY-pw-71c3")]).await;
    k.wait_gone("payments", "db-creds").await;
    c.put("k8s:db-creds", &put(v1, &["billing", "payments"], None)).await.unwrap();
    for ns in ["billing", "payments"] {
        k.wait_data(ns, "db-creds", &[("username", "admin"), ("password", "CANARY-pw-71c3")]).await;
    }

    // VSecM's `safe` writes k8s: secrets too.
    let out = tokio::task::block_in_place(|| {
        safe.safe(&admin, &["-w", "k8s:via-safe", "-n", "billing", "-s", "CANARY-safe-0a9e"])
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    k.wait_data("billing", "via-safe", &[("VALUE", "CANARY-safe-0a9e")]).await;

    // `aegis list` and `aegis status` show the state; so do the metrics.
    wait_state(&c, "k8s:via-safe", "synced").await;
    wait_state(&c, "k8s:db-creds", "synced").await;
    let list = tokio::task::block_in_place(|| safe.aegis(&admin, &["list"]));
    let text = common::stdout(&list);
    assert!(text.contains("k8s:db-creds") && text.contains("kubernetes synced v5"), "{text}");
    let status = c.status().await.unwrap().kubernetes.expect("status has the Kubernetes sync");
    assert_eq!((status.synced, status.pending, status.errors, status.conflicts), (2, 0, 0, 0));
    let m = common::metrics(&safe);
    assert_eq!(common::metric(&m, "aegis_kubernetes_sync_secrets{state=\"synced\"}"), 2.0, "{m}");

    // Delete: the Kubernetes Secrets go too.
    c.delete("k8s:db-creds").await.unwrap();
    k.wait_gone("billing", "db-creds").await;
    k.wait_gone("payments", "db-creds").await;
    // An ordinary secret never becomes a Kubernetes Secret.
    c.put("plain", &put("CANARY-ordinary-33f1", &["billing"], None)).await.unwrap();
    assert!(info(&c, "plain").await.kubernetes.is_none());
    assert!(k.data("billing", "plain").await.is_none());

    assert_no_values_in_log(
        &safe,
        &["CANARY-pw-71c3", "CANARY-plain-5d20", "CANARY-safe-0a9e", "CANARY-ordinary-33f1"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_on_delete_keeps_the_kubernetes_secrets_of_a_deleted_secret() {
    let k = Setup::new(&[], &[]).await;
    let safe = k.safe(&[("AEGIS_K8S_KEEP_ON_DELETE", "true")]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:kept", &put("v1", &[], None)).await.unwrap();
    k.wait_data("default", "kept", &[("VALUE", "v1")]).await;
    c.delete("k8s:kept").await.unwrap();
    wait_state(&c, "k8s:kept", "synced").await;
    assert_eq!(k.data("default", "kept").await, Some(BTreeMap::from([("VALUE".into(), "v1".into())])));
    // Without the switch the same delete removes it (the default).
    drop(safe);
    let safe = k.safe(&[]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:gone", &put("v1", &[], None)).await.unwrap();
    k.wait_data("default", "gone", &[("VALUE", "v1")]).await;
    c.delete("k8s:gone").await.unwrap();
    k.wait_gone("default", "gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_after_a_manual_edit_and_a_manual_delete() {
    let k = Setup::new(&[], &[]).await;
    let safe = k.safe(&[]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:drift", &put(r#"{"a": "1", "b": "2"}"#, &[], None)).await.unwrap();
    k.wait_data("default", "drift", &[("a", "1"), ("b", "2")]).await;

    // A hand edit (changed value, an added key) is undone.
    let edit = serde_json::json!({"stringData": {"a": "tampered", "extra": "x"}});
    k.secrets("default").patch("drift", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let t = Instant::now();
    k.wait_data("default", "drift", &[("a", "1"), ("b", "2")]).await;
    eprintln!("edit repaired in {:?}", t.elapsed());

    // A hand delete is undone.
    k.secrets("default").delete("drift", &DeleteParams::default()).await.unwrap();
    let t = Instant::now();
    k.wait_data("default", "drift", &[("a", "1"), ("b", "2")]).await;
    eprintln!("delete repaired in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "a deleted copy must come back within seconds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_aegis_does_not_manage_is_never_taken_over() {
    let k = Setup::new(&[], &[]).await;
    let theirs: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "theirs", "labels": {"team": "payments"}},
        "type": "Opaque", "stringData": {"owner": "someone else"}
    }))
    .unwrap();
    k.secrets("default").create(&PostParams::default(), &theirs).await.unwrap();
    let before = k.secrets("default").get("theirs").await.unwrap();
    let safe = k.safe(&[]);
    let admin = safe.admin_env();
    let c = safe.client(&admin).await;

    // Refused on the write, with a clear error; nothing stored.
    let err = c.put("k8s:theirs", &put("mine", &[], None)).await.unwrap_err().to_string();
    assert!(err.contains("409"), "{err}");
    assert!(err.contains("default/theirs") && err.contains("not managed by Aegis"), "{err}");
    assert!(err.contains("app.kubernetes.io/managed-by=aegis"), "{err}");
    assert!(c.list(true).await.unwrap().secrets.iter().all(|i| i.name != "k8s:theirs"));
    let out = tokio::task::block_in_place(|| safe.safe(&admin, &["-w", "k8s:theirs", "-s", "mine"]));
    assert!(!out.status.success());

    // Data Kubernetes would refuse is refused on the write too, describing
    // the key (its position and length), quoting neither it nor the value.
    let err = c.put("k8s:badkey", &put(r#"{"bad key": "CANARY-bad"}"#, &[], None)).await.unwrap_err().to_string();
    assert!(err.contains("key 1 of 1") && err.contains("not a valid Kubernetes Secret key"), "{err}");
    assert!(!err.contains("bad key") && !err.contains("CANARY-bad"), "{err}");

    // Kubernetes is unchanged.
    let after = k.secrets("default").get("theirs").await.unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version);
    assert_eq!(after.data, before.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_the_api_server_is_down_and_converge_when_it_is_back() {
    let mut k = Setup::new(&[], &[]).await;
    let safe = k.safe(&[]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:outage", &put("before", &[], None)).await.unwrap();
    k.wait_data("default", "outage", &[("VALUE", "before")]).await;

    k.cluster.stop_apiserver();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        c.put("k8s:outage", &put(&format!("CANARY-during-{i}"), &[], None)).await.unwrap();
        c.put(&format!("k8s:new-{i}"), &put("CANARY-new", &[], None)).await.unwrap();
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("slowest pair of writes while the API server was down: {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "writes must not wait for a dead API server: {slowest:?}");
    let i = info(&c, "k8s:outage").await;
    let kube = i.kubernetes.unwrap();
    assert_eq!(kube.state, "pending", "{kube:?}");
    assert_eq!(kube.synced_version, Some(1));
    let lag = eventually("the lag metric", CATCH_UP, || async {
        let m = common::metrics(&safe);
        let pending = common::metric(&m, "aegis_kubernetes_sync_secrets{state=\"pending\"}");
        (pending >= 21.0).then(|| common::metric(&m, "aegis_kubernetes_sync_lag_seconds"))
    })
    .await;
    assert!(lag > 0.0);
    let status = c.status().await.unwrap().kubernetes.unwrap();
    assert!(status.pending >= 21, "{status:?}");

    k.cluster.start_apiserver().await;
    let t = Instant::now();
    k.wait_data("default", "outage", &[("VALUE", "CANARY-during-19")]).await;
    for i in 0..20 {
        k.wait_data("default", &format!("new-{i}"), &[("VALUE", "CANARY-new")]).await;
    }
    eventually("every secret synced", CATCH_UP, || async {
        let s = c.status().await.unwrap().kubernetes.unwrap();
        (s.synced == 21 && s.pending == 0).then_some(())
    })
    .await;
    eprintln!("converged {:?} after the API server was back", t.elapsed());
    assert_no_values_in_log(&safe, &["CANARY-during-3", "CANARY-new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_without_the_role_gets_a_clear_error_naming_the_permission() {
    let k = Setup::new(&[], &["norole"]).await;
    let safe = k.safe(&[]);
    let c = safe.client(&safe.admin_env()).await;
    // Accepted (the Safe cannot know in advance), then reported.
    c.put("k8s:denied", &put("CANARY-denied", &["norole", "default"], None)).await.unwrap();
    k.wait_data("default", "denied", &[("VALUE", "CANARY-denied")]).await;
    let i = wait_state(&c, "k8s:denied", "error").await;
    let reason = i.kubernetes.unwrap().reason.unwrap();
    assert!(reason.contains("missing permission") && reason.contains("norole"), "{reason}");
    assert!(reason.contains("'get'") || reason.contains("'patch'"), "{reason}");
    assert!(reason.contains("secrets"), "{reason}");
    assert!(k.data("norole", "denied").await.is_none());
    let log = safe.plain_log_text();
    assert!(log.contains("missing permission") && log.contains("norole"), "the log must say it");
    assert_eq!(c.status().await.unwrap().kubernetes.unwrap().errors, 1);

    // Granting the Role fixes it without touching the Safe.
    k.cluster.apply_yaml(&role_for("norole")).await;
    k.wait_data("norole", "denied", &[("VALUE", "CANARY-denied")]).await;
    wait_state(&c, "k8s:denied", "synced").await;
    assert_no_values_in_log(&safe, &["CANARY-denied"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reconciles_every_secret_and_removes_only_this_safes_orphans() {
    let k = Setup::new(&["team-a"], &[]).await;
    let mut safe = k.safe(&[]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:edited", &put("one", &["team-a"], None)).await.unwrap();
    c.put("k8s:deleted", &put("two", &["team-a"], None)).await.unwrap();
    k.wait_data("team-a", "edited", &[("VALUE", "one")]).await;
    k.wait_data("team-a", "deleted", &[("VALUE", "two")]).await;
    let instance = instance_of(&k.secrets("team-a").get("edited").await.unwrap());
    assert!(instance.starts_with("aegis-"), "a generated instance name: {instance}");
    tokio::task::block_in_place(|| safe.kill9());

    // While the Safe is down: an edit, a delete, and two labelled Secrets that
    // no Aegis secret of this Safe backs (one of this instance, one of another).
    let edit = serde_json::json!({"stringData": {"VALUE": "tampered"}});
    k.secrets("team-a").patch("edited", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    k.secrets("team-a").delete("deleted", &DeleteParams::default()).await.unwrap();
    k.secrets("team-a").create(&PostParams::default(), &labelled("orphan", &instance)).await.unwrap();
    k.secrets("team-a").create(&PostParams::default(), &labelled("elsewhere", "other-safe")).await.unwrap();
    // One of the old shared default instance: no secret of this Safe backs it, so it stays.
    k.secrets("team-a").create(&PostParams::default(), &labelled("legacy", "default")).await.unwrap();

    tokio::task::block_in_place(|| {
        safe.start();
        safe.wait_ready();
    });
    k.wait_data("team-a", "edited", &[("VALUE", "one")]).await;
    k.wait_data("team-a", "deleted", &[("VALUE", "two")]).await;
    k.wait_gone("team-a", "orphan").await;
    assert!(k.data("team-a", "elsewhere").await.is_some(), "another Safe's Secret must stay");
    assert!(k.data("team-a", "legacy").await.is_some(), "a Secret of the old default instance must stay");
    assert_eq!(instance_of(&k.secrets("team-a").get("edited").await.unwrap()), instance, "kept across restarts");
}

/// A Secret labelled as Aegis's, of the Aegis secret `k8s:<name>` and `instance`.
fn labelled(name: &str, instance: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "aegis"},
                     "annotations": {"aegis.dev/secret": format!("k8s:{name}"), "aegis.dev/version": "1",
                                     "aegis.dev/instance": instance}},
        "type": "Opaque", "stringData": {"VALUE": "x"}
    }))
    .unwrap()
}

/// The `aegis.dev/instance` annotation of `s`.
fn instance_of(s: &Secret) -> String {
    s.metadata.annotations.as_ref().and_then(|a| a.get("aegis.dev/instance")).cloned().unwrap_or_default()
}

/// Two Safes with their default instance names keep Secrets in one namespace: neither
/// deletes the other's, also when each restarts and reconciles (with one shared default
/// name they deleted and re-created each other's Secrets without end). A Secret of the
/// old shared default instance is taken back by the Safe whose secret it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_safes_in_one_namespace_never_delete_each_others_secrets() {
    let k = Setup::new(&["shared"], &[]).await;
    k.secrets("shared").create(&PostParams::default(), &labelled("from-a-old", "default")).await.unwrap();
    k.secrets("shared").create(&PostParams::default(), &labelled("nobodys", "default")).await.unwrap();
    let mut a = k.safe(&[]);
    let mut b = k.safe(&[]);
    let (ca, cb) = (a.client(&a.admin_env()).await, b.client(&b.admin_env()).await);
    ca.put("k8s:from-a", &put("CANARY-a", &["shared"], None)).await.unwrap();
    cb.put("k8s:from-b", &put("CANARY-b", &["shared"], None)).await.unwrap();
    let sa = k.wait_data("shared", "from-a", &[("VALUE", "CANARY-a")]).await;
    let sb = k.wait_data("shared", "from-b", &[("VALUE", "CANARY-b")]).await;
    let (ia, ib) = (instance_of(&sa), instance_of(&sb));
    assert!(ia.starts_with("aegis-") && ib.starts_with("aegis-") && ia != ib, "{ia} {ib}");

    // The upgrade case: A's write takes back the copy of the old default instance.
    ca.put("k8s:from-a-old", &put("CANARY-a-old", &["shared"], None)).await.unwrap();
    let old = k.wait_data("shared", "from-a-old", &[("VALUE", "CANARY-a-old")]).await;
    assert_eq!(instance_of(&old), ia);
    wait_state(&ca, "k8s:from-a-old", "synced").await;

    // Each Safe restarts (and reconciles, removing its own orphans), then writes again.
    for (i, (safe, name)) in [(&mut b, "k8s:from-b-2"), (&mut a, "k8s:from-a-2")].into_iter().enumerate() {
        tokio::task::block_in_place(|| {
            safe.restart();
            safe.wait_ready();
        });
        let c = safe.client(&safe.admin_env()).await;
        c.put(name, &put("CANARY-2", &["shared"], None)).await.unwrap();
        k.wait_data("shared", name.trim_start_matches("k8s:"), &[("VALUE", "CANARY-2")]).await;
        for n in [["k8s:from-b", "k8s:from-a"][i], name] {
            wait_state(&c, n, "synced").await;
        }
    }
    let c = a.client(&a.admin_env()).await;
    wait_state(&c, "k8s:from-a", "synced").await;
    for (name, before) in [("from-a", &sa), ("from-b", &sb)] {
        let now = k.secrets("shared").get(name).await.unwrap();
        assert_eq!(now.metadata.uid, before.metadata.uid, "{name} was deleted and re-created");
    }
    assert!(k.data("shared", "nobodys").await.is_some(), "a Secret of the old default instance no Safe holds stays");
    assert_no_values_in_log(&a, &["CANARY-a", "CANARY-a-old"]);
    assert_no_values_in_log(&b, &["CANARY-b"]);
}

/// Grants the `aegis-safe` ServiceAccount the Secrets of every namespace,
/// existing or not (as a cluster-wide install would): its watches then hold.
const SECRETS_EVERYWHERE: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: aegis-test-secrets-everywhere
rules:
- apiGroups: [\"\"]
  resources: [\"secrets\"]
  verbs: [\"get\", \"list\", \"watch\", \"create\", \"update\", \"patch\", \"delete\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: aegis-test-secrets-everywhere
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: aegis-test-secrets-everywhere
subjects:
- kind: ServiceAccount
  name: aegis-safe
  namespace: vsecm-system
";

/// Watches of Secrets in single namespaces open on the API server now (its
/// own gauge; the controller manager's watches are cluster-wide, not counted).
async fn namespaced_secret_watches(k: &Setup) -> f64 {
    let req = hyper::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = k.cluster.admin_client().request_text(req).await.unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("apiserver_longrunning_requests{"))
        .filter(|l| l.contains("resource=\"secrets\"") && l.contains("verb=\"WATCH\""))
        .filter(|l| l.contains("scope=\"namespace\""))
        .collect();
    lines.iter().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Waits until the API server holds `want` namespaced Secret watches.
async fn wait_watches(k: &Setup, want: f64, what: &str) {
    eventually(&format!("{want} namespaced Secret watches ({what})"), CATCH_UP, || async {
        let n = namespaced_secret_watches(k).await;
        (n == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_bounded_and_watched_only_while_a_secret_names_them() {
    let k = Setup::new(&[], &[]).await;
    k.cluster.apply_yaml(SECRETS_EVERYWHERE).await;
    let none = namespaced_secret_watches(&k).await;
    let mut safe = k.safe(&[("AEGIS_K8S_MAX_NAMESPACES", "12")]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:base", &put("b", &[], None)).await.unwrap();
    wait_state(&c, "k8s:base", "synced").await;
    wait_watches(&k, none + 1.0, "default only").await;

    // Over the limit (12 with `default`): a 400 naming the limit and its setting; nothing stored.
    let many: Vec<String> = (0..12).map(|i| format!("nowhere-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = c.put("k8s:wide", &put("w", &many, None)).await.unwrap_err().to_string();
    assert!(err.contains("400"), "{err}");
    assert!(err.contains("AEGIS_K8S_MAX_NAMESPACES") && err.contains("limit is 12"), "{err}");
    assert!(c.list(true).await.unwrap().secrets.iter().all(|i| i.name != "k8s:wide"));
    let flood: Vec<String> = (0..3000).map(|i| format!("flood-{i}")).collect();
    let flood: Vec<&str> = flood.iter().map(String::as_str).collect();
    let err = c.put("k8s:flood", &put("w", &flood, None)).await.unwrap_err().to_string();
    assert!(err.contains("400") && err.contains("AEGIS_K8S_MAX_NAMESPACES"), "{err}");

    // At the limit: accepted; names need not exist; one watch per namespace.
    c.put("k8s:wide", &put("w", &many[..11], None)).await.unwrap();
    c.put("k8s:also", &put("a", &many[..2], None)).await.unwrap();
    wait_watches(&k, none + 12.0, "default and 11 more").await;
    let err = c.put("k8s:more", &put("m", &["one-too-many"], None)).await.unwrap_err().to_string();
    assert!(err.contains("400") && err.contains("limit is 12"), "{err}");

    // A watch stops when no secret names its namespace any more.
    c.delete("k8s:wide").await.unwrap();
    wait_watches(&k, none + 3.0, "default and the two of k8s:also").await;
    c.put("k8s:also", &put("a", &["default"], None)).await.unwrap();
    wait_watches(&k, none + 1.0, "default only, again").await;

    // Deleted secrets get no watch after a restart.
    tokio::task::block_in_place(|| {
        safe.kill9();
        safe.start();
        safe.wait_ready();
    });
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:after", &put("x", &[], None)).await.unwrap();
    wait_state(&c, "k8s:after", "synced").await;
    wait_state(&c, "k8s:base", "synced").await;
    wait_watches(&k, none + 1.0, "default only after the restart").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(namespaced_secret_watches(&k).await, none + 1.0, "no watch comes back for a deleted secret");

    // An undelete is not checked at write time: the watches still stop at the limit.
    let six: Vec<String> = (0..6).map(|i| format!("revived-{i}")).collect();
    let six: Vec<&str> = six.iter().map(String::as_str).collect();
    c.put("k8s:revived", &put("r", &six, None)).await.unwrap();
    wait_watches(&k, none + 7.0, "default and the six of k8s:revived").await;
    c.delete("k8s:revived").await.unwrap();
    wait_watches(&k, none + 1.0, "default only, k8s:revived deleted").await;
    let eleven: Vec<String> = (0..11).map(|i| format!("filler-{i}")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    c.put("k8s:filler", &put("f", &eleven, None)).await.unwrap();
    wait_watches(&k, none + 12.0, "the limit").await;
    c.undelete("k8s:revived").await.unwrap();
    eventually("the log saying namespaces over the limit are not watched", CATCH_UP, || async {
        safe.plain_log_text().contains("over the limit of watched namespaces").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(namespaced_secret_watches(&k).await, none + 12.0, "never more watches than the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_secrets_of_names_the_safe_lacks_are_never_counted() {
    let k = Setup::new(&[], &[]).await;
    let safe = k.safe(&[("AEGIS_K8S_INSTANCE", "phantom-test")]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:real", &put("r", &[], None)).await.unwrap();
    wait_state(&c, "k8s:real", "synced").await;

    // Anyone who may create Secrets in a watched namespace labels some, naming
    // secrets the Safe never had (as an orphan of this Safe would).
    for i in 0..25 {
        let phantom: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("phantom-{i}"), "labels": {"app.kubernetes.io/managed-by": "aegis"},
                         "annotations": {"aegis.dev/secret": format!("k8s:phantom-{i}"), "aegis.dev/version": "1",
                                         "aegis.dev/instance": "phantom-test"}},
            "type": "Opaque", "stringData": {"VALUE": "x"}
        }))
        .unwrap();
        k.secrets("default").create(&PostParams::default(), &phantom).await.unwrap();
    }
    // They are orphans of this instance: removed, and never counted.
    for i in 0..25 {
        k.wait_gone("default", &format!("phantom-{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = c.status().await.unwrap().kubernetes.unwrap();
    assert_eq!((s.synced, s.pending, s.errors, s.conflicts), (1, 0, 0, 0), "{s:?}");
    let m = common::metrics(&safe);
    assert_eq!(common::metric(&m, "aegis_kubernetes_sync_secrets{state=\"pending\"}"), 0.0, "{m}");
    assert_eq!(common::metric(&m, "aegis_kubernetes_sync_secrets{state=\"synced\"}"), 1.0, "{m}");
    assert_eq!(common::metric(&m, "aegis_kubernetes_sync_lag_seconds"), 0.0, "{m}");
    assert!(c.list(true).await.unwrap().secrets.iter().all(|i| !i.name.starts_with("k8s:phantom")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_from_the_value_or_a_template_is_never_quoted_in_the_answer_or_the_log() {
    let k = Setup::new(&[], &[]).await;
    let safe = k.safe(&[]);
    let admin = safe.admin_env();
    let c = safe.client(&admin).await;
    // The key (a password pasted as a field name) from the value...
    let err = c.put("k8s:keyed", &put(r#"{"CANARY-key-61d0 pw": "v"}"#, &[], None)).await.unwrap_err().to_string();
    assert!(err.contains("409") && err.contains("not a valid Kubernetes Secret key"), "{err}");
    assert!(err.contains("key 1 of 1") && err.contains("18 bytes long"), "{err}");
    assert!(!err.contains("CANARY-key-61d0"), "{err}");
    // ... from a template's output ...
    let tmpl = r#"{"{{.k}}":"x"}"#;
    let err = c.put("k8s:keyed", &put(r#"{"k": "CANARY-tkey-28b7 !"}"#, &[], Some(tmpl))).await.unwrap_err();
    let err = err.to_string();
    assert!(err.contains("409") && err.contains("not a valid Kubernetes Secret key"), "{err}");
    assert!(!err.contains("CANARY-tkey-28b7"), "{err}");
    // ... and through VSecM's `safe`.
    let out =
        tokio::task::block_in_place(|| safe.safe(&admin, &["-w", "k8s:keyed", "-s", r#"{"CANARY-safe-key x": "v"}"#]));
    assert!(!out.status.success());
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(!text.contains("CANARY-safe-key"), "{text}");
    assert!(c.list(true).await.unwrap().secrets.iter().all(|i| i.name != "k8s:keyed"));
    assert_no_values_in_log(&safe, &["CANARY-key-61d0", "CANARY-tkey-28b7", "CANARY-safe-key"]);
}

/// Asks the health port for `/healthz` and returns how long the answer took.
async fn healthz_latency(port: u16) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        assert!(buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"), "healthz did not say 200");
    };
    tokio::time::timeout(Duration::from_secs(60), probe).await.expect("healthz answered within 60 s");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_responsive_while_copies_of_a_templated_secret_are_edited() {
    let spaces = ["edit-a", "edit-b", "edit-c", "edit-d"];
    let k = Setup::new(&spaces, &[]).await;
    // One async worker thread, as the chart's one CPU gives the Safe.
    // The template below copies far more than the default work budget: raised, so that
    // rendering takes a noticeable time (what this test is about), not refused.
    let safe = k.safe(&[
        ("TOKIO_WORKER_THREADS", "1"),
        ("AEGIS_LOG", "info"),
        ("AEGIS_TEMPLATE_MAX_WORK_BYTES", "1073741824"),
    ]);
    let c = safe.client(&safe.admin_env()).await;
    // A template that takes a good part of the template budget to render.
    let list: Vec<&str> = vec!["1"; 25_000];
    let value = format!(r#"{{"user": "u", "l": [{}]}}"#, list.join(","));
    let tmpl = r#"{"USER":"{{.user}}{{range .l}}{{$x := printf "%9000d" .}}{{end}}"}"#;
    let t = Instant::now();
    c.put("k8s:heavy", &put(&value, &spaces, Some(tmpl))).await.unwrap();
    eprintln!("write with the heavy template took {:?}", t.elapsed());
    for ns in spaces {
        k.wait_data(ns, "heavy", &[("USER", "u")]).await;
    }
    wait_state(&c, "k8s:heavy", "synced").await;

    let mut baseline = Duration::ZERO;
    for _ in 0..10 {
        baseline = baseline.max(healthz_latency(safe.health).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Edit an annotation of every copy, again and again, while probing /healthz.
    let editor = {
        let apis: Vec<Api<Secret>> = spaces.iter().map(|ns| k.secrets(ns)).collect();
        tokio::spawn(async move {
            for round in 0..15 {
                for api in &apis {
                    let edit = serde_json::json!({"metadata": {"annotations": {"touched": round.to_string()}}});
                    api.patch("heavy", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
                }
            }
        })
    };
    let mut worst = Duration::ZERO;
    while !editor.is_finished() {
        worst = worst.max(healthz_latency(safe.health).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    editor.await.unwrap();
    for _ in 0..20 {
        worst = worst.max(healthz_latency(safe.health).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("/healthz: baseline max {baseline:?}, max while editing {worst:?}");
    // Generous: idle answers take milliseconds; a liveness probe gives up at 3 s.
    let bound = (baseline * 20).clamp(Duration::from_secs(2), Duration::from_secs(3));
    assert!(worst < bound, "/healthz took {worst:?} while copies were edited (baseline {baseline:?})");
    // The annotation edits changed nothing that matters: still synced, no repair needed.
    let i = wait_state(&c, "k8s:heavy", "synced").await;
    assert_eq!(i.kubernetes.unwrap().synced_version, Some(1));
}

// ---- benchmarks (ignored; run explicitly, see docs/BENCHMARKS.md) ----

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// From an acknowledged write to the Kubernetes Secret holding the new value,
/// over 200 writes (one at a time, the next after the previous one landed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_write_to_kubernetes_secret_latency() {
    let k = Setup::new(&[], &[]).await;
    let safe = k.safe(&[("AEGIS_LOG", "warn")]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:bench", &put("warm-up", &[], None)).await.unwrap();
    k.wait_data("default", "bench", &[("VALUE", "warm-up")]).await;
    // Watch the Secret, so the time is when the API server has it (not when a poll sees it).
    let api = k.secrets("default");
    let mut lat = Vec::new();
    for i in 0..200 {
        let want = format!("value-{i}");
        let mut stream =
            api.watch(&::kube::api::WatchParams::default().fields("metadata.name=bench"), "0").await.unwrap().boxed();
        c.put("k8s:bench", &put(&want, &[], None)).await.unwrap();
        let acked = Instant::now();
        loop {
            let ev = tokio::time::timeout(CATCH_UP, stream.next()).await.unwrap().unwrap().unwrap();
            if let ::kube::api::WatchEvent::Added(s) | ::kube::api::WatchEvent::Modified(s) = ev {
                let v = s.data.and_then(|d| d.get("VALUE").map(|b| b.0.clone()));
                if v.as_deref() == Some(want.as_bytes()) {
                    break;
                }
            }
        }
        lat.push(acked.elapsed());
    }
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    println!("BENCH write->Secret over {} writes: p50 {p50:?} p99 {p99:?} max {:?}", lat.len(), lat[lat.len() - 1]);
}

/// 1,000 `k8s:` secrets in 10 namespaces: after a Safe restart with every
/// Kubernetes Secret deleted, the time until all are back and `aegis status`
/// says all synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_restart_reconciles_1000_secrets_in_10_namespaces() {
    let namespaces: Vec<String> = (0..10).map(|i| format!("bench-{i}")).collect();
    let ns_refs: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let k = Setup::new(&ns_refs, &[]).await;
    let mut safe = k.safe(&[("AEGIS_LOG", "warn")]);
    let c = safe.client(&safe.admin_env()).await;
    let t = Instant::now();
    for i in 0..1000 {
        let ns = &namespaces[i % 10];
        c.put(&format!("k8s:s{i}"), &put(&format!("{{\"n\": \"{i}\"}}"), &[ns], None)).await.unwrap();
    }
    eventually("1000 synced", Duration::from_secs(120), || async {
        let s = c.status().await.unwrap().kubernetes.unwrap();
        (s.synced == 1000).then_some(())
    })
    .await;
    println!("BENCH first sync of 1000 secrets: {:?}", t.elapsed());
    tokio::task::block_in_place(|| safe.kill9());
    for ns in &namespaces {
        k.secrets(ns)
            .delete_collection(
                &DeleteParams::default(),
                &::kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=aegis"),
            )
            .await
            .unwrap();
    }
    let t = Instant::now();
    tokio::task::block_in_place(|| {
        safe.start();
        safe.wait_ready();
    });
    let ready = t.elapsed();
    let c = safe.client(&safe.admin_env()).await;
    eventually("1000 synced after restart", Duration::from_secs(120), || async {
        let s = c.status().await.ok()?.kubernetes?;
        (s.synced == 1000).then_some(())
    })
    .await;
    let synced = t.elapsed();
    let mut count = 0;
    for ns in &namespaces {
        count += k.secrets(ns).list(&::kube::api::ListParams::default()).await.unwrap().items.len();
    }
    assert_eq!(count, 1000);
    println!("BENCH restart: ready {ready:?}, 1000 Secrets in 10 namespaces recreated and synced {synced:?}");
}

/// The lines of `safe`'s log saying it took the duty of writing the copies.
fn duty_taken(safe: &Safe) -> usize {
    safe.plain_log_text().matches("this Safe writes the Kubernetes copies of k8s: secrets").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_safes_sharing_a_database_one_writes_the_copies_and_another_takes_over_when_it_dies() {
    let k = Setup::new(&[], &[]).await;
    let pg = common::postgres::Postgres::start();
    pg.create_db("k8sduty");
    let f = pg.safe_flags("k8sduty");
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let env = k.safe_env(&[]);
    let mut a = tokio::task::block_in_place(|| Safe::dev_with_env(&f, None, env.clone()));
    eventually("A takes the duty of writing the copies", CATCH_UP, || async { (duty_taken(&a) == 1).then_some(()) })
        .await;
    let mut b = tokio::task::block_in_place(|| Safe::dev_replica_with_env(&f, &a, env.clone()));
    let c = b.client(&b.admin_env()).await;
    // Written through B, copied by A.
    c.put("k8s:db-creds", &put("v1", &[], None)).await.unwrap();
    k.wait_data("default", "db-creds", &[("VALUE", "v1")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(duty_taken(&a), 1);
    assert_eq!(duty_taken(&b), 0, "B wrote copies while A held the duty:\n{}", b.plain_log_text());

    // A dies: B takes the duty, and syncs what changes from then on.
    a.kill9();
    let t = Instant::now();
    eventually("B takes the duty after A died", CATCH_UP, || async { (duty_taken(&b) == 1).then_some(()) }).await;
    let took = t.elapsed();
    c.put("k8s:db-creds", &put("v2", &[], None)).await.unwrap();
    c.put("k8s:api-token", &put("t1", &[], None)).await.unwrap();
    k.wait_data("default", "db-creds", &[("VALUE", "v2")]).await;
    k.wait_data("default", "api-token", &[("VALUE", "t1")]).await;
    wait_state(&c, "k8s:api-token", "synced").await;
    eprintln!("B took over the Kubernetes copies {took:?} after A was killed");
    b.terminate();
}
