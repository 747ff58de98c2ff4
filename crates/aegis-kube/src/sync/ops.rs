//! The Kubernetes side of one secret: what its Secrets must be, and the
//! requests that make them so.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::{Namespace, SecretKind, SecretName};
use aegis_store::Refusal;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use time::OffsetDateTime;

use super::book::Problem;
use super::data::{secret_data, DataError, SecretData};
use super::desired::{matches, owner, Desired, Owner};
use super::window;
use super::{
    log_problem, watch, Ctx, FIELD_MANAGER, INSTANCE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, SECRET_ANNOTATION,
    VERSION_ANNOTATION,
};

/// After the API server could not be reached, writes skip the check for this long.
const CHECK_SKIP_WINDOW: Duration = Duration::from_secs(5);

/// Requests one sync of a secret sends at once (one per namespace).
const NAMESPACES_AT_ONCE: usize = 8;

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
                // The API server's message may quote the Secret's keys (taken
                // from the value): only its code and reason are shown.
                400 | 422 => Problem::Error(format!(
                    "Kubernetes refused the Secret '{ns}/{k8s}' ({} {}; its message is left out as it may quote \
                     the data); check the secret's keys and size",
                    s.code, s.reason
                )),
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

/// Makes the Secret in `ns` hold `version` of `name`. A Secret that is not
/// there is created with a create-only request, one that is ours is changed
/// only at the `resourceVersion` it was seen with: a Secret someone else
/// creates or changes meanwhile makes the request fail (409), and the next
/// try finds whose it is. Aegis never takes over a Secret it did not create.
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
    let Some(obj) = &current else {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
        timed(ctx, limit, api.create(&params, &body), "create", ns, k8s).await?;
        ctx.set_observed(name, ns, true);
        tracing::debug!(secret = %name, namespace = ns, version, "Kubernetes Secret created");
        return Ok(());
    };
    match owner(obj, name, &ctx.cfg.instance) {
        Owner::Ours if matches(obj, &ctx.cfg.instance, version, data) => return Ok(()),
        // A precondition: if the Secret changes hands meanwhile, the apply fails.
        Owner::Ours => body.metadata.resource_version = obj.metadata.resource_version.clone(),
        other => return Err(Problem::Conflict(conflict(ns, k8s, &other))),
    }
    if body.metadata.resource_version.is_none() {
        // Without a resourceVersion the apply would be unconditional.
        return Err(Problem::Transient(format!("the Secret '{ns}/{k8s}' has no resourceVersion yet")));
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
pub(super) async fn sync_one(ctx: &Arc<Ctx>, name: &SecretName) -> Option<Duration> {
    let store = ctx.store()?;
    let k8s = name.kubernetes_name()?;
    let Some(entry) = store.get(name) else {
        remove_orphans(ctx, name, k8s).await;
        return None;
    };
    let revision = entry.doc.revision;
    // Every namespace a copy may be in: those of the versions kept, those
    // last written, those the watchers saw.
    let mut stale: BTreeSet<String> =
        entry.doc.versions.iter().flat_map(|v| v.meta.namespaces.iter().map(|n| n.as_str().to_owned())).collect();
    stale.extend(ctx.book.namespaces(name));
    stale.extend(ctx.observed(name));
    let boundary = entry.doc.live().and_then(|(v, _)| window::next_boundary(&v.meta, OffsetDateTime::now_utc()));
    let desired = Desired::of(ctx, Some(entry)).await;
    ctx.set_fingerprint(name, Some(desired.fingerprint(revision)));
    window::arm(ctx, name, boundary);
    let (present, version) = match &desired {
        Desired::Present { namespaces, version, .. } => (namespaces.clone(), Some(*version)),
        Desired::Absent | Desired::Outside => (BTreeSet::new(), None),
        Desired::Invalid(e) => {
            let p = Problem::Error(e.to_string());
            let (wait, new) = ctx.book.failed(name, revision, p.clone());
            if new {
                log_problem(name, &p, wait);
            }
            // Bad keys stay bad until the next write (which queues the
            // secret); a render over a time budget may pass later.
            return matches!(e, DataError::Template(_)).then_some(wait);
        }
    };
    // Only namespaces named now are watched: none for a deleted secret.
    watch::set(ctx, name, &present);
    if matches!(desired, Desired::Absent) && ctx.cfg.keep_on_delete {
        ctx.book.synced(name, revision, None, BTreeSet::new());
        return None;
    }
    stale.retain(|ns| !present.contains(ns));
    let mut jobs = Vec::new();
    if let Desired::Present { version, data, .. } = &desired {
        for ns in &present {
            jobs.push(futures::future::Either::Left(ensure(ctx, ns, k8s, name, *version, data)));
        }
    }
    for ns in &stale {
        jobs.push(futures::future::Either::Right(remove(ctx, ns, k8s, name)));
    }
    let results: Vec<Result<(), Problem>> =
        futures::stream::iter(jobs).buffer_unordered(NAMESPACES_AT_ONCE).collect().await;
    match worst(results.into_iter().filter_map(Result::err).collect()) {
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

/// `name` is not in the store: the labelled Secrets of this instance naming
/// it are orphans, removed (unless copies are kept on delete) and never
/// counted in the state; they are tried once, as the watchers report them
/// again on their next listing.
async fn remove_orphans(ctx: &Arc<Ctx>, name: &SecretName, k8s: &str) {
    ctx.book.forget(name);
    ctx.set_fingerprint(name, None);
    window::arm(ctx, name, None);
    watch::set(ctx, name, &BTreeSet::new());
    for ns in ctx.observed(name) {
        if !ctx.cfg.keep_on_delete {
            if let Err(p) = remove(ctx, &ns, k8s, name).await {
                tracing::debug!(secret = %name, namespace = %ns, reason = %p.reason(), "orphan Secret not removed");
            }
        }
        ctx.set_observed(name, &ns, false);
    }
}

/// The check before a write of a `k8s:` secret: refuses a write over the
/// namespace limit, data Kubernetes would refuse and a Secret in the way
/// that Aegis does not manage; accepts when the API server does not answer
/// in time.
pub(super) async fn check_write(
    ctx: &Ctx,
    name: &SecretName,
    value: &SecretValue,
    meta: &SecretMeta,
) -> Result<(), Refusal> {
    namespace_limit(ctx, name, meta)?;
    let refused = |e: DataError| Refusal::Unconvertible { secret: name.clone(), why: e.to_string() };
    // Parsing the value and rendering a template are CPU work: off the async threads.
    let (v, m, budget) = (value.clone(), meta.clone(), ctx.cfg.template_budget);
    ctx.off_runtime(move || secret_data(&v, &m, &budget).map(drop))
        .await
        .ok_or(Refusal::CheckFailed)?
        .map_err(refused)?;
    let Some(k8s) = name.kubernetes_name() else { return Ok(()) };
    // Known to be down just now: do not make every write wait for it.
    if ctx.unreachable_within(CHECK_SKIP_WINDOW) {
        return Ok(());
    }
    let limit = ctx.cfg.check_timeout;
    let looks: Vec<_> = meta
        .namespaces
        .iter()
        .map(|ns| async move {
            let ns = ns.as_str();
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            match timed(ctx, limit, api.get_opt(k8s), "get", ns, k8s).await {
                Ok(Some(obj)) => match owner(&obj, name, &ctx.cfg.instance) {
                    Owner::Ours => Ok(()),
                    other => Err(conflict(ns, k8s, &other)),
                },
                // Not there, or not known in time: the sync reports it later.
                Ok(None) | Err(_) => Ok(()),
            }
        })
        .collect();
    let results: Vec<Result<(), String>> =
        futures::stream::iter(looks).buffer_unordered(NAMESPACES_AT_ONCE).collect().await;
    let refusals: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(Refusal::InTheWay(refusals))
    }
}

/// Refuses a write that would make all live `k8s:` secrets together name
/// more than [`super::SyncConfig::max_namespaces`] distinct namespaces:
/// each is a watch, a connection to the API server, held as long as a
/// secret names it.
fn namespace_limit(ctx: &Ctx, name: &SecretName, meta: &SecretMeta) -> Result<(), Refusal> {
    let max = ctx.cfg.max_namespaces;
    let mine: BTreeSet<&str> = meta.namespaces.iter().map(Namespace::as_str).collect();
    let over = |total: usize| Refusal::TooManyNamespaces { secret: name.clone(), named: mine.len(), total, max };
    if mine.len() > max {
        return Err(over(mine.len()));
    }
    let Some(store) = ctx.store() else { return Ok(()) };
    let mut all = mine.clone();
    let entries = store.list();
    for e in entries.iter().filter(|e| e.doc.name.kind() == SecretKind::Kubernetes && e.doc.name != *name) {
        if let Some((v, _)) = e.doc.live() {
            all.extend(v.meta.namespaces.iter().map(Namespace::as_str));
            if all.len() > max {
                return Err(over(all.len()));
            }
        }
    }
    Ok(())
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

    /// A kube client over a fake API server: `answer` maps (method, path) to
    /// (status, JSON body); every request is recorded.
    fn fake_client(
        answer: fn(&str, &str) -> (u16, serde_json::Value),
    ) -> (kube::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
            log.lock().unwrap().push(format!("{method} {path}"));
            let (code, body) = answer(&method, &path);
            let resp = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        (kube::Client::new(svc, "default"), seen)
    }

    fn status(code: u16, reason: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "m",
                           "reason": reason, "code": code})
    }

    #[tokio::test]
    async fn a_secret_created_between_the_get_and_the_write_is_never_taken_over() {
        // The get finds nothing; someone creates the Secret before the write:
        // the write must be create-only (a POST that fails with 409), never an
        // apply (a PATCH would merge into the other Secret and take it over).
        let (client, seen) = fake_client(|method, _| match method {
            "GET" => (404, status(404, "NotFound")),
            "POST" => (409, status(409, "AlreadyExists")),
            _ => (200, serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}})),
        });
        let syncer = super::super::Syncer::new(client, super::super::SyncConfig::default());
        let name = SecretName::parse("k8s:db").unwrap();
        let data = SecretData(BTreeMap::from([("a".to_owned(), k8s_openapi::ByteString(b"1".to_vec()))]));
        let got = ensure(&syncer.ctx, "default", "db", &name, 1, &data).await;
        assert!(matches!(got, Err(Problem::Transient(_))), "{got:?}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec!["GET /api/v1/namespaces/default/secrets/db", "POST /api/v1/namespaces/default/secrets"]);
    }

    #[tokio::test]
    async fn an_update_is_conditional_on_the_resource_version_seen() {
        // Ours, outdated: the apply carries the resourceVersion of the get.
        let (client, seen) = fake_client(|method, _| match method {
            "GET" => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "db", "namespace": "default", "resourceVersion": "41",
                        "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                        "annotations": {SECRET_ANNOTATION: "k8s:db", INSTANCE_ANNOTATION: "default",
                                        VERSION_ANNOTATION: "1"}},
                    "data": {"a": "MQ=="}}),
            ),
            _ => (409, status(409, "Conflict")),
        });
        let syncer = super::super::Syncer::new(client, super::super::SyncConfig::default());
        let name = SecretName::parse("k8s:db").unwrap();
        let data = SecretData(BTreeMap::from([("a".to_owned(), k8s_openapi::ByteString(b"2".to_vec()))]));
        let got = ensure(&syncer.ctx, "default", "db", &name, 2, &data).await;
        assert!(matches!(got, Err(Problem::Transient(_))), "{got:?}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[1].starts_with("PATCH "), "{seen:?}");
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
