//! Kubernetes harness: a real etcd, kube-apiserver and kube-controller-manager
//! (v1.37.2, from `scripts/build-kube.sh`) on free loopback ports in a temp dir.
//!
//! Everything speaks TLS with certificates from one throwaway CA: etcd requires a
//! client certificate (the API server's), the API server serves 127.0.0.1 and
//! authenticates client certificates (the admin is `O=system:masters`) and
//! ServiceAccount tokens (signed with a key of this cluster, minted through the
//! TokenRequest API); authorization is RBAC, with the bootstrap roles the API
//! server creates. The controller manager runs the ServiceAccount, token,
//! namespace and ClusterRole-aggregation controllers, so a new namespace gets its
//! `default` ServiceAccount and a deleted one is emptied.
//!
//! The binaries come from `AEGIS_KUBE_BIN_DIR`, else from the last line of
//! `scripts/build-kube.sh` (which builds once into the cache). There is no skip:
//! without them the test fails and says how to get them.
//!
//! Every call is async (the kube client needs a runtime); `Drop` kills the API
//! server, the controller manager and then etcd.
//!
//! This module is `common::kube`: a test file that glob-imports `common::*` must
//! name the kube crate `::kube` (e.g. `use ::kube::Api;`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ::kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use ::kube::core::GroupVersionKind;
use ::kube::discovery::{self, Scope};
use ::kube::Client;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::common::{env_or_build, free_port, tail};

/// How long the API server may take to report ready (it is about 3 s here).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime of the ServiceAccount tokens minted for kubeconfigs.
pub const TOKEN_TTL_SECONDS: i64 = 3600;
/// Issuer (and audience) of this cluster's ServiceAccount tokens.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The directory with `etcd`, `kube-apiserver` and `kube-controller-manager`:
/// `AEGIS_KUBE_BIN_DIR` if set, else what `scripts/build-kube.sh` prints last
/// (instant when cached; about 11 minutes on 2 cores the first time). Panics with
/// what to do when neither works: these tests never skip.
pub fn kube_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = env_or_build(
            "AEGIS_KUBE_BIN_DIR",
            "scripts/build-kube.sh",
            "the Kubernetes binaries are missing; these tests need etcd, kube-apiserver and \
             kube-controller-manager: run scripts/build-kube.sh (needs Go and the Go module proxy) or set \
             AEGIS_KUBE_BIN_DIR to a directory with them",
        );
        for b in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            assert!(
                dir.join(b).is_file(),
                "{} is missing: the Kubernetes tests need it (run scripts/build-kube.sh or fix AEGIS_KUBE_BIN_DIR)",
                dir.join(b).display()
            );
        }
        dir
    })
}

/// A certificate and its key, PEM.
struct Pair {
    cert: String,
    key: String,
}

/// The cluster's throwaway CA.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn("aegis-test-kubernetes-ca", None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for `cn` (organisation `org`), serving 127.0.0.1/localhost when `server`.
    fn issue(&self, cn: &str, org: Option<&str>, server: bool) -> Pair {
        let sans = if server { vec!["127.0.0.1".to_owned(), "localhost".to_owned()] } else { Vec::new() };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = dn(cn, org);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn write_private(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    f.write_all(contents.as_bytes()).unwrap();
}

/// A kubeconfig for `server` trusting `ca_pem`, with `user` (YAML lines under `user:`).
fn kubeconfig(server: &str, ca_pem: &str, user_name: &str, user: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: aegis-test\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user_name}\n  user:\n{user}contexts:\n- name: \
         {user_name}@aegis-test\n  context:\n    cluster: aegis-test\n    user: {user_name}\ncurrent-context: \
         {user_name}@aegis-test\n"
    )
}

/// A kube client from a kubeconfig file, through the same code the Safe uses.
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    aegis_kube::connect(Some(path)).await.unwrap_or_else(|e| panic!("client from {}: {e}", path.display()))
}

/// A running cluster: etcd, kube-apiserver and kube-controller-manager.
pub struct KubeCluster {
    /// Certificates, keys, kubeconfigs, etcd data and logs (`*.log`).
    pub dir: tempfile::TempDir,
    /// The API server's port on 127.0.0.1.
    pub port: u16,
    /// etcd's client port on 127.0.0.1.
    pub etcd_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    apiserver_starts: usize,
    admin: Client,
}

impl KubeCluster {
    /// Starts etcd, the API server (awaits `/readyz`) and the controller manager.
    pub async fn start() -> Self {
        let bin = kube_bin_dir();
        let dir = tempfile::Builder::new().prefix("aegis-kube-").tempdir().unwrap();
        let d = dir.path();
        let ca = Ca::new();
        fs::write(d.join("ca.crt"), &ca.cert_pem).unwrap();
        let etcd_srv = ca.issue("etcd", None, true);
        let apiserver = ca.issue("kube-apiserver", None, true);
        let etcd_client = ca.issue("kube-apiserver-etcd-client", None, false);
        let admin = ca.issue("aegis-test-admin", Some("system:masters"), false);
        for (name, pair) in
            [("etcd", &etcd_srv), ("apiserver", &apiserver), ("etcd-client", &etcd_client), ("admin", &admin)]
        {
            fs::write(d.join(format!("{name}.crt")), &pair.cert).unwrap();
            write_private(&d.join(format!("{name}.key")), &pair.key);
        }
        // The ServiceAccount token signing key (ES256); the API server derives the
        // verification key from it.
        let sa_key = KeyPair::generate().unwrap();
        write_private(&d.join("sa.key"), &sa_key.serialize_pem());
        // The API server reads verification keys as public keys (or RSA/EC
        // private keys), not as the PKCS#8 private key above.
        fs::write(d.join("sa.pub"), sa_key.public_key_pem()).unwrap();

        let port = free_port();
        let etcd_port = free_port();
        let server = format!("https://127.0.0.1:{port}");
        let user = format!(
            "    client-certificate: {}\n    client-key: {}\n",
            d.join("admin.crt").display(),
            d.join("admin.key").display()
        );
        write_private(&d.join("admin.kubeconfig"), &kubeconfig(&server, &ca.cert_pem, "admin", &user));

        let etcd = start_etcd(bin, d, etcd_port);
        let admin_client = client_from_kubeconfig(&d.join("admin.kubeconfig")).await;
        let mut cluster = Self {
            dir,
            port,
            etcd_port,
            etcd: Some(etcd),
            apiserver: None,
            controller_manager: None,
            apiserver_starts: 0,
            admin: admin_client,
        };
        cluster.start_apiserver().await;
        cluster.controller_manager = Some(cluster.spawn_controller_manager());
        cluster
    }

    /// The admin's kubeconfig (client certificate, `O=system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A client acting as the admin.
    pub fn admin_client(&self) -> Client {
        self.admin.clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the API server's certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Creates namespace `name` (no error if it exists).
    pub async fn create_namespace(&self, name: &str) {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap();
        match Api::<Namespace>::all(self.admin_client()).create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(::kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create namespace {name}: {e}"),
        }
    }

    /// Waits until ServiceAccount `namespace/name` exists (e.g. `default`, made by
    /// the controller manager).
    pub async fn wait_service_account(&self, namespace: &str, name: &str, timeout: Duration) -> ServiceAccount {
        let api = Api::<ServiceAccount>::namespaced(self.admin_client(), namespace);
        let start = Instant::now();
        loop {
            match api.get_opt(name).await {
                Ok(Some(sa)) => return sa,
                Ok(None) => {}
                Err(e) => eprintln!("get serviceaccount {namespace}/{name}: {e}"),
            }
            assert!(
                start.elapsed() < timeout,
                "ServiceAccount {namespace}/{name} did not appear within {timeout:?}; controller manager log:\n{}",
                tail(&self.dir.path().join("kube-controller-manager.log"), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates ServiceAccount `namespace/name` (and the namespace) unless it
    /// exists, mints a token for it through the TokenRequest API and writes a
    /// kubeconfig with that bearer token. Returns the kubeconfig's path.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        self.create_namespace(namespace).await;
        let api = Api::<ServiceAccount>::namespaced(self.admin_client(), namespace);
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}
        }))
        .unwrap();
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(::kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create serviceaccount {namespace}/{name}: {e}"),
        }
        self.wait_service_account(namespace, name, Duration::from_secs(10)).await;
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(TOKEN_TTL_SECONDS), ..Default::default() },
            ..Default::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
            .status
            .unwrap_or_else(|| panic!("TokenRequest for {namespace}/{name} returned no status"))
            .token;
        let path = self.dir.path().join(format!("sa-{namespace}-{name}.kubeconfig"));
        let user_name = format!("system:serviceaccount:{namespace}:{name}");
        let config = kubeconfig(
            &self.server_url(),
            &fs::read_to_string(self.ca_file()).unwrap(),
            &user_name,
            &format!("    token: {token}\n"),
        );
        write_private(&path, &config);
        path
    }

    /// Creates or updates every object of a multi-document YAML (a path to a
    /// file, or the YAML itself) with server-side apply as the admin. Kinds are
    /// resolved through discovery, so any built-in kind works; the namespaces of
    /// namespaced objects are created when missing.
    pub async fn apply_yaml(&self, path_or_yaml: &str) {
        let text = if !path_or_yaml.contains('\n') && Path::new(path_or_yaml).is_file() {
            fs::read_to_string(path_or_yaml).unwrap()
        } else {
            path_or_yaml.to_owned()
        };
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("apply_yaml: not valid YAML: {e}"));
        let params = PatchParams::apply("aegis-test").force();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let obj: DynamicObject =
                serde_json::from_value(doc).unwrap_or_else(|e| panic!("apply_yaml: not a Kubernetes object: {e}"));
            let types = obj.types.clone().unwrap_or_else(|| panic!("apply_yaml: an object lacks apiVersion/kind"));
            let gvk = GroupVersionKind::try_from(&types).unwrap();
            let (resource, caps) = discovery::pinned_kind(&self.admin_client(), &gvk)
                .await
                .unwrap_or_else(|e| panic!("apply_yaml: unknown kind {}/{}: {e}", types.api_version, types.kind));
            let name = obj.metadata.name.clone().unwrap_or_else(|| panic!("apply_yaml: a {} has no name", types.kind));
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    let ns = obj.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
                    self.create_namespace(&ns).await;
                    Api::namespaced_with(self.admin_client(), &ns, &resource)
                }
                Scope::Cluster => Api::all_with(self.admin_client(), &resource),
            };
            api.patch(&name, &params, &Patch::Apply(&obj))
                .await
                .unwrap_or_else(|e| panic!("apply_yaml: apply {} {name}: {e}", types.kind));
        }
    }

    /// Kills the API server (etcd and the controller manager keep running), to
    /// test an outage. Idempotent.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the API server on the same port with the same etcd and awaits
    /// `/readyz`. Panics (with its log) if it does not get ready.
    pub async fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "start_apiserver: the API server is already running");
        self.apiserver_starts += 1;
        let log = self.dir.path().join(format!("kube-apiserver.{}.log", self.apiserver_starts));
        let mut child = self.spawn_apiserver(&log);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("kube-apiserver exited during start-up ({status}); log {}:\n{}", log.display(), tail(&log, 40));
            }
            if self.ready().await {
                break;
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                panic!("kube-apiserver not ready after {READY_TIMEOUT:?}; log {}:\n{}", log.display(), tail(&log, 40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("kube-apiserver ready on port {} after {:.1}s", self.port, start.elapsed().as_secs_f64());
        self.apiserver = Some(child);
    }

    /// Whether `/readyz` answers `ok` now.
    pub async fn ready(&self) -> bool {
        let req = hyper::Request::get("/readyz").body(Vec::new()).unwrap();
        let probe = self.admin.request_text(req);
        matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Ok(body)) if body.trim() == "ok")
    }

    fn spawn_apiserver(&self, log: &Path) -> Child {
        let d = self.dir.path();
        let p = |f: &str| d.join(f).display().to_string();
        let args = vec![
            format!("--etcd-servers=https://127.0.0.1:{}", self.etcd_port),
            format!("--etcd-cafile={}", p("ca.crt")),
            format!("--etcd-certfile={}", p("etcd-client.crt")),
            format!("--etcd-keyfile={}", p("etcd-client.key")),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", self.port),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--cert-dir={}", p("apiserver-certs")),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-account-issuer={SA_ISSUER}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/24".to_owned(),
            // On loopback the default reconciler would publish 127.0.0.1 as the
            // `kubernetes` Service's endpoint, which the API server refuses.
            "--endpoint-reconciler-type=none".to_owned(),
            "--v=1".to_owned(),
        ];
        spawn(&kube_bin_dir().join("kube-apiserver"), &args, log)
    }

    fn spawn_controller_manager(&self) -> Child {
        let d = self.dir.path();
        let p = |f: &str| d.join(f).display().to_string();
        let args = vec![
            format!("--kubeconfig={}", p("admin.kubeconfig")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--use-service-account-credentials=true".to_owned(),
            "--controllers=serviceaccount-controller,serviceaccount-token-controller,namespace-controller,\
             clusterrole-aggregation-controller"
                .to_owned(),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", free_port()),
            format!("--cert-dir={}", p("controller-manager-certs")),
            "--v=1".to_owned(),
        ];
        spawn(&kube_bin_dir().join("kube-controller-manager"), &args, &d.join("kube-controller-manager.log"))
    }
}

fn start_etcd(bin: &Path, d: &Path, port: u16) -> Child {
    let peer = free_port();
    let p = |f: &str| d.join(f).display().to_string();
    let args = vec![
        "--name=aegis-test".to_owned(),
        format!("--data-dir={}", p("etcd-data")),
        format!("--listen-client-urls=https://127.0.0.1:{port}"),
        format!("--advertise-client-urls=https://127.0.0.1:{port}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=aegis-test=http://127.0.0.1:{peer}"),
        format!("--cert-file={}", p("etcd.crt")),
        format!("--key-file={}", p("etcd.key")),
        format!("--trusted-ca-file={}", p("ca.crt")),
        "--client-cert-auth=true".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    // The API server retries etcd until it answers: no need to wait here.
    spawn(&bin.join("etcd"), &args, &d.join("etcd.log"))
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let out = fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // The API server first (it writes to etcd), etcd last.
        for child in [self.apiserver.take(), self.controller_manager.take(), self.etcd.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
