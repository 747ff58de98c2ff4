//! Drift repair: one watcher per target namespace over the Secrets labelled
//! `app.kubernetes.io/managed-by=aegis`. A copy edited or deleted by hand,
//! or one whose secret is gone, queues its secret for a sync.

use std::collections::HashSet;
use std::sync::Arc;

use aegis_core::SecretName;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

use super::desired::{matches, secret_of, Desired};
use super::{Ctx, MANAGED_BY, MANAGED_BY_LABEL};

/// Starts watching `ns`, once.
pub(super) fn ensure(ctx: &Arc<Ctx>, ns: &str) {
    let fresh = ctx.watched.lock().unwrap_or_else(|e| e.into_inner()).insert(ns.to_owned());
    if fresh {
        tokio::spawn(run(ctx.clone(), ns.to_owned()));
    }
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

/// Whether the copy `obj` of `name` in `ns` is what the store asks for.
fn wanted(ctx: &Ctx, name: &SecretName, ns: &str, obj: &Secret) -> bool {
    let Some(store) = ctx.store() else { return true };
    match Desired::of(ctx, store.get(name).as_deref()) {
        Desired::Present { version, namespaces, data } => {
            namespaces.contains(ns) && matches(obj, &ctx.cfg.instance, version, &data)
        }
        Desired::Absent => ctx.cfg.keep_on_delete,
        Desired::Invalid(_) => false,
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
