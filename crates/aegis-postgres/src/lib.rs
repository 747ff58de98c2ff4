//! The PostgreSQL adapter of the storage port ([`aegis_store::Backend`]).
//!
//! PostgreSQL holds only what the directory store holds: sealed records (the
//! envelope of `aegis_store::record`, bound to name, revision and key id) under
//! their secret names, and records set aside with the reason. A `pg_dump`
//! holds no plaintext. Every write is one transaction, acknowledged after its
//! COMMIT; a group is one transaction, so it is all or nothing for real.
//! Each write also takes the next number of the change sequence
//! (`aegis_change_seq`), the order in which replicas will learn of changes.
//!
//! The port is blocking (see `aegis_store::backend`): this adapter owns a small
//! Tokio runtime that drives the client and the pool, and each call hands its
//! query to that runtime and waits for the answer, so it works from the
//! store's blocking threads and from anywhere else. Every call has a deadline.
//! Schema migrations run at start-up under an advisory lock.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use aegis_core::SecretName;
use aegis_store::{Backend, GroupError, Listing, SealedRecord, SetAside, StoreError, Unnamed};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;

mod migrate;

/// Default longest time one call (a query or a transaction) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default connections in the pool.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user@host:port/db?sslmode=…` (keep the password out of it: see `password_file`).
    pub url: String,
    /// A file holding the password (a mounted Kubernetes Secret).
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates that sign the server's certificate (TLS with rustls).
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest time one call may take (connecting included).
    pub timeout: Duration,
}

impl PgSettings {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password_file: None,
            ca_file: None,
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why the database cannot be used (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The settings are wrong; the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    /// The database could not be reached or refused us.
    #[error("PostgreSQL at {target}: {why}")]
    Unreachable {
        /// Host, port and database (never the password).
        target: String,
        /// What failed.
        why: String,
    },
}

/// Sealed records in a PostgreSQL database.
pub struct PgBackend {
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    target: String,
    timeout: Duration,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgBackend({})", self.target)
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused on an async thread: let it go in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgBackend {
    /// Connects, checks the database answers, and brings its schema up to date.
    pub fn open(settings: &PgSettings) -> Result<Self, PgError> {
        let mut config: tokio_postgres::Config = settings.url.parse().map_err(|e| {
            PgError::Config(format!(
                "the store URL is not a PostgreSQL URL ({e}); it must look like postgres://user@host:5432/db"
            ))
        })?;
        if let Some(path) = &settings.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                PgError::Config(format!("cannot read the database password file {}: {e}", path.display()))
            })?;
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(PgError::Config(format!("the database password file {} is empty", path.display())));
            }
            config.password(password);
        }
        config.connect_timeout(settings.timeout);
        config.application_name("aegis");
        let target = describe(&config);
        let tls = tls(settings, &config)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("aegis-postgres")
            .enable_all()
            .build()
            .map_err(|e| PgError::Config(format!("cannot start the database runtime: {e}")))?;
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = {
            let _in = rt.enter();
            Pool::builder(manager)
                .max_size(settings.pool_size.max(1))
                .wait_timeout(Some(settings.timeout))
                .create_timeout(Some(settings.timeout))
                .recycle_timeout(Some(settings.timeout))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| PgError::Config(format!("cannot build the connection pool: {e}")))?
        };
        let backend = Self { rt: Some(rt), pool, target, timeout: settings.timeout };
        let pool = backend.pool.clone();
        backend
            .run(async move { migrate::run(&pool).await })
            .and_then(|r| r)
            .map_err(|why| PgError::Unreachable { target: backend.target.clone(), why })?;
        Ok(backend)
    }

    /// Runs `fut` on the adapter's runtime and waits for it, at most the call deadline.
    fn run<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, String> {
        let Some(rt) = &self.rt else { return Err("the database runtime has stopped".to_owned()) };
        let (tx, rx) = mpsc::sync_channel(1);
        let deadline = self.timeout;
        rt.spawn(async move {
            let r = tokio::time::timeout(deadline, fut).await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(format!("no answer within {} ms", deadline.as_millis())),
            Err(_) => Err("the database runtime has stopped".to_owned()),
        }
    }

    fn unavailable(&self, name: &str, why: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { what: format!("PostgreSQL at {} ({name})", self.target), why: why.to_string() }
    }

    /// Writes `records` in one transaction; each takes the next change number.
    fn write_all(&self, records: &[SealedRecord]) -> Result<(), StoreError> {
        let first = records.first().map(|(n, _)| n.to_string()).unwrap_or_default();
        let rows: Vec<(String, Vec<u8>)> = records.iter().map(|(n, b)| (n.to_string(), b.clone())).collect();
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(|e| e.to_string())?;
            let tx = client.transaction().await.map_err(|e| e.to_string())?;
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO aegis_records (name, record, seq, updated_at) \
                     VALUES ($1, $2, nextval('aegis_change_seq'), now()) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record, seq = EXCLUDED.seq, \
                     updated_at = EXCLUDED.updated_at",
                )
                .await
                .map_err(|e| e.to_string())?;
            for (name, bytes) in &rows {
                tx.execute(&upsert, &[name, bytes]).await.map_err(|e| e.to_string())?;
            }
            tx.commit().await.map_err(|e| e.to_string())
        })
        .and_then(|r| r)
        .map_err(|why| self.unavailable(&first, why))
    }
}

impl Backend for PgBackend {
    fn list(&self) -> Result<Listing, StoreError> {
        let pool = self.pool.clone();
        let names = self
            .run(async move {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                let rows = client.query("SELECT name FROM aegis_records", &[]).await.map_err(|e| e.to_string())?;
                Ok::<Vec<String>, String>(rows.iter().map(|r| r.get::<_, String>(0)).collect())
            })
            .and_then(|r| r)
            .map_err(|why| self.unavailable("listing", why))?;
        let mut listing = Listing::default();
        for n in names {
            match SecretName::parse_stored(&n) {
                Ok(name) => listing.names.push(name),
                Err(e) => {
                    listing.unnamed.push(Unnamed { locator: format!("aegis_records row {n:?}"), reason: e.to_string() })
                }
            }
        }
        Ok(listing)
    }

    fn read(&self, name: &SecretName) -> Result<Vec<u8>, StoreError> {
        let pool = self.pool.clone();
        let key = name.to_string();
        let row = self
            .run(async move {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                let stmt = client
                    .prepare_cached("SELECT record FROM aegis_records WHERE name = $1")
                    .await
                    .map_err(|e| e.to_string())?;
                let row = client.query_opt(&stmt, &[&key]).await.map_err(|e| e.to_string())?;
                Ok::<Option<Vec<u8>>, String>(row.map(|r| r.get(0)))
            })
            .and_then(|r| r)
            .map_err(|why| self.unavailable(name.as_str(), why))?;
        row.ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    fn write_batch(&self, records: &[SealedRecord]) -> Vec<Result<(), StoreError>> {
        match self.write_all(records) {
            Ok(()) => records.iter().map(|_| Ok(())).collect(),
            Err(e) => records.iter().map(|_| Err(copy(&e))).collect(),
        }
    }

    fn write_group(&self, records: &[SealedRecord]) -> Result<(), GroupError> {
        self.write_all(records).map_err(|error| GroupError { stored: Vec::new(), error })
    }

    fn set_aside(&self, name: &SecretName, reason: &str) -> Result<SetAside, StoreError> {
        let pool = self.pool.clone();
        let (key, why) = (name.to_string(), reason.to_owned());
        let id = self
            .run(async move {
                let mut client = pool.get().await.map_err(|e| e.to_string())?;
                let tx = client.transaction().await.map_err(|e| e.to_string())?;
                let row = tx
                    .query_opt(
                        "WITH gone AS (DELETE FROM aegis_records WHERE name = $1 RETURNING name, record) \
                         INSERT INTO aegis_quarantine (name, record, reason) SELECT name, record, $2 FROM gone \
                         RETURNING id",
                        &[&key, &why],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())?;
                Ok::<Option<i64>, String>(row.map(|r| r.get(0)))
            })
            .and_then(|r| r)
            .map_err(|why| self.unavailable(name.as_str(), why))?;
        match id {
            Some(id) => Ok(SetAside { kept_at: format!("table aegis_quarantine, id {id}") }),
            None => Err(StoreError::NotFound(name.to_string())),
        }
    }

    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.target)
    }
}

/// A copy of a store error for each record of a failed batch.
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { what, why } => StoreError::Unavailable { what: what.clone(), why: why.clone() },
        other => StoreError::Io { name: String::new(), source: std::io::Error::other(other.to_string()) },
    }
}

/// Host, port and database, for logs and errors (never the password).
fn describe(c: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", c.get_dbname().unwrap_or("postgres"))
}

/// TLS with rustls: the server's certificate checked against `ca_file`.
fn tls(
    settings: &PgSettings,
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &settings.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| PgError::Config(format!("cannot read the database CA file {}: {e}", path.display())))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| PgError::Config(format!("a certificate of {} is not usable: {e}", path.display())))?;
        }
        if roots.is_empty() {
            return Err(PgError::Config(format!("the database CA file {} holds no certificate", path.display())));
        }
    } else if config.get_ssl_mode() == SslMode::Require {
        return Err(PgError::Config(
            "sslmode=require needs the CA that signs the database's certificate: give --store-ca-file".to_owned(),
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Config(format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}
