//! The one place the Safe's adapters are opened: the store of sealed records
//! (a directory today), the root key store (chosen by
//! [`root_key_mode`](crate::serve::server::root_key_mode)) and the
//! Kubernetes Secret sync of `k8s:` secrets. The server crate takes them
//! injected and never opens one itself, so a new backend is one adapter here.

use std::path::Path;
use std::sync::Arc;

use aegis_core::transform::Budget;
use aegis_server::{Adapters, RootKeyMode};
use aegis_store::{Backend, DirBackend};

use crate::exit::{CliError, CONFIG};
use crate::serve::kube::KubeArgs;

/// Opens the records in `data_dir` and the sync `kube` asks for, with the
/// root key store already chosen.
pub async fn open(
    data_dir: &Path,
    kube: &KubeArgs,
    root_key: RootKeyMode,
    budget: Budget,
) -> Result<Adapters, CliError> {
    let backend = backend(data_dir)?;
    let sync = kube.sync(budget, data_dir).await?;
    Ok(Adapters { backend, root_key, sync: Some(sync) })
}

/// The store of sealed records in `data_dir` (created, mode 0700, if absent).
pub fn backend(data_dir: &Path) -> Result<Arc<dyn Backend>, CliError> {
    let dir = DirBackend::open(data_dir).map_err(|e| CliError::new(CONFIG, e.to_string()))?;
    Ok(Arc::new(dir))
}
