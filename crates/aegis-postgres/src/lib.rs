//! The PostgreSQL adapter of the storage port ([`aegis_store::Backend`]).
//!
//! PostgreSQL holds only what the directory store holds: sealed records (the
//! envelope of `aegis_store::record`, bound to name, revision and key id) under
//! their secret names, and records set aside with the reason. A `pg_dump`
//! holds no plaintext. Every write is one transaction, acknowledged after its
//! COMMIT; a group is one transaction, so it is all or nothing for real.
//! Each write also takes the next number of the change sequence
//! (`aegis_change_seq`) under a transaction-scoped advisory lock, so that the
//! numbers follow the order of the commits, and notifies the channel
//! `aegis_changes` at its commit. Several Safes may share one database: a
//! write names the revision it expects the stored record to have and is
//! refused if another Safe changed it meanwhile (never a lost update), and
//! each Safe takes up the others' changes by change number
//! ([`aegis_store::SharedLog`]), at a notification or every second.
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
use aegis_crypto::KeyId;
use aegis_store::{Backend, GroupError, Listing, SealedRecord, SetAside, StoreError, Unnamed};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;

mod migrate;

/// The client this crate uses, for callers of [`connect`].
pub use tokio_postgres;

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
    notices: tokio::sync::watch::Receiver<u64>,
    /// This backend's name in the payload of its change notifications, so that
    /// it does not take its own commits for another Safe's.
    id: String,
    /// For the connection of each duty taken (see [`PgBackend::take_duty`]).
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// The channel a commit notifies.
const CHANNEL: &str = "aegis_changes";
/// The advisory lock that orders commits (and so change numbers): "aegiswri".
const WRITE_LOCK: i64 = 0x6165_6769_7377_7269;
/// The session advisory lock of the root key rotation duty: "aegisrot".
const ROTATION_LOCK: i64 = 0x6165_6769_7372_6f74;
/// The session advisory lock of the Kubernetes sync duty: "aegisk8s".
const SYNC_LOCK: i64 = 0x6165_6769_736b_3873;

/// A duty held: a session advisory lock on a connection of its own, released
/// when the connection closes (dropping this closes it; so does the Safe's death).
struct PgHeld {
    _client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl aegis_store::Held for PgHeld {
    fn still_held(&self) -> bool {
        !self.connection.is_finished()
    }
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        self.connection.abort();
    }
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
        let (config, target, tls) = prepare(settings, "aegis")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("aegis-postgres")
            .enable_all()
            .build()
            .map_err(|e| PgError::Config(format!("cannot start the database runtime: {e}")))?;
        let (notify, notices) = tokio::sync::watch::channel(0u64);
        let mut listen_config = config.clone();
        listen_config.application_name("aegis-listen");
        let id = format!("{:016x}", rand::random::<u64>());
        rt.spawn(listen(listen_config, tls.clone(), notify, id.clone()));
        let mut duty_config = config.clone();
        duty_config.application_name("aegis-duty");
        // A duty's connection lost without a word (a partition) must end soon, so another Safe can take it.
        duty_config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2));
        duty_config.keepalives_retries(3);
        let manager =
            Manager::from_config(config, tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
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
        let backend =
            Self { rt: Some(rt), pool, target, timeout: settings.timeout, notices, id, config: duty_config, tls };
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

    /// The revision stored for `name` (0: none, or unreadable).
    fn stored_revision(&self, name: &SecretName) -> u64 {
        let pool = self.pool.clone();
        let key = name.to_string();
        self.run(async move {
            let client = pool.get().await.ok()?;
            let row = client.query_opt("SELECT revision FROM aegis_records WHERE name = $1", &[&key]).await.ok()??;
            u64::try_from(row.get::<_, i64>(0)).ok()
        })
        .ok()
        .flatten()
        .unwrap_or(0)
    }

    fn unavailable(&self, name: &str, why: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { what: format!("PostgreSQL at {} ({name})", self.target), why: why.to_string() }
    }

    /// Writes `records` in one transaction; each takes the next change number
    /// and must find its `expected` stored revision (0: none). Nothing of the
    /// attempt is committed when it refuses some: see [`Refused`].
    fn attempt(&self, rows: Vec<Row>) -> Result<Refused, String> {
        let (pool, id) = (self.pool.clone(), self.id.clone());
        self.run(async move {
            let mut client = pool.get().await.map_err(|e| pool_error_text(&e))?;
            let tx = client.transaction().await.map_err(|e| e.to_string())?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]).await.map_err(|e| e.to_string())?;
            // Read after the lock (a statement of its own, so it sees a rotation committed while this waited).
            let sealing = sealing_key(&tx).await?;
            if let Some(k) = sealing {
                if rows.iter().any(|r| r.key_id.is_some_and(|id| id != k)) {
                    tx.rollback().await.map_err(|e| e.to_string())?;
                    return Ok(Refused::Retired(k));
                }
            }
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO aegis_records (name, record, revision, seq, updated_at) \
                     VALUES ($1, $2, $3, nextval('aegis_change_seq'), now()) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record, revision = EXCLUDED.revision, \
                     seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at \
                     WHERE aegis_records.revision = $4",
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut refused = Vec::new();
            for (i, r) in rows.iter().enumerate() {
                let n = tx
                    .execute(&upsert, &[&r.name, &r.bytes, &r.revision, &r.expected])
                    .await
                    .map_err(|e| e.to_string())?;
                // A new record (expected 0) may not replace one another Safe created meanwhile.
                if n == 0 {
                    refused.push(i);
                }
            }
            if !refused.is_empty() {
                tx.rollback().await.map_err(|e| e.to_string())?;
                return Ok(Refused::Changed(refused));
            }
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id]).await.map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            Ok(Refused::Changed(Vec::new()))
        })
        .and_then(|r| r)
    }

    /// The rows of `records`: name, bytes, revision and key id from the clear header, and the expected revision.
    fn rows(records: &[SealedRecord], expected: &[u64]) -> Vec<Row> {
        records
            .iter()
            .enumerate()
            .map(|(i, (name, bytes))| {
                let header = aegis_crypto::Keyring::header(name.as_str(), bytes).ok();
                Row {
                    name: name.to_string(),
                    bytes: bytes.clone(),
                    revision: to_i64(header.map_or(0, |h| h.revision)),
                    expected: to_i64(expected.get(i).copied().unwrap_or(0)),
                    key_id: header.map(|h| h.key_id),
                }
            })
            .collect()
    }

    /// Writes what it can of `records`: those another Safe changed since
    /// (their stored revision is not the expected one) are refused, the others
    /// committed together.
    fn write_expecting(&self, records: &[SealedRecord], expected: &[u64]) -> Vec<Result<(), StoreError>> {
        let first = records.first().map(|(n, _)| n.to_string()).unwrap_or_default();
        let rows = Self::rows(records, expected);
        let mut results: Vec<Result<(), StoreError>> = records.iter().map(|_| Ok(())).collect();
        let mut todo: Vec<usize> = (0..records.len()).collect();
        // Each attempt that refuses some is rolled back and made again without
        // them: fewer every time, so this ends.
        loop {
            let attempt: Vec<_> = todo.iter().map(|&i| rows[i].clone()).collect();
            match self.attempt(attempt) {
                Ok(Refused::Changed(refused)) if refused.is_empty() => return results,
                Ok(Refused::Changed(refused)) => {
                    for &k in &refused {
                        let i = todo[k];
                        results[i] = Err(StoreError::Changed(records[i].0.to_string()));
                    }
                    todo = todo.iter().enumerate().filter(|(k, _)| !refused.contains(k)).map(|(_, &i)| i).collect();
                    if todo.is_empty() {
                        return results;
                    }
                }
                Ok(Refused::Retired(sealing)) => {
                    for &i in &todo {
                        results[i] = Err(StoreError::KeyRetired { name: records[i].0.to_string(), sealing });
                    }
                    return results;
                }
                Err(why) => {
                    let e = self.unavailable(&first, why);
                    for &i in &todo {
                        results[i] = Err(copy(&e));
                    }
                    return results;
                }
            }
        }
    }
}

/// One record as written: name, sealed bytes, its revision and key id (from
/// the clear header; none for bytes that are not a sealed record), and the
/// revision it expects stored.
#[derive(Clone)]
struct Row {
    name: String,
    bytes: Vec<u8>,
    revision: i64,
    expected: i64,
    key_id: Option<KeyId>,
}

/// What an attempt refused (and so did not commit).
enum Refused {
    /// These rows (indexes) were changed by another Safe; none: committed.
    Changed(Vec<usize>),
    /// The records are sealed under a key the Safes no longer seal under; this is the one they do.
    Retired(KeyId),
}

/// The sealing key set in the database, if any.
async fn sealing_key(c: &impl deadpool_postgres::GenericClient) -> Result<Option<KeyId>, String> {
    let row = c.query_opt("SELECT key_id FROM aegis_sealing_key", &[]).await.map_err(|e| e.to_string())?;
    match row {
        None => Ok(None),
        Some(r) => {
            let bytes: Vec<u8> = r.get(0);
            let id: [u8; 8] = bytes
                .try_into()
                .map_err(|_| "the table aegis_sealing_key holds a key id that is not 8 bytes long".to_owned())?;
            Ok(Some(KeyId(id)))
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Listens on [`CHANNEL`] for as long as the runtime lives, ticking `notify`
/// at each notification of another backend (not `own`) and after each
/// (re)connection, when notifications may have been missed; reconnects with backoff.
async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    notify: tokio::sync::watch::Sender<u64>,
    own: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                backoff = Duration::from_millis(100);
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let own = own.clone();
                let pump = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                            // Its own commits are in this Safe's memory already.
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) if n.payload() == own => {}
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                if tx.send(()).is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return,
                        }
                    }
                });
                if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                    notify.send_modify(|n| *n += 1);
                    while rx.recv().await.is_some() {
                        notify.send_modify(|n| *n += 1);
                    }
                }
                pump.abort();
                tracing::warn!("lost the database's change notifications; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for the database's change notifications; retrying"),
        }
        if notify.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl aegis_store::SharedLog for PgBackend {
    fn changes_since(&self, after: u64, max: usize) -> Result<aegis_store::Changes, StoreError> {
        let pool = self.pool.clone();
        let (from, limit) = (to_i64(after), i64::try_from(max).unwrap_or(i64::MAX));
        let rows = self
            .run(async move {
                let client = pool.get().await.map_err(|e| pool_error_text(&e))?;
                let rows = client
                    .query(
                        "SELECT name, record, seq FROM aegis_records WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&from, &limit],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                // Read after the records: a record sealed under a new key was committed after the key was
                // set, so this read sees that key.
                let sealing = sealing_key(&client).await?;
                let rows: Vec<(String, Vec<u8>, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
                Ok::<_, String>((rows, sealing))
            })
            .and_then(|r| r)
            .map_err(|why| self.unavailable("change log", why))?;
        let (rows, sealing_key) = rows;
        let mut changes = aegis_store::Changes { records: Vec::with_capacity(rows.len()), last: after, sealing_key };
        for (name, bytes, seq) in rows {
            changes.last = changes.last.max(u64::try_from(seq).unwrap_or(0));
            match SecretName::parse_stored(&name) {
                Ok(n) => changes.records.push((n, bytes)),
                Err(e) => tracing::error!(row = %name, reason = %e, "a record row cannot be named; skipped"),
            }
        }
        Ok(changes)
    }

    fn notices(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notices.clone()
    }

    fn take_duty(&self, duty: aegis_store::Duty) -> Result<Option<Box<dyn aegis_store::Held>>, StoreError> {
        let lock = match duty {
            aegis_store::Duty::RootKeyRotation => ROTATION_LOCK,
            aegis_store::Duty::KubernetesSync => SYNC_LOCK,
        };
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let held = self
            .run(async move {
                let (client, conn) = config.connect(tls).await.map_err(|e| e.to_string())?;
                let connection = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await;
                match row.map(|r| r.get::<_, bool>(0)) {
                    Ok(true) => Ok(Some(PgHeld { _client: client, connection })),
                    Ok(false) => {
                        connection.abort();
                        Ok(None)
                    }
                    Err(e) => {
                        connection.abort();
                        Err(e.to_string())
                    }
                }
            })
            .and_then(|r| r)
            .map_err(|why| self.unavailable("duty lock", why))?;
        Ok(held.map(|h| Box::new(h) as Box<dyn aegis_store::Held>))
    }

    fn keep_setting(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let pool = self.pool.clone();
        let (name, value) = (name.to_owned(), value.to_owned());
        self.run(async move {
            let client = pool.get().await.map_err(|e| pool_error_text(&e))?;
            client
                .execute(
                    "INSERT INTO aegis_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &value],
                )
                .await
                .map_err(|e| e.to_string())?;
            let row = client
                .query_one("SELECT value FROM aegis_settings WHERE name = $1", &[&name])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<String, String>(row.get(0))
        })
        .and_then(|r| r)
        .map_err(|why| self.unavailable("settings", why))
    }

    fn seal_under(&self, key: KeyId, mode: aegis_store::SealUnder) -> Result<KeyId, StoreError> {
        let (pool, id) = (self.pool.clone(), self.id.clone());
        let sql = match mode {
            aegis_store::SealUnder::IfUnset => {
                "INSERT INTO aegis_sealing_key (key_id) VALUES ($1) ON CONFLICT (only_row) DO NOTHING"
            }
            aegis_store::SealUnder::Replace => {
                "INSERT INTO aegis_sealing_key (key_id) VALUES ($1) \
                 ON CONFLICT (only_row) DO UPDATE SET key_id = EXCLUDED.key_id, set_at = now()"
            }
        };
        self.run(async move {
            let mut client = pool.get().await.map_err(|e| pool_error_text(&e))?;
            let tx = client.transaction().await.map_err(|e| e.to_string())?;
            // In commit order: a commit after this one sees the key.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]).await.map_err(|e| e.to_string())?;
            tx.execute(sql, &[&key.0.as_slice()]).await.map_err(|e| e.to_string())?;
            let now = sealing_key(&tx).await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id]).await.map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            now.ok_or_else(|| "the sealing key was not stored".to_owned())
        })
        .and_then(|r| r)
        .map_err(|why| self.unavailable("sealing key", why))
    }
}

impl Backend for PgBackend {
    fn list(&self) -> Result<Listing, StoreError> {
        let pool = self.pool.clone();
        let names = self
            .run(async move {
                let client = pool.get().await.map_err(|e| pool_error_text(&e))?;
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
                let client = pool.get().await.map_err(|e| pool_error_text(&e))?;
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

    /// Without expected revisions (a tool writing alone): each record replaces whatever is stored.
    fn write_batch(&self, records: &[SealedRecord]) -> Vec<Result<(), StoreError>> {
        let stored: Vec<u64> = records.iter().map(|(n, _)| self.stored_revision(n)).collect();
        self.write_expecting(records, &stored)
    }

    fn write_group(&self, records: &[SealedRecord]) -> Result<(), GroupError> {
        let stored: Vec<u64> = records.iter().map(|(n, _)| self.stored_revision(n)).collect();
        self.write_group_expecting(records, &stored)
    }

    fn write_batch_expecting(&self, records: &[SealedRecord], expected: &[u64]) -> Vec<Result<(), StoreError>> {
        self.write_expecting(records, expected)
    }

    fn write_group_expecting(&self, records: &[SealedRecord], expected: &[u64]) -> Result<(), GroupError> {
        let first = records.first().map(|(n, _)| n.to_string()).unwrap_or_default();
        let error = match self.attempt(Self::rows(records, expected)) {
            Ok(Refused::Changed(refused)) if refused.is_empty() => return Ok(()),
            Ok(Refused::Changed(refused)) => StoreError::Changed(records[refused[0]].0.to_string()),
            Ok(Refused::Retired(sealing)) => StoreError::KeyRetired { name: first, sealing },
            Err(why) => self.unavailable(&first, why),
        };
        Err(GroupError { stored: Vec::new(), error })
    }

    fn shared(&self) -> Option<&dyn aegis_store::SharedLog> {
        Some(self)
    }

    fn set_aside(&self, name: &SecretName, reason: &str) -> Result<SetAside, StoreError> {
        let pool = self.pool.clone();
        let (key, why) = (name.to_string(), reason.to_owned());
        let id = self
            .run(async move {
                let mut client = pool.get().await.map_err(|e| pool_error_text(&e))?;
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
    if let StoreError::Changed(n) = e {
        return StoreError::Changed(n.clone());
    }
    match e {
        StoreError::Unavailable { what, why } => StoreError::Unavailable { what: what.clone(), why: why.clone() },
        other => StoreError::Io { name: String::new(), source: std::io::Error::other(other.to_string()) },
    }
}

/// Host, port and database, for logs and errors (never the password).
/// The client settings for `settings`: the URL parsed, the password from its file, the
/// connect deadline and `application` set; with the target (host, port and database, never
/// the password) and the TLS connector. Errors say which setting is wrong.
fn prepare(
    settings: &PgSettings,
    application: &str,
) -> Result<(tokio_postgres::Config, String, tokio_postgres_rustls::MakeRustlsConnect), PgError> {
    let mut config: tokio_postgres::Config = settings.url.parse().map_err(|e| {
        PgError::Config(format!(
            "the database URL is not a PostgreSQL URL ({e}); it must look like postgres://user@host:5432/db"
        ))
    })?;
    if let Some(path) = &settings.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PgError::Config(format!("cannot read the database password file {}: {e}", path.display())))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(PgError::Config(format!("the database password file {} is empty", path.display())));
        }
        config.password(password);
    }
    config.connect_timeout(settings.timeout);
    config.application_name(application);
    let target = describe(&config);
    let tls = tls(settings, &config)?;
    Ok((config, target, tls))
}

/// One connection (no pool) for a short job, such as reading another program's table;
/// its driver runs on the caller's Tokio runtime until the client is dropped. Returns the
/// client and the target (host, port and database, never the password) for messages.
pub async fn connect(settings: &PgSettings, application: &str) -> Result<(tokio_postgres::Client, String), PgError> {
    let (config, target, tls) = prepare(settings, application)?;
    let (client, conn) = tokio::time::timeout(settings.timeout, config.connect(tls))
        .await
        .map_err(|_| PgError::Unreachable {
            target: target.clone(),
            why: format!("no answer within {} ms", settings.timeout.as_millis()),
        })?
        .map_err(|e| PgError::Unreachable { target: target.clone(), why: error_text(&e) })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok((client, target))
}

/// A client error with its cause: the server's message for a database error (such as
/// `password authentication failed for user "x"`), else the error and its sources
/// (`Display` alone says only "db error" or "invalid configuration").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    aegis_core::error::chain(e)
}

/// A pool error with its cause (a refused TLS certificate, a password refused).
pub(crate) fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(b) => error_text(b),
        other => aegis_core::error::chain(other),
    }
}

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
            "sslmode=require needs the CA that signs the database's certificate: give it with --store-ca-file \
             (--postgres-ca-file for aegis import vsecm)"
                .to_owned(),
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
