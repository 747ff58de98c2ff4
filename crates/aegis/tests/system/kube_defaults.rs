//! Drop-in defaults for VSecM users (issue 21 §6): the `k8s:` sync is on by
//! default when the Safe has a Kubernetes API and `k8s:` writes are refused,
//! saying why, where they could never be synced; the validity window of a
//! `k8s:` secret applies to its Kubernetes copies. Against a real etcd +
//! kube-apiserver (`common::kube`); every wait polls with a generous deadline.

use crate::common;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use ::kube::api::Api;
use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use common::kube::KubeCluster;
use common::{repo_root, stderr, Safe};
use k8s_openapi::api::core::v1::Secret;

/// How long Kubernetes may take to catch up (generous: a busy 2-core machine).
const CATCH_UP: Duration = Duration::from_secs(60);

/// Polls `f` every 50 ms until it yields `Some`, or fails after `limit` saying `what`.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster with safe-rbac.yaml applied and the kubeconfig of the Safe's ServiceAccount.
async fn cluster() -> (KubeCluster, std::path::PathBuf) {
    let cluster = KubeCluster::start().await;
    cluster.apply_yaml(repo_root().join("deploy/kubernetes/safe-rbac.yaml").to_str().unwrap()).await;
    let kubeconfig = cluster.service_account_kubeconfig("vsecm-system", "aegis-safe").await;
    (cluster, kubeconfig)
}

/// A dev Safe with exactly `env` and `args`.
fn dev_safe_with(args: &[&str], env: &[(&str, &str)]) -> Safe {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::block_in_place(|| Safe::dev_with_env(args, None, env))
}

/// A dev Safe with exactly `env` (no `--k8s-secrets` flag).
fn dev_safe(env: &[(&str, &str)]) -> Safe {
    dev_safe_with(&[], env)
}

fn put(value: &str) -> PutSecret {
    let mut p = PutSecret::new(SecretValue::new(value));
    p.namespaces = Some(vec!["default".to_owned()]);
    p
}

/// A `k8s:` write is refused on both APIs and by both CLIs with a message
/// containing every one of `why`, and nothing is stored.
async fn refused_everywhere(safe: &Safe, why: &[&str]) {
    let admin = safe.admin_env();
    let c = safe.client(&admin).await;
    let has_why = |text: &str| {
        assert!(text.contains("k8s:db is not stored"), "{text}");
        for w in why {
            assert!(text.contains(w), "{w:?} missing in: {text}");
        }
    };
    // Native API and VSecM API.
    let err = c.put("k8s:db", &put("v1")).await.unwrap_err().to_string();
    assert!(err.contains("409"), "{err}");
    has_why(&err);
    let up: aegis_core::api::VsecmUpsert = serde_json::from_value(serde_json::json!({
        "workloads": ["k8s:db"], "namespaces": ["default"], "value": "v2", "template": "", "format": "json",
        "encrypt": false, "notBefore": "now", "expires": "never"
    }))
    .unwrap();
    let err = c.vsecm_upsert(&up).await.unwrap_err().to_string();
    has_why(&err);
    // Both command lines.
    let out = tokio::task::block_in_place(|| safe.aegis(&admin, &["put", "k8s:db", "--value", "v3"]));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    has_why(&stderr(&out));
    let out = tokio::task::block_in_place(|| safe.safe(&admin, &["-w", "k8s:db", "-s", "v4", "-n", "default"]));
    assert!(!out.status.success());
    has_why(&format!("{}{}", stderr(&out), common::stdout(&out)));
    // Nothing stored, and the status shows no sync.
    assert!(c.list(true).await.unwrap().secrets.iter().all(|i| i.name != "k8s:db"), "k8s:db was stored");
    assert!(c.status().await.unwrap().kubernetes.is_none(), "a Safe that keeps no Kubernetes Secrets reports none");
    // Other secrets are stored as ever.
    c.put("plain", &put("v")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kubernetes_api_k8s_writes_are_refused_saying_why() {
    let safe = dev_safe(&[]);
    refused_everywhere(&safe, &["has no Kubernetes API", "give it a kubeconfig", "without the k8s: prefix"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_turns_the_sync_on_and_false_turns_it_off() {
    let (cluster, kubeconfig) = cluster().await;
    let kubeconfig = kubeconfig.display().to_string();
    let api: Api<Secret> = Api::namespaced(cluster.admin_client(), "default");

    // No --k8s-secrets, no AEGIS_K8S_SECRETS: the kubeconfig is enough.
    let safe = dev_safe(&[("KUBECONFIG", &kubeconfig)]);
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:db", &put(r#"{"user":"admin"}"#)).await.unwrap();
    eventually("the Secret default/db", CATCH_UP, || async { api.get_opt("db").await.unwrap() }).await;
    assert!(c.status().await.unwrap().kubernetes.is_some());
    drop(safe);

    // Turned off explicitly: refused, and Kubernetes gets nothing.
    for off in [&[("AEGIS_K8S_SECRETS", "false")][..], &[("AEGIS_K8S_SECRETS", "0")]] {
        let mut env = off.to_vec();
        env.push(("KUBECONFIG", &kubeconfig));
        let safe = dev_safe(&env);
        refused_everywhere(&safe, &["sync is turned off", "--k8s-secrets=false", "turn the sync on"]).await;
    }
    api.delete("db", &Default::default()).await.unwrap();
    let safe = dev_safe_with(&["--k8s-secrets=false"], &[("KUBECONFIG", &kubeconfig)]);
    refused_everywhere(&safe, &["sync is turned off"]).await;
    assert!(api.get_opt("db").await.unwrap().is_none(), "a Safe with the sync off wrote a Secret");
}

/// RFC 3339 to the second, `secs` from now.
fn in_secs(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.replace_nanosecond(0).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// The validity window applies to the Kubernetes copies, by a timer: no copy
/// before `notBefore`, and the copy is deleted once the secret expires, with
/// no write in between. The margins are seconds wide, and every wait polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_copies_follow_the_validity_window() {
    let (cluster, kubeconfig) = cluster().await;
    let api: Api<Secret> = Api::namespaced(cluster.admin_client(), "default");
    let safe = dev_safe(&[("KUBECONFIG", &kubeconfig.display().to_string())]);
    let admin = safe.admin_env();
    let c = safe.client(&admin).await;

    // Expires in 15 s: the copy appears, then goes when the secret expires.
    let expires = in_secs(15);
    let mut p = put("short-lived");
    p.expires_after = Some(expires.clone());
    c.put("k8s:soon", &p).await.unwrap();
    // Starts in 5 s: no copy until then.
    let not_before = in_secs(5);
    let mut p = put("later");
    p.not_before = Some(not_before.clone());
    c.put("k8s:later", &p).await.unwrap();

    eventually("the Secret default/soon", CATCH_UP, || async { api.get_opt("soon").await.unwrap() }).await;
    let later =
        eventually("the Secret default/later", CATCH_UP, || async { api.get_opt("later").await.unwrap() }).await;
    let created = serde_json::to_value(later.metadata.creation_timestamp.unwrap()).unwrap();
    let created = created.as_str().unwrap();
    let parse = |t: &str| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    assert!(parse(created) >= parse(&not_before), "default/later created at {created}, before notBefore {not_before}");

    eventually("the expired default/soon deleted", CATCH_UP, || async {
        api.get_opt("soon").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        time::OffsetDateTime::now_utc() > parse(&expires),
        "default/soon was deleted before it expired at {expires}"
    );
    assert!(api.get_opt("later").await.unwrap().is_some(), "a secret inside its window keeps its copy");
    // Still stored, and the sync does not bring the copy back.
    assert!(c.list(true).await.unwrap().secrets.iter().any(|i| i.name == "k8s:soon"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(api.get_opt("soon").await.unwrap().is_none(), "the copy of an expired secret came back");
}

/// In a pod (the in-cluster variables and the ServiceAccount token at its path),
/// with no flag and no kubeconfig, the sync is on. The pod is made real enough as in
/// `kube_rootkey.rs`: a private mount namespace (the tests run as root) with the
/// token, CA and namespace files at the in-cluster path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pod_the_sync_is_on_without_any_flag() {
    let (cluster, kubeconfig) = cluster().await;
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let token = text.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("a token in the kubeconfig");
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), token).unwrap();
    std::fs::copy(cluster.ca_file(), sa.path().join("ca.crt")).unwrap();
    std::fs::write(sa.path().join("namespace"), "vsecm-system").unwrap();

    let key = sa.path().join("root.key");
    let mut safe = Safe::server_unstarted(&["--root-key-file", key.to_str().unwrap()]);
    let env = HashMap::from([
        ("AEGIS_LOG".to_owned(), "debug".to_owned()),
        ("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), cluster.port.to_string()),
        ("AEGIS_TEST_SA_DIR".to_owned(), sa.path().display().to_string()),
    ]);
    let pod = "mount -t tmpfs tmpfs /run && d=/run/secrets/kubernetes.io/serviceaccount && mkdir -p $d && \
               cp \"$AEGIS_TEST_SA_DIR\"/token \"$AEGIS_TEST_SA_DIR\"/ca.crt \"$AEGIS_TEST_SA_DIR\"/namespace $d/ && \
               exec \"$@\"";
    let log = std::fs::File::create(&safe.log).unwrap();
    let child = common::cmd("unshare", &env)
        .args(["--mount", "--propagation", "private", "sh", "-c", pod, "sh", common::AEGIS])
        .args(&safe.args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run unshare (util-linux)");
    safe.child = Some(child);
    tokio::task::block_in_place(|| safe.wait_ready());
    let c = safe.client(&safe.admin_env()).await;
    c.put("k8s:in-pod", &put("v")).await.unwrap();
    let api: Api<Secret> = Api::namespaced(cluster.admin_client(), "default");
    eventually("the Secret default/in-pod", CATCH_UP, || async { api.get_opt("in-pod").await.unwrap() }).await;
}
