//! `aegis dev`: a Safe with a throw-away local CA, for one machine.
//!
//! Layout of the data directory:
//! `ca/` (the dev CA), `svid/<name>/` (issued SVIDs), `root.key`, `data/`
//! (encrypted records), `env` (exports for the admin), `safe-url`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aegis_core::roles::RoleRules;
use aegis_core::SpiffeId;
use aegis_identity::devca::DevCa;
use aegis_identity::{FileSource, SvidPaths, FILE_POLL_INTERVAL};
use clap::{Args, Subcommand};

use crate::exit::{CliError, CONFIG};
use crate::serve::server::{self as server, settings, ServerArgs};

/// `aegis dev` arguments.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the dev CA, SVIDs, root key and records live.
    #[arg(long, global = true, env = "AEGIS_DEV_DATA_DIR", default_value = "./.aegis-dev")]
    data_dir: PathBuf,
    /// Trust domain of the dev CA.
    #[arg(long, global = true, env = "SPIFFE_TRUST_DOMAIN", default_value = "vsecm.com")]
    trust_domain: String,
    /// mTLS API address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], server::DEFAULT_TLS_PORT)))]
    listen: SocketAddr,
    /// Health and metrics address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], server::DEFAULT_HEALTH_PORT)))]
    health_listen: SocketAddr,
    /// Longest a request may take, in milliseconds.
    #[arg(long, env = "AEGIS_REQUEST_TIMEOUT_MS", default_value_t = server::DEFAULT_REQUEST_TIMEOUT_MS)]
    request_timeout_ms: u64,
    /// The root key file (default: DATA_DIR/root.key). Dev Safes sharing a
    /// database (--store-url) share one file, as replicas share one Kubernetes Secret.
    #[arg(long, value_name = "FILE")]
    root_key_file: Option<PathBuf>,
    /// Largest backup file a restore or a check reads, in bytes.
    #[arg(long, env = "AEGIS_MAX_RESTORE_BYTES", default_value_t = server::DEFAULT_MAX_RESTORE_BYTES)]
    max_restore_bytes: u64,
    /// The template budget of the dev Safe.
    #[command(flatten)]
    templates: server::TemplateArgs,
    /// Connection limits and idle deadline of the dev Safe.
    #[command(flatten)]
    limits: crate::serve::server::LimitArgs,
    /// `k8s:` secrets as Kubernetes Secrets.
    #[command(flatten)]
    kube: crate::serve::kube::KubeArgs,
    /// Where the dev Safe's sealed records live (default: its data directory).
    #[command(flatten)]
    store: crate::serve::adapters::StoreArgs,
    /// The audit trail of the dev Safe (default: DATA_DIR/data/audit/audit.log).
    #[command(flatten)]
    audit: server::AuditArgs,
    /// Policies of the dev Safe: built-ins, a policy file, request rates (docs/POLICIES.md).
    #[command(flatten)]
    policies: crate::serve::policies::PolicyArgs,
    /// Replication to and from other Safes (docs/REPLICATION.md); replicas of a dev Safe take
    /// SVIDs of its dev CA (`aegis dev svid --workload NAME --spiffe-id ID`).
    #[command(flatten)]
    replication: crate::serve::replication::ReplicationArgs,
    #[command(subcommand)]
    cmd: Option<DevCmd>,
}

#[derive(Subcommand, Debug)]
enum DevCmd {
    /// Issue an SVID for a workload and print the `export` lines that act as it.
    Svid {
        /// Workload name (VSecM scheme: spiffe://TD/workload/NAME/ns/NS/sa/NAME/n/NAME-0).
        #[arg(long)]
        workload: String,
        /// Namespace in the SPIFFE ID.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Use this exact SPIFFE ID instead.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 24 * 7)]
        ttl_hours: u64,
        /// Directory to write svid.pem, svid.key and bundle.pem (default DATA_DIR/svid/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

impl DevArgs {
    /// Whether this runs the dev Safe (not `aegis dev svid`).
    pub fn serves(&self) -> bool {
        self.cmd.is_none()
    }
}

const DEV_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn cfg_err(e: impl std::fmt::Display) -> CliError {
    CliError::new(CONFIG, e.to_string())
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn issue(ca: &DevCa, id: &str, ttl: Duration, dir: &Path) -> Result<SvidPaths, CliError> {
    let id = SpiffeId::parse(id).map_err(cfg_err)?;
    ca.issue(&id, ttl).map_err(cfg_err)?.write_files(dir).map_err(cfg_err)
}

fn exports(url: &str, td: &str, p: &SvidPaths) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "export AEGIS_SAFE_URL={url}");
    let _ = writeln!(s, "export VSECM_SAFE_ENDPOINT_URL={url}/");
    let _ = writeln!(s, "export SPIFFE_TRUST_DOMAIN={td}");
    let _ = writeln!(s, "export AEGIS_SVID_CERT={}", quote(&abs(&p.cert)));
    let _ = writeln!(s, "export AEGIS_SVID_KEY={}", quote(&abs(&p.key)));
    let _ = writeln!(s, "export AEGIS_SVID_BUNDLE={}", quote(&abs(&p.bundle)));
    s
}

/// `aegis dev` and `aegis dev svid`.
pub async fn run(a: DevArgs) -> Result<(), CliError> {
    let ca = DevCa::load_or_create(&a.data_dir.join("ca"), &a.trust_domain).map_err(cfg_err)?;
    if let Some(DevCmd::Svid { workload, namespace, spiffe_id, ttl_hours, out }) = a.cmd {
        let id = spiffe_id.unwrap_or_else(|| RoleRules::dev_spiffe_id(&a.trust_domain, &workload, &namespace));
        let dir = out.unwrap_or_else(|| a.data_dir.join("svid").join(&workload));
        let paths = issue(&ca, &id, Duration::from_secs(ttl_hours.max(1) * 3600), &dir)?;
        let url =
            std::fs::read_to_string(a.data_dir.join("safe-url")).unwrap_or_else(|_| format!("https://{}", a.listen));
        print!("# acts as {id}\n{}", exports(url.trim(), &a.trust_domain, &paths));
        return Ok(());
    }
    let td = a.trust_domain.as_str();
    let safe = issue(
        &ca,
        &RoleRules::dev_spiffe_id(td, "vsecm-safe", "vsecm-system"),
        DEV_TTL,
        &a.data_dir.join("svid/vsecm-safe"),
    )?;
    let sentinel_id = RoleRules::dev_spiffe_id(td, "vsecm-sentinel", "vsecm-system");
    let sentinel = issue(&ca, &sentinel_id, DEV_TTL, &a.data_dir.join("svid/vsecm-sentinel"))?;
    let url = format!("https://{}", a.listen);
    let env = format!(
        "# Source this file to act as the Aegis admin (Sentinel, {sentinel_id}).\n# Development identity from a throw-away local CA: never use it in production.\n{}",
        exports(&url, td, &sentinel)
    );
    std::fs::write(a.data_dir.join("env"), env).map_err(cfg_err)?;
    std::fs::write(a.data_dir.join("safe-url"), &url).map_err(cfg_err)?;
    let server = ServerArgs {
        listen: Some(a.listen),
        health_listen: Some(a.health_listen),
        data_dir: Some(a.data_dir.join("data")),
        root_key_file: Some(a.root_key_file.clone().unwrap_or_else(|| a.data_dir.join("root.key"))),
        manual_root_key: false,
        root_key_store: Some(crate::serve::server::RootKeyStoreKind::File),
        root_key_secret: crate::serve::server::RootKeySecretArgs::unused(),
        max_body_bytes: server::DEFAULT_MAX_BODY_BYTES,
        max_versions: server::DEFAULT_MAX_VERSIONS,
        request_timeout_ms: a.request_timeout_ms,
        transfer_timeout_ms: server::DEFAULT_TRANSFER_TIMEOUT_MS,
        max_restore_bytes: a.max_restore_bytes,
        handshake_timeout_ms: server::DEFAULT_HANDSHAKE_TIMEOUT_MS,
        limits: a.limits.clone(),
        templates: a.templates.clone(),
        audit: a.audit.clone(),
        policies: a.policies.clone(),
        svid_cert: None,
        svid_key: None,
        svid_bundle: None,
        spiffe_endpoint_socket: String::new(),
        federate_with: Vec::new(),
        federated_bundles: Vec::new(),
        replication: a.replication.clone(),
        kube: a.kube.clone(),
        store: a.store.clone(),
        vsecm: server::VsecmArgs::default(),
        vsecm_tls_port: format!(":{}", a.listen.port()),
    };
    let mut s = settings(&server)?;
    let root_key = crate::serve::server::root_key_mode(&server)?;
    s.roles = RoleRules::from_lookup(|k| (k == "SPIFFE_TRUST_DOMAIN").then(|| td.to_owned())).map_err(cfg_err)?;
    let identity = FileSource::start(safe, FILE_POLL_INTERVAL).await.map_err(cfg_err)?;
    eprintln!(
        "aegis dev: development Safe (throw-away CA in {}; not for production)\n  in another terminal: source {}\n  then: aegis put billing --value s3cret && aegis list\n  a workload identity: aegis dev svid --workload billing --data-dir {}",
        a.data_dir.join("ca").display(),
        a.data_dir.join("env").display(),
        a.data_dir.display()
    );
    let identity: Arc<dyn aegis_identity::IdentitySource> = identity;
    crate::serve::server::serve(s, root_key, &server, identity).await
}
