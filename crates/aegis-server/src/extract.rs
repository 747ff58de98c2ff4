//! Request body parsing with clear, value-free errors.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::timefmt::ValidityWindow;
use aegis_core::transform::{Budget, Format, Template};
use aegis_core::{Namespace, SecretName};
use aegis_store::Data;

use crate::error::{json_error, ApiError};
use crate::state::AppState;

/// A name that addresses a secret: the current rule, or a name an older
/// version stored that exists (so it can still be read and deleted).
/// A policy record is never a secret: it is refused like a name that does not parse.
pub(crate) fn address(s: &AppState, raw: &str) -> Result<SecretName, ApiError> {
    match SecretName::parse(raw) {
        Ok(n) => Ok(n),
        Err(e) => match SecretName::parse_stored(raw) {
            Ok(old) if old.kind() != aegis_core::SecretKind::Policy && s.store()?.get(&old).is_some() => Ok(old),
            _ => Err(e.into()),
        },
    }
}

/// 413 with the limit named.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "request body is larger than the limit of {limit} bytes; send less or raise AEGIS_MAX_BODY_BYTES"
    ))
}

/// The request body, or 413 with the limit named.
pub fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::bad_request("could not read the request body")
        }
    })
}

/// Parses a JSON body.
pub fn json<T: DeserializeOwned>(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<T, ApiError> {
    let bytes = body(b, limit)?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; send a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| json_error(&e))
}

/// Computes what the workload will see, within `budget` and (with a template) on a
/// blocking thread, before the write reaches the store's single writer: a template
/// over the budget for this value is a 400 naming the bound, and nothing is stored.
pub async fn view(value: &SecretValue, meta: &SecretMeta, budget: Budget) -> Result<Data, ApiError> {
    if meta.template.is_none() {
        // No template: only trimming and the format, linear in the value.
        return Data::compute(value, meta, &budget).map_err(|e| ApiError::bad_request(e.to_string()));
    }
    let (value, meta) = (value.clone(), meta.clone());
    blocking("the template check", move || Data::compute(&value, &meta, &budget)).await
}

/// Parses a template (a malformed one, or one larger than the budget's
/// size limit, is a 400 with the reason), on a blocking thread: a deeply
/// nested template takes a while to check.
async fn template(text: Option<&str>, budget: Budget) -> Result<Option<Template>, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => {
            // Refused before it is copied or parsed.
            Template::check_size(t, &budget).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let t = t.to_owned();
            blocking("the template check", move || Template::parse_within(&t, &budget)).await
        }
    }
}

/// Runs `f` on a blocking thread; its error is a 400 with the reason.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| ApiError::bad_request(e.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "{what} did not finish");
            Err(ApiError::internal(format!("{what} failed; see the Safe's log")))
        }
    }
}

/// Builds delivery metadata from the optional fields both APIs accept, each
/// parsed once into its type (a namespace, a format, a validity window).
/// Namespace items are trimmed, as before; times are `now`/`never`/RFC 3339;
/// the template is held to `budget` (its size first, before it is parsed).
pub async fn meta(
    namespaces: Option<&[String]>,
    template: Option<&str>,
    format: Option<Format>,
    not_before: Option<&str>,
    expires: Option<&str>,
    budget: Budget,
) -> Result<SecretMeta, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut m = SecretMeta::defaults(now);
    if let Some(list) = namespaces.filter(|l| !l.is_empty()) {
        m.namespaces = list.iter().map(|n| Namespace::parse(n.trim())).collect::<Result<_, _>>()?;
    }
    m.template = self::template(template, budget).await?;
    m.format = format.unwrap_or_default();
    let window = ValidityWindow::parse(not_before.unwrap_or(""), expires.unwrap_or(""), now)?;
    m.not_before = window.not_before;
    m.expires_after = window.expires_after;
    Ok(m)
}
