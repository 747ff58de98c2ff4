//! `k8s:` secrets as Kubernetes Secrets: the settings, and the sync built
//! from them (crate `aegis-kube`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aegis_kube::{SyncConfig, SyncOff, Syncer};
use aegis_store::SecretSync;
use clap::Args;

use crate::exit::{CliError, CONFIG};

/// Settings of the Kubernetes Secret sync (see docs/KUBERNETES.md).
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Keep every `k8s:NAME` secret as the Kubernetes Secret NAME in each of its namespaces
    /// (default: on when the Safe has a Kubernetes API; `--k8s-secrets=false` turns it off,
    /// and `k8s:` writes are then refused).
    #[arg(long = "k8s-secrets", env = "AEGIS_K8S_SECRETS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "true|false",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub k8s_secrets: Option<bool>,
    /// Keep the Kubernetes Secrets of a deleted `k8s:` secret (VSecM's behaviour) instead of deleting them.
    #[arg(long = "k8s-keep-on-delete", env = "AEGIS_K8S_KEEP_ON_DELETE")]
    pub keep_on_delete: bool,
    /// The name of this Safe among Safes writing to one cluster: it changes only Secrets annotated with it
    /// (default: an id generated once and kept in the data directory, file `k8s-instance`).
    #[arg(long = "k8s-instance", env = "AEGIS_K8S_INSTANCE")]
    pub instance: Option<String>,
    /// Longest the check of a `k8s:` write for a Secret Aegis does not manage waits for the API server, in ms.
    #[arg(long = "k8s-check-timeout-ms", env = "AEGIS_K8S_CHECK_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=30_000))]
    pub check_timeout_ms: u64,
    /// Most distinct namespaces all `k8s:` secrets may name together (each is a watch on the Kubernetes API).
    #[arg(long = "k8s-max-namespaces", env = "AEGIS_K8S_MAX_NAMESPACES",
          default_value_t = aegis_kube::sync::DEFAULT_MAX_NAMESPACES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub max_namespaces: usize,
    /// Most Kubernetes Secret data the sync computes at once (templates rendered), each on a blocking thread.
    #[arg(long = "k8s-render-threads", env = "AEGIS_K8S_RENDER_THREADS",
          default_value_t = aegis_kube::sync::DEFAULT_RENDER_THREADS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub render_threads: usize,
    /// Kubeconfig of the Kubernetes API (default: the pod's ServiceAccount).
    #[arg(long = "kubeconfig", env = "KUBECONFIG", value_parser = crate::values::path_or_empty())]
    pub kubeconfig: Option<PathBuf>,
    /// Set by Kubernetes in every pod: with the ServiceAccount token, the Safe has a Kubernetes API.
    #[arg(long = "kubernetes-service-host", env = "KUBERNETES_SERVICE_HOST", hide = true)]
    pub service_host: Option<String>,
}

/// Where the pod's ServiceAccount token is mounted (the kube client reads it there).
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Whether the Safe can reach a Kubernetes API, and how it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeApi {
    /// A kubeconfig was given (`--kubeconfig`, `KUBECONFIG`).
    Kubeconfig(PathBuf),
    /// In a pod: `KUBERNETES_SERVICE_HOST` is set and the ServiceAccount token is mounted.
    InCluster,
    /// Neither.
    Absent,
}

impl KubeApi {
    /// Decides from the settings and whether `token` exists.
    pub fn detect(kubeconfig: Option<&Path>, service_host: Option<&str>, token: &Path) -> Self {
        if let Some(k) = kubeconfig.filter(|p| !p.as_os_str().is_empty()) {
            return Self::Kubeconfig(k.to_path_buf());
        }
        if service_host.is_some_and(|h| !h.trim().is_empty()) && token.is_file() {
            return Self::InCluster;
        }
        Self::Absent
    }
}

impl KubeArgs {
    /// The sync configuration, with the Safe's template budget and the instance
    /// name of the Safe whose records are in `records` (kept with them).
    pub fn config(&self, budget: aegis_core::transform::Budget, records: Records<'_>) -> Result<SyncConfig, CliError> {
        let instance = match self.instance.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
            Some(given) => {
                check_instance(given)
                    .map_err(|why| CliError::new(CONFIG, format!("--k8s-instance (AEGIS_K8S_INSTANCE) {why}")))?;
                given.to_owned()
            }
            None => match records {
                Records::Dir(dir) => kept_instance(dir)?,
                Records::Shared(log) => kept_in_database(log)?,
            },
        };
        Ok(SyncConfig {
            instance,
            keep_on_delete: self.keep_on_delete,
            check_timeout: Duration::from_millis(self.check_timeout_ms),
            template_budget: budget,
            max_namespaces: self.max_namespaces,
            render_threads: self.render_threads,
            ..SyncConfig::default()
        })
    }

    /// The sync, connected to the Kubernetes API, when it is on: asked for, or not
    /// turned off and the Safe has a Kubernetes API (VSecM always wrote `k8s:`
    /// secrets). Otherwise a stand-in that refuses `k8s:` writes, saying why.
    pub async fn sync(
        &self,
        budget: aegis_core::transform::Budget,
        records: Records<'_>,
    ) -> Result<Arc<dyn SecretSync>, CliError> {
        let api =
            KubeApi::detect(self.kubeconfig.as_deref(), self.service_host.as_deref(), Path::new(SERVICE_ACCOUNT_TOKEN));
        match (self.k8s_secrets, &api) {
            (Some(false), _) => return Ok(off(TURNED_OFF)),
            (None, KubeApi::Absent) => return Ok(off(NO_API)),
            _ => {}
        }
        let cfg = tokio::task::block_in_place(|| self.config(budget, records))?;
        let client = aegis_kube::connect(self.kubeconfig.as_deref()).await.map_err(|e| {
            let asked = if self.k8s_secrets.is_some() {
                "--k8s-secrets (AEGIS_K8S_SECRETS)"
            } else {
                "the k8s: sync, on because a Kubernetes API was found,"
            };
            CliError::new(
                CONFIG,
                format!("{asked} needs the Kubernetes API: {e}; or turn the sync off with --k8s-secrets=false"),
            )
        })?;
        tracing::info!(api = ?api, "k8s: secrets are kept as Kubernetes Secrets");
        Ok(Arc::new(Syncer::new(client, cfg)))
    }
}

/// Why a Safe keeps no Kubernetes Secrets, and what to do: the end of the
/// refusal of a `k8s:` write.
const NO_API: &str = "this Safe has no Kubernetes API (it does not run in a pod with a ServiceAccount token, and \
    no --kubeconfig or KUBECONFIG is set), so its Kubernetes Secret would never be written; run the Safe in the \
    cluster or give it a kubeconfig, or store the secret without the k8s: prefix";
/// Like [`NO_API`], for a sync turned off.
const TURNED_OFF: &str = "this Safe's Kubernetes Secret sync is turned off (--k8s-secrets=false or \
    AEGIS_K8S_SECRETS=false), so its Kubernetes Secret would never be written; turn the sync on, or store the \
    secret without the k8s: prefix";

/// The stand-in of a sync that is off, logged once at start-up.
fn off(reason: &'static str) -> Arc<dyn SecretSync> {
    tracing::warn!(reason, "k8s: secrets are refused");
    Arc::new(SyncOff::new(reason))
}

/// Longest instance name (an annotation value has no small limit; this keeps it readable).
pub const MAX_INSTANCE_CHARS: usize = 253;
/// The file in the data directory that keeps the generated instance name.
pub const INSTANCE_FILE: &str = "k8s-instance";

/// Why `name` cannot be an instance name, if it cannot.
fn check_instance(name: &str) -> Result<(), String> {
    if name.chars().count() > MAX_INSTANCE_CHARS {
        return Err(format!("must be at most {MAX_INSTANCE_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not hold control characters".to_owned());
    }
    Ok(())
}

/// Where the Safe's records are, and so where its generated instance name is kept.
#[derive(Clone, Copy)]
pub enum Records<'a> {
    /// A data directory of its own (file [`INSTANCE_FILE`]).
    Dir(&'a Path),
    /// A database several Safes share: they write the same copies, so they share one name.
    Shared(&'a dyn aegis_store::SharedLog),
}

/// The instance name kept in the database the Safe shares with others,
/// generated by the first of them.
fn kept_in_database(log: &dyn aegis_store::SharedLog) -> Result<String, CliError> {
    let name = log
        .keep_setting(INSTANCE_FILE, &generated_instance())
        .map_err(|e| CliError::new(CONFIG, format!("cannot read the k8s: instance name kept in the database: {e}")))?;
    check_instance(&name).map_err(|why| {
        CliError::new(
            CONFIG,
            format!("the k8s: instance name kept in the database (table aegis_settings) {why}; set --k8s-instance"),
        )
    })?;
    Ok(name)
}

/// The instance name kept in `data_dir`, generated on first use. It belongs to the
/// data: two Safes with their own data directories never share it (so neither takes
/// the other's Secrets for orphans), and restarts, new pods and upgrades keep it.
fn kept_instance(data_dir: &Path) -> Result<String, CliError> {
    let path = data_dir.join(INSTANCE_FILE);
    let bad = |why: String| {
        CliError::new(
            CONFIG,
            format!(
                "the k8s: instance name in {}: {why}; fix or delete the file, or set --k8s-instance",
                path.display()
            ),
        )
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let name = text.trim();
            if name.is_empty() {
                return Err(bad("the file is empty".to_owned()));
            }
            check_instance(name).map_err(|why| bad(format!("the name {why}")))?;
            Ok(name.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = generated_instance();
            std::fs::create_dir_all(data_dir).map_err(|e| bad(e.to_string()))?;
            aegis_fs::write_atomic(&path, format!("{name}\n").as_bytes(), 0o600).map_err(|e| bad(e.to_string()))?;
            tracing::info!(instance = %name, file = %path.display(), "generated this Safe's k8s: instance name");
            Ok(name)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// `aegis-` and 16 random hex digits.
fn generated_instance() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("aegis-{hex}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(instance: Option<&str>) -> KubeArgs {
        KubeArgs { instance: instance.map(str::to_owned), ..KubeArgs::default() }
    }

    #[test]
    fn the_default_instance_is_generated_once_per_data_directory() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let budget = aegis_core::transform::Budget::default();
        let first = args(None).config(budget, Records::Dir(a.path())).unwrap().instance;
        assert!(first.starts_with("aegis-") && first.len() == 22, "{first}");
        assert_eq!(
            args(Some("  ")).config(budget, Records::Dir(a.path())).unwrap().instance,
            first,
            "kept, and empty is unset"
        );
        assert_ne!(
            args(None).config(budget, Records::Dir(b.path())).unwrap().instance,
            first,
            "another Safe, another name"
        );
        assert_eq!(args(Some(" team/safe ")).config(budget, Records::Dir(a.path())).unwrap().instance, "team/safe");
    }

    #[test]
    fn a_kubernetes_api_is_a_kubeconfig_or_a_pod_with_a_token() {
        let d = tempfile::tempdir().unwrap();
        let (token, missing) = (d.path().join("token"), d.path().join("missing"));
        std::fs::write(&token, "t").unwrap();
        let kc = Path::new("/k/config");
        assert_eq!(KubeApi::detect(Some(kc), None, &missing), KubeApi::Kubeconfig(kc.to_path_buf()));
        assert_eq!(KubeApi::detect(Some(kc), Some("10.0.0.1"), &token), KubeApi::Kubeconfig(kc.to_path_buf()));
        assert_eq!(KubeApi::detect(Some(Path::new("")), Some("10.0.0.1"), &token), KubeApi::InCluster);
        assert_eq!(KubeApi::detect(None, Some("10.0.0.1"), &missing), KubeApi::Absent, "no token: no API");
        assert_eq!(KubeApi::detect(None, Some(" "), &token), KubeApi::Absent, "no service host: not a pod");
        assert_eq!(KubeApi::detect(None, None, &token), KubeApi::Absent);
    }

    #[test]
    fn the_sync_switch_is_on_off_or_unset() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            kube: KubeArgs,
        }
        let parse = |args: &[&str]| {
            let mut argv = vec!["aegis"];
            argv.extend(args);
            Cmd::try_parse_from(argv).map(|c| c.kube.k8s_secrets)
        };
        assert_eq!(parse(&["--k8s-secrets"]).unwrap(), Some(true));
        assert_eq!(parse(&["--k8s-secrets=true"]).unwrap(), Some(true));
        assert_eq!(parse(&["--k8s-secrets=false"]).unwrap(), Some(false));
        assert_eq!(parse(&["--k8s-secrets=off"]).unwrap(), Some(false));
        assert!(parse(&["--k8s-secrets=maybe"]).is_err());
    }

    #[test]
    fn bad_instance_names_are_configuration_errors() {
        let d = tempfile::tempdir().unwrap();
        let budget = aegis_core::transform::Budget::default();
        for bad in ["a\u{1b}[2Kb", &"x".repeat(MAX_INSTANCE_CHARS + 1)] {
            let e = args(Some(bad)).config(budget, Records::Dir(d.path())).err().unwrap();
            assert_eq!(e.code, CONFIG);
            assert!(e.message.contains("AEGIS_K8S_INSTANCE"), "{}", e.message);
        }
        std::fs::write(d.path().join(INSTANCE_FILE), "\n").unwrap();
        let e = args(None).config(budget, Records::Dir(d.path())).err().unwrap();
        assert!(e.message.contains(INSTANCE_FILE) && e.message.contains("--k8s-instance"), "{}", e.message);
    }
}
