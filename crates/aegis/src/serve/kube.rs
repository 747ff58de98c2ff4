//! `k8s:` secrets as Kubernetes Secrets: the settings, and the sync built
//! from them (crate `aegis-kube`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aegis_kube::{SyncConfig, Syncer};
use aegis_server::SecretSync;
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
    /// The name of this Safe among Safes writing to one cluster: it changes only Secrets annotated with it.
    #[arg(long = "k8s-instance", env = "AEGIS_K8S_INSTANCE", default_value = "default")]
    pub instance: String,
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
    #[arg(long = "kubeconfig", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl KubeArgs {
    /// The sync configuration, with the Safe's template budget.
    pub fn config(&self, budget: aegis_core::transform::Budget) -> Result<SyncConfig, CliError> {
        let instance = self.instance.trim();
        if instance.is_empty() || instance.len() > 63 {
            return Err(CliError::new(CONFIG, "--k8s-instance (AEGIS_K8S_INSTANCE) must be 1 to 63 characters"));
        }
        Ok(SyncConfig {
            instance: instance.to_owned(),
            keep_on_delete: self.keep_on_delete,
            check_timeout: Duration::from_millis(self.check_timeout_ms),
            template_budget: budget,
            max_namespaces: self.max_namespaces,
            render_threads: self.render_threads,
            ..SyncConfig::default()
        })
    }

    /// The sync when enabled, connected to the Kubernetes API.
    pub async fn sync(&self, budget: aegis_core::transform::Budget) -> Result<Option<Arc<dyn SecretSync>>, CliError> {
        if !self.k8s_secrets {
            return Ok(None);
        }
        let cfg = self.config(budget)?;
        let client = aegis_kube::connect(self.kubeconfig.as_deref())
            .await
            .map_err(|e| CliError::new(CONFIG, format!("--k8s-secrets needs the Kubernetes API: {e}")))?;
        Ok(Some(Arc::new(Syncer::new(client, cfg))))
    }
}
