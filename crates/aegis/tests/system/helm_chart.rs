//! The Helm chart `charts/aegis`, rendered by a real `helm` (v3.22.0, built by
//! `scripts/build-helm.sh`): `helm lint` and `helm template` with the default
//! values and every documented variant (`charts/aegis/ci/*-values.yaml`), the
//! schema refusing typos, a security policy over every rendered manifest, the
//! Safe's role rules accepting exactly the SPIFFE IDs the chart registers, and
//! every rendered object and every object of `examples/` accepted by a real
//! kube-apiserver (server-side dry-run, strict field validation) with a minimal
//! ClusterSPIFFEID CRD installed (`fixtures/helm/clusterspiffeid-crd.yaml`, a
//! stand-in for SPIRE controller manager's CRD with only the fields used here).
//!
//! `the_rendered_chart_runs_the_safe_the_sentinel_and_a_sidecar` runs the real
//! `aegis` binary with exactly the rendered command, arguments and environment
//! of the Safe and the Sentinel against a real kube-apiserver and real SPIRE.
//!
//! `AEGIS_HELM_BIN` names the `helm` binary (`scripts/test.sh` sets it);
//! without it the tests run `scripts/build-helm.sh` themselves. There is no
//! skip: without `helm` the tests fail and say how to get it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::spire as harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ::kube::api::{Api, DynamicObject, Patch, PatchParams, ValidationDirective};
use ::kube::core::GroupVersionKind;
use ::kube::discovery::{self, Scope};
use aegis_core::roles::{Role, RoleRules};
use aegis_core::spiffe::SpiffeId;
use common::kube::KubeCluster;
use common::repo_root;
use serde_json::Value;

/// The namespace every test installs into (VSecM's).
const NAMESPACE: &str = "vsecm-system";

/// Every documented variant: a name and its values file under charts/aegis/ci/.
const VARIANTS: [(&str, Option<&str>); 10] = [
    ("default", None),
    ("file root key", Some("file-root-key-values.yaml")),
    ("manual root key", Some("manual-root-key-values.yaml")),
    ("k8s: in listed namespaces", Some("k8s-namespaces-values.yaml")),
    ("k8s: in all namespaces", Some("k8s-all-namespaces-values.yaml")),
    ("NetworkPolicy off", Some("no-networkpolicy-values.yaml")),
    ("custom SPIFFE ID templates", Some("custom-spiffe-values.yaml")),
    ("scheduled backups", Some("backup-values.yaml")),
    ("three Safes on PostgreSQL", Some("ha-postgres-values.yaml")),
    ("policies and request rates", Some("policies-values.yaml")),
];

fn chart_dir() -> PathBuf {
    repo_root().join("charts/aegis")
}

/// The `helm` binary: `AEGIS_HELM_BIN`, else built (once, cached) by scripts/build-helm.sh.
fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("AEGIS_HELM_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "AEGIS_HELM_BIN={} is not a file; run scripts/build-helm.sh", p.display());
            return p;
        }
        let out = Command::new(repo_root().join("scripts/build-helm.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/build-helm.sh");
        assert!(out.status.success(), "scripts/build-helm.sh failed; set AEGIS_HELM_BIN to a helm v3 binary");
        let dir = String::from_utf8(out.stdout).unwrap().lines().last().unwrap_or_default().to_owned();
        let p = Path::new(&dir).join("helm");
        assert!(p.is_file(), "scripts/build-helm.sh printed {dir}, which has no helm");
        p
    })
}

/// Runs helm with its caches and config in a throw-away home.
fn helm(args: &[&str]) -> Output {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().unwrap()).path();
    Command::new(helm_bin())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

fn values_arg(values: Option<&str>) -> Vec<String> {
    values.map(|v| vec!["-f".to_owned(), chart_dir().join("ci").join(v).display().to_string()]).unwrap_or_default()
}

/// `helm template` of the chart with `extra` arguments; the output, or helm's error.
fn template(extra: &[String]) -> Result<String, String> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", "aegis", chart.as_str(), "--namespace", NAMESPACE];
    args.extend(extra.iter().map(String::as_str));
    let out = helm(&args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The rendered objects of one variant.
fn render(values: Option<&str>) -> Vec<Value> {
    let text = template(&values_arg(values)).unwrap_or_else(|e| panic!("helm template {values:?} failed: {e}"));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("rendered YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(objs: &'a [Value], k: &str, n: &str) -> &'a Value {
    objs.iter().find(|o| kind(o) == k && name(o) == n).unwrap_or_else(|| panic!("no {k} {n} rendered"))
}

fn kinds(objs: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in objs {
        *m.entry(kind(o).to_owned()).or_insert(0) += 1;
    }
    m
}

/// The first container of a workload's pod template.
fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn args(c: &Value) -> Vec<String> {
    c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
}

fn env(c: &Value) -> BTreeMap<String, String> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

#[test]
fn helm_lint_passes_for_the_defaults_and_every_variant() {
    let chart = chart_dir().display().to_string();
    for (variant, values) in VARIANTS {
        let mut a = vec!["lint".to_owned(), "--strict".to_owned(), chart.clone(), "--namespace".to_owned()];
        a.push(NAMESPACE.to_owned());
        a.extend(values_arg(values));
        let out = helm(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "helm lint ({variant}) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn default_values_install_vsecms_names_and_the_kubernetes_root_key_store() {
    let objs = render(None);
    let expected: BTreeMap<String, usize> = [
        ("ClusterSPIFFEID", 2),
        ("Deployment", 1),
        ("NetworkPolicy", 2),
        ("PodDisruptionBudget", 1),
        ("Role", 1),
        ("RoleBinding", 1),
        ("Service", 1),
        ("ServiceAccount", 2),
        ("StatefulSet", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(kinds(&objs), expected);

    // VSecM's Service name and port: clients' default VSECM_SAFE_ENDPOINT_URL works.
    let svc = find(&objs, "Service", "vsecm-safe");
    assert_eq!(svc["metadata"]["namespace"], NAMESPACE);
    assert_eq!(svc["spec"]["ports"][0]["port"], 8443);

    let safe = find(&objs, "StatefulSet", "vsecm-safe");
    let pod = &safe["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "vsecm-safe");
    assert_eq!(pod["automountServiceAccountToken"], true, "the kubernetes root key store calls the API");
    let a = args(container(safe));
    for want in [
        "server",
        "--root-key-store=kubernetes",
        "--root-key-secret=vsecm-root-key",
        "--root-key-namespace=vsecm-system",
    ] {
        assert!(a.contains(&want.to_owned()), "Safe args {a:?} lack {want}");
    }
    let k8s: Vec<&String> = a.iter().filter(|x| x.starts_with("--k8s-")).collect();
    assert_eq!(
        k8s,
        ["--k8s-secrets=false"],
        "k8s: sync is off by default, explicitly (the Safe would turn it on in a pod)"
    );
    assert_eq!(safe["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    let probes = container(safe);
    assert_eq!(probes["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(probes["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(probes["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(probes["ports"][1]["containerPort"], 8081);

    // The role rules are exactly VSecM's defaults.
    let e = env(container(safe));
    assert_eq!(e["SPIFFE_TRUST_DOMAIN"], "vsecm.com");
    assert_eq!(
        e["VSECM_SPIFFEID_PREFIX_SAFE"],
        "^spiffe://vsecm.com/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/[^/]+$"
    );
    assert_eq!(
        e["VSECM_SPIFFEID_PREFIX_SENTINEL"],
        "^spiffe://vsecm.com/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/[^/]+$"
    );
    assert_eq!(e["VSECM_SPIFFEID_PREFIX_WORKLOAD"], "^spiffe://vsecm.com/workload/[^/]+/ns/[^/]+/sa/[^/]+/n/[^/]+$");
    assert_eq!(e["VSECM_WORKLOAD_NAME_REGEXP"], "^spiffe://vsecm.com/workload/([^/]+)/ns/[^/]+/sa/[^/]+/n/[^/]+$");

    // The Sentinel: init commands from VSecM's Secret and path, then stays up; no token.
    let sentinel = find(&objs, "Deployment", "vsecm-sentinel");
    let spod = &sentinel["spec"]["template"]["spec"];
    assert_eq!(spod["automountServiceAccountToken"], false);
    assert_eq!(
        args(container(sentinel)),
        ["sentinel", "init", "--file=/opt/vsecm-sentinel/init/data", "--missing-ok", "--keep-running"]
    );
    let init = spod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "init-commands").unwrap();
    assert_eq!(init["secret"]["secretName"], "vsecm-sentinel-init-secret");
    assert_eq!(init["secret"]["items"][0]["key"], "data");
    assert_eq!(
        env(container(sentinel))["VSECM_SAFE_ENDPOINT_URL"],
        "https://vsecm-safe.vsecm-system.svc.cluster.local:8443/"
    );

    // The root key Role: the one Secret by name, plus create (no Secret yet).
    let role = find(&objs, "Role", "aegis-safe-root-key");
    assert_eq!(role["rules"][0]["resourceNames"], serde_json::json!(["vsecm-root-key"]));
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "update"]));
    assert_eq!(role["rules"][1]["verbs"], serde_json::json!(["create"]));

    // VSecM's SPIFFE ID templates, with the trust domain filled in.
    let id = find(&objs, "ClusterSPIFFEID", "vsecm-system-aegis-safe");
    assert_eq!(
        id["spec"]["spiffeIDTemplate"],
        "spiffe://vsecm.com/workload/vsecm-safe/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}/n/{{ .PodMeta.Name }}"
    );
    assert_eq!(id["spec"]["className"], "vsecm");
}

#[test]
fn each_variant_renders_what_it_documents() {
    // File and manual root keys: no Role and no token (the Safe never calls the API).
    for (values, store) in [("file-root-key-values.yaml", "file"), ("manual-root-key-values.yaml", "manual")] {
        let objs = render(Some(values));
        assert!(!objs.iter().any(|o| kind(o) == "Role" || kind(o) == "ClusterRole"), "{store}: no RBAC expected");
        let safe = find(&objs, "StatefulSet", "vsecm-safe");
        assert_eq!(safe["spec"]["template"]["spec"]["automountServiceAccountToken"], false, "{store}");
        let a = args(container(safe));
        assert!(a.contains(&format!("--root-key-store={store}")), "{a:?}");
        assert_eq!(a.contains(&"--root-key-file=/var/local/aegis/root-key.txt".to_owned()), store == "file", "{a:?}");
    }

    // k8s: in listed namespaces: one Role and RoleBinding each, no ClusterRole.
    let objs = render(Some("k8s-namespaces-values.yaml"));
    let roles: BTreeSet<_> = objs
        .iter()
        .filter(|o| kind(o) == "Role" && name(o) == "aegis-safe-secrets")
        .map(|o| o["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["billing", "payments"].map(str::to_owned).into());
    assert_eq!(objs.iter().filter(|o| kind(o) == "RoleBinding").count(), 3);
    assert!(!objs.iter().any(|o| kind(o).starts_with("Cluster") && kind(o) != "ClusterSPIFFEID"));
    assert!(args(container(find(&objs, "StatefulSet", "vsecm-safe"))).contains(&"--k8s-secrets".to_owned()));

    // k8s: in all namespaces: the only variant with a ClusterRole.
    let objs = render(Some("k8s-all-namespaces-values.yaml"));
    let cr = find(&objs, "ClusterRole", "vsecm-system-aegis-safe-secrets");
    assert_eq!(cr["rules"][0]["resources"], serde_json::json!(["secrets"]));
    find(&objs, "ClusterRoleBinding", "vsecm-system-aegis-safe-secrets");
    let a = args(container(find(&objs, "StatefulSet", "vsecm-safe")));
    assert!(a.contains(&"--k8s-secrets".to_owned()) && a.contains(&"--k8s-keep-on-delete".to_owned()), "{a:?}");

    // NetworkPolicy off.
    assert!(!render(Some("no-networkpolicy-values.yaml")).iter().any(|o| kind(o) == "NetworkPolicy"));

    // Policies: a ConfigMap the Safe reads with --policy-file, which the Safe's own parser accepts.
    let objs = render(Some("policies-values.yaml"));
    let a = args(container(find(&objs, "StatefulSet", "vsecm-safe")));
    for flag in [
        "--policy-file=/etc/aegis/policies/policies.json",
        "--rate-per-identity=200",
        "--rate-burst=400",
        "--federate-with=b.example.org",
        "--replicate-to=spiffe://b.example.org/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/vsecm-safe-0",
        "--replicate=shared-*",
        "--replicate-from=spiffe://b.example.org/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/vsecm-safe-0=https://safe.b.example.org:8443",
        "--replication-alert-after-ms=30000",
    ] {
        assert!(a.contains(&flag.to_owned()), "{flag} in {a:?}");
    }
    // The replica in another cluster may reach the API port.
    let np = find(&objs, "NetworkPolicy", "vsecm-safe");
    let replicas =
        np["spec"]["ingress"].as_array().unwrap().iter().find(|r| r["from"][0]["ipBlock"]["cidr"] == "203.0.113.0/24");
    assert_eq!(replicas.map(|r| r["ports"][0]["port"].clone()), Some(serde_json::json!(8443)), "{np}");
    // The Safe's SPIRE registration federates with the same domains, so its agent delivers their bundles.
    let id = find(&objs, "ClusterSPIFFEID", "vsecm-system-aegis-safe");
    assert_eq!(id["spec"]["federatesWith"], serde_json::json!(["b.example.org"]), "{id}");
    let text = find(&objs, "ConfigMap", "aegis-policies")["data"]["policies.json"].as_str().unwrap().to_owned();
    let docs: Vec<aegis_core::policy::PolicyDoc> = serde_json::from_str(&text).unwrap();
    assert_eq!(docs.len(), 2);
    for d in &docs {
        aegis_core::policy::Policy::from_doc(d).unwrap();
    }
    let defaults = args(container(find(&render(None), "StatefulSet", "vsecm-safe")));
    assert!(!defaults.iter().any(|f| f.starts_with("--policy-file")), "{defaults:?}");
    assert!(defaults.contains(&"--builtin-policies=workload,sentinel".to_owned()), "{defaults:?}");
    assert!(!defaults.iter().any(|f| f.starts_with("--federate-with")), "no federation by default: {defaults:?}");
    assert!(!defaults.iter().any(|f| f.starts_with("--replicat")), "no replication by default: {defaults:?}");

    // The default NetworkPolicy: the Sentinel and labelled clients on 8443, nothing on 8081.
    let objs = render(None);
    let np = find(&objs, "NetworkPolicy", "vsecm-safe");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["ports"][0]["port"], 8443);
    assert_eq!(ingress[0]["from"][1]["podSelector"]["matchExpressions"][0]["key"], "aegis.dev/client");
}

#[test]
fn the_ha_mode_runs_replicas_on_postgresql_and_lets_a_drain_evict_one() {
    let objs = render(Some("ha-postgres-values.yaml"));
    let safe = find(&objs, "StatefulSet", "vsecm-safe");
    assert_eq!(safe["spec"]["replicas"], 3);
    let c = container(safe);
    let a = args(c);
    for want in [
        "--store-url=postgres://aegis@postgres.databases.svc.cluster.local:5432/aegis?sslmode=require",
        "--store-password-file=/var/run/aegis/db/password",
        "--store-ca-file=/var/run/aegis/db-ca/ca.crt",
        "--root-key-store=kubernetes",
    ] {
        assert!(a.contains(&want.to_owned()), "{want} not in {a:?}");
    }
    assert!(!a.iter().any(|x| x.contains("password=") || x.contains(":secret@")), "no password in the arguments");
    let vols = safe["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(vols.iter().any(|v| v["secret"]["secretName"] == "aegis-db"), "{vols:?}");
    assert_eq!(find(&objs, "PodDisruptionBudget", "vsecm-safe")["spec"]["maxUnavailable"], 1);
    // One Safe keeps its budget (0 unless set): nothing changes for it.
    assert_eq!(find(&render(None), "PodDisruptionBudget", "vsecm-safe")["spec"]["maxUnavailable"], 0);

    // Refused: replicas without PostgreSQL, or with a root key that is not shared.
    let ha = chart_dir().join("ci/ha-postgres-values.yaml").display().to_string();
    let with = |sets: &[&str]| {
        let mut args = vec!["-f".to_owned(), ha.clone()];
        for s in sets {
            args.push("--set".to_owned());
            args.push((*s).to_owned());
        }
        template(&args).unwrap_err()
    };
    assert!(with(&["safe.postgres.enabled=false"]).contains("needs safe.postgres.enabled"));
    assert!(with(&["safe.rootKey.store=file"]).contains("safe.rootKey.store=kubernetes"));
    // With k8s: copies: one instance name for every replica (one of them writes the copies at a time).
    let text = template(&["-f".to_owned(), ha.clone(), "--set".to_owned(), "k8sSecrets.enabled=true".to_owned()])
        .expect("replicas with k8s: copies render");
    let objs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let objs: Vec<Value> = objs.into_iter().filter(|d| !d.is_null()).collect();
    let a = args(container(find(&objs, "StatefulSet", "vsecm-safe")));
    assert!(a.iter().any(|x| x.starts_with("--k8s-instance=") && x.ends_with("/aegis")), "{a:?}");
    assert!(with(&["safe.postgres.url=postgres://aegis:pw@db/aegis"]).contains("url"));
}

#[test]
fn scheduled_backups_run_as_the_sentinel_into_their_volume_and_keep_the_newest() {
    assert!(!render(None).iter().any(|o| kind(o) == "CronJob"), "backups are off by default");
    let objs = render(Some("backup-values.yaml"));
    let cron = find(&objs, "CronJob", "aegis-backup");
    assert_eq!(cron["spec"]["schedule"], "0 */6 * * *");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    let a = args(c);
    for want in ["backup", "--out-dir=/backups", "--keep=14", "--timeout-secs=1800"] {
        assert!(a.contains(&want.to_owned()), "{want} not in {a:?}");
    }
    assert!(a.iter().any(|x| x.starts_with("--recipient=age1ql3z")), "{a:?}");
    assert_eq!(env(c)["SPIFFE_ENDPOINT_SOCKET"], "unix:///spire-agent-socket/spire-agent.sock");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    // SPIRE gives the job the Sentinel's SPIFFE ID: its ServiceAccount and the labels the Sentinel's
    // ClusterSPIFFEID selects on.
    let sentinel_id = find(&objs, "ClusterSPIFFEID", "vsecm-system-aegis-sentinel");
    for (k, v) in sentinel_id["spec"]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "label {k}");
    }
    assert_eq!(pod["spec"]["serviceAccountName"], "vsecm-sentinel");
    let pvc = find(&objs, "PersistentVolumeClaim", "aegis-backups");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(pod["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"], "aegis-backups");

    // An existing claim: no PVC of the chart's. Without a sentinel, or a bad recipient: refused.
    let claim = template(&[
        "-f".to_owned(),
        chart_dir().join("ci/backup-values.yaml").display().to_string(),
        "--set".to_owned(),
        "backup.persistence.existingClaim=nightly".to_owned(),
    ])
    .unwrap();
    assert!(!claim.contains("kind: PersistentVolumeClaim") && claim.contains("claimName: nightly"));
    let e = template(&[
        "--set".to_owned(),
        "backup.enabled=true".to_owned(),
        "--set".to_owned(),
        "sentinel.enabled=false".to_owned(),
    ])
    .unwrap_err();
    assert!(e.contains("needs sentinel.enabled"), "{e}");
    let e = template(&[
        "--set".to_owned(),
        "backup.enabled=true".to_owned(),
        "--set".to_owned(),
        "backup.recipients[0]=age1nope".to_owned(),
    ])
    .unwrap_err();
    assert!(e.contains("recipients"), "{e}");
}

/// The SPIFFE ID SPIRE's controller manager makes from a template for one pod.
fn instantiate(template: &str, namespace: &str, sa: &str, pod: &str) -> SpiffeId {
    let id = template
        .replace("{{ .PodMeta.Namespace }}", namespace)
        .replace("{{ .PodSpec.ServiceAccountName }}", sa)
        .replace("{{ .PodMeta.Name }}", pod);
    assert!(!id.contains("{{"), "unexpected placeholder left in {id}");
    SpiffeId::parse(&id).unwrap()
}

#[test]
fn the_safes_role_rules_accept_exactly_the_ids_the_chart_registers() {
    for values in [None, Some("custom-spiffe-values.yaml")] {
        let objs = render(values);
        let e = env(container(find(&objs, "StatefulSet", "vsecm-safe")));
        let sentinel_env: BTreeMap<_, _> = env(container(find(&objs, "Deployment", "vsecm-sentinel")))
            .into_iter()
            .filter(|(k, _)| k != "VSECM_SAFE_ENDPOINT_URL")
            .collect();
        assert_eq!(e, sentinel_env, "the Safe and the Sentinel read the same rules");
        let rules = RoleRules::from_lookup(|k| e.get(k).cloned()).unwrap_or_else(|err| panic!("{values:?}: {err}"));
        let template =
            |n: &str| find(&objs, "ClusterSPIFFEID", n)["spec"]["spiffeIDTemplate"].as_str().unwrap().to_owned();
        let safe = template("vsecm-system-aegis-safe");
        let sentinel = template("vsecm-system-aegis-sentinel");
        assert_eq!(rules.classify(&instantiate(&safe, NAMESPACE, "vsecm-safe", "vsecm-safe-0")), Role::Safe);
        assert_eq!(
            rules.classify(&instantiate(&sentinel, NAMESPACE, "vsecm-sentinel", "vsecm-sentinel-7d9-x2")),
            Role::Sentinel
        );
        // The Safe's template in another namespace or as another ServiceAccount is not the Safe.
        assert_ne!(rules.classify(&instantiate(&safe, "default", "vsecm-safe", "p")), Role::Safe);
        assert_ne!(rules.classify(&instantiate(&safe, NAMESPACE, "intruder", "p")), Role::Safe);
        assert_ne!(rules.classify(&instantiate(&sentinel, "default", "vsecm-sentinel", "p")), Role::Sentinel);

        // Workloads: each registered one is the workload with its own name.
        let registered: Vec<_> = objs.iter().filter(|o| name(o).contains("-workload-")).collect();
        assert_eq!(registered.len(), if values.is_some() { 2 } else { 0 });
        for w in registered {
            let t = w["spec"]["spiffeIDTemplate"].as_str().unwrap();
            let ns = w["spec"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str().unwrap();
            let wanted = w["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str().unwrap();
            match rules.classify(&instantiate(t, ns, "sa", "pod-1")) {
                Role::Workload(n) => assert_eq!(n.as_str(), wanted),
                other => panic!("{t} is {other:?}, not workload {wanted}"),
            }
        }
    }
    // The custom trust domain reaches the rules and the registrations.
    let objs = render(Some("custom-spiffe-values.yaml"));
    assert_eq!(env(container(find(&objs, "StatefulSet", "vsecm-safe")))["SPIFFE_TRUST_DOMAIN"], "example.org");
    let id = find(&objs, "ClusterSPIFFEID", "vsecm-system-aegis-workload-payments-billing");
    assert_eq!(
        id["spec"]["spiffeIDTemplate"],
        "spiffe://example.org/apps/billing/{{ .PodMeta.Namespace }}/{{ .PodSpec.ServiceAccountName }}/{{ .PodMeta.Name }}"
    );
    assert!(id["spec"].get("className").is_none());
    assert_eq!(id["spec"]["workloadSelectorTemplates"], serde_json::json!(["k8s:ns:payments", "k8s:sa:billing"]));
}

#[test]
fn typos_and_bad_values_are_refused_naming_the_field() {
    let cases: [(&str, &[&str]); 5] = [
        // A misspelt key (rootkey for rootKey) anywhere in the tree.
        ("safe:\n  rootkey:\n    store: file\n", &["rootkey"]),
        ("netwrokPolicy:\n  enabled: false\n", &["netwrokPolicy"]),
        // A value outside the allowed set.
        ("safe:\n  rootKey:\n    store: vault\n", &["store"]),
        // The Safe is a single writer.
        ("safe:\n  replicas: 3\n", &["replicas"]),
        // A template outside the trust domain.
        (
            "spire:\n  idTemplates:\n    safe: \"spiffe://other.org/safe/{{ .PodMeta.Name }}\"\n",
            &["spire.idTemplates.safe"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (yaml, words)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        let err = template(&["-f".to_owned(), f.display().to_string()])
            .err()
            .unwrap_or_else(|| panic!("helm template accepted bad values:\n{yaml}"));
        for w in *words {
            assert!(err.contains(w), "the error for\n{yaml}does not name {w}:\n{err}");
        }
    }
}

/// The `k8s:` instance name is unique per release (two Safes never remove each
/// other's Secrets), can be set, and the schema refuses names the Safe would refuse.
#[test]
fn the_k8s_instance_is_unique_per_release_and_can_be_set() {
    let instance_args = |objs: &[Value]| -> Vec<String> {
        args(container(find(objs, "StatefulSet", "vsecm-safe")))
            .into_iter()
            .filter(|a| a.starts_with("--k8s-instance"))
            .collect()
    };
    let k8s = chart_dir().join("ci/k8s-namespaces-values.yaml").display().to_string();
    assert_eq!(instance_args(&render(Some("k8s-namespaces-values.yaml"))), ["--k8s-instance=vsecm-system/aegis"]);
    assert_eq!(instance_args(&render(None)), Vec::<String>::new(), "no sync, no instance");
    let chart = chart_dir().display().to_string();
    let out = helm(&["template", "other", &chart, "--namespace", "team-b", "-f", &k8s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let objs: Vec<Value> = objs.into_iter().filter(|d| !d.is_null()).collect();
    assert_eq!(instance_args(&objs), ["--k8s-instance=team-b/other"]);
    let set = |v: &str| {
        template(&["-f".to_owned(), k8s.clone(), "--set-string".to_owned(), format!("k8sSecrets.instance={v}")])
    };
    let text = set("payments safe").unwrap();
    let objs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let objs: Vec<Value> = objs.into_iter().filter(|d| !d.is_null()).collect();
    assert_eq!(instance_args(&objs), ["--k8s-instance=payments safe"]);
    for bad in ["a\u{1b}[2Kb".to_owned(), "x".repeat(254)] {
        let err = set(&bad).err().unwrap_or_else(|| panic!("the schema accepted the instance {bad:?}"));
        assert!(err.contains("instance"), "{err}");
    }
}

/// Every pod spec of the rendered workloads with the kind and name of its owner.
fn pod_specs(objs: &[Value]) -> Vec<(String, &Value)> {
    objs.iter()
        .filter(|o| ["StatefulSet", "Deployment", "DaemonSet", "Job"].contains(&kind(o)))
        .map(|o| (format!("{} {}", kind(o), name(o)), &o["spec"]["template"]["spec"]))
        .collect()
}

#[test]
fn policy_every_container_is_hardened_and_no_role_grants_everything() {
    for (variant, values) in VARIANTS {
        let objs = render(values);
        let pods = pod_specs(&objs);
        assert_eq!(pods.len(), 2, "{variant}: the Safe and the Sentinel");
        for (owner, pod) in pods {
            let at = format!("{variant}: {owner}");
            for forbidden in ["hostNetwork", "hostPID", "hostIPC"] {
                assert!(pod.get(forbidden).is_none_or(|v| v == false), "{at}: {forbidden}");
            }
            for v in pod["volumes"].as_array().into_iter().flatten() {
                assert!(v.get("hostPath").is_none(), "{at}: hostPath volume {v}");
            }
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{at}");
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{at}");
            let token = pod["automountServiceAccountToken"].as_bool();
            assert!(token.is_some(), "{at}: automountServiceAccountToken must be explicit");
            let containers = pod["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(pod["initContainers"].as_array().into_iter().flatten());
            for c in containers {
                let at = format!("{at}, container {}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["runAsNonRoot"], true, "{at}");
                assert!(sc["runAsUser"].as_u64().is_some_and(|u| u > 0), "{at}: runAsUser");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
                assert!(sc.get("privileged").is_none_or(|v| v == false), "{at}: privileged");
                assert!(sc["capabilities"].get("add").is_none(), "{at}: added capabilities");
                assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{at}");
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{at}");
                for r in ["requests", "limits"] {
                    assert!(c["resources"][r]["memory"].is_string(), "{at}: resources.{r}.memory");
                }
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{at}: resources.requests.cpu");
            }
        }
        for o in objs.iter().filter(|o| kind(o) == "Role" || kind(o) == "ClusterRole") {
            for rule in o["rules"].as_array().unwrap() {
                for field in ["verbs", "resources", "apiGroups", "resourceNames"] {
                    for v in rule[field].as_array().into_iter().flatten() {
                        assert_ne!(v, "*", "{variant}: {} {} grants * in {field}", kind(o), name(o));
                    }
                }
                assert!(rule.get("nonResourceURLs").is_none(), "{variant}: {}", name(o));
                assert_eq!(
                    rule["resources"],
                    serde_json::json!(["secrets"]),
                    "{variant}: {} touches only Secrets",
                    name(o)
                );
            }
        }
        let cluster_wide = objs.iter().any(|o| kind(o) == "ClusterRole" || kind(o) == "ClusterRoleBinding");
        assert_eq!(cluster_wide, values == Some("k8s-all-namespaces-values.yaml"), "{variant}: ClusterRole");
    }
}

/// Server-side apply of one object as the admin, as a dry run (`dryRun=All`)
/// with strict field validation: nothing is stored, unknown fields are errors.
async fn dry_run_apply(cluster: &KubeCluster, obj: &Value) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let types = obj.types.clone().ok_or("no apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(&types).map_err(|e| e.to_string())?;
    let (resource, caps) = discovery::pinned_kind(&cluster.admin_client(), &gvk)
        .await
        .map_err(|e| format!("unknown kind {}/{}: {e}", types.api_version, types.kind))?;
    let name = obj.metadata.name.clone().ok_or("no name")?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
            Api::namespaced_with(cluster.admin_client(), &ns, &resource)
        }
        Scope::Cluster => Api::all_with(cluster.admin_client(), &resource),
    };
    let mut params = PatchParams::apply("aegis-helm-test").force().dry_run();
    params.field_validation = Some(ValidationDirective::Strict);
    api.patch(&name, &params, &Patch::Apply(&obj)).await.map(|_| ()).map_err(|e| format!("{} {name}: {e}", types.kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_manifest_is_accepted_by_the_api_server() {
    let cluster = KubeCluster::start().await;
    let crd = repo_root().join("crates/aegis/tests/fixtures/helm/clusterspiffeid-crd.yaml");
    cluster.apply_yaml(crd.to_str().unwrap()).await;
    // The namespaces the variants install into (dry runs need them to exist).
    for ns in [NAMESPACE, "payments", "billing"] {
        cluster.create_namespace(ns).await;
    }
    // The CRD is served once discovery lists it.
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", "ClusterSPIFFEID");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while discovery::pinned_kind(&cluster.admin_client(), &gvk).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the ClusterSPIFFEID CRD was not served within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let mut checked = 0;
    for (variant, values) in VARIANTS {
        for obj in render(values) {
            dry_run_apply(&cluster, &obj).await.unwrap_or_else(|e| panic!("{variant}: the API server refused {e}"));
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} objects checked");

    // The workload examples too.
    for example in ["sidecar.yaml", "init-container.yaml", "aegis-run.yaml", "k8s-secret-env.yaml"] {
        let text = std::fs::read_to_string(repo_root().join("examples").join(example)).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{example}: {e}"));
        for obj in docs.iter().filter(|d| !d.is_null()) {
            dry_run_apply(&cluster, obj)
                .await
                .unwrap_or_else(|e| panic!("examples/{example}: the API server refused {e}"));
        }
    }

    // The check can fail: a field the API does not know is refused.
    let mut bad = render(None).into_iter().find(|o| kind(o) == "ClusterSPIFFEID").unwrap();
    bad["spec"]["spiffeIdTemplate"] = Value::from("typo");
    let err = dry_run_apply(&cluster, &bad).await.expect_err("an unknown field was accepted");
    assert!(err.contains("spiffeIdTemplate"), "{err}");
    let mut bad = render(None).into_iter().find(|o| kind(o) == "StatefulSet").unwrap();
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = Value::from(true);
    let err = dry_run_apply(&cluster, &bad).await.expect_err("an unknown field was accepted");
    assert!(err.contains("runAsNonroot"), "{err}");
    // And nothing was stored by the dry runs.
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(cluster.admin_client(), NAMESPACE);
    assert!(sets.get_opt("vsecm-safe").await.unwrap().is_none(), "a dry run stored the StatefulSet");
}

/// The objects of one file in examples/.
fn example(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("examples/{file}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

#[test]
fn examples_are_hardened_and_their_ids_name_their_secrets() {
    let rules = RoleRules::vsecm_defaults();
    for (file, registered) in [
        ("sidecar.yaml", true),
        ("init-container.yaml", true),
        ("aegis-run.yaml", true),
        ("k8s-secret-env.yaml", false),
    ] {
        let objs = example(file);
        let deployment = objs.iter().find(|o| kind(o) == "Deployment").unwrap();
        let app = name(deployment);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{file}");
        let containers =
            pod["containers"].as_array().unwrap().iter().chain(pod["initContainers"].as_array().into_iter().flatten());
        for c in containers {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}: {}", c["name"]);
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}: {}", c["name"]);
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{file}: {}", c["name"]);
            assert!(c["resources"]["limits"]["memory"].is_string(), "{file}: {}", c["name"]);
        }
        // The ClusterSPIFFEID gives the pods (by label, namespace and ServiceAccount)
        // the SPIFFE ID of the workload named like the secret it reads.
        let ids: Vec<_> = objs.iter().filter(|o| kind(o) == "ClusterSPIFFEID").collect();
        assert_eq!(ids.len(), usize::from(registered), "{file}");
        for id in ids {
            let spec = &id["spec"];
            assert_eq!(spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"], app, "{file}");
            let sa = pod["serviceAccountName"].as_str().unwrap();
            assert_eq!(
                spec["workloadSelectorTemplates"],
                serde_json::json!(["k8s:ns:default".to_owned(), format!("k8s:sa:{sa}")])
            );
            let t = spec["spiffeIDTemplate"].as_str().unwrap();
            match rules.classify(&instantiate(t, "default", sa, "pod-1")) {
                Role::Workload(n) => assert_eq!(n.as_str(), app, "{file}"),
                other => panic!("{file}: {t} is {other:?}"),
            }
        }
        // Pods that talk to the Safe carry the label the chart's NetworkPolicy admits.
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels.get("aegis.dev/client").is_some(), registered, "{file}");
    }
}

/// A rendered pod's name, namespace and ServiceAccount (for `fieldRef`s).
struct PodMeta<'a> {
    name: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

/// A container's environment as the kubelet builds it: literal values and the
/// `fieldRef`s a pod can resolve without the API; anything else fails the test.
fn resolved_env(c: &Value, pod: &PodMeta) -> BTreeMap<String, String> {
    assert!(c.get("envFrom").is_none(), "container {}: envFrom is not supported by this test", c["name"]);
    let mut out = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let key = e["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = e.get("value") {
            v.as_str().unwrap_or_default().to_owned()
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.name.to_owned(),
                Some("metadata.namespace") => pod.namespace.to_owned(),
                Some("spec.serviceAccountName") => pod.service_account.to_owned(),
                _ => panic!("container {}: env {key} has a source this test cannot resolve: {e}", c["name"]),
            }
        };
        out.insert(key, value);
    }
    out
}

/// Pod paths and cluster addresses replaced by local ones (longest first).
#[derive(Default)]
struct Mapping(Vec<(String, String)>);

impl Mapping {
    fn add(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.0.push((from.into(), to.into()));
        self.0.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
    }

    fn apply(&self, s: &str) -> String {
        self.0.iter().fold(s.to_owned(), |acc, (from, to)| acc.replace(from, to))
    }
}

/// The image's entrypoint (the Dockerfile's ENTRYPOINT), where a container has no `command`.
const IMAGE_ENTRYPOINT: &str = "/usr/local/bin/aegis";

/// One rendered container run as a local process under `uid`: every volume
/// mount becomes a directory of the SPIRE world dir (the SPIRE agent's socket
/// mount holds a link to the test agent's socket), `/usr/local/bin/aegis` the
/// staged binary, and `mapping` the cluster addresses. Returns the command, the
/// mounted directories by mount path and the log file.
fn local_container(
    spire: &harness::Spire,
    label: &str,
    c: &Value,
    pod: &PodMeta,
    uid: u32,
    mapping: &mut Mapping,
) -> (Command, BTreeMap<String, PathBuf>, PathBuf) {
    let env = resolved_env(c, pod);
    let mut mounts = BTreeMap::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let path = m["mountPath"].as_str().unwrap().to_owned();
        let vol = m["name"].as_str().unwrap();
        let dir = if vol == "spire-agent-socket" {
            let dir = spire.dir.path().join(format!("{label}-{vol}"));
            std::fs::create_dir_all(&dir).unwrap();
            let sock = env.get("SPIFFE_ENDPOINT_SOCKET").map_or("unix:///spire-agent-socket/spire-agent.sock", |s| s);
            let rel = sock
                .strip_prefix("unix://")
                .and_then(|s| s.strip_prefix(&format!("{path}/")))
                .unwrap_or_else(|| panic!("{label}: SPIFFE_ENDPOINT_SOCKET {sock} is not in the mount {path}"));
            let agent = spire.socket();
            std::os::unix::fs::symlink(agent.trim_start_matches("unix://"), dir.join(rel)).unwrap();
            dir
        } else {
            spire.dir_for(&format!("{label}-{vol}"), uid)
        };
        mapping.add(path.clone(), dir.display().to_string());
        mounts.insert(path, dir);
    }
    let command: Vec<String> = c["command"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_else(|| vec![IMAGE_ENTRYPOINT.to_owned()]);
    assert_eq!(command, [IMAGE_ENTRYPOINT], "{label}: the image runs {IMAGE_ENTRYPOINT}");
    let args: Vec<String> =
        c["args"].as_array().into_iter().flatten().map(|a| mapping.apply(a.as_str().unwrap())).collect();
    let env: std::collections::HashMap<String, String> = env.into_iter().map(|(k, v)| (k, mapping.apply(&v))).collect();
    let log = spire.dir.path().join(format!("{label}.log"));
    let logf = std::fs::File::create(&log).unwrap();
    let mut cmd = spire.command_as(uid, "aegis", &env, &args.iter().map(String::as_str).collect::<Vec<_>>());
    cmd.stdout(logf.try_clone().unwrap()).stderr(logf);
    (cmd, mounts, log)
}

/// Registers `id` for processes of `uid` with the test's SPIRE server and
/// waits until the agent hands it out.
fn register(spire: &harness::Spire, id: &SpiffeId, uid: u32) {
    let parent = spire.env["SPIRE_AGENT_ID"].clone();
    let id = id.to_string();
    spire.server_ok(&[
        "entry",
        "create",
        "-parentID",
        &parent,
        "-spiffeID",
        &id,
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    spire.wait_svid(uid, &id);
}

fn log_tail(path: &Path) -> String {
    harness::tail(path, 60)
}

/// Kills a child process on drop (the test's processes end with the test).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The rendered chart is the truth for how the Safe and the Sentinel run: the
/// real `aegis` binary runs with exactly the rendered command, arguments and
/// environment (pod paths mapped to directories, the Service and listen
/// addresses to loopback ports, the in-cluster credentials replaced by a token
/// of the chart's ServiceAccount), with SPIFFE IDs from real SPIRE made from the
/// chart's ClusterSPIFFEID templates. The Safe creates its root key Secret
/// through the chart's Role, the Sentinel applies the init commands of the Secret
/// the chart mounts (projected as the chart's volume says), and a
/// workload with the sidecar settings of examples/sidecar.yaml receives its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_chart_runs_the_safe_the_sentinel_and_a_sidecar() {
    use harness::{BILLING_UID, SAFE_UID, SENTINEL_UID};
    let objs = render(None);
    let example_objs = example("sidecar.yaml");

    // The chart's ServiceAccounts, Role and RoleBinding, applied as rendered.
    let cluster = KubeCluster::start().await;
    cluster.create_namespace(NAMESPACE).await;
    for o in objs.iter().filter(|o| ["ServiceAccount", "Role", "RoleBinding"].contains(&kind(o))) {
        cluster.apply_yaml(&serde_json::to_string_pretty(o).unwrap()).await;
    }
    let safe_set = find(&objs, "StatefulSet", "vsecm-safe");
    let safe_pod = &safe_set["spec"]["template"]["spec"];
    let safe_sa = safe_pod["serviceAccountName"].as_str().unwrap();
    assert_eq!(safe_pod["automountServiceAccountToken"], true, "the Safe needs its token for the root key Secret");
    let kubeconfig = cluster.service_account_kubeconfig(NAMESPACE, safe_sa).await;

    // SPIRE with the IDs the chart's (and the example's) ClusterSPIFFEIDs give these pods.
    let spire = harness::Spire::start("helm-chart", &[]);
    let template = |objs: &[Value], n: &str| {
        find(objs, "ClusterSPIFFEID", n)["spec"]["spiffeIDTemplate"].as_str().unwrap().to_owned()
    };
    let sentinel_dep = find(&objs, "Deployment", "vsecm-sentinel");
    let sentinel_sa = sentinel_dep["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap();
    let workload_dep = find(&example_objs, "Deployment", "example");
    let workload_sa = workload_dep["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap();
    let workload_ns = workload_dep["metadata"]["namespace"].as_str().unwrap();
    let safe_meta = PodMeta { name: "vsecm-safe-0", namespace: NAMESPACE, service_account: safe_sa };
    let sentinel_meta =
        PodMeta { name: "vsecm-sentinel-6f9d8c7b5-x2k4q", namespace: NAMESPACE, service_account: sentinel_sa };
    let workload_meta =
        PodMeta { name: "example-7c5b9d4f6-p8r2t", namespace: workload_ns, service_account: workload_sa };
    for (t, meta, uid) in [
        (template(&objs, "vsecm-system-aegis-safe"), &safe_meta, SAFE_UID),
        (template(&objs, "vsecm-system-aegis-sentinel"), &sentinel_meta, SENTINEL_UID),
        (template(&example_objs, "example"), &workload_meta, BILLING_UID),
    ] {
        register(&spire, &instantiate(&t, meta.namespace, meta.service_account, meta.name), uid);
    }

    // The Safe: its listen ports on free loopback ports, the Service's address to them.
    let safe_c = container(safe_set);
    let mut safe_map = Mapping::default();
    let mut local_port = BTreeMap::new();
    for p in safe_c["ports"].as_array().unwrap() {
        let port = common::free_port();
        let container_port = p["containerPort"].as_u64().unwrap();
        safe_map.add(format!("0.0.0.0:{container_port}"), format!("127.0.0.1:{port}"));
        local_port.insert(p["name"].as_str().unwrap().to_owned(), port);
    }
    let (mut cmd, _, safe_log) = local_container(&spire, "safe", safe_c, &safe_meta, SAFE_UID, &mut safe_map);
    // In place of the in-cluster credentials: a token of the chart's ServiceAccount.
    let kube_dir = spire.dir_for("safe-kube", SAFE_UID);
    std::fs::copy(&kubeconfig, kube_dir.join("config")).unwrap();
    std::os::unix::fs::chown(kube_dir.join("config"), Some(SAFE_UID), Some(SAFE_UID)).unwrap();
    cmd.env("KUBECONFIG", kube_dir.join("config"));
    let mut safe = Running(cmd.spawn().unwrap());
    let health = local_port["health"];
    let start = std::time::Instant::now();
    while common::http_ok(health, "/readyz").is_none() {
        if let Some(status) = safe.0.try_wait().unwrap() {
            panic!("the Safe, run as the chart runs it, exited ({status}); log:\n{}", log_tail(&safe_log));
        }
        assert!(start.elapsed().as_secs() < 90, "the Safe was not ready within 90 s; log:\n{}", log_tail(&safe_log));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // It created its root key Secret through the chart's ServiceAccount and Role.
    let secret_name = args(safe_c)
        .iter()
        .find_map(|a| a.strip_prefix("--root-key-secret=").map(str::to_owned))
        .expect("the default values keep the root key in a Secret");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(cluster.admin_client(), NAMESPACE);
    let root = secrets.get_opt(&secret_name).await.unwrap().unwrap_or_else(|| panic!("no Secret {secret_name}"));
    assert!(root.data.unwrap_or_default().get("KEY_TXT").is_some_and(|k| !k.0.is_empty()), "KEY_TXT is empty");

    // Clients reach the Safe's Service at the Safe's local port.
    let svc = find(&objs, "Service", safe_set["spec"]["serviceName"].as_str().unwrap());
    let svc_port = &svc["spec"]["ports"][0];
    let svc_host = format!("{}.{NAMESPACE}.svc.cluster.local:{}", name(svc), svc_port["port"]);
    let target = local_port[svc_port["targetPort"].as_str().unwrap()];
    let client_map = || {
        let mut m = Mapping::default();
        m.add(svc_host.clone(), format!("127.0.0.1:{target}"));
        m
    };

    // The workload of examples/sidecar.yaml: its sidecar starts before its secret exists.
    let sidecar_c = workload_dep["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sidecar")
        .expect("examples/sidecar.yaml has a container named sidecar");
    let mut m = client_map();
    let (mut cmd, mounts, sidecar_log) =
        local_container(&spire, "sidecar", sidecar_c, &workload_meta, BILLING_UID, &mut m);
    let _sidecar = Running(cmd.spawn().unwrap());
    let secrets_file = m.apply(&resolved_env(sidecar_c, &workload_meta)["VSECM_SIDECAR_SECRETS_PATH"]);
    assert!(
        mounts.values().any(|d| secrets_file.starts_with(&d.display().to_string())),
        "{secrets_file} is not on a volume"
    );

    // The Sentinel with VSecM's init-command file where the chart mounts it.
    let sentinel_c = container(sentinel_dep);
    let mut m = client_map();
    let (mut cmd, mounts, sentinel_log) =
        local_container(&spire, "sentinel", sentinel_c, &sentinel_meta, SENTINEL_UID, &mut m);
    let value = r#"{"username":"admin","password":"chart-truth"}"#;
    let file = args(sentinel_c)
        .iter()
        .find_map(|a| a.strip_prefix("--file=").map(|f| m.apply(f)))
        .expect("the Sentinel reads an init-command file");
    assert!(mounts.values().any(|d| file.starts_with(&d.display().to_string())), "{file} is not on a volume");
    // The init commands in the Secret the chart mounts, projected as the kubelet does.
    let mount = sentinel_c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| file.starts_with(&mounts[v["mountPath"].as_str().unwrap()].display().to_string()))
        .unwrap();
    let volume = sentinel_dep["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let init_secret = volume["secret"]["secretName"].as_str().expect("the init commands come from a Secret");
    cluster
        .apply_yaml(
            &serde_json::to_string_pretty(&serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": init_secret, "namespace": NAMESPACE},
                "stringData": {"data": format!("w:example\ns:{value}\n--\n")},
            }))
            .unwrap(),
        )
        .await;
    let stored = secrets.get(init_secret).await.unwrap().data.unwrap_or_default();
    let dir = &mounts[mount["mountPath"].as_str().unwrap()];
    for item in volume["secret"]["items"].as_array().unwrap() {
        let key = item["key"].as_str().unwrap();
        let data = stored.get(key).unwrap_or_else(|| panic!("Secret {init_secret} has no key {key}"));
        let path = dir.join(item["path"].as_str().unwrap());
        std::fs::write(&path, &data.0).unwrap();
        std::os::unix::fs::chown(&path, Some(SENTINEL_UID), Some(SENTINEL_UID)).unwrap();
    }
    assert!(Path::new(&file).is_file(), "the Secret's items do not put a file at {file}");
    let mut sentinel = Running(cmd.spawn().unwrap());

    // The secret reaches the workload's file.
    let start = std::time::Instant::now();
    loop {
        if std::fs::read_to_string(&secrets_file).is_ok_and(|s| s == value) {
            break;
        }
        if let Some(status) = sentinel.0.try_wait().unwrap() {
            panic!(
                "the Sentinel exited ({status}); log:\n{}\nSafe log:\n{}",
                log_tail(&sentinel_log),
                log_tail(&safe_log)
            );
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "the workload's sidecar did not receive its secret within 60 s\n---- sidecar\n{}\n---- sentinel\n{}\n---- Safe\n{}",
            log_tail(&sidecar_log),
            log_tail(&sentinel_log),
            log_tail(&safe_log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The Sentinel stays up (for `kubectl exec`), the Safe too.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(sentinel.0.try_wait().unwrap().is_none(), "the Sentinel exited; log:\n{}", log_tail(&sentinel_log));
    assert!(safe.0.try_wait().unwrap().is_none(), "the Safe exited; log:\n{}", log_tail(&safe_log));
}
