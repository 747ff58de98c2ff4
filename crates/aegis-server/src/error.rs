//! The one place where internal errors become HTTP answers.
//!
//! Callers get a status and a short message saying what to do; internal
//! details (paths, OS errors) go to the log only.

use aegis_core::api::ErrorBody;
use aegis_core::secret::OpError;
use aegis_store::{Refusal, StoreError, Undeliverable};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// Any status with a message for the caller: private, so that every
    /// status is picked in this file (by the constructors below and the
    /// `From` conversions of typed errors).
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 409: the request conflicts with the Safe's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 410: what was asked for existed and was destroyed.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, message)
    }

    /// 413: the request body is too large, or a request that takes none has one.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 429: the caller's own limit is reached; it should wait for its requests to finish.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// 503: the Safe cannot serve this now (a shared limit, a refused
    /// connection, sealed); retrying later may succeed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: an internal failure; the message says where to look, the details go to the log.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 408: the request ran out of time and none of its writes was applied.
    pub fn not_applied() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request took too long; the write was not applied (nothing was changed): retry; \
             a native PUT with \"cas\" (the version you expect, 0 for a new secret) is always safe to retry",
        )
    }

    /// 503: the request ran out of time after its write was taken up; it may
    /// have been applied.
    pub fn may_have_applied() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long after its write was taken up: the write may have been applied; \
             read the secret's versions before retrying, or retry a native PUT with \"cas\" \
             (the version you expect, 0 for a new secret) so a retry cannot write twice",
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 503: no root key loaded yet.
    pub fn sealed() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the Safe is sealed: no root key is loaded. An admin unseals it with `safe -i` \
             (three lines on standard input) or `aegis unseal --root-key-file FILE`",
        )
    }

    /// 503: the audit trail cannot record an admin write, so it was refused before anything changed.
    pub fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit trail unavailable: the Safe cannot write its audit file (disk full, I/O error or a blocked file), \
             so this change was refused and nothing was changed; reads and fetches go on. Free space or fix the \
             audit file named in the Safe's log (see docs/AUDIT.md), then retry",
        )
    }

    /// 503: an admin write was applied but its audit `done` line could not be made durable.
    pub fn audit_after_commit(request_id: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "audit trail unavailable: the change was applied, but its audit record could not be made durable; \
                 its intent is in the audit trail under request id {request_id}. Read the secret's versions before \
                 retrying, and fix the audit file named in the Safe's log (see docs/AUDIT.md)"
            ),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<aegis_core::InvalidInput> for ApiError {
    fn from(e: aegis_core::InvalidInput) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<Undeliverable> for ApiError {
    fn from(e: Undeliverable) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Op(OpError::VersionMismatch { .. }) => Self::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Op(OpError::NoSuchVersion { .. }) | StoreError::NotFound(_) => Self::not_found(e.to_string()),
            StoreError::Op(OpError::Destroyed { .. }) => Self::new(StatusCode::GONE, e.to_string()),
            StoreError::Op(OpError::WrongState { .. }) => Self::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Closed => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            StoreError::NotEmpty { .. } => Self::conflict(e.to_string()),
            StoreError::Replicated { .. } | StoreError::InTheWay { .. } => Self::conflict(e.to_string()),
            StoreError::Unavailable { .. } => Self::unavailable(e.to_string()),
            StoreError::Changed(_) => Self::conflict(e.to_string()),
            StoreError::KeyRetired { .. } | StoreError::ForeignKey { .. } => Self::unavailable(e.to_string()),
            StoreError::Expired => Self::not_applied(),
            StoreError::Barrier(_) => Self::audit_unavailable(),
            StoreError::Io { name, source } => {
                tracing::error!(secret = %name, error = %e, "storage failure");
                io_answer(name, source)
            }
            StoreError::PartlyStored { stored, not_stored, source } => {
                tracing::error!(error = %e, "storage failure midway through a group write");
                let status = io_answer("", source).status;
                let why = match status {
                    StatusCode::INSUFFICIENT_STORAGE => "the disk is full",
                    StatusCode::SERVICE_UNAVAILABLE => "the Safe has too many open files",
                    _ => "I/O error; see the Safe's log",
                };
                Self::new(
                    status,
                    format!(
                        "could not store every secret ({why}): stored (new version in place): {}; \
                         not stored (previous version intact): {}",
                        names(stored),
                        names(not_stored)
                    ),
                )
            }
            StoreError::Crypto(aegis_crypto::CryptoError::UnknownKey { .. }) => Self::bad_request(e.to_string()),
            StoreError::Open { .. } | StoreError::Crypto(_) => {
                tracing::error!(error = %e, "internal storage error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the Safe's log")
            }
        }
    }
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

/// What a failed write tells the caller, by the operating system's reason.
fn io_answer(name: &str, source: &std::io::Error) -> ApiError {
    use nix::errno::Errno;
    let code = source.raw_os_error().map(Errno::from_raw);
    match code {
        Some(Errno::EMFILE | Errno::ENFILE) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not store '{name}': the Safe has too many open files; nothing was changed, retry later"),
        ),
        Some(Errno::ENOSPC | Errno::EDQUOT) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("could not store '{name}': the disk is full; nothing was changed, free space and retry"),
        ),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not store '{name}' durably (I/O error; see the Safe's log); nothing was changed"),
        ),
    }
}

/// Why a request was refused, carried on the response so that the request log
/// line can say it: a caller whose client drops error bodies (VSecM's `safe`
/// prints only "Problem connecting to VSecM Safe API endpoint URL") is then
/// answered by `kubectl logs` on the Safe. Messages name secrets and limits,
/// never values.
#[derive(Debug, Clone)]
pub struct Reason(pub String);

impl ApiError {
    /// The answer with `body` instead of the JSON error body, keeping the reason for the log.
    pub fn respond_with(self, body: impl IntoResponse) -> Response {
        let mut resp = (self.status, body).into_response();
        resp.extensions_mut().insert(Reason(self.message));
        resp
    }
}

impl ApiError {
    /// The answer with the message as plain text (the health port's probes).
    pub fn plain_text(self) -> Response {
        let text = format!("{}\n", self.message);
        self.respond_with(text)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::TooManyNamespaces { .. } => Self::bad_request(r.to_string()),
            Refusal::InTheWay(_) | Refusal::Unconvertible { .. } | Refusal::CheckFailed | Refusal::NotKept(_) => {
                Self::conflict(r.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: self.message.clone() });
        self.respond_with(body)
    }
}

/// Turns a JSON parse error into a message that never echoes the input.
pub fn json_error(e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    let msg = match e.classify() {
        Category::Syntax => format!("malformed JSON at {at}; send a JSON object"),
        Category::Eof => "the JSON body ends early; send a complete JSON object".to_owned(),
        Category::Data => {
            // Field names are safe to repeat; values are not.
            let text = e.to_string();
            let field = text
                .strip_prefix("missing field `")
                .or_else(|| text.strip_prefix("unknown field `"))
                .and_then(|r| r.split('`').next())
                .map(|f| format!(" (field '{f}')"))
                .unwrap_or_default();
            format!("the JSON body does not have the expected fields or types at {at}{field}; see /v1/openapi.yaml")
        }
        Category::Io => "could not read the request body".to_owned(),
    };
    ApiError::bad_request(msg)
}

/// Why the Safe could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Safe's own SVID is not a Safe identity.
    #[error("this Safe's SPIFFE ID {0} does not match VSECM_SPIFFEID_PREFIX_SAFE; give the Safe an SVID with the Safe's SPIFFE ID or fix the rule")]
    NotSafe(String),
    /// The data directory is unusable.
    #[error(transparent)]
    Store(#[from] aegis_store::StoreError),
    /// The root key store is unusable.
    #[error(transparent)]
    RootKey(#[from] aegis_store::KeyStoreError),
    /// Loading with the root key failed.
    #[error("could not load the secrets: {0}")]
    Load(String),
    /// The audit trail could not be started.
    #[error("cannot start the audit trail in {path}: {source}; fix the directory or choose another with --audit-file")]
    Audit {
        /// The audit file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Identity(#[from] aegis_identity::IdentityError),
    /// A replication link is misconfigured.
    #[error("replication: {0}")]
    Replication(String),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}; pick a free port")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_name_their_real_cause() {
        let io = |code: i32| StoreError::Io { name: "billing".into(), source: std::io::Error::from_raw_os_error(code) };
        let e = ApiError::from(io(nix::errno::Errno::EMFILE as i32));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message().contains("too many open files") && !e.message().contains("disk"), "{}", e.message());
        let e = ApiError::from(io(nix::errno::Errno::ENOSPC as i32));
        assert_eq!(e.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(e.message().contains("disk is full"));
        let e = ApiError::from(io(nix::errno::Errno::EIO as i32));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn json_errors_never_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            n: u64,
        }
        let e = serde_json::from_str::<T>(r#"{"n":"SECRETVALUE"}"#).unwrap_err();
        let m = json_error(&e).message().to_owned();
        assert!(!m.contains("SECRETVALUE") && m.contains("expected fields"), "{m}");
        let e = serde_json::from_str::<T>(r#"{"#).unwrap_err();
        assert!(json_error(&e).message().contains("ends early"));
        let e = serde_json::from_str::<T>(r#"{}"#).unwrap_err();
        assert!(json_error(&e).message().contains("field 'n'"));
    }
}
