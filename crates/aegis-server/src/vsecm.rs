//! The VSecM-compatible API (see `docs/VSECM-COMPATIBILITY.md`, "HTTP API").

use std::sync::Arc;

use aegis_core::api::{
    Algorithm, Keystone, KeystoneStatus, VsecmDelete, VsecmKeys, VsecmList, VsecmListItem, VsecmUpsert,
};
use aegis_core::secret::SecretValue;
use aegis_core::timefmt::rfc3339;
use aegis_core::transform::Format;
use aegis_core::{SecretName, KEYSTONE};
use aegis_crypto::{Keyring, RootKey};
use aegis_store::{Mutation, StoreError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract;
use crate::policy::allow;
use crate::state::AppState;
use aegis_core::policy::{Action, Target};

type St = State<Arc<AppState>>;
type Who = Extension<Arc<Caller>>;

#[derive(Serialize)]
struct FetchOut<'a> {
    data: &'a str,
    created: String,
    updated: String,
}

/// `GET /workload/v1/secrets`: the caller's own secret; 404 with an empty body if none.
///
/// Errors on this route are plain text, not JSON: VSecM's Go SDK decodes any
/// non-404 body as a secret, so a JSON error would read as an empty secret.
pub async fn fetch(st: St, who: Who) -> Response {
    match fetch_inner(st, who).await {
        Ok(r) => r,
        Err(e) => {
            let text = e.message().to_owned();
            e.respond_with(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
        }
    }
}

async fn fetch_inner(State(s): St, Extension(c): Who) -> Result<Response, ApiError> {
    let name = c.require_workload()?;
    let store = s.store()?;
    // VSecM answers a workload without a secret 404 with an empty body; the
    // reason goes to the request log only.
    let Ok(secret) = name.secret_name() else {
        return Ok(empty_404(format!("workload '{name}' has no secret name")));
    };
    crate::audit::note_secret(&secret);
    allow(&s, &c, Action::Read, Target::Secret(&secret))?;
    let Some(entry) = store.get(&secret) else {
        return Ok(empty_404(format!("secret '{secret}' does not exist")));
    };
    crate::audit::note_version(entry.doc.current);
    let Some(value) = entry.deliverable(OffsetDateTime::now_utc())? else {
        return Ok(empty_404(format!("secret '{secret}' is deleted or outside its validity window")));
    };
    let out = FetchOut {
        data: value.expose(),
        created: format!("\"{}\"", rfc3339(entry.doc.created)),
        updated: format!("\"{}\"", rfc3339(entry.doc.updated)),
    };
    let body = serde_json::to_vec(&out).map_err(|_| ApiError::internal("encoding failed"))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// VSecM's 404: no body, the reason kept for the log.
fn empty_404(reason: String) -> Response {
    ApiError::not_found(reason).respond_with(())
}

/// Query of the list endpoint.
#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    reveal: Option<String>,
}

/// `GET /sentinel/v1/secrets[?reveal=true]`.
pub async fn list(
    State(s): St,
    Extension(c): Who,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<VsecmList>, ApiError> {
    let store = s.store()?;
    let may = crate::native::listable(&s, &c);
    let reveal = q.ok().and_then(|Query(q)| q.reveal).is_some_and(|r| r == "true");
    let keyring = store.keyring();
    let mut secrets = Vec::new();
    for e in store.list().iter().filter(|e| may(&e.doc.name)) {
        let Some((v, raw)) = e.doc.live() else { continue };
        let value = if reveal {
            Some(keyring.current().encrypt_for_git(raw.expose().as_bytes()).map_err(|e| {
                tracing::error!(error = %e, "encrypting for reveal");
                ApiError::internal("encryption failed; see the Safe's log")
            })?)
        } else {
            None
        };
        secrets.push(VsecmListItem {
            name: e.doc.name.to_string(),
            created: rfc3339(e.doc.created),
            updated: rfc3339(e.doc.updated),
            not_before: rfc3339(v.meta.not_before),
            expires_after: rfc3339(v.meta.expires_after),
            value,
        });
    }
    Ok(Json(VsecmList { secrets, algorithm: reveal.then_some(Algorithm::Age) }))
}

/// `POST /sentinel/v1/secrets`: upsert, or encrypt-only.
pub async fn upsert(State(s): St, Extension(c): Who, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: VsecmUpsert = extract::json(b, s.settings.max_body_bytes)?;
    let store = s.store()?;
    let workloads = req.workloads.clone().unwrap_or_default();
    if workloads.is_empty() {
        if req.encrypt {
            let ct = store
                .keyring()
                .current()
                .encrypt_for_git(req.value.expose().as_bytes())
                .map_err(|_| ApiError::internal("encryption failed; see the Safe's log"))?;
            return Ok(ct.into_response());
        }
        return Err(ApiError::bad_request("no workloads given: name at least one (safe -w NAME)"));
    }
    // Never trimmed or rewritten: a name the rule refuses is refused.
    let names = workloads.iter().map(|w| SecretName::parse(w)).collect::<Result<Vec<_>, _>>()?;
    for name in &names {
        allow(&s, &c, Action::Write, Target::Secret(name))?;
    }
    let value = if req.encrypt { decrypt_value(store.keyring().current(), &req.value)? } else { req.value };
    if value.is_empty() {
        return Err(ApiError::bad_request("the secret value is empty; provide one (safe -s VALUE)"));
    }
    let meta = extract::meta(
        req.namespaces.as_deref(),
        Some(&req.template),
        Some(Format::parse_lenient(&req.format)),
        Some(&req.not_before),
        Some(&req.expires),
        s.settings.template_budget,
    )
    .await?;
    let view = extract::view(&value, &meta, s.settings.template_budget).await?;
    for name in &names {
        crate::sync::check(s.sync(), name, &value, &meta).await?;
    }
    // All workloads or none: one store job, written all or nothing.
    let writes: Vec<_> = names
        .into_iter()
        .map(|name| {
            let put = Mutation::Put {
                value: value.clone(),
                meta: meta.clone(),
                cas: None,
                view: Some(view.clone()),
                stamps: None,
            };
            (name, put)
        })
        .collect();
    let count = writes.len();
    for (name, _) in &writes {
        crate::audit::note_secret(name);
    }
    crate::audit::intent_before_commit(&s).await?;
    store.apply_group(writes).await?;
    let ok = "OK".repeat(count);
    s.metrics.secrets.set(store.len() as i64);
    Ok(ok.into_response())
}

fn decrypt_value(key: &RootKey, ct: &SecretValue) -> Result<SecretValue, ApiError> {
    let plain = key.decrypt_from_git(ct.expose()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let text =
        std::str::from_utf8(&plain).map_err(|_| ApiError::bad_request("the decrypted value is not UTF-8 text"))?;
    Ok(SecretValue::new(text))
}

/// `DELETE /sentinel/v1/secrets`: soft-deletes each named secret (missing ones are fine).
pub async fn delete(State(s): St, Extension(c): Who, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: VsecmDelete = extract::json(b, s.settings.max_body_bytes)?;
    let store = s.store()?;
    if req.workloads.is_empty() {
        return Err(ApiError::bad_request("no workloads given: name the secrets to delete (safe -d -w NAME)"));
    }
    let names = req.workloads.iter().map(|w| extract::address(&s, w)).collect::<Result<Vec<_>, _>>()?;
    names.iter().for_each(crate::audit::note_secret);
    for name in &names {
        allow(&s, &c, Action::Write, Target::Secret(name))?;
    }
    crate::audit::intent_before_commit(&s).await?;
    for name in names {
        match store.apply(name, Mutation::Delete).await {
            Ok(_)
            | Err(StoreError::NotFound(_))
            | Err(StoreError::Op(aegis_core::secret::OpError::WrongState { .. })) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok("OK".into_response())
}

/// `POST /sentinel/v1/keys`: provides the root key to a sealed Safe.
pub async fn keys(State(s): St, Extension(c): Who, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    allow(&s, &c, Action::Admin, Target::Safe)?;
    let req: VsecmKeys = extract::json(b, s.settings.max_body_bytes)?;
    let key = RootKey::from_parts(req.age_secret_key.expose(), &req.age_public_key, req.aes_cipher_key.expose())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    crate::audit::intent(&s).await?;
    s.unseal(Keyring::new(Arc::new(key))).await?;
    Ok("OK".into_response())
}

/// `GET /sentinel/v1/keystone`.
pub async fn keystone(State(s): St, Extension(_c): Who) -> Result<Json<Keystone>, ApiError> {
    // Let past the request head only with a policy that allows `list`.
    let store = s.store()?;
    let ready = SecretName::parse(KEYSTONE).ok().and_then(|n| store.get(&n)).is_some_and(|e| e.doc.live().is_some());
    Ok(Json(Keystone { status: if ready { KeystoneStatus::Ready } else { KeystoneStatus::Pending } }))
}
