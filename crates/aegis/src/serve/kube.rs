//! `k8s:` secrets as Kubernetes Secrets: the settings, and the sync built
//! from them (crate `aegis-kube`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aegis_kube::{SyncConfig, Syncer};
use aegis_store::SecretSync;
use clap::Args;

use crate::exit::{CliError, CONFIG};

/// Settings of the Kubernetes Secret sync (see docs/KUBERNETES.md).
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Keep every `k8s:NAME` secret as the Kubernetes Secret NAME in each of its namespaces.
    #[arg(long = "k8s-secrets", env = "AEGIS_K8S_SECRETS")]
    pub k8s_secrets: bool,
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
}

impl KubeArgs {
    /// The sync configuration, with the Safe's template budget and the instance
    /// name of the Safe whose records are in `data_dir`.
    pub fn config(&self, budget: aegis_core::transform::Budget, data_dir: &Path) -> Result<SyncConfig, CliError> {
        let instance = match self.instance.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
            Some(given) => {
                check_instance(given)
                    .map_err(|why| CliError::new(CONFIG, format!("--k8s-instance (AEGIS_K8S_INSTANCE) {why}")))?;
                given.to_owned()
            }
            None => kept_instance(data_dir)?,
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

    /// The sync when enabled, connected to the Kubernetes API.
    pub async fn sync(
        &self,
        budget: aegis_core::transform::Budget,
        data_dir: &Path,
    ) -> Result<Option<Arc<dyn SecretSync>>, CliError> {
        if !self.k8s_secrets {
            return Ok(None);
        }
        let cfg = self.config(budget, data_dir)?;
        let client = aegis_kube::connect(self.kubeconfig.as_deref())
            .await
            .map_err(|e| CliError::new(CONFIG, format!("--k8s-secrets needs the Kubernetes API: {e}")))?;
        Ok(Some(Arc::new(Syncer::new(client, cfg))))
    }
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
        let first = args(None).config(budget, a.path()).unwrap().instance;
        assert!(first.starts_with("aegis-") && first.len() == 22, "{first}");
        assert_eq!(args(Some("  ")).config(budget, a.path()).unwrap().instance, first, "kept, and empty is unset");
        assert_ne!(args(None).config(budget, b.path()).unwrap().instance, first, "another Safe, another name");
        assert_eq!(args(Some(" team/safe ")).config(budget, a.path()).unwrap().instance, "team/safe");
    }

    #[test]
    fn bad_instance_names_are_configuration_errors() {
        let d = tempfile::tempdir().unwrap();
        let budget = aegis_core::transform::Budget::default();
        for bad in ["a\u{1b}[2Kb", &"x".repeat(MAX_INSTANCE_CHARS + 1)] {
            let e = args(Some(bad)).config(budget, d.path()).err().unwrap();
            assert_eq!(e.code, CONFIG);
            assert!(e.message.contains("AEGIS_K8S_INSTANCE"), "{}", e.message);
        }
        std::fs::write(d.path().join(INSTANCE_FILE), "\n").unwrap();
        let e = args(None).config(budget, d.path()).err().unwrap();
        assert!(e.message.contains(INSTANCE_FILE) && e.message.contains("--k8s-instance"), "{}", e.message);
    }
}
