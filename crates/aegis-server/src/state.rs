//! What every request can reach: settings, role rules, the store (absent
//! while sealed) and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aegis_core::api::Rotated;
use aegis_core::roles::RoleRules;
use aegis_core::transform::Budget;
use aegis_crypto::{Keyring, RootKey};
use aegis_store::{Backend, KeyStoreError, LoadReport, RootKeyStore, SecretSync, Store, StoreOptions};
use arc_swap::ArcSwapOption;
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::error::StartError;
use crate::limits::{ConnLimitSettings, Gate};
use crate::metrics::Metrics;

/// Where the root key comes from.
#[derive(Debug, Clone)]
pub enum RootKeyMode {
    /// A store (a file, a Kubernetes Secret): generated on first start, rotatable.
    Stored(Arc<dyn RootKeyStore>),
    /// Memory only: the Safe starts sealed and an admin provides the key.
    Manual,
}

impl RootKeyMode {
    /// The store, unless the key is typed in.
    pub fn store(&self) -> Option<&Arc<dyn RootKeyStore>> {
        match self {
            Self::Stored(s) => Some(s),
            Self::Manual => None,
        }
    }
}

/// The adapters the Safe runs on, chosen and opened by the binary (see
/// `crates/aegis/src/serve/`): this crate never opens a store itself.
pub struct Adapters {
    /// Where sealed records live.
    pub backend: Arc<dyn Backend>,
    /// Where the root key comes from.
    pub root_key: RootKeyMode,
    /// Copies of `k8s:` secrets kept outside the Safe, if enabled.
    pub sync: Option<Arc<dyn SecretSync>>,
}

/// Everything the Safe is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// mTLS API address.
    pub listen: SocketAddr,
    /// Plain health/metrics address.
    pub health_listen: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Versions kept per secret.
    pub max_versions: usize,
    /// Longest time a request may take, including reading its body.
    pub request_timeout: Duration,
    /// Longest time a transfer (backup, restore, a backup's check) may take, streaming included.
    pub transfer_timeout: Duration,
    /// Largest backup file a restore or a check reads.
    pub max_restore_bytes: u64,
    /// Longest time a TLS handshake or request head may take; also how long a
    /// new connection may wait before its first request.
    pub handshake_timeout: Duration,
    /// Longest time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// Connection limits (unset ones follow the file descriptor limit).
    pub conn_limits: ConnLimitSettings,
    /// Role rules.
    pub roles: RoleRules,
    /// What rendering a template may cost (see SECURITY.md, "Template budgets").
    pub template_budget: Budget,
    /// The audit trail (see docs/AUDIT.md).
    pub audit: aegis_audit::SinkConfig,
    /// The built-in policies in force and the policy file's (see docs/POLICIES.md).
    pub policies: crate::policies::PolicySettings,
    /// The foreign trust domains whose clients are accepted (none by default).
    pub federation: Arc<aegis_identity::Federation>,
    /// Replication to and from other Safes (none by default; see docs/REPLICATION.md).
    pub replication: crate::replication::ReplicationSettings,
}

impl Settings {
    /// The settings of a Safe served in process, without sockets (unit tests,
    /// the fuzz targets): loopback addresses, the default limits, role rules
    /// and policies, no audit trail, no federation, no replication. Callers
    /// change what they need with struct update syntax.
    pub fn in_process() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let d = Duration::from_secs(10);
        Self {
            listen: any,
            health_listen: any,
            max_body_bytes: 64 * 1024,
            max_versions: 4,
            request_timeout: d,
            transfer_timeout: d,
            max_restore_bytes: 64 * 1024,
            handshake_timeout: d,
            idle_timeout: d,
            conn_limits: ConnLimitSettings::default(),
            roles: RoleRules::vsecm_defaults(),
            template_budget: Budget::default(),
            audit: aegis_audit::SinkConfig::new(None),
            policies: crate::policies::PolicySettings::default(),
            federation: Arc::new(aegis_identity::Federation::none()),
            replication: crate::replication::ReplicationSettings::default(),
        }
    }
}

/// Refused requests get at most one INFO line per this interval (ten a second).
pub const REFUSED_LOG_EVERY: Duration = Duration::from_millis(100);

/// Shared state of the Safe.
pub struct AppState {
    /// The settings.
    pub settings: Settings,
    store: ArcSwapOption<Store>,
    backend: Arc<dyn Backend>,
    root_key: RootKeyMode,
    unseal_lock: Mutex<()>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Connection limits and counts.
    pub gate: Arc<Gate>,
    /// Requests, watches and body bytes in flight.
    pub in_flight: crate::inflight::InFlight,
    /// Refused requests are logged at INFO at most this often (the rest at DEBUG).
    pub refused_log: crate::limits::LogLimiter,
    /// Copies of `k8s:` secrets kept outside the Safe, if enabled.
    sync: Option<Arc<dyn SecretSync>>,
    /// The audit trail.
    pub audit: aegis_audit::Sink,
    /// One backup, restore or check at a time.
    pub transfers: Arc<tokio::sync::Semaphore>,
    /// The policies in force.
    pub policies: Arc<crate::policies::Policies>,
    /// The per-identity request rates.
    pub quotas: crate::quota::Quotas,
    /// Where each replication link stands.
    pub replication: crate::replication::Links,
}

impl AppState {
    /// A sealed state over `adapters.backend` that keeps copies of `k8s:`
    /// secrets through `adapters.sync` (started at each unseal).
    pub fn new(settings: Settings, adapters: Adapters) -> Result<Arc<Self>, StartError> {
        let Adapters { backend, root_key, sync } = adapters;
        let audit = aegis_audit::Sink::start(settings.audit.clone()).map_err(|source| StartError::Audit {
            path: settings.audit.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            source,
        })?;
        let gate = Gate::new(settings.conn_limits.resolve(crate::limits::fd_soft_limit()));
        let in_flight = crate::inflight::InFlight::new(gate.limits());
        let policies = Arc::new(crate::policies::Policies::new(settings.policies.clone()));
        Ok(Arc::new(Self {
            replication: crate::replication::Links::new(&settings.replication),
            quotas: crate::quota::Quotas::new(settings.policies.rate),
            policies,
            gate,
            in_flight,
            refused_log: crate::limits::LogLimiter::new(REFUSED_LOG_EVERY),
            settings,
            store: ArcSwapOption::empty(),
            backend,
            root_key,
            unseal_lock: Mutex::new(()),
            metrics: Metrics::new(),
            sync,
            audit,
            transfers: Arc::new(tokio::sync::Semaphore::new(1)),
        }))
    }

    /// Where the root key comes from.
    pub fn root_key(&self) -> &RootKeyMode {
        &self.root_key
    }

    /// The sync of `k8s:` secrets, if enabled.
    pub fn sync(&self) -> Option<&dyn SecretSync> {
        self.sync.as_deref()
    }

    /// The store, or 503 while sealed.
    pub fn store(&self) -> Result<Arc<Store>, ApiError> {
        self.store.load_full().ok_or_else(ApiError::sealed)
    }

    /// How many sealed records the backend holds (readable or not): a root
    /// key store that lost its key must not get a new one over them.
    pub async fn sealed_records(&self) -> Result<usize, StartError> {
        let backend = self.backend.clone();
        let listed = tokio::task::spawn_blocking(move || backend.list())
            .await
            .map_err(|_| StartError::Load(format!("listing the records in {} failed", self.backend.describe())))??;
        Ok(listed.names.len() + listed.unnamed.len())
    }

    /// Makes every acknowledged write durable in its final place (a journal's
    /// checkpoint), at shutdown: the next start then has nothing to replay.
    pub async fn flush_store(&self) {
        let backend = self.backend.clone();
        match tokio::task::spawn_blocking(move || backend.flush()).await {
            Ok(Ok(())) => tracing::info!("store flushed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the store could not be flushed at shutdown; the next start replays its journal")
            }
            Err(_) => tracing::warn!("the store's flushing thread failed; the next start replays its journal"),
        }
    }

    /// Whether the backend is shared with other Safes (a database).
    pub fn backend_is_shared(&self) -> bool {
        self.backend.shared().is_some()
    }

    /// Whether a root key is loaded.
    pub fn is_sealed(&self) -> bool {
        self.store.load().is_none()
    }

    /// Loads the store with `keyring`. Returns `false` if already unsealed with the same key.
    pub async fn unseal(&self, keyring: Keyring) -> Result<(bool, LoadReport), ApiError> {
        let _guard = self.unseal_lock.lock().await;
        if let Some(store) = self.store.load_full() {
            return if store.keyring().current().id() == keyring.current().id() {
                Ok((false, LoadReport::default()))
            } else {
                Err(ApiError::conflict("the Safe is already unsealed with another root key"))
            };
        }
        let opts = StoreOptions {
            max_versions: self.settings.max_versions,
            template_budget: self.settings.template_budget,
            barrier: self
                .audit
                .is_on()
                .then(|| Arc::new(Trail(self.audit.clone())) as Arc<dyn aegis_store::CommitBarrier>),
            keys: self.root_key.store().cloned(),
            // A source finds the changes after a replica's position without a scan.
            index_changes: !self.settings.replication.replicas.is_empty(),
            ..StoreOptions::default()
        };
        let backend = self.backend.clone();
        let audit_key = keyring.current().audit_key();
        let (store, report) = Store::open(backend, keyring, opts).await?;
        self.audit.set_key(audit_key);
        tokio::spawn(follow_audit_key(store.key_changes(), self.audit.clone()));
        if !report.quarantined.is_empty() {
            tracing::error!(count = report.quarantined.len(), "some records could not be opened and were quarantined");
        }
        if !report.legacy_names.is_empty() {
            tracing::warn!(
                count = report.legacy_names.len(),
                "some secrets have names the current rule refuses (see docs/SECURITY.md, \"Secret names\"); rename them"
            );
        }
        if report.transform_failures > 0 {
            tracing::error!(
                count = report.transform_failures,
                "some secrets have a stored template over the template budget; their workloads get an error"
            );
        }
        self.metrics.secrets.set(store.len() as i64);
        self.metrics.transform_failures.set(store.transform_failures() as i64);
        if let Some(sync) = &self.sync {
            if self.backend.shared().is_some() && sync.keeps_copies() {
                // One Safe among those sharing the database writes the copies.
                sync.pause(true);
                tokio::spawn(lead_sync(self.backend.clone(), sync.clone(), store.clone()));
            } else {
                sync.start(store.clone());
            }
        }
        // The stored policies are in force before the first request is served.
        self.policies.reload(&store).await;
        self.policies.follow(&store);
        self.store.store(Some(Arc::new(store)));
        self.metrics.sealed.set(0);
        tracing::info!(secrets = report.loaded, "Safe unsealed");
        Ok((true, report))
    }

    /// Generates a new root key and re-seals every record under it. If an
    /// earlier rotation is unfinished (the store holds a next key), its key is
    /// reused: records may already be sealed under it, so it must never be
    /// replaced.
    pub async fn rotate_root_key(&self) -> Result<Rotated, ApiError> {
        let Some(keys) = self.root_key.store() else {
            return Err(ApiError::bad_request(
                "root key rotation needs a root key store (--root-key-file or --root-key-store kubernetes); in \
                 manual mode, export the secrets and restart with a new key",
            ));
        };
        let _guard = self.unseal_lock.lock().await;
        self.store()?;
        let Some(_duty) = self.rotation_duty().await? else {
            return Err(ApiError::conflict(
                "another Safe sharing the database is rotating the root key now; nothing was changed: retry when it \
                 has finished (aegis status shows the key id)",
            ));
        };
        let (new, fresh) = match keys.read_next().await.map_err(internal)? {
            Some(pending) => {
                tracing::warn!(
                    key_id = %pending.id(),
                    "an earlier root key rotation is unfinished; finishing it with its key instead of generating a new one"
                );
                (pending, false)
            }
            None => {
                let new = Arc::new(RootKey::generate());
                keys.write_next(new.clone()).await.map_err(internal)?;
                (new, true)
            }
        };
        self.rotate_to(keys.as_ref(), new, fresh).await
    }

    /// Finishes an unfinished rotation: re-seals every record under the
    /// store's next key and makes it the root key. `None` if there is none.
    pub async fn finish_rotation(&self) -> Result<Option<Rotated>, ApiError> {
        let Some(keys) = self.root_key.store() else {
            return Ok(None);
        };
        let _guard = self.unseal_lock.lock().await;
        let Some(_duty) = self.rotation_duty().await? else {
            return Err(ApiError::unavailable(
                "another Safe sharing the database is rotating the root key now; this Safe finishes the rotation \
                 later if it is still unfinished",
            ));
        };
        match keys.read_next().await.map_err(internal)? {
            Some(next) => self.rotate_to(keys.as_ref(), next, false).await.map(Some),
            None => Ok(None),
        }
    }

    /// On a backend several Safes share, the duty of rotating the root key
    /// (`None`: another Safe holds it); on one this Safe alone writes, always granted.
    async fn rotation_duty(&self) -> Result<Option<Option<Box<dyn aegis_store::Held>>>, ApiError> {
        if self.backend.shared().is_none() {
            return Ok(Some(None));
        }
        let backend = self.backend.clone();
        let taken = tokio::task::spawn_blocking(move || {
            backend.shared().map(|log| log.take_duty(aegis_store::Duty::RootKeyRotation)).transpose()
        })
        .await
        .map_err(|_| ApiError::internal("the root key rotation lock could not be taken; see the Safe's log"))?
        .map_err(ApiError::from)?;
        Ok(taken.map(|held| held.map(Some)).unwrap_or(Some(None)))
    }

    /// Re-seals every record under `new` (already the store's next key) and promotes it. Call with the unseal lock
    /// held. `fresh`: this call generated `new`, so no record can be sealed under it yet.
    async fn rotate_to(&self, keys: &dyn RootKeyStore, new: Arc<RootKey>, fresh: bool) -> Result<Rotated, ApiError> {
        let store = self.store()?;
        let records = match store.rotate(Keyring::new(new.clone())).await {
            Ok(n) => n,
            Err(e @ aegis_store::StoreError::Expired) => {
                // The rotation never started. A key this call generated is dropped, or the next start
                // would finish a rotation answered as not applied; a pending key from an earlier,
                // partly done rotation is kept, since records may already be sealed under it.
                if fresh {
                    if let Err(why) = keys.discard_next().await {
                        tracing::error!(error = %why, "could not remove the unused next root key");
                    }
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        keys.promote_next().await.map_err(internal)?;
        self.audit.set_key(new.audit_key());
        tracing::info!(key_id = %new.id(), records, "root key rotated");
        Ok(Rotated { key_id: new.id().to_string(), records })
    }
}

/// How often a Safe sharing its backend tries to take the duty of writing the
/// Kubernetes copies, and checks it still holds it.
const SYNC_DUTY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the Kubernetes copies while this Safe holds the duty of doing so
/// among the Safes sharing the backend: takes it when free, stops when it is
/// lost (the database connection that holds it broke), and tries again.
async fn lead_sync(backend: Arc<dyn Backend>, sync: Arc<dyn SecretSync>, store: Store) {
    let mut started = false;
    loop {
        let b = backend.clone();
        let taken = tokio::task::spawn_blocking(move || {
            b.shared().map(|log| log.take_duty(aegis_store::Duty::KubernetesSync)).transpose()
        })
        .await;
        match taken {
            Ok(Ok(Some(Some(held)))) => {
                tracing::info!(
                    "this Safe writes the Kubernetes copies of k8s: secrets (the others sharing the database do not)"
                );
                sync.pause(false);
                if !started {
                    sync.start(store.clone());
                    started = true;
                }
                while held.still_held() {
                    tokio::time::sleep(SYNC_DUTY_EVERY).await;
                }
                sync.pause(true);
                tracing::warn!(
                    "lost the duty of writing the Kubernetes copies (the database connection holding it broke)"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot take the duty of writing the Kubernetes copies; retrying"),
            Err(_) => return,
        }
        tokio::time::sleep(SYNC_DUTY_EVERY).await;
    }
}

/// Anchors the audit trail with the audit key of the root key in use, each
/// time it changes (a rotation another Safe sharing the backend made, followed here).
async fn follow_audit_key(mut keys: tokio::sync::watch::Receiver<Arc<Keyring>>, audit: aegis_audit::Sink) {
    while keys.changed().await.is_ok() {
        let key = keys.borrow_and_update().current().audit_key();
        audit.set_key(key);
    }
}

fn internal(e: KeyStoreError) -> ApiError {
    tracing::error!(error = %e, "root key store");
    ApiError::internal("could not read or write the root key store; see the Safe's log")
}

/// The store's commit barrier: before each commit, every line written to the
/// trail so far (the intent lines of the writes in that commit among them) is made durable.
#[derive(Debug)]
struct Trail(aegis_audit::Sink);

impl aegis_store::CommitBarrier for Trail {
    fn before_commit(&self) -> Result<(), String> {
        self.0.sync_written().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Safe dropped (in process, as the fuzz targets make thousands of
    /// them) stops its writer and closes its data directory: no task it
    /// started keeps the store, and with it open files, for the runtime's life.
    #[tokio::test]
    async fn a_dropped_safe_lets_go_of_its_store() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let backend = Arc::new(aegis_store::DirBackend::open(dir.path()).expect("the data directory"));
        let adapters = Adapters { backend: backend.clone(), root_key: RootKeyMode::Manual, sync: None };
        let state = AppState::new(Settings::in_process(), adapters).expect("the Safe's state");
        state.unseal(Keyring::new(Arc::new(RootKey::generate()))).await.expect("unsealed");
        assert!(Arc::strong_count(&backend) > 2, "the store's writer holds the backend while the Safe runs");
        drop(state);
        for _ in 0..200 {
            if Arc::strong_count(&backend) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("2 s after the Safe was dropped, {} handles on its backend remain", Arc::strong_count(&backend) - 1);
    }
}
