//! Aegis client SDK.
//!
//! A workload fetches its own secret; an admin (the Sentinel role) manages
//! secrets. The identity comes from the SPIFFE Workload API or SVID files, and
//! the Safe is authenticated by its SPIFFE ID, never by host name.
//!
//! ```no_run
//! # async fn demo() -> Result<(), aegis_sdk::ClientError> {
//! // Settings from AEGIS_SAFE_URL / VSECM_SAFE_ENDPOINT_URL, AEGIS_SVID_* or SPIFFE_ENDPOINT_SOCKET.
//! let settings = aegis_sdk::Settings::from_lookup(|k| std::env::var(k).ok())?;
//! let client = aegis_sdk::Client::connect(&settings).await?;
//! if let Some(secret) = client.fetch().await? {
//!     println!("version {} ({} bytes)", secret.version, secret.data.len());
//! }
//! # Ok(()) }
//! ```

mod admin;
mod backup;
mod settings;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use aegis_core::api::{ErrorBody, WorkloadSecret};
use aegis_core::roles::RoleRules;
use aegis_identity::{client_config, IdentitySource};
pub use reqwest::Method;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use backup::{BackupStream, FileStream, KEY_HEADER};
pub use settings::Settings;
pub use watch::{WatchOptions, WatchUpdate};

/// Why a call failed. Messages say what to do; none contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Settings are missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] aegis_identity::IdentityError),
    /// The Safe could not be reached or the TLS handshake failed.
    #[error("cannot reach the Safe at {url}: {reason}; check the URL, that the Safe runs, and that both sides trust the same SPIFFE bundle")]
    Connect {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The Safe answered with an error.
    #[error("the Safe refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The Safe's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from the Safe: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status for `Refused`, else `None`.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection pool to one Safe, authenticated with one SPIFFE identity.
#[derive(Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    /// The Safes' base URLs (one, or several replicas); `current` is the one in use.
    bases: Arc<[String]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    source: Arc<dyn IdentitySource>,
}

/// Longest wait for a TCP connection to the one Safe a client knows.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a TCP connection to one of several Safes (`AEGIS_SAFE_URL`
/// with several URLs) before the client moves to the next.
pub const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    /// Starts the identity source named in `settings` and builds a client.
    pub async fn connect(settings: &Settings) -> Result<Self, ClientError> {
        let source = aegis_identity::start_source(&settings.identity).await?;
        Self::with_source(source, settings)
    }

    /// A client over an already started identity source.
    pub fn with_source(source: Arc<dyn IdentitySource>, settings: &Settings) -> Result<Self, ClientError> {
        let roles = settings.roles.clone();
        let tls = client_config(source.clone(), Arc::new(move |id| roles.is_safe(id)))?;
        let bases: Vec<String> = settings.urls().into_iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        // With replicas to move to, a Safe that does not answer a connection is left sooner.
        let connect_timeout = if bases.len() > 1 { FAILOVER_CONNECT_TIMEOUT } else { CONNECT_TIMEOUT };
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(settings.timeout)
            .connect_timeout(connect_timeout)
            // Below the Safe's default idle deadline (60 s): the client drops a kept-alive
            // connection before the Safe closes it, so no request races a closing connection.
            .pool_idle_timeout(Duration::from_secs(30));
        if settings.new_connection_per_request {
            builder = builder.pool_max_idle_per_host(0);
        }
        let http = builder.build().map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, bases: bases.into(), current: Arc::default(), source })
    }

    /// The base URL in use: the first Safe, or the replica the client moved to.
    pub fn base(&self) -> String {
        self.bases[self.index()].clone()
    }

    fn index(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()
    }

    /// Moves to the next replica after `failed` (the index a request used), unless another request already did.
    fn fail_over(&self, failed: usize, why: &reqwest::Error) {
        use std::sync::atomic::Ordering;
        let next = (failed + 1) % self.bases.len();
        if self.current.compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(from = %self.bases[failed], to = %self.bases[next], reason = %chain(why), "moving to another Safe");
        }
    }

    /// Sends `build(base)` to the Safe in use, and to the next replica when the
    /// request cannot have reached the one in use (it could not connect), or
    /// when it is a read (no effect) and the connection failed: each replica
    /// once at most.
    pub(crate) async fn send_failing_over(
        &self,
        read: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let mut last = None;
        for _ in 0..self.bases.len() {
            let i = self.index();
            let base = &self.bases[i];
            let attempt = || build(base).send();
            // The Safe may close a kept-alive connection (idle, or the client's SVID expired)
            // just as a request goes out on it. A read has no effect, so it is sent once more,
            // on a new connection; a write is never repeated.
            let r = match attempt().await {
                Err(e) if read && closed_before_answer(&e) => attempt().await,
                r => r,
            };
            match r {
                Ok(resp) => return Ok(resp),
                Err(e) if self.bases.len() > 1 && (e.is_connect() || (read && (e.is_timeout() || e.is_request()))) => {
                    self.fail_over(i, &e);
                    last = Some(ClientError::Connect { url: base.clone(), reason: chain(&e) });
                }
                Err(e) => return Err(ClientError::Connect { url: base.clone(), reason: chain(&e) }),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no Safe URL".to_owned())))
    }

    /// The identity this client presents.
    pub fn spiffe_id(&self) -> String {
        self.source.current().spiffe_id().to_string()
    }

    /// The caller's own secret (workload role), or `None` if none is registered.
    pub async fn fetch(&self) -> Result<Option<WorkloadSecret>, ClientError> {
        match self.call::<(), WorkloadSecret>(Method::GET, "/v1/workload/secret", None).await {
            Ok(s) => Ok(Some(s)),
            Err(ClientError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A secret by name as a workload gets it (allowed by a policy in force on
    /// the Safe), or `None` if it does not exist, is deleted or is outside its window.
    pub async fn fetch_secret(&self, name: &str) -> Result<Option<WorkloadSecret>, ClientError> {
        let path = format!("/v1/workload/secrets/{}", admin::seg(name));
        match self.call::<(), WorkloadSecret>(Method::GET, &path, None).await {
            Ok(s) => Ok(Some(s)),
            Err(ClientError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends raw bytes and returns the status and body text, for debugging and tests.
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> Result<(u16, String), ClientError> {
        let read = is_read(&method);
        let resp = self
            .send_failing_over(read, |base| {
                self.http
                    .request(method.clone(), format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ClientError::Connect { url: self.base(), reason: chain(&e) })?;
        Ok((status, text))
    }

    pub(crate) async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, bytes::Bytes), ClientError> {
        let resp = self
            .send_failing_over(is_read(&method), |base| {
                let mut req = self.http.request(method.clone(), format!("{base}{path}"));
                if let Some(b) = body {
                    req = req.json(b);
                }
                req
            })
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Connect { url: self.base(), reason: chain(&e) })?;
        Ok((status, bytes))
    }

    /// Sends a request and decodes a JSON answer; error answers become [`ClientError::Refused`].
    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("{} at line {} column {}", kind(&e), e.line(), e.column())))
    }

    /// Sends a request and returns the answer as text.
    pub(crate) async fn call_text<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<String, ClientError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| ClientError::Decode("the answer is not UTF-8".to_owned()))
    }
}

fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// The connection closed after the request went out and before any answer came back.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Eof => "truncated JSON",
        _ => "JSON of an unexpected shape",
    }
}

fn refused(status: StatusCode, body: &[u8]) -> ClientError {
    // JSON from the native API; plain text from the VSecM fetch route.
    let message = serde_json::from_slice::<ErrorBody>(body).map(|b| b.error).unwrap_or_else(|_| {
        match std::str::from_utf8(body).map(str::trim) {
            Ok(text) if !text.is_empty() && text.len() < 2048 => text.to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_owned(),
        }
    });
    ClientError::Refused { status: status.as_u16(), message }
}

pub(crate) use aegis_core::error::chain;

/// Role rules used to recognise the Safe (from the same variables the Safe reads).
pub fn roles_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<RoleRules, ClientError> {
    RoleRules::from_lookup(lookup).map_err(|e| ClientError::Config(e.to_string()))
}

#[cfg(test)]
mod closed_connection_tests;
