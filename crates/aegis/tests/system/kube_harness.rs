//! The Kubernetes harness itself, against a real etcd, kube-apiserver and
//! kube-controller-manager (v1.37.2, `scripts/build-kube.sh`): the Safe's RBAC in
//! deploy/kubernetes/safe-rbac.yaml grants exactly what it says, the controller
//! manager makes ServiceAccounts, and the API server survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::Duration;

use ::kube::api::{Api, ListParams, PostParams};
use ::kube::Client;
use common::kube::{client_from_kubeconfig, KubeCluster};
use common::repo_root;
use k8s_openapi::api::core::v1::Secret;

fn secret(name: &str, key: &str, value: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
        "stringData": {key: value}
    }))
    .unwrap()
}

/// The HTTP status of a kube error (panics on other errors).
fn status<T: std::fmt::Debug>(r: Result<T, ::kube::Error>) -> u16 {
    match r {
        Err(::kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn safe_client(cluster: &KubeCluster) -> Client {
    let rbac = repo_root().join("deploy/kubernetes/safe-rbac.yaml");
    cluster.apply_yaml(rbac.to_str().unwrap()).await;
    let kubeconfig = cluster.service_account_kubeconfig("vsecm-system", "aegis-safe").await;
    client_from_kubeconfig(&kubeconfig).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_rbac_grants_exactly_the_documented_rights() {
    let cluster = KubeCluster::start().await;
    let safe = safe_client(&cluster).await;
    let root = Api::<Secret>::namespaced(safe.clone(), "vsecm-system");

    // The root key: create (VSecM's chart may not have), get, update.
    root.create(&PostParams::default(), &secret("vsecm-root-key", "KEY_TXT", "{}")).await.unwrap();
    let mut got = root.get("vsecm-root-key").await.unwrap();
    got.string_data = Some([("KEY_TXT".to_owned(), "replaced".to_owned())].into());
    root.replace("vsecm-root-key", &PostParams::default(), &got).await.unwrap();
    let data = root.get("vsecm-root-key").await.unwrap().data.unwrap();
    assert_eq!(data["KEY_TXT"].0, b"replaced");

    // Only that Secret: reading or listing others in vsecm-system is refused.
    let admin_root = Api::<Secret>::namespaced(cluster.admin_client(), "vsecm-system");
    admin_root.create(&PostParams::default(), &secret("other", "k", "v")).await.unwrap();
    assert_eq!(status(root.get("other").await), 403);
    assert_eq!(status(root.list(&ListParams::default()).await), 403);

    // `k8s:` secrets: everything in `default` (the template namespace) ...
    let default = Api::<Secret>::namespaced(safe.clone(), "default");
    default.create(&PostParams::default(), &secret("k8s-synced", "VALUE", "x")).await.unwrap();
    assert!(default
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|s| s.metadata.name.as_deref() == Some("k8s-synced")));
    default.delete("k8s-synced", &Default::default()).await.unwrap();

    // ... and nothing in a namespace without a Role.
    let kube_system = Api::<Secret>::namespaced(safe.clone(), "kube-system");
    assert_eq!(status(kube_system.list(&ListParams::default()).await), 403);
    assert_eq!(status(kube_system.create(&PostParams::default(), &secret("x", "k", "v")).await), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_manager_makes_default_service_accounts_and_apiserver_restarts() {
    let mut cluster = KubeCluster::start().await;
    cluster.create_namespace("harness-check").await;
    cluster.wait_service_account("harness-check", "default", Duration::from_secs(30)).await;

    cluster.stop_apiserver();
    assert!(!cluster.ready().await, "the API server still answers after stop_apiserver");
    cluster.start_apiserver().await;
    assert!(cluster.ready().await);
    // The data survived in etcd and clients reconnect.
    cluster.wait_service_account("harness-check", "default", Duration::from_secs(5)).await;
    let safe = safe_client(&cluster).await;
    let root = Api::<Secret>::namespaced(safe, "vsecm-system");
    root.create(&PostParams::default(), &secret("vsecm-root-key", "KEY_TXT", "{}")).await.unwrap();
}
