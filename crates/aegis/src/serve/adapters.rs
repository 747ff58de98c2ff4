//! The one place the Safe's adapters are opened: the store of sealed records
//! (the data directory, or PostgreSQL with `--store-url`), the root key store (chosen by
//! [`root_key_mode`](crate::serve::server::root_key_mode)) and the
//! Kubernetes Secret sync of `k8s:` secrets. The server crate takes them
//! injected and never opens one itself, so a new backend is one adapter here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aegis_core::transform::Budget;
use aegis_server::{Adapters, RootKeyMode};
use aegis_store::{Backend, DirBackend};

use crate::exit::{CliError, CONFIG};
use crate::serve::kube::KubeArgs;

/// Where the Safe keeps its sealed records.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Keep the sealed records in PostgreSQL (`postgres://USER@HOST:5432/DB?sslmode=…`) instead
    /// of the data directory, which still holds the audit trail. Put the password in
    /// --store-password-file, not in the URL.
    #[arg(long, env = "AEGIS_STORE_URL", value_name = "URL")]
    pub store_url: Option<String>,
    /// A file holding the database password (a mounted Kubernetes Secret).
    #[arg(long, env = "AEGIS_STORE_PASSWORD_FILE", value_name = "FILE", requires = "store_url")]
    pub store_password_file: Option<PathBuf>,
    /// PEM CA certificates that sign the database's certificate (TLS with rustls; needed for sslmode=require).
    #[arg(long, env = "AEGIS_STORE_CA_FILE", value_name = "FILE", requires = "store_url")]
    pub store_ca_file: Option<PathBuf>,
    /// Longest one database call may take, connecting included, in milliseconds.
    #[arg(long, env = "AEGIS_STORE_TIMEOUT_MS", default_value_t = aegis_postgres::DEFAULT_TIMEOUT.as_millis() as u64)]
    pub store_timeout_ms: u64,
    /// Database connections the Safe holds at most.
    #[arg(long, env = "AEGIS_STORE_POOL_SIZE", default_value_t = aegis_postgres::DEFAULT_POOL_SIZE as u16,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub store_pool_size: u16,
}

/// Opens the records (in `data_dir`, or where `store` says) and the sync
/// `kube` asks for, with the root key store already chosen.
pub async fn open(
    data_dir: &Path,
    store: &StoreArgs,
    kube: &KubeArgs,
    root_key: RootKeyMode,
    budget: Budget,
) -> Result<Adapters, CliError> {
    let backend = match &store.store_url {
        Some(url) => postgres(url, store).await?,
        None => backend(data_dir)?,
    };
    let records = match backend.shared() {
        Some(log) => crate::serve::kube::Records::Shared(log),
        None => crate::serve::kube::Records::Dir(data_dir),
    };
    let sync = kube.sync(budget, records).await?;
    Ok(Adapters { backend, root_key, sync: Some(sync) })
}

/// The store of sealed records in PostgreSQL: connected, its schema migrated.
async fn postgres(url: &str, a: &StoreArgs) -> Result<Arc<dyn Backend>, CliError> {
    let settings = aegis_postgres::PgSettings {
        url: url.to_owned(),
        password_file: a.store_password_file.clone(),
        ca_file: a.store_ca_file.clone(),
        pool_size: usize::from(a.store_pool_size),
        timeout: Duration::from_millis(a.store_timeout_ms),
    };
    let pg = tokio::task::spawn_blocking(move || aegis_postgres::PgBackend::open(&settings))
        .await
        .map_err(|_| CliError::new(CONFIG, "the thread opening the database failed"))?
        .map_err(|e| CliError::new(CONFIG, format!("cannot use the record store: {e}")))?;
    tracing::info!(store = %aegis_store::Backend::describe(&pg), "records in PostgreSQL");
    Ok(Arc::new(pg))
}

/// The store of sealed records in `data_dir` (created, mode 0700, if absent).
pub fn backend(data_dir: &Path) -> Result<Arc<dyn Backend>, CliError> {
    let dir = DirBackend::open(data_dir).map_err(|e| CliError::new(CONFIG, e.to_string()))?;
    Ok(Arc::new(dir))
}
