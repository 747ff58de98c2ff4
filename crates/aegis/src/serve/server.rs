//! `aegis server`: the Safe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aegis_core::roles::RoleRules;
use aegis_identity::{IdentityConfig, IdentitySource};
use aegis_server::limits::ConnLimitSettings;
use aegis_server::{RootKeyMode, Settings};
use clap::Args;

use crate::exit::{CliError, CONFIG, FAILURE};

/// Settings of the Safe; every flag also reads an environment variable.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// mTLS API address (default: 0.0.0.0 and the port of VSECM_SAFE_TLS_PORT, i.e. 8443).
    #[arg(long, env = "AEGIS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Health, readiness and metrics address (plain HTTP; default: 0.0.0.0 and the port of
    /// VSECM_PROBE_LIVENESS_PORT, else 8081).
    #[arg(long, env = "AEGIS_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Directory of encrypted records (default: VSECM_SAFE_DATA_PATH, else /var/local/aegis/data).
    #[arg(long, env = "AEGIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the root key in this file (generated on first start).
    #[arg(long, env = "AEGIS_ROOT_KEY_FILE", conflicts_with = "manual_root_key", value_parser = crate::values::path_or_empty())]
    pub root_key_file: Option<PathBuf>,
    /// Keep the root key in memory only: start sealed until an admin runs `safe -i` or `aegis unseal`.
    #[arg(long, env = "AEGIS_MANUAL_ROOT_KEY")]
    pub manual_root_key: bool,
    /// Where the root key lives: `kubernetes` (a Secret), `file` (with --root-key-file) or `manual`.
    /// Overrides VSECM_SAFE_ROOT_KEY_STORE.
    #[arg(long, env = "AEGIS_ROOT_KEY_STORE", value_enum)]
    pub root_key_store: Option<RootKeyStoreKind>,
    /// The Kubernetes Secret of the root key store.
    #[command(flatten)]
    pub root_key_secret: RootKeySecretArgs,
    /// Largest request body, in bytes.
    #[arg(long, env = "AEGIS_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Versions kept per secret.
    #[arg(long, env = "AEGIS_MAX_VERSIONS", default_value_t = DEFAULT_MAX_VERSIONS, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_versions: u16,
    /// Longest a request may take, in milliseconds (slow clients are cut off).
    #[arg(long, env = "AEGIS_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// Longest a backup, a restore or a backup's check may take, streaming included, in milliseconds.
    #[arg(long, env = "AEGIS_TRANSFER_TIMEOUT_MS", default_value_t = DEFAULT_TRANSFER_TIMEOUT_MS)]
    pub transfer_timeout_ms: u64,
    /// Largest backup file a restore or a check reads, in bytes.
    #[arg(long, env = "AEGIS_MAX_RESTORE_BYTES", default_value_t = DEFAULT_MAX_RESTORE_BYTES)]
    pub max_restore_bytes: u64,
    /// Longest a TLS handshake or request head may take, in milliseconds.
    #[arg(long, env = "AEGIS_HANDSHAKE_TIMEOUT_MS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_MS)]
    pub handshake_timeout_ms: u64,
    /// Connection limits and idle deadline.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The template budget.
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// The audit trail.
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Policies: built-ins, the policy file, request rates.
    #[command(flatten)]
    pub policies: crate::serve::policies::PolicyArgs,
    /// SVID certificate file (with AEGIS_SVID_KEY and AEGIS_SVID_BUNDLE; else the Workload API).
    #[arg(long, env = "AEGIS_SVID_CERT")]
    pub svid_cert: Option<PathBuf>,
    /// SVID private key file.
    #[arg(long, env = "AEGIS_SVID_KEY")]
    pub svid_key: Option<PathBuf>,
    /// Trust bundle file.
    #[arg(long, env = "AEGIS_SVID_BUNDLE")]
    pub svid_bundle: Option<PathBuf>,
    /// SPIFFE Workload API socket.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = "unix:///spire-agent-socket/spire-agent.sock")]
    pub spiffe_endpoint_socket: String,
    /// A foreign trust domain whose workloads may connect (repeatable, or comma-separated in the variable).
    /// Their chains are checked against that domain's bundle, from the SPIRE agent (the Safe's entry
    /// federates with it) or --federated-bundle; policies alone decide what they may do. None by default.
    #[arg(long = "federate-with", env = "AEGIS_FEDERATE_WITH", value_delimiter = ',', value_name = "TRUST_DOMAIN")]
    pub federate_with: Vec<String>,
    /// A federated trust domain's bundle file, as TRUST_DOMAIN=PATH (repeatable, or comma-separated in the
    /// variable); reloaded when it changes. Used when the SPIRE agent delivers no bundle for that domain.
    #[arg(
        long = "federated-bundle",
        env = "AEGIS_FEDERATED_BUNDLES",
        value_delimiter = ',',
        value_name = "TRUST_DOMAIN=PATH"
    )]
    pub federated_bundles: Vec<String>,
    /// Replication to and from other Safes.
    #[command(flatten)]
    pub replication: crate::serve::replication::ReplicationArgs,
    /// `k8s:` secrets as Kubernetes Secrets.
    #[command(flatten)]
    pub kube: crate::serve::kube::KubeArgs,
    /// Where the sealed records live: the data directory, or PostgreSQL.
    #[command(flatten)]
    pub store: crate::serve::adapters::StoreArgs,
    /// VSecM's variables the Safe reads besides its own flags.
    #[command(flatten)]
    pub vsecm: VsecmArgs,
    /// VSecM's `VSECM_SAFE_TLS_PORT` (`:8443`), the port when `--listen` is not given.
    #[arg(long = "vsecm-safe-tls-port", env = "VSECM_SAFE_TLS_PORT", hide = true, default_value_t = format!(":{DEFAULT_TLS_PORT}"))]
    pub vsecm_tls_port: String,
}

/// VSecM's variables that stand in for Aegis settings not given (docs/VSECM-COMPATIBILITY.md).
#[derive(Args, Debug, Clone, Default)]
pub struct VsecmArgs {
    /// VSecM's data directory: the data directory when --data-dir is not given.
    #[arg(long = "vsecm-safe-data-path", env = "VSECM_SAFE_DATA_PATH", hide = true)]
    pub data_path: Option<PathBuf>,
    /// VSecM's log level (0 to 7): the log level when AEGIS_LOG is not given.
    #[arg(long = "vsecm-log-level", env = "VSECM_LOG_LEVEL", hide = true)]
    pub log_level: Option<String>,
    /// VSecM's manual root key input: `true` starts sealed, whatever VSECM_SAFE_ROOT_KEY_STORE says.
    #[arg(long = "vsecm-root-key-input-mode-manual", env = "VSECM_ROOT_KEY_INPUT_MODE_MANUAL", hide = true)]
    pub input_mode_manual: Option<String>,
    /// VSecM's liveness probe port (`:8081`): the health port when --health-listen is not given.
    #[arg(long = "vsecm-probe-liveness-port", env = "VSECM_PROBE_LIVENESS_PORT", hide = true)]
    pub liveness_port: Option<String>,
    /// VSecM's readiness probe port: must be the health port (one port answers both probes).
    #[arg(long = "vsecm-probe-readiness-port", env = "VSECM_PROBE_READINESS_PORT", hide = true)]
    pub readiness_port: Option<String>,
    /// VSecM's switch to delete the Kubernetes Secrets of deleted secrets: `false` keeps them
    /// (as --k8s-keep-on-delete) unless AEGIS_K8S_KEEP_ON_DELETE is given.
    #[arg(long = "vsecm-safe-sync-deleted-secrets", env = "VSECM_SAFE_SYNC_DELETED_SECRETS", hide = true)]
    pub sync_deleted: Option<String>,
}

/// The data directory unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/local/aegis/data";

impl ServerArgs {
    /// --data-dir, else VSECM_SAFE_DATA_PATH, else [`DEFAULT_DATA_DIR`].
    pub fn data_dir(&self) -> PathBuf {
        let vsecm = self.vsecm.data_path.clone().filter(|p| !p.as_os_str().is_empty());
        self.data_dir.clone().or(vsecm).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// --health-listen, else 0.0.0.0 and VSECM_PROBE_LIVENESS_PORT, else port 8081. A
    /// readiness port that is not the health port is refused: one port answers both.
    pub fn health_listen(&self) -> Result<SocketAddr, CliError> {
        use crate::serve::vsecm_env::probe_port;
        let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        let addr = match (self.health_listen, nonempty(&self.vsecm.liveness_port)) {
            (Some(a), _) => a,
            (None, Some(p)) => SocketAddr::from(([0, 0, 0, 0], probe_port("VSECM_PROBE_LIVENESS_PORT", &p)?)),
            (None, None) => SocketAddr::from(([0, 0, 0, 0], DEFAULT_HEALTH_PORT)),
        };
        if let Some(r) = nonempty(&self.vsecm.readiness_port) {
            let port = probe_port("VSECM_PROBE_READINESS_PORT", &r)?;
            if port != addr.port() {
                return Err(CliError::new(
                    CONFIG,
                    format!(
                        "VSECM_PROBE_READINESS_PORT is {port} but the health port is {}: Aegis answers /healthz and \
                         /readyz on one port; set VSECM_PROBE_READINESS_PORT to it (and point the readiness probe \
                         there), or unset it",
                        addr.port()
                    ),
                ));
            }
        }
        Ok(addr)
    }

    /// The log filter VSECM_LOG_LEVEL asks for, if set.
    pub fn vsecm_log_filter(&self) -> Option<&'static str> {
        self.vsecm.log_level.as_deref().filter(|l| !l.trim().is_empty()).map(crate::serve::vsecm_env::log_filter)
    }
}

/// The Safe's mTLS port unless told otherwise (VSecM's).
pub const DEFAULT_TLS_PORT: u16 = 8443;
/// The health and metrics port unless told otherwise.
pub const DEFAULT_HEALTH_PORT: u16 = 8081;
/// Largest request body unless told otherwise, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Versions kept per secret unless told otherwise.
pub const DEFAULT_MAX_VERSIONS: u16 = 10;
/// Request timeout unless told otherwise, in milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Transfer (backup, restore) timeout unless told otherwise, in milliseconds: 30 minutes.
pub const DEFAULT_TRANSFER_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// Largest backup file read unless told otherwise, in bytes: 4 GiB.
pub const DEFAULT_MAX_RESTORE_BYTES: u64 = 4 << 30;
/// TLS handshake timeout unless told otherwise, in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// The template budget flags, shared by `aegis server` and `aegis dev`.
#[derive(Args, Debug, Clone)]
pub struct TemplateArgs {
    /// Largest output of one template render, in bytes (template budget).
    #[arg(long, env = "AEGIS_TEMPLATE_MAX_OUTPUT_BYTES", default_value_t = aegis_core::transform::DEFAULT_MAX_OUTPUT_BYTES)]
    pub template_max_output_bytes: usize,
    /// Most steps of one template render: actions, range iterations, function calls (template budget).
    #[arg(long, env = "AEGIS_TEMPLATE_MAX_STEPS", default_value_t = aegis_core::transform::DEFAULT_MAX_STEPS)]
    pub template_max_steps: u64,
    /// Most bytes one template render may hold or copy: parsing the template and every value it passes
    /// to a function, prints, ranges over, tests or keeps in a variable (template budget).
    #[arg(long, env = "AEGIS_TEMPLATE_MAX_WORK_BYTES", default_value_t = aegis_core::transform::DEFAULT_MAX_WORK_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub template_max_work_bytes: u64,
    /// Largest template a secret may have, in bytes; larger ones are refused with a 400 (template budget).
    #[arg(long, env = "AEGIS_TEMPLATE_MAX_BYTES", default_value_t = aegis_core::transform::DEFAULT_MAX_TEMPLATE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub template_max_bytes: u64,
    /// Most template renders running at once in the Safe (writes, start-up, Kubernetes sync); others wait.
    #[arg(long, env = "AEGIS_TEMPLATE_MAX_PARALLEL", default_value_t = aegis_core::transform::DEFAULT_MAX_PARALLEL_RENDERS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub template_max_parallel: u64,
    /// No longer used: a render's cost is counted (steps, bytes), not timed, so it does not depend on the
    /// machine's load. Accepted so that old configurations still start; a warning says it is ignored.
    #[arg(long, env = "AEGIS_TEMPLATE_MAX_TIME_MS", hide = true)]
    pub template_max_time_ms: Option<u64>,
}

/// The audit trail flags, shared by `aegis server` and `aegis dev` (see docs/AUDIT.md).
#[derive(Args, Debug, Clone, Default)]
pub struct AuditArgs {
    /// The audit trail file (default: DATA_DIR/audit/audit.log); `off` keeps no file.
    #[arg(long, env = "AEGIS_AUDIT_FILE", value_name = "PATH|off", value_parser = crate::values::path_or_empty())]
    pub audit_file: Option<PathBuf>,
    /// Also print every audit line on standard output (JSON lines, for log collectors).
    #[arg(long, env = "AEGIS_AUDIT_STDOUT")]
    pub audit_stdout: bool,
    /// Rotate the audit file when it reaches this size, in bytes.
    #[arg(long, env = "AEGIS_AUDIT_MAX_FILE_BYTES", default_value_t = aegis_audit::sink::DEFAULT_MAX_FILE_BYTES,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub audit_max_file_bytes: u64,
    /// Fold identical requests that change nothing (a workload fetching the same answer
    /// again) made within this many milliseconds into one line with a count; 0 writes a
    /// line per request.
    #[arg(long, env = "AEGIS_AUDIT_FOLD_MS", default_value_t = aegis_audit::sink::DEFAULT_FOLD.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=aegis_audit::sink::MAX_FOLD.as_millis() as u64))]
    pub audit_fold_ms: u64,
    /// Most bytes of the whole audit trail (current and rotated files): the oldest rotated
    /// files are deleted to stay under it. At least twice --audit-max-file-bytes.
    #[arg(long, env = "AEGIS_AUDIT_MAX_TOTAL_BYTES", default_value_t = aegis_audit::sink::DEFAULT_MAX_TOTAL_BYTES)]
    pub audit_max_total_bytes: u64,
    /// Rotated audit files older than this many days are deleted; 0 keeps them whatever their age.
    #[arg(long, env = "AEGIS_AUDIT_MAX_AGE_DAYS", default_value_t = aegis_audit::sink::DEFAULT_MAX_AGE.as_secs() / 86_400,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub audit_max_age_days: u64,
    /// Free bytes kept on the audit file system for admin writes' lines: below it, fetch and
    /// read lines are counted (in the next gap line), not written. 0: no reserve.
    #[arg(long, env = "AEGIS_AUDIT_RESERVE_BYTES", default_value_t = aegis_audit::sink::DEFAULT_RESERVE_BYTES)]
    pub audit_reserve_bytes: u64,
    /// Most series of identical requests folded at once; past it, requests of every caller
    /// fold into one catch-all line per window.
    #[arg(long, env = "AEGIS_AUDIT_FOLD_MAX_SERIES", default_value_t = aegis_audit::sink::DEFAULT_FOLD_MAX_SERIES as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub audit_fold_max_series: u64,
    /// Most series of one caller folded at once; past it, its varied requests fold into one
    /// catch-all line of its own per window.
    #[arg(long, env = "AEGIS_AUDIT_FOLD_SERIES_PER_CALLER",
          default_value_t = aegis_audit::sink::DEFAULT_FOLD_SERIES_PER_CALLER as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub audit_fold_series_per_caller: u64,
}

/// The audit file under the data directory unless told otherwise.
pub fn default_audit_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("audit").join("audit.log")
}

impl AuditArgs {
    /// The sink's settings for a Safe whose records are in `data_dir`.
    pub fn config(&self, data_dir: &std::path::Path) -> Result<aegis_audit::SinkConfig, CliError> {
        if self.audit_max_total_bytes < self.audit_max_file_bytes.saturating_mul(2) {
            return Err(CliError::new(
                CONFIG,
                format!(
                    "AEGIS_AUDIT_MAX_TOTAL_BYTES (--audit-max-total-bytes) is {} but must be at least twice \
                     AEGIS_AUDIT_MAX_FILE_BYTES ({}): raise it, or lower the file size",
                    self.audit_max_total_bytes, self.audit_max_file_bytes
                ),
            ));
        }
        let file = match &self.audit_file {
            Some(p) if p.as_os_str() == "off" => None,
            Some(p) if !p.as_os_str().is_empty() => Some(p.clone()),
            _ => Some(default_audit_file(data_dir)),
        };
        if file.is_none() {
            tracing::warn!(
                "the audit trail file is off (--audit-file off): admin actions and fetches are not recorded in a file"
            );
        }
        Ok(aegis_audit::SinkConfig {
            stdout: self.audit_stdout,
            max_file_bytes: self.audit_max_file_bytes,
            fold: std::time::Duration::from_millis(self.audit_fold_ms),
            // The head is kept with the records, out of reach of a cut of the audit directory.
            head: file.is_some().then(|| aegis_audit::head::default_path(data_dir)),
            max_total_bytes: self.audit_max_total_bytes,
            max_age: std::time::Duration::from_secs(self.audit_max_age_days * 86_400),
            reserve_bytes: self.audit_reserve_bytes,
            fold_max_series: usize::try_from(self.audit_fold_max_series).unwrap_or(usize::MAX),
            fold_series_per_caller: usize::try_from(self.audit_fold_series_per_caller).unwrap_or(usize::MAX),
            ..aegis_audit::SinkConfig::new(file)
        })
    }
}

/// Where the root key lives.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKeyStoreKind {
    /// A Kubernetes Secret (VSecM's default: `vsecm-root-key` in `vsecm-system`, data key `KEY_TXT`).
    Kubernetes,
    /// A file (--root-key-file).
    File,
    /// Memory only: the Safe starts sealed.
    Manual,
}

/// The Kubernetes Secret that holds the root key, and how long to wait for the API server
/// (reached through `--kubeconfig`, shared with the `k8s:` sync, or in-cluster).
#[derive(Args, Debug, Clone)]
pub struct RootKeySecretArgs {
    /// VSecM's choice of root key store; `k8s` selects the Kubernetes Secret. Used only when none of
    /// --root-key-store, --root-key-file and --manual-root-key is given.
    #[arg(long = "vsecm-safe-root-key-store", env = "VSECM_SAFE_ROOT_KEY_STORE", hide = true)]
    pub vsecm_root_key_store: Option<String>,
    /// Name of the Secret holding the root key.
    #[arg(long = "root-key-secret", env = "VSECM_ROOT_KEY_NAME", default_value = aegis_kube::rootkey::DEFAULT_SECRET)]
    pub secret: String,
    /// Namespace of the Secret holding the root key.
    #[arg(long = "root-key-namespace", env = "VSECM_NAMESPACE_SYSTEM", default_value = aegis_kube::rootkey::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Longest one Kubernetes API call may take, in milliseconds.
    #[arg(long, env = "AEGIS_KUBE_API_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub kube_api_timeout_ms: u64,
    /// How long start-up retries an unreachable Kubernetes API server before giving up, in milliseconds.
    #[arg(long, env = "AEGIS_KUBE_START_WAIT_MS", default_value_t = 60_000)]
    pub kube_start_wait_ms: u64,
}

impl RootKeySecretArgs {
    /// No Kubernetes: VSecM's names, nothing selected from the environment (`aegis dev`).
    pub fn unused() -> Self {
        Self {
            vsecm_root_key_store: None,
            secret: aegis_kube::rootkey::DEFAULT_SECRET.to_owned(),
            namespace: aegis_kube::rootkey::DEFAULT_NAMESPACE.to_owned(),
            kube_api_timeout_ms: 10_000,
            kube_start_wait_ms: 60_000,
        }
    }

    fn store(&self, kubeconfig: Option<&std::path::Path>) -> Result<RootKeyMode, CliError> {
        let settings = aegis_kube::SecretStoreSettings {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
            kubeconfig: kubeconfig.filter(|p| !p.as_os_str().is_empty()).map(std::path::Path::to_path_buf),
            api_timeout: Duration::from_millis(self.kube_api_timeout_ms),
            start_wait: Duration::from_millis(self.kube_start_wait_ms),
        };
        let store = aegis_kube::SecretStore::new(settings).map_err(|e| CliError::new(CONFIG, e))?;
        Ok(RootKeyMode::Stored(Arc::new(store)))
    }
}

/// Where the root key lives. Precedence: --root-key-store (AEGIS_ROOT_KEY_STORE); then
/// --root-key-file or --manual-root-key; then VSECM_ROOT_KEY_INPUT_MODE_MANUAL=true
/// (manual); then VSECM_SAFE_ROOT_KEY_STORE=k8s.
pub fn root_key_mode(a: &ServerArgs) -> Result<RootKeyMode, CliError> {
    let file = a.root_key_file.as_ref().filter(|p| !p.as_os_str().is_empty());
    let conflict =
        |what: &str| CliError::new(CONFIG, format!("--root-key-store {what}; choose one place for the root key"));
    let kind =
        match (a.root_key_store, file, a.manual_root_key) {
            (Some(RootKeyStoreKind::Kubernetes), Some(_), _) => {
                return Err(conflict("kubernetes conflicts with --root-key-file (AEGIS_ROOT_KEY_FILE)"))
            }
            (Some(RootKeyStoreKind::Kubernetes), None, true) => {
                return Err(conflict("kubernetes conflicts with --manual-root-key (AEGIS_MANUAL_ROOT_KEY)"))
            }
            (Some(RootKeyStoreKind::File), _, true) => {
                return Err(conflict("file conflicts with --manual-root-key (AEGIS_MANUAL_ROOT_KEY)"))
            }
            (Some(RootKeyStoreKind::Manual), Some(_), _) => {
                return Err(conflict("manual conflicts with --root-key-file (AEGIS_ROOT_KEY_FILE)"))
            }
            (Some(kind), _, _) => kind,
            (None, Some(_), _) => RootKeyStoreKind::File,
            (None, None, true) => RootKeyStoreKind::Manual,
            // VSecM's manual mode wins over its store: the key is typed in, never kept in the Secret.
            (None, None, false)
                if a.vsecm.input_mode_manual.as_deref().is_some_and(crate::serve::vsecm_env::vsecm_true) =>
            {
                RootKeyStoreKind::Manual
            }
            (None, None, false) => match a.root_key_secret.vsecm_root_key_store.as_deref().map(str::trim) {
                Some("k8s" | "kubernetes") => RootKeyStoreKind::Kubernetes,
                Some(other) if !other.is_empty() => {
                    return Err(CliError::new(
                        CONFIG,
                        format!(
                        "VSECM_SAFE_ROOT_KEY_STORE={other} is not supported: use k8s (a Kubernetes Secret), or choose \
                         with --root-key-store kubernetes|file|manual"
                    ),
                    ))
                }
                _ => return Err(CliError::new(
                    CONFIG,
                    "choose where the root key lives: --root-key-store kubernetes (AEGIS_ROOT_KEY_STORE, or VSecM's \
                     VSECM_SAFE_ROOT_KEY_STORE=k8s), --root-key-file PATH (AEGIS_ROOT_KEY_FILE) or --manual-root-key",
                )),
            },
        };
    match (kind, file) {
        (RootKeyStoreKind::Kubernetes, _) => a.root_key_secret.store(a.kube.kubeconfig.as_deref()),
        (RootKeyStoreKind::File, Some(p)) => Ok(RootKeyMode::Stored(Arc::new(aegis_store::FileStore::new(p)))),
        (RootKeyStoreKind::File, None) => {
            Err(CliError::new(CONFIG, "--root-key-store file needs --root-key-file PATH (AEGIS_ROOT_KEY_FILE)"))
        }
        (RootKeyStoreKind::Manual, _) => Ok(RootKeyMode::Manual),
    }
}

/// How many connections the Safe holds and for how long (unset limits follow the descriptor limit).
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Close a connection that has had no request in flight for this long, in milliseconds.
    #[arg(long, env = "AEGIS_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub idle_timeout_ms: u64,
    /// Connections held at once (default: the file descriptor limit less a reserve, at most 65536).
    #[arg(long, env = "AEGIS_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(4..))]
    pub max_connections: Option<u64>,
    /// TLS handshakes in progress at once (default: 1024, at most a quarter of the connections).
    #[arg(long, env = "AEGIS_MAX_HANDSHAKES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_handshakes: Option<u64>,
    /// Connections kept for the Sentinel alone (default: 64, at most a quarter of the connections).
    #[arg(long, env = "AEGIS_SENTINEL_RESERVE", value_parser = clap::value_parser!(u64).range(1..))]
    pub sentinel_reserve: Option<u64>,
    /// Connections one SPIFFE ID other than the Sentinel's may hold (default: 256, at most a quarter of the workloads' pool).
    #[arg(long, env = "AEGIS_MAX_CONNECTIONS_PER_IDENTITY", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_identity: Option<u64>,
    /// Connections of all SPIFFE IDs with no role together (default: 64, at most a quarter of the pool).
    #[arg(long, env = "AEGIS_MAX_CONNECTIONS_NO_ROLE", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_no_role: Option<u64>,
    /// HTTP/2 streams open at once on one connection (default: 32).
    #[arg(long, env = "AEGIS_MAX_STREAMS_PER_CONNECTION", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: Option<u32>,
    /// Requests, watches aside, one SPIFFE ID other than the Sentinel's may have in flight (default: 64).
    #[arg(long, env = "AEGIS_MAX_REQUESTS_PER_IDENTITY", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests_per_identity: Option<u64>,
    /// Watches one SPIFFE ID may hold, over all its connections and streams (default: 32).
    #[arg(long, env = "AEGIS_MAX_WATCHES_PER_IDENTITY", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watches_per_identity: Option<u64>,
    /// Watches of all SPIFFE IDs together (default: 8192).
    #[arg(long, env = "AEGIS_MAX_WATCHES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_watches: Option<u64>,
    /// Request body bytes being read or held at once, all callers together (default: 32 MiB).
    #[arg(long, env = "AEGIS_MAX_BODY_BYTES_IN_FLIGHT", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes_in_flight: Option<u64>,
    /// Request body bytes one SPIFFE ID may have in flight (default: 8 MiB).
    #[arg(long, env = "AEGIS_MAX_BODY_BYTES_PER_IDENTITY", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes_per_identity: Option<u64>,
    /// Connections the unauthenticated health port holds at once (default: 32).
    #[arg(long, env = "AEGIS_HEALTH_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub health_max_connections: Option<u64>,
    /// Health-port connections one peer address may hold (default: 8).
    #[arg(long, env = "AEGIS_HEALTH_MAX_CONNECTIONS_PER_PEER", value_parser = clap::value_parser!(u64).range(1..))]
    pub health_max_connections_per_peer: Option<u64>,
    /// Longest life of a health-port connection, in milliseconds (default: 10000).
    #[arg(long, env = "AEGIS_HEALTH_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(100..))]
    pub health_timeout_ms: Option<u64>,
}

impl LimitArgs {
    fn conn_limits(&self) -> ConnLimitSettings {
        let n = |v: Option<u64>| v.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
        ConnLimitSettings {
            max_connections: n(self.max_connections),
            max_handshakes: n(self.max_handshakes),
            sentinel_reserve: n(self.sentinel_reserve),
            per_identity: n(self.max_connections_per_identity),
            no_role_pool: n(self.max_connections_no_role),
            streams_per_connection: self.max_streams_per_connection,
            requests_per_identity: n(self.max_requests_per_identity),
            watches_per_identity: n(self.max_watches_per_identity),
            max_watches: n(self.max_watches),
            body_bytes_in_flight: n(self.max_body_bytes_in_flight),
            body_bytes_per_identity: n(self.max_body_bytes_per_identity),
            health_connections: n(self.health_max_connections),
            health_per_peer: n(self.health_max_connections_per_peer),
            health_timeout: self.health_timeout_ms.map(Duration::from_millis),
        }
    }
}

/// The template budget from the flags.
pub fn template_budget(a: &ServerArgs) -> aegis_core::transform::Budget {
    let a = &a.templates;
    if a.template_max_time_ms.is_some() {
        tracing::warn!(
            "AEGIS_TEMPLATE_MAX_TIME_MS (--template-max-time-ms) is no longer used and is ignored: a template's cost \
             is counted in steps and bytes (AEGIS_TEMPLATE_MAX_STEPS, AEGIS_TEMPLATE_MAX_WORK_BYTES), which do not \
             depend on the machine's load; remove the setting"
        );
    }
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    aegis_core::transform::Budget {
        max_output_bytes: a.template_max_output_bytes,
        max_steps: a.template_max_steps,
        max_work_bytes: size(a.template_max_work_bytes),
        max_template_bytes: size(a.template_max_bytes),
        max_parallel_renders: size(a.template_max_parallel),
    }
}

fn default_listen(a: &ServerArgs) -> Result<SocketAddr, CliError> {
    let port = a.vsecm_tls_port.trim_start_matches(':');
    format!("0.0.0.0:{port}")
        .parse()
        .map_err(|_| CliError::new(CONFIG, format!("VSECM_SAFE_TLS_PORT must look like ':8443', not '{port}'")))
}

/// Reads the role rules from the environment.
pub fn roles() -> Result<RoleRules, CliError> {
    RoleRules::from_lookup(|k| std::env::var(k).ok()).map_err(|e| CliError::new(CONFIG, e.to_string()))
}

/// The foreign trust domains the Safe accepts clients of, with their bundle files.
async fn federation(a: &ServerArgs) -> Result<aegis_identity::Federation, CliError> {
    let mut files = Vec::new();
    for given in &a.federated_bundles {
        let Some((td, path)) = given.split_once('=').filter(|(td, path)| !td.is_empty() && !path.is_empty()) else {
            return Err(CliError::new(
                CONFIG,
                format!(
                    "--federated-bundle '{}' is not TRUST_DOMAIN=PATH (e.g. b.example.org=/etc/aegis/b-bundle.pem)",
                    given.escape_debug()
                ),
            ));
        };
        files.push((td.to_owned(), PathBuf::from(path)));
    }
    aegis_identity::Federation::start(a.federate_with.clone(), files, aegis_identity::FILE_POLL_INTERVAL)
        .await
        .map_err(|e| CliError::new(CONFIG, e.to_string()))
}

/// Builds the Safe's settings.
pub fn settings(a: &ServerArgs) -> Result<Settings, CliError> {
    Ok(Settings {
        listen: match a.listen {
            Some(l) => l,
            None => default_listen(a)?,
        },
        health_listen: a.health_listen()?,
        max_body_bytes: a.max_body_bytes,
        max_versions: usize::from(a.max_versions),
        request_timeout: Duration::from_millis(a.request_timeout_ms),
        transfer_timeout: Duration::from_millis(a.transfer_timeout_ms),
        max_restore_bytes: a.max_restore_bytes,
        handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(a.limits.idle_timeout_ms),
        conn_limits: a.limits.conn_limits(),
        roles: roles()?,
        template_budget: template_budget(a),
        audit: a.audit.config(&a.data_dir())?,
        policies: a.policies.settings()?,
        // Set by `serve` from the flags: its bundle files are read then.
        federation: Arc::new(aegis_identity::Federation::none()),
        replication: a.replication.settings()?,
    })
}

/// Longest the Safe waits at shutdown for the audit trail's last anchor.
const AUDIT_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Starts the Safe with `identity` on the adapters `a` asks for (the root key
/// in `root_key`) and serves until interrupted.
pub async fn serve(
    settings: Settings,
    root_key: RootKeyMode,
    a: &ServerArgs,
    identity: Arc<dyn IdentitySource>,
) -> Result<(), CliError> {
    let mut settings = settings;
    settings.federation = Arc::new(federation(a).await?);
    let adapters =
        crate::serve::adapters::open(&a.data_dir(), &a.store, &a.kube, root_key, settings.template_budget).await?;
    let running =
        aegis_server::start(settings, adapters, identity).await.map_err(|e| CliError::new(CONFIG, e.to_string()))?;
    eprintln!("aegis: Safe listening on https://{} (health http://{})", running.addr, running.health_addr);
    crate::stop_requested().await;
    tracing::info!("shutting down");
    for t in running.tasks {
        t.abort();
    }
    running.state.flush_store().await;
    running.state.audit.close(AUDIT_CLOSE_WAIT).await;
    Ok(())
}

/// `aegis server`.
pub async fn run(mut a: ServerArgs) -> Result<(), CliError> {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().unwrap_or_default())))
        .collect();
    crate::serve::vsecm_env::check(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    if a.vsecm.sync_deleted.as_deref().is_some_and(|v| v.trim().eq_ignore_ascii_case("false")) && !a.kube.keep_on_delete
    {
        tracing::info!("VSECM_SAFE_SYNC_DELETED_SECRETS=false: the Kubernetes Secrets of deleted secrets are kept");
        a.kube.keep_on_delete = true;
    }
    let settings = settings(&a)?;
    let root_key = root_key_mode(&a)?;
    let cfg = IdentityConfig::from_settings(
        a.svid_cert.clone(),
        a.svid_key.clone(),
        a.svid_bundle.clone(),
        &a.spiffe_endpoint_socket,
    )
    .map_err(|e| CliError::new(CONFIG, e.to_string()))?;
    let identity = aegis_identity::start_source(&cfg).await.map_err(|e| CliError::new(CONFIG, e.to_string()))?;
    serve(settings, root_key, &a, identity)
        .await
        .map_err(|e| CliError::new(if e.code == 0 { FAILURE } else { e.code }, e.message))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn mode(args: &[&str]) -> Result<RootKeyMode, CliError> {
        let mut argv = vec!["aegis"];
        argv.extend(args);
        let mut a = Cmd::try_parse_from(argv).unwrap().server;
        // The test runner's own environment must not choose for the test.
        if !args.contains(&"--vsecm-safe-root-key-store") {
            a.root_key_secret.vsecm_root_key_store = None;
        }
        if !args.contains(&"--vsecm-root-key-input-mode-manual") {
            a.vsecm.input_mode_manual = None;
        }
        root_key_mode(&a)
    }

    fn describe(m: &RootKeyMode) -> String {
        m.store().map_or_else(|| "manual".to_owned(), |s| s.describe())
    }

    #[test]
    fn the_root_key_store_follows_the_documented_precedence() {
        let file = mode(&["--root-key-file", "/k/root.key"]).unwrap();
        assert_eq!(describe(&file), "root key file /k/root.key");
        assert_eq!(describe(&mode(&["--manual-root-key"]).unwrap()), "manual");
        let kube = mode(&["--root-key-store", "kubernetes", "--kubeconfig", "/k/config"]).unwrap();
        assert_eq!(describe(&kube), "Kubernetes Secret vsecm-system/vsecm-root-key (data key KEY_TXT)");
        let renamed =
            mode(&["--root-key-store", "kubernetes", "--root-key-secret", "rk", "--root-key-namespace", "aegis"])
                .unwrap();
        assert_eq!(describe(&renamed), "Kubernetes Secret aegis/rk (data key KEY_TXT)");
        // VSecM's switch applies only when nothing else chose.
        let vsecm = mode(&["--vsecm-safe-root-key-store", "k8s"]).unwrap();
        assert!(describe(&vsecm).starts_with("Kubernetes Secret"));
        let file_wins = mode(&["--vsecm-safe-root-key-store", "k8s", "--root-key-file", "/k/root.key"]).unwrap();
        assert_eq!(describe(&file_wins), "root key file /k/root.key");
        let store_wins = mode(&["--vsecm-safe-root-key-store", "k8s", "--root-key-store", "manual"]).unwrap();
        assert_eq!(describe(&store_wins), "manual");
    }

    #[test]
    fn vsecms_manual_mode_wins_over_its_kubernetes_store() {
        let manual = ["--vsecm-safe-root-key-store", "k8s", "--vsecm-root-key-input-mode-manual", "true"];
        assert_eq!(describe(&mode(&manual).unwrap()), "manual", "a manual key, not one in the Secret");
        let auto = ["--vsecm-safe-root-key-store", "k8s", "--vsecm-root-key-input-mode-manual", "false"];
        assert!(describe(&mode(&auto).unwrap()).starts_with("Kubernetes Secret"));
        let mut file = manual.to_vec();
        file.extend(["--root-key-file", "/k/root.key"]);
        assert_eq!(describe(&mode(&file).unwrap()), "root key file /k/root.key", "Aegis's own flags win");
    }

    #[test]
    fn vsecms_data_path_and_probe_ports_stand_in_for_unset_flags() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["aegis"];
            argv.extend(args);
            Cmd::try_parse_from(argv).unwrap().server
        };
        let a = parse(&["--vsecm-safe-data-path", "/var/local/vsecm/data", "--vsecm-probe-liveness-port", ":18081"]);
        assert_eq!(a.data_dir(), PathBuf::from("/var/local/vsecm/data"));
        assert_eq!(a.health_listen().unwrap(), SocketAddr::from(([0, 0, 0, 0], 18081)));
        let a = parse(&["--vsecm-safe-data-path", "/v", "--data-dir", "/a", "--health-listen", "127.0.0.1:9"]);
        assert_eq!((a.data_dir(), a.health_listen().unwrap().port()), (PathBuf::from("/a"), 9));
        let a = parse(&["--vsecm-probe-liveness-port", ":8081", "--vsecm-probe-readiness-port", ":8082"]);
        let e = a.health_listen().unwrap_err();
        assert!(e.code == CONFIG && e.message.contains("VSECM_PROBE_READINESS_PORT is 8082"), "{}", e.message);
        let a = parse(&["--vsecm-probe-liveness-port", ":8081", "--vsecm-probe-readiness-port", ":8081"]);
        assert_eq!(a.health_listen().unwrap().port(), 8081);
        assert_eq!(parse(&["--vsecm-log-level", "6"]).vsecm_log_filter(), Some("debug"));
    }

    #[test]
    fn empty_path_settings_are_unset() {
        for args in
            [&["--kubeconfig", ""][..], &["--root-key-file", "", "--root-key-store", "manual"], &["--audit-file", ""]]
        {
            let mut argv = vec!["aegis"];
            argv.extend(args);
            let a = Cmd::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")).server;
            assert!(a.kube.kubeconfig.as_ref().is_none_or(|p| p.as_os_str().is_empty()));
        }
        let kube = mode(&["--root-key-store", "kubernetes", "--kubeconfig", ""]).unwrap();
        assert!(describe(&kube).starts_with("Kubernetes Secret"));
        assert_eq!(describe(&mode(&["--root-key-file", "", "--root-key-store", "manual"]).unwrap()), "manual");
    }

    #[test]
    fn contradictions_and_unknown_stores_are_configuration_errors() {
        for args in [
            &["--root-key-store", "kubernetes", "--root-key-file", "/k"][..],
            &["--root-key-store", "kubernetes", "--manual-root-key"],
            &["--root-key-store", "file"],
            &["--root-key-store", "manual", "--root-key-file", "/k"],
            &["--vsecm-safe-root-key-store", "aws"],
            &[],
            &["--root-key-store", "kubernetes", "--root-key-namespace", "Not_A_Name"],
        ] {
            let e = mode(args).err().unwrap_or_else(|| panic!("{args:?} was accepted"));
            assert_eq!(e.code, CONFIG, "{args:?}");
            assert!(!e.message.is_empty());
        }
        let e = mode(&[]).err().unwrap();
        assert!(
            e.message.contains("--root-key-store kubernetes") && e.message.contains("--root-key-file"),
            "{}",
            e.message
        );
    }
}
