//! The Kubernetes side of one secret: what its Secrets must be, and the
//! requests that make them so.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::SecretName;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, Preconditions};
use kube::Api;

use super::book::Problem;
use super::data::{secret_data, DataError, SecretData};
use super::desired::{matches, owner, Desired, Owner};
use super::{
    log_problem, watch, Ctx, FIELD_MANAGER, INSTANCE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, SECRET_ANNOTATION,
    VERSION_ANNOTATION,
};

/// After the API server could not be reached, writes skip the check for this long.
const CHECK_SKIP_WINDOW: Duration = Duration::from_secs(5);

fn conflict(ns: &str, k8s: &str, owner: &Owner) -> String {
    match owner {
        Owner::Other(who) => format!(
            "the Kubernetes Secret '{ns}/{k8s}' is managed by {who}, not by this secret; Aegis never takes it \
             over: delete that Secret or use another secret name"
        ),
        _ => format!(
            "the Kubernetes Secret '{ns}/{k8s}' exists and is not managed by Aegis (it lacks the label \
             {MANAGED_BY_LABEL}={MANAGED_BY}); Aegis never takes over a Secret it does not manage: delete or \
             rename that Secret, or use another secret name"
        ),
    }
}

/// A failed request as a [`Problem`] naming what was asked and what to do.
fn classify(ctx: &Ctx, e: kube::Error, verb: &str, ns: &str, k8s: &str) -> Problem {
    match e {
        kube::Error::Api(s) => {
            ctx.api_up();
            match s.code {
                403 => Problem::Error(format!(
                    "missing permission: the Safe may not '{verb}' Secrets in namespace '{ns}' (RBAC verb '{verb}' \
                     on resource 'secrets'; the Kubernetes API said: {}); bind the Role of \
                     deploy/kubernetes/safe-rbac.yaml in that namespace (docs/KUBERNETES.md)",
                    s.message
                )),
                404 => Problem::Error(format!(
                    "cannot {verb} the Secret '{ns}/{k8s}': {}; create the namespace or change the secret's \
                     namespaces",
                    s.message
                )),
                409 => Problem::Transient(format!("the Secret '{ns}/{k8s}' changed while Aegis wrote it")),
                400 | 422 => Problem::Error(format!("Kubernetes refused the Secret '{ns}/{k8s}': {}", s.message)),
                code => Problem::Transient(format!(
                    "the Kubernetes API answered {code} {} to {verb} '{ns}/{k8s}'",
                    s.reason
                )),
            }
        }
        kube::Error::HyperError(e) => unreachable(ctx, &e.to_string()),
        kube::Error::Service(e) => unreachable(ctx, &e.to_string()),
        _ => Problem::Transient(format!("the Kubernetes client failed to {verb} '{ns}/{k8s}'")),
    }
}

fn unreachable(ctx: &Ctx, why: &str) -> Problem {
    ctx.api_unreachable();
    Problem::Transient(format!("cannot reach the Kubernetes API: {why}"))
}

/// `f` within the sync's request timeout.
async fn timed<T>(
    ctx: &Ctx,
    limit: Duration,
    f: impl Future<Output = Result<T, kube::Error>>,
    verb: &str,
    ns: &str,
    k8s: &str,
) -> Result<T, Problem> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => {
            ctx.api_up();
            Ok(v)
        }
        Ok(Err(e)) => Err(classify(ctx, e, verb, ns, k8s)),
        Err(_) => {
            ctx.api_unreachable();
            Err(Problem::Transient(format!(
                "the Kubernetes API did not answer within {} ms to {verb} '{ns}/{k8s}'",
                limit.as_millis()
            )))
        }
    }
}

/// The Secret Aegis applies.
fn manifest(ns: &str, k8s: &str, name: &SecretName, version: u64, data: &SecretData, ctx: &Ctx) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(k8s.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())])),
            annotations: Some(BTreeMap::from([
                (SECRET_ANNOTATION.to_owned(), name.to_string()),
                (VERSION_ANNOTATION.to_owned(), version.to_string()),
                (INSTANCE_ANNOTATION.to_owned(), ctx.cfg.instance.clone()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data.0.clone()),
        ..Secret::default()
    }
}

/// Makes the Secret in `ns` hold `version` of `name`.
async fn ensure(
    ctx: &Ctx,
    ns: &str,
    k8s: &str,
    name: &SecretName,
    version: u64,
    data: &SecretData,
) -> Result<(), Problem> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let limit = ctx.cfg.request_timeout;
    let current = timed(ctx, limit, api.get_opt(k8s), "get", ns, k8s).await?;
    let mut body = manifest(ns, k8s, name, version, data, ctx);
    if let Some(obj) = &current {
        match owner(obj, name, &ctx.cfg.instance) {
            Owner::Ours if matches(obj, &ctx.cfg.instance, version, data) => return Ok(()),
            // A precondition: if the Secret changes hands meanwhile, the apply fails.
            Owner::Ours => body.metadata.resource_version = obj.metadata.resource_version.clone(),
            other => return Err(Problem::Conflict(conflict(ns, k8s, &other))),
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = timed(ctx, limit, api.patch(k8s, &params, &Patch::Apply(&body)), "patch", ns, k8s).await?;
    ctx.set_observed(name, ns, true);
    // Keys another field manager added by hand are not ours to keep.
    let extra: Vec<&String> =
        applied.data.as_ref().map(|d| d.keys().filter(|k| !data.0.contains_key(*k)).collect()).unwrap_or_default();
    if !extra.is_empty() {
        let nulls: serde_json::Map<String, serde_json::Value> =
            extra.iter().map(|k| ((*k).clone(), serde_json::Value::Null)).collect();
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": applied.metadata.resource_version },
            "data": nulls,
        });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        timed(ctx, limit, api.patch(k8s, &params, &Patch::Merge(&patch)), "patch", ns, k8s).await?;
    }
    tracing::debug!(secret = %name, namespace = ns, version, "Kubernetes Secret written");
    Ok(())
}

/// Deletes this Safe's copy of `name` in `ns`, if there is one.
async fn remove(ctx: &Ctx, ns: &str, k8s: &str, name: &SecretName) -> Result<(), Problem> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let limit = ctx.cfg.request_timeout;
    let Some(obj) = timed(ctx, limit, api.get_opt(k8s), "get", ns, k8s).await? else {
        ctx.set_observed(name, ns, false);
        return Ok(());
    };
    if owner(&obj, name, &ctx.cfg.instance) != Owner::Ours {
        // Not ours: never touched.
        ctx.set_observed(name, ns, false);
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    let delete = async {
        match api.delete(k8s, &dp).await {
            // Gone already.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            r => r.map(|_| ()),
        }
    };
    timed(ctx, limit, delete, "delete", ns, k8s).await?;
    ctx.set_observed(name, ns, false);
    tracing::debug!(secret = %name, namespace = ns, "Kubernetes Secret deleted");
    Ok(())
}

/// The most telling of several problems: conflict, then error, then transient.
fn worst(problems: Vec<Problem>) -> Option<Problem> {
    let rank = |p: &Problem| match p {
        Problem::Conflict(_) => 0,
        Problem::Error(_) => 1,
        Problem::Transient(_) => 2,
    };
    let top = problems.iter().map(rank).min()?;
    let reasons: Vec<&str> = problems.iter().filter(|p| rank(p) == top).map(Problem::reason).collect();
    let joined = reasons.join("; ");
    Some(match top {
        0 => Problem::Conflict(joined),
        1 => Problem::Error(joined),
        _ => Problem::Transient(joined),
    })
}

/// Makes Kubernetes match `name` as the store holds it now. Returns the
/// pause before the next try when it failed.
pub(super) async fn sync_one(ctx: &std::sync::Arc<Ctx>, name: &SecretName) -> Option<Duration> {
    let store = ctx.store()?;
    let k8s = name.kubernetes_name()?;
    let entry = store.get(name);
    let revision = entry.as_ref().map_or(0, |e| e.doc.revision);
    // Every namespace a copy may be in: those of the versions kept, those
    // last written, those the watchers saw.
    let mut stale: BTreeSet<String> = entry
        .as_ref()
        .map(|e| e.doc.versions.iter().flat_map(|v| v.meta.namespaces.iter().cloned()).collect())
        .unwrap_or_default();
    stale.extend(ctx.book.namespaces(name));
    stale.extend(ctx.observed(name));
    let desired = Desired::of(ctx, entry.as_deref());
    let (present, version) = match &desired {
        Desired::Present { namespaces, version, .. } => (namespaces.clone(), Some(*version)),
        Desired::Absent if ctx.cfg.keep_on_delete => {
            ctx.book.synced(name, revision, None, BTreeSet::new());
            return None;
        }
        Desired::Absent => (BTreeSet::new(), None),
        Desired::Invalid(e) => {
            let (wait, new) = ctx.book.failed(name, revision, Problem::Error(e.to_string()));
            if new {
                log_problem(name, &Problem::Error(e.to_string()), wait);
            }
            return Some(wait);
        }
    };
    stale.retain(|ns| !present.contains(ns));
    for ns in present.iter().chain(stale.iter()) {
        watch::ensure(ctx, ns);
    }
    let mut jobs = Vec::new();
    if let Desired::Present { version, data, .. } = &desired {
        for ns in &present {
            jobs.push(futures::future::Either::Left(ensure(ctx, ns, k8s, name, *version, data)));
        }
    }
    for ns in &stale {
        jobs.push(futures::future::Either::Right(remove(ctx, ns, k8s, name)));
    }
    let problems: Vec<Problem> = futures::future::join_all(jobs).await.into_iter().filter_map(Result::err).collect();
    match worst(problems) {
        None => {
            ctx.book.synced(name, revision, version, present);
            None
        }
        Some(p) => {
            let (wait, new) = ctx.book.failed(name, revision, p.clone());
            if new {
                log_problem(name, &p, wait);
            }
            Some(wait)
        }
    }
}

/// The check before a write of a `k8s:` secret: refuses data Kubernetes
/// would refuse and a Secret in the way that Aegis does not manage; accepts
/// when the API server does not answer in time.
pub(super) async fn check_write(
    ctx: &Ctx,
    name: &SecretName,
    value: &SecretValue,
    meta: &SecretMeta,
) -> Result<(), String> {
    let refused = |e: DataError| format!("secret '{name}' cannot become a Kubernetes Secret: {e}; nothing was stored");
    if meta.template.is_some() {
        // A render may take up to the template budget's time: off the async threads.
        let (value, meta, budget) = (value.clone(), meta.clone(), ctx.cfg.template_budget);
        tokio::task::spawn_blocking(move || secret_data(&value, &meta, &budget).map(drop))
            .await
            .map_err(|_| "the Kubernetes Secret data check failed; see the Safe's log".to_owned())?
            .map_err(refused)?;
    } else {
        secret_data(value, meta, &ctx.cfg.template_budget).map_err(refused)?;
    }
    let Some(k8s) = name.kubernetes_name() else { return Ok(()) };
    // Known to be down just now: do not make every write wait for it.
    if ctx.unreachable_within(CHECK_SKIP_WINDOW) {
        return Ok(());
    }
    let limit = ctx.cfg.check_timeout;
    let looks = meta.namespaces.iter().map(|ns| async move {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        match timed(ctx, limit, api.get_opt(k8s), "get", ns, k8s).await {
            Ok(Some(obj)) => match owner(&obj, name, &ctx.cfg.instance) {
                Owner::Ours => Ok(()),
                other => Err(conflict(ns, k8s, &other)),
            },
            // Not there, or not known in time: the sync reports it later.
            Ok(None) | Err(_) => Ok(()),
        }
    });
    let refusals: Vec<String> = futures::future::join_all(looks).await.into_iter().filter_map(Result::err).collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(format!("{}; nothing was stored", refusals.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::desired::secret_of;
    use super::*;

    fn secret(labels: &[(&str, &str)], ann: &[(&str, &str)]) -> Secret {
        let m = |p: &[(&str, &str)]| Some(p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Secret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                labels: m(labels),
                annotations: m(ann),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn only_labelled_secrets_of_this_instance_and_secret_are_ours() {
        let n = SecretName::parse("k8s:db").unwrap();
        let ours = [(SECRET_ANNOTATION, "k8s:db"), (INSTANCE_ANNOTATION, "mine")];
        assert_eq!(owner(&secret(&[(MANAGED_BY_LABEL, MANAGED_BY)], &ours), &n, "mine"), Owner::Ours);
        assert_eq!(owner(&secret(&[], &ours), &n, "mine"), Owner::Unmanaged);
        assert_eq!(owner(&secret(&[(MANAGED_BY_LABEL, "helm")], &ours), &n, "mine"), Owner::Unmanaged);
        assert!(matches!(owner(&secret(&[(MANAGED_BY_LABEL, MANAGED_BY)], &ours), &n, "other"), Owner::Other(_)));
        assert_eq!(secret_of(&secret(&[], &ours), "mine"), Some(n.clone()));
        assert_eq!(secret_of(&secret(&[], &ours), "other"), None);
        let elsewhere = [(SECRET_ANNOTATION, "k8s:other"), (INSTANCE_ANNOTATION, "mine")];
        assert_eq!(secret_of(&secret(&[], &elsewhere), "mine"), None, "name and annotation must agree");
        // The old shared default: a Safe takes back its own secret's Secret, nothing else.
        let legacy = [(SECRET_ANNOTATION, "k8s:db"), (INSTANCE_ANNOTATION, "default")];
        let labelled = |a: &[(&str, &str)]| secret(&[(MANAGED_BY_LABEL, MANAGED_BY)], a);
        assert_eq!(owner(&labelled(&legacy), &n, "mine"), Owner::Ours);
        let legacy_other = [(SECRET_ANNOTATION, "k8s:other"), (INSTANCE_ANNOTATION, "default")];
        assert!(matches!(owner(&labelled(&legacy_other), &n, "mine"), Owner::Other(_)));
        assert_eq!(secret_of(&labelled(&legacy), "mine"), None, "never an orphan of this Safe");
    }

    #[test]
    fn the_worst_problem_wins_with_all_its_reasons() {
        let p = worst(vec![Problem::Transient("t".into()), Problem::Error("e1".into()), Problem::Error("e2".into())]);
        assert_eq!(p, Some(Problem::Error("e1; e2".into())));
        assert_eq!(worst(vec![]), None);
        assert_eq!(
            worst(vec![Problem::Conflict("c".into()), Problem::Error("e".into())]),
            Some(Problem::Conflict("c".into()))
        );
    }
}
