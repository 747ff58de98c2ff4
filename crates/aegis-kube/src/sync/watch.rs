//! Drift repair: one watcher per target namespace over the Secrets labelled
//! `app.kubernetes.io/managed-by=aegis`. A copy edited or deleted by hand,
//! or one whose secret is gone, queues its secret for a sync.
//!
//! A namespace is watched while a live `k8s:` secret names it (each sync of
//! a secret says which, [`set`]), at most [`super::SyncConfig::max_namespaces`]
//! of them; its watch stops when the last secret naming it lets go.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use aegis_core::SecretName;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::task::AbortHandle;

use super::desired::secret_of;
use super::{Ctx, MANAGED_BY, MANAGED_BY_LABEL};

/// The namespaces watched.
#[derive(Default)]
pub(super) struct Watches {
    /// Each watched namespace: the secrets naming it, and its watcher.
    by_ns: HashMap<String, (HashSet<SecretName>, AbortHandle)>,
    /// Each secret: the watched namespaces it names.
    by_secret: HashMap<SecretName, BTreeSet<String>>,
}

impl Watches {
    /// `name` no longer names `ns`; its watch stops if no other secret does.
    fn release(&mut self, name: &SecretName, ns: &str) -> bool {
        let Some((names, task)) = self.by_ns.get_mut(ns) else { return false };
        names.remove(name);
        if !names.is_empty() {
            return false;
        }
        task.abort();
        self.by_ns.remove(ns);
        true
    }
}

/// `name` names exactly `namespaces` now: watches start where none runs (up
/// to the limit) and stop where no secret is left. Returns the namespaces
/// left unwatched because of the limit.
pub(super) fn set(ctx: &Arc<Ctx>, name: &SecretName, namespaces: &BTreeSet<String>) -> usize {
    let (stopped, skipped) = {
        let mut w = ctx.watches.lock().unwrap_or_else(|e| e.into_inner());
        let old = w.by_secret.remove(name).unwrap_or_default();
        let stopped: Vec<String> = old.difference(namespaces).filter(|ns| w.release(name, ns)).cloned().collect();
        let (mut kept, mut skipped) = (BTreeSet::new(), 0);
        for ns in namespaces {
            if let Some((names, _)) = w.by_ns.get_mut(ns) {
                names.insert(name.clone());
            } else if w.by_ns.len() < ctx.cfg.max_namespaces {
                let task = tokio::spawn(run(ctx.clone(), ns.clone())).abort_handle();
                w.by_ns.insert(ns.clone(), (HashSet::from([name.clone()]), task));
            } else {
                skipped += 1;
                continue;
            }
            kept.insert(ns.clone());
        }
        if !kept.is_empty() {
            w.by_secret.insert(name.clone(), kept);
        }
        (stopped, skipped)
    };
    for ns in &stopped {
        ctx.forget_observed_in(ns);
        tracing::debug!(namespace = %ns, "no k8s: secret names this namespace any more; stopped watching it");
    }
    if skipped > 0 {
        tracing::warn!(
            secret = %name,
            unwatched = skipped,
            limit = ctx.cfg.max_namespaces,
            "namespaces over the limit of watched namespaces (AEGIS_K8S_MAX_NAMESPACES) are written but not \
             watched: a copy edited by hand there is repaired only at the next write or restart; name fewer \
             namespaces or raise the limit"
        );
    }
    skipped
}

async fn run(ctx: Arc<Ctx>, ns: String) {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    tracing::debug!(namespace = %ns, "watching managed Kubernetes Secrets");
    // Names listed since the last (re)start of the watch.
    let mut listing: Option<HashSet<SecretName>> = None;
    let mut failing = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                if !failing {
                    tracing::warn!(namespace = %ns, reason = %why(&e, &ns), "cannot watch managed Kubernetes Secrets; retrying");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!(namespace = %ns, "watching managed Kubernetes Secrets again");
            failing = false;
        }
        match event {
            Event::Init => listing = Some(HashSet::new()),
            Event::InitApply(obj) | Event::Apply(obj) => {
                if let Some(name) = secret_of(&obj, &ctx.cfg.instance) {
                    ctx.set_observed(&name, &ns, true);
                    if !wanted(&ctx, &name, &ns, &obj) {
                        ctx.queue.push(name.clone());
                    }
                    if let Some(l) = listing.as_mut() {
                        l.insert(name);
                    }
                }
            }
            Event::Delete(obj) => {
                if let Some(name) = secret_of(&obj, &ctx.cfg.instance) {
                    ctx.set_observed(&name, &ns, false);
                    ctx.queue.push(name);
                }
            }
            Event::InitDone => {
                ctx.api_up();
                // Copies seen before that the new listing lacks were deleted meanwhile.
                let listed = listing.take().unwrap_or_default();
                let gone: Vec<SecretName> = {
                    let o = ctx.observed.lock().unwrap_or_else(|e| e.into_inner());
                    o.iter()
                        .filter(|(n, nss)| nss.contains(&ns) && !listed.contains(*n))
                        .map(|(n, _)| n.clone())
                        .collect()
                };
                for name in gone {
                    ctx.set_observed(&name, &ns, false);
                    ctx.queue.push(name);
                }
            }
        }
    }
}

/// Whether the copy `obj` of `name` in `ns` is what the store asks for,
/// decided from the secret's fingerprint, never by rendering: a copy of a
/// revision not fingerprinted yet, or of an unknown secret, goes to the
/// sync (the queue holds a name once, so a burst of events is one sync).
fn wanted(ctx: &Ctx, name: &SecretName, ns: &str, obj: &Secret) -> bool {
    let Some(store) = ctx.store() else { return true };
    let Some(entry) = store.get(name) else { return false };
    if entry.doc.live().is_none() {
        return ctx.cfg.keep_on_delete;
    }
    match ctx.fingerprint(name) {
        Some(fp) if fp.revision == entry.doc.revision => fp.accepts(ns, obj, &ctx.cfg.instance, ctx.cfg.keep_on_delete),
        _ => false,
    }
}

/// Why a watch failed, naming the permission when that is the cause.
fn why(e: &watcher::Error, ns: &str) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
        watcher::Error::WatchError(s) => Some(s.as_ref()),
        _ => None,
    };
    match status {
        Some(s) if s.code == 403 => format!(
            "missing permission: the Safe may not 'list'/'watch' Secrets in namespace '{ns}' (the Kubernetes API \
             said: {}); bind the Role of deploy/kubernetes/safe-rbac.yaml in that namespace",
            s.message
        ),
        Some(s) => format!("the Kubernetes API answered {} {}", s.code, s.reason),
        None => match e {
            watcher::Error::InitialListFailed(k)
            | watcher::Error::WatchStartFailed(k)
            | watcher::Error::WatchFailed(k) => match k {
                kube::Error::HyperError(h) => format!("cannot reach the Kubernetes API: {h}"),
                kube::Error::Service(s) => format!("cannot reach the Kubernetes API: {s}"),
                _ => "the watch failed".to_owned(),
            },
            _ => "the watch failed".to_owned(),
        },
    }
}
