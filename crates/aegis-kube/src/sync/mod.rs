//! `k8s:` secrets kept as Kubernetes Secrets.
//!
//! The Safe stores and acknowledges a write first; this module follows the
//! store's commits and makes Kubernetes match, at least once and
//! idempotently:
//!
//! - a live `k8s:<name>` secret is the Opaque Secret `<name>` in each of its
//!   namespaces, written with server-side apply under the field manager
//!   [`FIELD_MANAGER`], labelled [`MANAGED_BY_LABEL`]`=`[`MANAGED_BY`] and
//!   annotated with the Aegis secret ([`SECRET_ANNOTATION`]), its version
//!   ([`VERSION_ANNOTATION`]) and the Safe instance ([`INSTANCE_ANNOTATION`]);
//! - a copy in a namespace the secret no longer lists is deleted, and so are
//!   all copies of a deleted secret (unless [`SyncConfig::keep_on_delete`]);
//! - the validity window applies to the copies: none before `notBefore`,
//!   deleted when the secret expires, on time by a timer (`window.rs`);
//! - a Secret without the label is never touched: the write is refused when
//!   that is known in time ([`SecretSync::check_write`]), else the secret's
//!   state says `conflict`;
//! - failures are retried with capped exponential backoff
//!   ([`book::RETRY_FIRST`] to [`book::RETRY_CAP`]); the state of each secret
//!   is in [`SecretSync::state`];
//! - managed Secrets are watched in every namespace a live `k8s:` secret
//!   names (one watch per namespace, stopped when no secret names it any
//!   more; at most [`SyncConfig::max_namespaces`]), so a copy edited or
//!   deleted by hand is restored within moments, and a restart syncs every
//!   `k8s:` secret again;
//! - templates are rendered off the async threads, at most
//!   [`SyncConfig::render_threads`] at once, and only when a secret changes
//!   or a copy drifts: the watchers compare copies with a digest;
//! - only secrets the store holds are counted in the state; a labelled
//!   Secret naming an unknown secret is removed (it is an orphan of this
//!   instance) and never counted;
//! - a Secret is created with a create-only request and changed only under
//!   the `resourceVersion` it was seen with, so a Secret someone else creates
//!   at the same moment is never taken over.
//!
//! No value reaches a log line, an error or a `Debug` output: the Secret
//! data is held in [`data::SecretData`], whose `Debug` shows keys only, and
//! Kubernetes objects are never formatted.

pub mod book;
pub mod data;
mod desired;
pub mod off;
mod ops;
pub mod queue;
mod watch;
mod window;

/// Default of [`SyncConfig::max_namespaces`].
pub const DEFAULT_MAX_NAMESPACES: usize = 100;
/// Default of [`SyncConfig::render_threads`].
pub const DEFAULT_RENDER_THREADS: usize = 2;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aegis_core::api::{KubeSync, KubeSyncSummary};
use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::transform::Budget;
use aegis_core::{SecretKind, SecretName};
use aegis_store::Store;
use aegis_store::{BoxFuture, Refusal, SecretSync};
use kube::Client;

use book::{Book, Problem};
use desired::Fingerprint;
use queue::WorkQueue;
use tokio::sync::Semaphore;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "aegis";
/// The label every Secret Aegis manages carries ...
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// ... with this value.
pub const MANAGED_BY: &str = "aegis";
/// The annotation naming the Aegis secret (`k8s:<name>`).
pub const SECRET_ANNOTATION: &str = "aegis.dev/secret";
/// The annotation holding the Aegis secret's version.
pub const VERSION_ANNOTATION: &str = "aegis.dev/version";
/// The annotation naming the Safe instance that manages the Secret.
pub const INSTANCE_ANNOTATION: &str = "aegis.dev/instance";

/// How the sync behaves.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The name of this Safe among those writing to the cluster: a Safe only
    /// changes or deletes Secrets annotated with its own instance.
    pub instance: String,
    /// Keep the Kubernetes Secrets of a deleted secret (VSecM's behaviour).
    pub keep_on_delete: bool,
    /// Longest the check before a write may wait for the API server.
    pub check_timeout: Duration,
    /// Longest one Kubernetes request of the sync may take.
    pub request_timeout: Duration,
    /// Secrets synced at once.
    pub workers: usize,
    /// What rendering a template may cost (the Safe's template budget).
    pub template_budget: Budget,
    /// Most distinct namespaces all live `k8s:` secrets may name together:
    /// each costs a watch (a connection to the API server). A write over it
    /// is refused.
    pub max_namespaces: usize,
    /// Most Secret data computed at once (templates rendered), each on a
    /// blocking thread, so the sync never takes the async threads nor all
    /// blocking ones.
    pub render_threads: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            instance: "default".to_owned(),
            keep_on_delete: false,
            check_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            workers: 32,
            template_budget: Budget::default(),
            max_namespaces: DEFAULT_MAX_NAMESPACES,
            render_threads: DEFAULT_RENDER_THREADS,
        }
    }
}

/// What the workers, the watchers and the Safe share.
struct Ctx {
    client: Client,
    cfg: SyncConfig,
    store: OnceLock<Store>,
    book: Book,
    queue: WorkQueue,
    /// Namespaces -> names of the managed copies seen there by the watchers.
    observed: Mutex<HashMap<SecretName, BTreeSet<String>>>,
    /// The namespaces watched, and the secrets naming each.
    watches: Mutex<watch::Watches>,
    /// What each secret's copies must look like, by revision (no values).
    fingerprints: Mutex<HashMap<SecretName, Arc<Fingerprint>>>,
    /// Slots for work off the async threads ([`SyncConfig::render_threads`]).
    slots: Semaphore,
    /// Set when the API server could not be reached; cleared by any answer.
    api_down: AtomicBool,
    /// When the API server last could not be reached.
    unreachable_at: Mutex<Option<Instant>>,
    /// The validity window boundary each secret's timer waits for.
    windows: Mutex<HashMap<SecretName, time::OffsetDateTime>>,
    /// Set while another Safe sharing the database writes the copies: queued secrets are dropped.
    paused: AtomicBool,
}

/// The Kubernetes Secret sync: an adapter of the [`SecretSync`] port, given
/// to the Safe by the binary.
#[derive(Clone)]
pub struct Syncer {
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer").field("config", &self.ctx.cfg).finish_non_exhaustive()
    }
}

impl Syncer {
    /// A sync over `client`; it starts when the Safe's store opens.
    pub fn new(client: Client, cfg: SyncConfig) -> Self {
        let slots = Semaphore::new(cfg.render_threads.clamp(1, Semaphore::MAX_PERMITS));
        Self {
            ctx: Arc::new(Ctx {
                client,
                cfg,
                slots,
                fingerprints: Mutex::new(HashMap::new()),
                store: OnceLock::new(),
                book: Book::default(),
                queue: WorkQueue::default(),
                observed: Mutex::new(HashMap::new()),
                watches: Mutex::new(watch::Watches::default()),
                api_down: AtomicBool::new(false),
                unreachable_at: Mutex::new(None),
                windows: Mutex::new(HashMap::new()),
                paused: AtomicBool::new(false),
            }),
        }
    }
}

impl SecretSync for Syncer {
    fn check_write<'a>(
        &'a self,
        name: &'a SecretName,
        value: &'a SecretValue,
        meta: &'a SecretMeta,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(ops::check_write(&self.ctx, name, value, meta))
    }

    fn start(&self, store: Store) {
        if self.ctx.store.set(store.clone()).is_err() {
            return;
        }
        tracing::info!(
            instance = %self.ctx.cfg.instance,
            keep_on_delete = self.ctx.cfg.keep_on_delete,
            "keeping k8s: secrets as Kubernetes Secrets"
        );
        for _ in 0..self.ctx.cfg.workers.max(1) {
            tokio::spawn(work(self.ctx.clone()));
        }
        tokio::spawn(follow(self.ctx.clone(), store));
    }

    fn state(&self, name: &SecretName, revision: u64) -> Option<KubeSync> {
        Some(self.ctx.book.state(name, revision))
    }

    fn pause(&self, paused: bool) {
        if self.ctx.paused.swap(paused, Ordering::SeqCst) == paused {
            return;
        }
        if paused {
            tracing::warn!("another Safe sharing the database writes the Kubernetes copies now; this one stops");
            return;
        }
        tracing::info!("this Safe writes the Kubernetes copies again; syncing every k8s: secret");
        if let Some(store) = self.ctx.store() {
            for e in store.list() {
                if e.doc.name.kind() == SecretKind::Kubernetes {
                    self.ctx.queue.push(e.doc.name.clone());
                }
            }
        }
    }

    fn summary(&self) -> KubeSyncSummary {
        self.ctx.book.summary()
    }
}

impl Ctx {
    fn store(&self) -> Option<&Store> {
        self.store.get()
    }

    /// Runs `f` on a blocking thread once one of the sync's slots is free:
    /// CPU work (a template render, parsing a value) never runs on the async
    /// threads, and never on more than [`SyncConfig::render_threads`] at once.
    /// `None` if `f` panicked.
    async fn off_runtime<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        // The semaphore is never closed, so acquiring cannot fail.
        let _slot = self.slots.acquire().await.ok()?;
        tokio::task::spawn_blocking(f).await.ok()
    }

    fn fingerprint(&self, name: &SecretName) -> Option<Arc<Fingerprint>> {
        self.fingerprints.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    fn set_fingerprint(&self, name: &SecretName, fp: Option<Fingerprint>) {
        let mut f = self.fingerprints.lock().unwrap_or_else(|e| e.into_inner());
        match fp {
            Some(fp) => f.insert(name.clone(), Arc::new(fp)),
            None => f.remove(name),
        };
    }

    /// Forgets what the watchers saw in `ns` (its watch stopped).
    fn forget_observed_in(&self, ns: &str) {
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        o.retain(|_, nss| {
            nss.remove(ns);
            !nss.is_empty()
        });
    }

    /// Notes an answer from the API server; if it had been unreachable,
    /// every secret behind is tried again now.
    fn api_up(&self) {
        if self.api_down.swap(false, Ordering::SeqCst) {
            tracing::info!("the Kubernetes API answers again; syncing the secrets behind");
            for name in self.book.behind() {
                self.queue.push(name);
            }
        }
    }

    fn api_unreachable(&self) {
        *self.unreachable_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if !self.api_down.swap(true, Ordering::SeqCst) {
            tracing::warn!("the Kubernetes API cannot be reached; writes go on and are synced when it answers");
        }
    }

    /// Whether the API server could not be reached within the last `window`.
    fn unreachable_within(&self, window: Duration) -> bool {
        self.api_down.load(Ordering::SeqCst)
            && self.unreachable_at.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t.elapsed() < window)
    }

    fn observed(&self, name: &SecretName) -> BTreeSet<String> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned().unwrap_or_default()
    }

    fn set_observed(&self, name: &SecretName, ns: &str, present: bool) {
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        if present {
            o.entry(name.clone()).or_default().insert(ns.to_owned());
        } else if let Some(set) = o.get_mut(name) {
            set.remove(ns);
            if set.is_empty() {
                o.remove(name);
            }
        }
    }
}

/// Follows the store's commits: every `k8s:` secret at a revision not seen
/// yet is queued (all of them on the first pass). Each sync of a secret
/// watches the namespaces it names now and looks for left-over copies in
/// those it named before, so nothing is watched for deleted secrets.
async fn follow(ctx: Arc<Ctx>, store: Store) {
    let mut commits = store.subscribe();
    loop {
        commits.borrow_and_update();
        for e in store.list() {
            if e.doc.name.kind() != SecretKind::Kubernetes {
                continue;
            }
            if ctx.book.saw(&e.doc.name, e.doc.revision) {
                ctx.queue.push(e.doc.name.clone());
            }
        }
        if commits.changed().await.is_err() {
            return;
        }
    }
}

/// One worker: syncs queued secrets, one at a time, and schedules retries.
async fn work(ctx: Arc<Ctx>) {
    loop {
        let name = ctx.queue.pop().await;
        // Paused: another Safe writes the copies; resuming queues every secret again.
        if ctx.paused.load(Ordering::SeqCst) {
            ctx.queue.done(&name);
            continue;
        }
        let retry = ops::sync_one(&ctx, &name).await;
        ctx.queue.done(&name);
        if let Some(wait) = retry {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                ctx.queue.push(name);
            });
        }
    }
}

/// Logs a problem of `name` (never a value).
fn log_problem(name: &SecretName, p: &Problem, retry: Duration) {
    let retry_ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
    match p {
        Problem::Transient(r) => {
            tracing::warn!(secret = %name, reason = %r, retry_ms, "Kubernetes Secret not synced yet; retrying")
        }
        Problem::Error(r) => {
            tracing::error!(secret = %name, reason = %r, retry_ms, "Kubernetes Secret cannot be synced")
        }
        Problem::Conflict(r) => {
            tracing::error!(secret = %name, reason = %r, retry_ms, "Kubernetes Secret not managed by Aegis is in the way")
        }
    }
}
