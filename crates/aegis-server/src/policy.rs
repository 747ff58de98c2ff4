//! Policies: the decision of each request, and the routes that manage them
//! (`/v1/policies`, `/v1/explain`; see docs/POLICIES.md).
//!
//! Policies live in the store as sealed, versioned records named
//! `policy:<name>` (never a secret's name: no request can give one), plus
//! those of the policy file given at start-up, which cannot be changed over
//! the API. The indexed set is rebuilt whenever a policy record changes, here
//! or on another Safe sharing the database, and a change made through this
//! Safe is in force before its answer: on every connection, for the next request.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::policies::{Policies, PolicySettings};

use aegis_core::api::{Explain, Explained, PolicyInfo, PolicyList};
use aegis_core::policy::{Action, Decision, Policy, PolicyDoc, PolicyName, Subject, Target};
use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::timefmt::rfc3339;
use aegis_core::{SecretKind, SecretName, SpiffeId};
use aegis_store::Mutation;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::{Extension, Json};
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract;
use crate::path::Segments;
use crate::state::AppState;

type St = State<Arc<AppState>>;
type Who = Extension<Arc<Caller>>;
type Body = Result<Bytes, BytesRejection>;

/// What `who` may do: `Ok` with the decision, or a 403 that names the policy that decided.
pub fn allow(s: &AppState, who: &Caller, action: Action, target: Target<'_>) -> Result<Decision, ApiError> {
    let d = s.policies.current().decide(who.subject(), action, target);
    crate::audit::note_policy(&d.by);
    if d.allowed {
        return Ok(d);
    }
    let on = match target {
        Target::Secret(n) => format!("secret '{n}'"),
        Target::Safe => "the Safe".to_owned(),
    };
    let secret = match target {
        Target::Secret(n) => n.as_str(),
        Target::Safe => "'*'",
    };
    Err(ApiError::forbidden(format!(
        "{} may not {action} {on}: denied by {}; `aegis policy explain --spiffe-id {} --secret {secret} --action {action}` shows why",
        who.id, d.by, who.id
    )))
}

fn name(raw: &str) -> Result<PolicyName, ApiError> {
    PolicyName::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn info(p: &Policy, source: &str, version: Option<u64>, updated: Option<OffsetDateTime>) -> PolicyInfo {
    PolicyInfo { policy: p.to_doc(), source: source.to_owned(), version, updated: updated.map(rfc3339) }
}

/// `GET /v1/policies`: every policy in force, with the built-ins that are on.
pub async fn list(State(s): St, Extension(c): Who) -> Result<Json<PolicyList>, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    let store = s.store()?;
    let mut stored: BTreeMap<String, (u64, OffsetDateTime)> = BTreeMap::new();
    for e in store.list().iter().filter(|e| e.doc.name.kind() == SecretKind::Policy && e.doc.deleted.is_none()) {
        if let Some(n) = e.doc.name.policy_name() {
            stored.insert(n.to_owned(), (e.doc.current, e.doc.updated));
        }
    }
    let set = s.policies.current();
    let policies = set
        .policies()
        .iter()
        .map(|p| match stored.get(p.name.as_str()) {
            Some((v, at)) if !s.policies.in_file(p.name.as_str()) => info(p, "stored", Some(*v), Some(*at)),
            _ => info(p, "file", None, None),
        })
        .collect();
    let b = set.builtins();
    let builtins =
        [(aegis_core::policy::BUILTIN_WORKLOAD, b.workload), (aegis_core::policy::BUILTIN_SENTINEL, b.sentinel)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| n.to_owned())
            .collect();
    Ok(Json(PolicyList { policies, builtins }))
}

/// `GET /v1/policies/{name}`.
pub async fn get(State(s): St, Extension(c): Who, p: Segments) -> Result<Json<PolicyInfo>, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    let n = name(&p.name)?;
    let store = s.store()?;
    if let Some(p) = s.settings.policies.from_file.iter().find(|f| f.name == n) {
        return Ok(Json(info(p, "file", None, None)));
    }
    let missing =
        || ApiError::not_found(format!("policy '{n}' does not exist; `aegis policy list` shows the policies"));
    let e = store.get(&n.record()).ok_or_else(missing)?;
    let (_, raw) = e.doc.live().ok_or_else(missing)?;
    let policy = Policy::from_json(raw.expose().as_bytes()).map_err(|why| {
        tracing::error!(policy = %n, error = %why, "a stored policy cannot be read");
        ApiError::internal("the stored policy cannot be read; see the Safe's log")
    })?;
    Ok(Json(info(&policy, "stored", Some(e.doc.current), Some(e.doc.updated))))
}

/// `PUT /v1/policies/{name}`: a new version of a policy, in force before the answer.
pub async fn put(State(s): St, Extension(c): Who, p: Segments, b: Body) -> Result<Json<PolicyInfo>, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    let n = name(&p.name)?;
    let doc: PolicyDoc = extract::json(b, s.settings.max_body_bytes)?;
    let policy = Policy::from_doc(&doc).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if policy.name != n {
        return Err(ApiError::bad_request(format!(
            "the document names policy '{}' but the path names '{n}'; make them the same",
            policy.name
        )));
    }
    if s.policies.in_file(n.as_str()) {
        return Err(ApiError::conflict(format!(
            "policy '{n}' comes from the policy file (AEGIS_POLICY_FILE); change it there and restart the Safe"
        )));
    }
    let store = s.store()?;
    let record = n.record();
    let exists = store.get(&record).is_some_and(|e| e.doc.deleted.is_none());
    if !exists && s.policies.current().policies().len() >= aegis_core::policy::MAX_POLICIES {
        return Err(ApiError::conflict(format!(
            "the Safe holds its limit of {} policies; delete one first",
            aegis_core::policy::MAX_POLICIES
        )));
    }
    let text = serde_json::to_string(&policy.to_doc()).map_err(|_| ApiError::internal("encoding failed"))?;
    crate::audit::note_secret(&record);
    crate::audit::intent_before_commit(&s).await?;
    let meta = SecretMeta::defaults(OffsetDateTime::now_utc());
    let e = store
        .apply(record, Mutation::Put { value: SecretValue::new(text), meta, cas: None, view: None, stamps: None })
        .await?;
    crate::audit::note_version(e.doc.current);
    s.policies.reload(&store).await;
    Ok(Json(info(&policy, "stored", Some(e.doc.current), Some(e.doc.updated))))
}

/// `DELETE /v1/policies/{name}`: out of force before the answer (its versions are kept).
pub async fn delete(State(s): St, Extension(c): Who, p: Segments) -> Result<Json<PolicyInfo>, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    let n = name(&p.name)?;
    if s.policies.in_file(n.as_str()) {
        return Err(ApiError::conflict(format!(
            "policy '{n}' comes from the policy file (AEGIS_POLICY_FILE); remove it there and restart the Safe"
        )));
    }
    let store = s.store()?;
    let record = n.record();
    let missing =
        || ApiError::not_found(format!("policy '{n}' does not exist; `aegis policy list` shows the policies"));
    let e = store.get(&record).ok_or_else(missing)?;
    let (_, raw) = e.doc.live().ok_or_else(missing)?;
    let policy = Policy::from_json(raw.expose().as_bytes()).ok();
    crate::audit::note_secret(&record);
    crate::audit::intent_before_commit(&s).await?;
    let e = store.apply(record, Mutation::Delete).await?;
    crate::audit::note_version(e.doc.current);
    s.policies.reload(&store).await;
    let shown = policy.unwrap_or_else(|| Policy {
        name: n.clone(),
        effect: aegis_core::policy::Effect::Allow,
        ids: Vec::new(),
        secrets: Vec::new(),
        actions: aegis_core::policy::ActionSet::EMPTY,
        rate: None,
        description: String::new(),
    });
    Ok(Json(info(&shown, "deleted", Some(e.doc.current), Some(e.doc.updated))))
}

/// `POST /v1/explain`: what the policies in force decide for a SPIFFE ID, a secret and an action.
pub async fn explain(State(s): St, Extension(c): Who, b: Body) -> Result<Json<Explained>, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    let req: Explain = extract::json(b, s.settings.max_body_bytes)?;
    let id = SpiffeId::parse(&req.spiffe_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let action = Action::parse(&req.action).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let role = s.settings.roles.classify(&id);
    let secret = match req.secret.as_deref().filter(|n| *n != "*") {
        Some(n) => Some(SecretName::parse(n).map_err(|e| ApiError::bad_request(e.to_string()))?),
        None => None,
    };
    let target = secret.as_ref().map_or(Target::Safe, Target::Secret);
    let d = s.policies.current().decide(Subject { id: &id, role: &role }, action, target);
    Ok(Json(Explained { allowed: d.allowed, decided_by: d.by.name().to_owned(), reason: d.by.to_string() }))
}
