//! Request body parsing with clear, value-free errors.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::timefmt::parse_time;
use aegis_core::transform::{Budget, Format};
use aegis_core::SecretName;
use aegis_store::Data;

use crate::error::{json_error, ApiError};
use crate::state::AppState;

/// A name that addresses a secret: the current rule, or a name an older
/// version stored that exists (so it can still be read and deleted).
pub(crate) fn address(s: &AppState, raw: &str) -> Result<SecretName, ApiError> {
    match SecretName::parse(raw) {
        Ok(n) => Ok(n),
        Err(e) => match SecretName::parse_stored(raw) {
            Ok(old) if s.store()?.get(&old).is_some() => Ok(old),
            _ => Err(e.into()),
        },
    }
}

/// 413 with the limit named.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes; send less or raise AEGIS_MAX_BODY_BYTES"),
    )
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

/// Checks the template of a write and computes what the workload will see,
/// on a blocking thread and within `budget`, before the write reaches the
/// store's single writer: a template that is malformed or over the budget is
/// a 400 naming the reason (or the bound), and nothing is stored.
pub async fn view(value: &SecretValue, meta: &SecretMeta, budget: Budget) -> Result<Data, ApiError> {
    let Some(template) = meta.template.clone() else {
        // No template: only trimming and the format, linear in the value.
        return Data::compute(value, meta, &budget).map_err(|e| ApiError::bad_request(e.to_string()));
    };
    let (value, meta) = (value.clone(), meta.clone());
    tokio::task::spawn_blocking(move || {
        aegis_core::transform::validate_template(&template)?;
        Data::compute(&value, &meta, &budget)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the template check failed; see the Safe's log"))?
    .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Validates a Kubernetes namespace name (an RFC 1123 label).
fn namespace(ns: &str) -> Result<String, ApiError> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(ns.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid namespace '{}': use 1 to 63 lower-case letters, digits or '-', not starting or ending with '-'",
            ns.escape_debug()
        )))
    }
}

/// Builds delivery metadata from the optional fields both APIs accept.
pub fn meta(
    namespaces: Option<&[String]>,
    template: Option<&str>,
    format: Option<&str>,
    not_before: Option<&str>,
    expires: Option<&str>,
) -> Result<SecretMeta, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut m = SecretMeta::defaults(now);
    if let Some(list) = namespaces.filter(|l| !l.is_empty()) {
        m.namespaces = list.iter().map(|n| namespace(n.trim())).collect::<Result<_, _>>()?;
    }
    m.template = template.map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
    if let Some(f) = format {
        m.format = Format::parse_lenient(f);
    }
    let given = |v: Option<&str>, default: &'static str| match v.map(str::trim) {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => default.to_owned(),
    };
    m.not_before = parse_time("notBefore", &given(not_before, "now"), now)?;
    m.expires_after = parse_time("expires", &given(expires, "never"), now)?;
    if m.expires_after <= m.not_before {
        return Err(ApiError::bad_request("expires must be later than notBefore"));
    }
    Ok(m)
}
