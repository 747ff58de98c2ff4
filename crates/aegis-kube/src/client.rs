//! One way to reach the Kubernetes API: `KUBECONFIG` (or `~/.kube/config`)
//! when set, else the in-cluster ServiceAccount.

use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::Client;

/// The Kubernetes API could not be reached or configured. Each message says
/// where the configuration came from and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No kubeconfig and not inside a cluster.
    #[error(
        "no Kubernetes configuration: set KUBECONFIG to a kubeconfig file, or run inside a pod with a \
         ServiceAccount ({0})"
    )]
    NoConfig(String),
    /// The kubeconfig file is unusable.
    #[error("the kubeconfig {path} is unusable: {reason}; fix it or point KUBECONFIG elsewhere")]
    BadKubeconfig {
        /// The file.
        path: String,
        /// The parser's reason.
        reason: String,
    },
    /// The client could not be built from the configuration.
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
}

/// Builds a client from `kubeconfig` when given and not empty (the caller reads
/// `KUBECONFIG` in its configuration type), else from the in-cluster environment.
pub async fn connect(kubeconfig: Option<&std::path::Path>) -> Result<Client, ConnectError> {
    Client::try_from(config(kubeconfig).await?).map_err(|e| ConnectError::Client(e.to_string()))
}

/// Like [`connect`], with connecting to the API server, sending a request and
/// waiting for its answer each bounded by `timeout`.
pub async fn connect_with_timeout(
    kubeconfig: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> Result<Client, ConnectError> {
    let mut config = config(kubeconfig).await?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Client::try_from(config).map_err(|e| ConnectError::Client(e.to_string()))
}

async fn config(kubeconfig: Option<&std::path::Path>) -> Result<Config, ConnectError> {
    // An empty KUBECONFIG means unset, as kubectl reads it.
    match kubeconfig.filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => {
            let bad = |reason: String| ConnectError::BadKubeconfig { path: path.display().to_string(), reason };
            let file = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(|e| bad(e.to_string()))
        }
        None => Config::incluster().map_err(|e| ConnectError::NoConfig(e.to_string())),
    }
}
