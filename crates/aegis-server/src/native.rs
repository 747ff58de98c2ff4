//! The native JSON API under `/v1` (documented in `openapi.yaml`).

use std::sync::Arc;

use aegis_core::api::{
    EncryptRequest, EncryptResponse, History, PutSecret, Rollback, Rotated, SecretInfo, SecretList, SecretRead, Status,
    Unseal, VersionInfo, WorkloadSecret,
};
use aegis_core::secret::{SecretDoc, VersionNumber};
use aegis_core::timefmt::rfc3339;
use aegis_core::transform::Format;
use aegis_core::SecretName;
use aegis_crypto::{Keyring, RootKey};
use aegis_store::{Entry, Mutation, Stamps, Store};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract;
use crate::path::Segments;
use crate::policy::allow;
use crate::state::AppState;
use aegis_core::policy::{Action, Target};

type St = State<Arc<AppState>>;
type Who = Extension<Arc<Caller>>;
type Body = Result<Bytes, BytesRejection>;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// Metadata of a secret for listings.
pub fn info(doc: &SecretDoc) -> SecretInfo {
    let current = doc.version(doc.current);
    let meta = current.map(|v| &v.meta);
    SecretInfo {
        name: doc.name.to_string(),
        version: doc.current,
        revision: doc.revision,
        created: rfc3339(doc.created),
        updated: rfc3339(doc.updated),
        deleted: doc.deleted.map(rfc3339),
        namespaces: meta.map(|m| m.namespaces.iter().map(|n| n.as_str().to_owned()).collect()).unwrap_or_default(),
        template: meta.and_then(|m| m.template.as_ref().map(|t| t.as_str().to_owned())),
        format: meta.map_or("json", |m| m.format.as_str()).to_owned(),
        not_before: meta.map(|m| rfc3339(m.not_before)).unwrap_or_default(),
        expires_after: meta.map(|m| rfc3339(m.expires_after)).unwrap_or_default(),
        versions_kept: doc.versions.len(),
        kubernetes: None,
        replicated_from: doc.origin.as_ref().map(|o| o.source.clone()),
    }
}

/// [`info`] with the Kubernetes sync state of a `k8s:` secret, when the Safe keeps them.
pub fn info_in(s: &AppState, doc: &SecretDoc) -> SecretInfo {
    let mut i = info(doc);
    if doc.name.kind() == aegis_core::SecretKind::Kubernetes {
        i.kubernetes = s.sync().and_then(|sync| sync.state(&doc.name, doc.revision));
    }
    i
}

/// A name that may be written: the current rule only.
fn name(raw: &str) -> Result<SecretName, ApiError> {
    Ok(SecretName::parse(raw)?)
}

fn existing(s: &AppState, n: &SecretName) -> Result<Arc<Entry>, ApiError> {
    s.store()?
        .get(n)
        .ok_or_else(|| ApiError::not_found(format!("secret '{n}' does not exist; `aegis list` shows the secrets")))
}

/// The import timestamps of a put: both or neither, RFC 3339, `created` not after `updated`.
fn stamps(created: Option<&str>, updated: Option<&str>) -> Result<Option<Stamps>, ApiError> {
    let parse = |field: &str, t: &str| {
        OffsetDateTime::parse(t.trim(), &Rfc3339).map_err(|_| {
            ApiError::bad_request(format!("{field} must be an RFC 3339 time such as 2030-01-31T12:00:00Z"))
        })
    };
    match (created, updated) {
        (None, None) => Ok(None),
        (Some(c), Some(u)) => {
            let (created, updated) = (parse("created", c)?, parse("updated", u)?);
            if created > updated {
                return Err(ApiError::bad_request("created must not be after updated"));
            }
            Ok(Some(Stamps { created, updated }))
        }
        _ => Err(ApiError::bad_request("give both created and updated (for imports), or neither")),
    }
}

/// `PUT /v1/secrets/{name}`.
pub async fn put(State(s): St, Extension(c): Who, p: Segments, b: Body) -> Result<Json<SecretInfo>, ApiError> {
    let n = name(&p.name)?;
    allow(&s, &c, Action::Write, Target::Secret(&n))?;
    let req: PutSecret = extract::json(b, s.settings.max_body_bytes)?;
    let store = s.store()?;
    if req.value.is_empty() {
        return Err(ApiError::bad_request("the secret value is empty; provide a value"));
    }
    let format = req.format.as_deref().map(Format::parse_strict).transpose()?;
    let meta = extract::meta(
        req.namespaces.as_deref(),
        req.template.as_deref(),
        format,
        req.not_before.as_deref(),
        req.expires_after.as_deref(),
        s.settings.template_budget,
    )
    .await?;
    let stamps = stamps(req.created.as_deref(), req.updated.as_deref())?;
    let view = Some(extract::view(&req.value, &meta, s.settings.template_budget).await?);
    crate::sync::check(s.sync(), &n, &req.value, &meta).await?;
    crate::audit::note_secret(&n);
    crate::audit::intent_before_commit(&s).await?;
    let e = store.apply(n, Mutation::Put { value: req.value, meta, cas: req.cas, view, stamps }).await?;
    crate::audit::note_version(e.doc.current);
    s.metrics.secrets.set(store.len() as i64);
    Ok(Json(info_in(&s, &e.doc)))
}

/// Query of `GET /v1/secrets/{name}`.
#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<VersionNumber>,
}

/// `GET /v1/secrets/{name}[?version=N]`: a version with its raw value.
pub async fn get(
    State(s): St,
    Extension(c): Who,
    p: Segments,
    q: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SecretRead>, ApiError> {
    let n = extract::address(&s, &p.name)?;
    crate::audit::note_secret(&n);
    allow(&s, &c, Action::Reveal, Target::Secret(&n))?;
    let Query(q) = q.map_err(|_| ApiError::bad_request("version must be a positive whole number"))?;
    let e = existing(&s, &n)?;
    if e.doc.deleted.is_some() && q.version.is_none() {
        return Err(ApiError::not_found(format!("secret '{n}' is deleted; `aegis undelete {n}` restores it")));
    }
    let number = q.version.map_or(e.doc.current, VersionNumber::get);
    crate::audit::note_version(number);
    let v = e.doc.version(number).ok_or_else(|| {
        ApiError::not_found(format!(
            "secret '{n}' has no version {number}; `aegis history {n}` lists the versions kept"
        ))
    })?;
    let value =
        v.value.clone().ok_or_else(|| ApiError::gone(format!("version {number} of secret '{n}' was destroyed")))?;
    let data = (number == e.doc.current).then(|| e.workload_value().cloned()).flatten();
    Ok(Json(SecretRead { info: info_in(&s, &e.doc), read_version: number, value, data }))
}

/// Query of `GET /v1/secrets`.
#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    deleted: bool,
}

/// `GET /v1/secrets[?deleted=true]`.
pub async fn list(
    State(s): St,
    Extension(c): Who,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SecretList>, ApiError> {
    let Query(q) = q.map_err(|_| ApiError::bad_request("deleted must be true or false"))?;
    let store = s.store()?;
    let may = listable(&s, &c);
    let secrets = store
        .list()
        .iter()
        .filter(|e| (q.deleted || e.doc.deleted.is_none()) && may(&e.doc.name))
        .map(|e| info_in(&s, &e.doc))
        .collect();
    Ok(Json(SecretList { secrets }))
}

/// Which secrets `c` may see in a listing: the secrets (never a policy
/// record) a policy in force lets it `list`, decided by the one set of
/// policies for the whole listing.
pub fn listable(s: &AppState, c: &Caller) -> impl Fn(&SecretName) -> bool {
    let set = s.policies.current_full();
    let (id, role) = (c.id.clone(), c.role.clone());
    move |n: &SecretName| {
        n.kind() != aegis_core::SecretKind::Policy
            && set.decide(aegis_core::policy::Subject { id: &id, role: &role }, Action::List, Target::Secret(n)).allowed
    }
}

async fn mutate(s: &AppState, c: &Caller, raw: &str, m: Mutation) -> Result<Json<SecretInfo>, ApiError> {
    let n = extract::address(s, raw)?;
    crate::audit::note_secret(&n);
    allow(s, c, Action::Write, Target::Secret(&n))?;
    let store = s.store()?;
    crate::audit::intent_before_commit(s).await?;
    let e = store.apply(n, m).await?;
    crate::audit::note_version(e.doc.current);
    Ok(Json(info_in(s, &e.doc)))
}

/// `DELETE /v1/secrets/{name}`: soft delete.
pub async fn delete(State(s): St, Extension(c): Who, p: Segments) -> Result<Json<SecretInfo>, ApiError> {
    mutate(&s, &c, &p.name, Mutation::Delete).await
}

/// `POST /v1/secrets/{name}/undelete`.
pub async fn undelete(State(s): St, Extension(c): Who, p: Segments) -> Result<Json<SecretInfo>, ApiError> {
    mutate(&s, &c, &p.name, Mutation::Undelete).await
}

/// `DELETE /v1/secrets/{name}/versions/{version}`: destroys one version's value.
pub async fn destroy(State(s): St, Extension(c): Who, p: Segments) -> Result<Json<SecretInfo>, ApiError> {
    let v = VersionNumber::parse(p.version.as_deref().unwrap_or_default())?;
    mutate(&s, &c, &p.name, Mutation::Destroy(v)).await
}

/// `POST /v1/secrets/{name}/rollback`.
pub async fn rollback(State(s): St, Extension(c): Who, p: Segments, b: Body) -> Result<Json<SecretInfo>, ApiError> {
    let req: Rollback = extract::json(b, s.settings.max_body_bytes)?;
    mutate(&s, &c, &p.name, Mutation::Rollback(req.version)).await
}

/// `GET /v1/secrets/{name}/versions`.
pub async fn history(State(s): St, Extension(c): Who, p: Segments) -> Result<Json<History>, ApiError> {
    let n = extract::address(&s, &p.name)?;
    crate::audit::note_secret(&n);
    allow(&s, &c, Action::List, Target::Secret(&n))?;
    let e = existing(&s, &n)?;
    let versions = e
        .doc
        .versions
        .iter()
        .map(|v| VersionInfo {
            version: v.number.get(),
            created: rfc3339(v.created),
            destroyed: v.value.is_none(),
            current: v.number.get() == e.doc.current,
        })
        .collect();
    Ok(Json(History { name: n.to_string(), versions }))
}

/// The caller's secret as a workload sees it now: its revision (0 if it never
/// existed) and the secret if it is live and inside its validity window; a
/// 500 when its stored template is over the template budget.
pub fn workload_view(store: &Store, name: &SecretName) -> Result<(u64, Option<WorkloadSecret>), ApiError> {
    crate::audit::note_secret(name);
    let Some(e) = store.get(name) else { return Ok((0, None)) };
    crate::audit::note_version(e.doc.current);
    let secret = e.deliverable(OffsetDateTime::now_utc())?.map(|data| WorkloadSecret {
        name: name.to_string(),
        version: e.doc.current,
        revision: e.doc.revision,
        data: data.clone(),
        updated: rfc3339(e.doc.updated),
    });
    Ok((e.doc.revision, secret))
}

/// `GET /v1/workload/secret`: the calling workload's own secret.
pub async fn workload(State(s): St, Extension(c): Who) -> Result<Json<WorkloadSecret>, ApiError> {
    let w = c.require_workload()?;
    let store = s.store()?;
    let none = || ApiError::not_found(format!("no secret is registered for workload '{w}'"));
    let n = w.secret_name().map_err(|_| none())?;
    allow(&s, &c, Action::Read, Target::Secret(&n))?;
    workload_view(&store, &n)?.1.map(Json).ok_or_else(none)
}

/// `GET /v1/workload/secrets/{name}`: a secret by name as a workload gets it,
/// for a caller a policy allows to `read` it.
pub async fn named(State(s): St, Extension(c): Who, p: Segments) -> Result<Json<WorkloadSecret>, ApiError> {
    let n = extract::address(&s, &p.name)?;
    allow(&s, &c, Action::Read, Target::Secret(&n))?;
    let store = s.store()?;
    workload_view(&store, &n)?.1.map(Json).ok_or_else(|| {
        ApiError::not_found(format!("secret '{n}' does not exist, is deleted or is outside its validity window"))
    })
}

/// `POST /v1/encrypt`: a ciphertext for git, as `safe -e` makes.
pub async fn encrypt(State(s): St, Extension(_c): Who, b: Body) -> Result<Json<EncryptResponse>, ApiError> {
    let req: EncryptRequest = extract::json(b, s.settings.max_body_bytes)?;
    let store = s.store()?;
    let ciphertext = store
        .keyring()
        .current()
        .encrypt_for_git(req.value.expose().as_bytes())
        .map_err(|_| ApiError::internal("encryption failed; see the Safe's log"))?;
    Ok(Json(EncryptResponse { ciphertext }))
}

/// `POST /v1/unseal`.
pub async fn unseal(State(s): St, Extension(c): Who, b: Body) -> Result<Json<Status>, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    let req: Unseal = extract::json(b, s.settings.max_body_bytes)?;
    let key = RootKey::parse(req.root_key.expose()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    crate::audit::intent(&s).await?;
    s.unseal(Keyring::new(Arc::new(key))).await?;
    Ok(Json(status_of(&s)))
}

fn status_of(s: &AppState) -> Status {
    let store = s.store().ok();
    Status {
        sealed: store.is_none(),
        secrets: store.as_ref().map_or(0, |st| st.len()),
        key_id: store.map(|st| st.keyring().current().id().to_string()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kubernetes: s.sync().filter(|sync| sync.keeps_copies()).map(|sync| sync.summary()),
        federated_domains: s.settings.federation.domains().map(str::to_owned).collect(),
        replication: s.replication.is_on().then(|| replication_of(s)),
    }
}

fn replication_of(s: &AppState) -> aegis_core::api::ReplicationStatus {
    s.replication.status(s.store().map_or(0, |st| st.last_change()))
}

/// `GET /v1/replication`: where each replication link stands.
pub async fn replication(
    State(s): St,
    Extension(_c): Who,
) -> Result<Json<aegis_core::api::ReplicationStatus>, ApiError> {
    // Let past the request head only with a policy that allows `list`, as the status.
    Ok(Json(replication_of(&s)))
}

/// `GET /v1/status`.
pub async fn status(State(s): St, Extension(_c): Who) -> Result<Json<Status>, ApiError> {
    // Let past the request head only with a policy that allows `list`.
    Ok(Json(status_of(&s)))
}

/// `POST /v1/admin/rotate-root-key`.
pub async fn rotate(State(s): St, Extension(c): Who) -> Result<Json<Rotated>, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    s.store()?;
    crate::audit::intent(&s).await?;
    Ok(Json(s.rotate_root_key().await?))
}

/// The most lines `GET /v1/audit` returns at once.
pub const MAX_AUDIT_LINES: usize = 1000;

/// Query of `GET /v1/audit`.
#[derive(Deserialize)]
pub struct AuditQuery {
    lines: Option<usize>,
    caller: Option<String>,
    secret: Option<String>,
}

/// `GET /v1/audit[?lines=N&caller=ID&secret=NAME]`: the newest lines of the
/// current audit file, for a caller a policy allows `audit`.
pub async fn audit_tail(
    State(s): St,
    Extension(c): Who,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<aegis_core::api::AuditLines>, ApiError> {
    allow(&s, &c, Action::Audit, Target::Safe)?;
    let Query(q) = q.map_err(|_| ApiError::bad_request("lines must be a whole number; caller and secret are text"))?;
    let n = q.lines.unwrap_or(100);
    if n == 0 || n > MAX_AUDIT_LINES {
        return Err(ApiError::bad_request(format!("lines must be from 1 to {MAX_AUDIT_LINES}")));
    }
    let Some(path) = s.settings.audit.file.clone() else {
        return Err(ApiError::conflict(
            "the audit trail is off on this Safe (--audit-file off); there is nothing to read",
        ));
    };
    let read = tokio::task::spawn_blocking(move || {
        let keep = |line: &[u8]| {
            aegis_audit::line::Parsed::parse(line).is_some_and(|p| p.matches(q.caller.as_deref(), q.secret.as_deref()))
        };
        aegis_audit::files::last_matching(&path, n, &keep)
    })
    .await;
    let (found, _) = match read {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading the audit trail");
            return Err(ApiError::internal("the audit trail could not be read; see the Safe's log"));
        }
        Err(_) => return Err(ApiError::internal("reading the audit trail failed; see the Safe's log")),
    };
    let lines = found.iter().filter_map(|l| serde_json::from_slice(l).ok()).collect();
    Ok(Json(aegis_core::api::AuditLines { lines }))
}

/// `GET /v1/openapi.yaml`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}
