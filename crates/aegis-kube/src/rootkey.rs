//! The root key in a Kubernetes Secret, as VSecM keeps it: Secret
//! `vsecm-root-key` in namespace `vsecm-system`, data key `KEY_TXT`, VSecM's
//! three-line text (age secret key, age public key, 64 hex characters).
//!
//! - First start: the Secret is missing, or `KEY_TXT` is missing, empty or
//!   `{}` (VSecM's chart creates it so) → a new key is written with optimistic
//!   concurrency: create when absent, else update with the `resourceVersion`
//!   that was read. A Safe that loses the race (409) reads the winner's key.
//!   Only a first start: while the data directory holds sealed records, a
//!   missing or placeholder key is a lost key, and the Safe stops without
//!   writing (a new key would open none of them; restore it from backup).
//! - Rotation: the next key goes to a second data key, `KEY_TXT_NEXT`, before
//!   any record is re-sealed; one update then moves it to `KEY_TXT`. Every
//!   update carries the `resourceVersion` it read, so nothing is overwritten
//!   unseen, and each state in between opens every record.
//! - Errors name the Secret and say what to do (for a 403, the verb to grant).
//!   No error or log line holds key material: the Secret object is never
//!   printed, its data is zeroed once read, and undecodable answers are
//!   reported without their text.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_crypto::RootKey;
use aegis_store::{IfAbsent, KeyStoreError, KeyStoreResult, RootKeyStore};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{GetParams, PostParams};
use kube::Client;
use tokio::sync::OnceCell;
use zeroize::{Zeroize, Zeroizing};

/// The data key holding the root key (VSecM's).
pub const KEY_TXT: &str = "KEY_TXT";
/// The data key holding the next key while a rotation is unfinished.
pub const KEY_TXT_NEXT: &str = "KEY_TXT_NEXT";
/// VSecM's default Secret name (`VSECM_ROOT_KEY_NAME`).
pub const DEFAULT_SECRET: &str = "vsecm-root-key";
/// VSecM's default namespace (`VSECM_NAMESPACE_SYSTEM`).
pub const DEFAULT_NAMESPACE: &str = "vsecm-system";
/// Default bound of one API call.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time start-up keeps retrying an unreachable API server.
pub const DEFAULT_START_WAIT: Duration = Duration::from_secs(60);

/// How often a write lost to a concurrent writer (409) is retried on a fresh read.
const CONFLICT_TRIES: usize = 8;
/// First and longest pause between start-up attempts against an unreachable API server.
const START_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// Where the Secret is and how long calls may take.
#[derive(Debug, Clone)]
pub struct SecretStoreSettings {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// Kubeconfig file; `None` means the in-cluster ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
    /// Bound of one API call.
    pub api_timeout: Duration,
    /// How long start-up retries an unreachable API server before giving up.
    pub start_wait: Duration,
}

impl SecretStoreSettings {
    /// VSecM's names, the in-cluster ServiceAccount and default bounds.
    pub fn vsecm_defaults() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            name: DEFAULT_SECRET.to_owned(),
            kubeconfig: None,
            api_timeout: DEFAULT_API_TIMEOUT,
            start_wait: DEFAULT_START_WAIT,
        }
    }

    /// Checks the names: a namespace is a DNS label, a Secret name a DNS subdomain.
    pub fn validate(&self) -> Result<(), String> {
        if !is_dns_label(&self.namespace) {
            return Err(format!(
                "the root key namespace '{}' is not a Kubernetes namespace name (lower-case letters, digits and '-', \
                 at most 63); fix --root-key-namespace or VSECM_NAMESPACE_SYSTEM",
                self.namespace
            ));
        }
        if self.name.len() > 253 || !self.name.split('.').all(is_dns_label) {
            return Err(format!(
                "the root key Secret name '{}' is not a Kubernetes Secret name (lower-case letters, digits, '-' and \
                 '.', at most 253); fix --root-key-secret or VSECM_ROOT_KEY_NAME",
                self.name
            ));
        }
        if self.api_timeout.is_zero() {
            return Err("the Kubernetes API timeout must be above zero".to_owned());
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The root key in a Kubernetes Secret. Connects on first use.
pub struct SecretStore {
    settings: SecretStoreSettings,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Why an API call failed (never holds a Secret's data).
#[derive(Debug)]
enum CallError {
    /// No answer: connection refused, TLS failure, timeout.
    Unreachable(String),
    /// The API server answered with an error status.
    Status { code: u16, reason: String, message: String },
    /// Anything else (bad configuration, undecodable answer); final.
    Other(String),
}

impl CallError {
    fn transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status { code, .. } => *code == 429 || *code >= 500,
            Self::Other(_) => false,
        }
    }

    fn is(&self, status: u16) -> bool {
        matches!(self, Self::Status { code, .. } if *code == status)
    }
}

/// A failure of a store operation: transient ones are retried at start-up.
struct Failure {
    transient: bool,
    /// A 401 or 403: final, except just after the API server came back, when
    /// its authorizer may not have loaded the RBAC objects yet.
    refused: bool,
    error: KeyStoreError,
}

impl From<KeyStoreError> for Failure {
    fn from(error: KeyStoreError) -> Self {
        Self { transient: false, refused: false, error }
    }
}

/// How long, after an API server that could not be reached answers again, a
/// 401 or 403 is still taken for the API server starting up and retried.
const WARM_UP: Duration = Duration::from_secs(10);

/// A Secret as read, with its data zeroed on drop.
struct Fetched(Secret);

impl Drop for Fetched {
    fn drop(&mut self) {
        for v in self.0.data.iter_mut().flat_map(|d| d.values_mut()) {
            v.0.zeroize();
        }
    }
}

impl Fetched {
    fn data(&self) -> Option<&BTreeMap<String, ByteString>> {
        self.0.data.as_ref()
    }

    fn data_mut(&mut self) -> &mut BTreeMap<String, ByteString> {
        self.0.data.get_or_insert_with(BTreeMap::new)
    }

    fn value(&self, key: &str) -> Option<&[u8]> {
        self.data()?.get(key).map(|v| v.0.as_slice())
    }

    /// Takes a value out of the data (the caller zeroes it or puts it back).
    fn take(&mut self, key: &str) -> Option<ByteString> {
        self.0.data.as_mut()?.remove(key)
    }
}

/// Whether a `KEY_TXT` value means "no key yet": absent, empty, or VSecM's `{}` placeholder.
fn is_placeholder(value: Option<&[u8]>) -> bool {
    match value {
        None => true,
        Some(v) => {
            let t = v.trim_ascii();
            t.is_empty() || t == b"{}"
        }
    }
}

fn key_bytes(key: &RootKey) -> ByteString {
    ByteString(key.to_text().as_bytes().to_vec())
}

impl SecretStore {
    /// A store with `settings` (checked with [`SecretStoreSettings::validate`] first).
    pub fn new(settings: SecretStoreSettings) -> Result<Self, String> {
        settings.validate()?;
        Ok(Self { settings, client: OnceCell::new() })
    }

    /// The settings.
    pub fn settings(&self) -> &SecretStoreSettings {
        &self.settings
    }

    fn secret_ref(&self) -> String {
        format!("Secret {}/{}", self.settings.namespace, self.settings.name)
    }

    fn location(&self, key: &str) -> String {
        format!("root key in Kubernetes {} (data key {key})", self.secret_ref())
    }

    async fn client(&self) -> Result<&Client, Failure> {
        let s = &self.settings;
        self.client
            .get_or_try_init(|| crate::client::connect_with_timeout(s.kubeconfig.as_deref(), s.api_timeout))
            .await
            .map_err(|e| {
                KeyStoreError::Unavailable(format!("root key {} cannot be reached: {e}", self.secret_ref())).into()
            })
    }

    fn request(&self) -> kube::core::Request {
        kube::core::Request::new(format!("/api/v1/namespaces/{}/secrets", self.settings.namespace))
    }

    /// Sends one request (bounded by the API timeout) and decodes the Secret it answers with.
    async fn call(
        &self,
        req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Result<Fetched, CallError>, Failure> {
        let client = self.client().await?;
        let req = match req {
            Ok(r) => r,
            Err(e) => return Ok(Err(CallError::Other(format!("cannot build the request: {e}")))),
        };
        let text = match tokio::time::timeout(self.settings.api_timeout, client.request_text(req)).await {
            Err(_) => {
                return Ok(Err(CallError::Unreachable(format!(
                    "no answer within {} ms",
                    self.settings.api_timeout.as_millis()
                ))))
            }
            Ok(Err(e)) => return Ok(Err(classify(e))),
            Ok(Ok(text)) => Zeroizing::new(text),
        };
        // The text holds the key: a decoding error is reported without it.
        Ok(serde_json::from_str::<Secret>(&text)
            .map(Fetched)
            .map_err(|_| CallError::Other("the API server's answer is not a Secret".to_owned())))
    }

    async fn get(&self) -> Result<Option<Fetched>, Failure> {
        match self.call(self.request().get(&self.settings.name, &GetParams::default())).await? {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is(404) => Ok(None),
            Err(e) => Err(self.failure("get", e)),
        }
    }

    /// Creates the Secret holding `key`. `Ok(false)`: it already exists (someone else created it).
    async fn create(&self, key: &RootKey) -> Result<bool, Failure> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([(KEY_TXT.to_owned(), key_bytes(key))])),
            ..Secret::default()
        };
        let mut fetched = Fetched(secret);
        let body = self.body(&fetched.0)?;
        let outcome = self.call(self.request().create(&PostParams::default(), body)).await?;
        fetched.data_mut().clear();
        match outcome {
            Ok(_) => Ok(true),
            Err(e) if e.is(409) => Ok(false),
            Err(e) if e.is(404) => Err(KeyStoreError::Unavailable(format!(
                "cannot create the root key {}: namespace {} does not exist; create it (kubectl create namespace {}) \
                 or point --root-key-namespace (VSECM_NAMESPACE_SYSTEM) at the namespace that holds the root key",
                self.secret_ref(),
                self.settings.namespace,
                self.settings.namespace
            ))
            .into()),
            Err(e) => Err(self.failure("create", e)),
        }
    }

    /// Writes `secret` back, guarded by the `resourceVersion` it was read with.
    /// `Ok(false)`: it changed since (409); read it again.
    async fn update(&self, secret: &Fetched) -> Result<bool, Failure> {
        let body = self.body(&secret.0)?;
        match self.call(self.request().replace(&self.settings.name, &PostParams::default(), body)).await? {
            Ok(_) => Ok(true),
            Err(e) if e.is(409) => Ok(false),
            Err(e) if e.is(404) => Err(KeyStoreError::Unavailable(format!(
                "the root key {} was deleted while the Safe was writing it; restore it from your backup",
                self.secret_ref()
            ))
            .into()),
            Err(e) => Err(self.failure("update", e)),
        }
    }

    fn body(&self, secret: &Secret) -> Result<Vec<u8>, Failure> {
        serde_json::to_vec(secret)
            .map_err(|_| KeyStoreError::Unavailable(format!("cannot encode the root key {}", self.secret_ref())).into())
    }

    /// The error for a failed call, naming the Secret and what to do.
    fn failure(&self, verb: &str, e: CallError) -> Failure {
        let (ns, name) = (&self.settings.namespace, &self.settings.name);
        let secret = self.secret_ref();
        let transient = e.transient();
        let refused = e.is(401) || e.is(403);
        let message = match e {
            CallError::Status { code: 403, message, .. } => {
                let scope = if verb == "create" {
                    format!("on secrets in namespace {ns}")
                } else {
                    format!("on secrets with resourceNames [{name}] in namespace {ns}")
                };
                format!(
                    "the Safe may not {verb} the root key {secret}: the API server answered 403 Forbidden ({message}); \
                     grant the verb \"{verb}\" {scope} to the Safe's ServiceAccount with a Role and RoleBinding \
                     (see docs/KUBERNETES.md)"
                )
            }
            CallError::Status { code: 401, message, .. } => format!(
                "the API server refused the Safe's credentials (401 Unauthorized: {message}) when it tried to {verb} the \
                 root key {secret}; check the kubeconfig (KUBECONFIG) or the pod's ServiceAccount token"
            ),
            CallError::Status { code, reason, message } => format!(
                "could not {verb} the root key {secret}: the API server answered {code} {reason} ({message})"
            ),
            CallError::Unreachable(why) => format!(
                "cannot reach the Kubernetes API server to {verb} the root key {secret}: {why}; check that the API \
                 server is up and reachable from the Safe (kubeconfig or in-cluster settings)"
            ),
            CallError::Other(why) => format!("could not {verb} the root key {secret}: {why}"),
        };
        Failure { transient, refused, error: KeyStoreError::Unavailable(message) }
    }

    fn parse(&self, key: &str, text: &[u8]) -> KeyStoreResult<Arc<RootKey>> {
        let invalid = |source| KeyStoreError::Invalid { location: self.location(key), source };
        let text = std::str::from_utf8(text)
            .map_err(|_| invalid(aegis_crypto::CryptoError::InvalidRootKey("the value is not UTF-8 text")))?;
        RootKey::parse(text).map(Arc::new).map_err(invalid)
    }

    /// The key in `KEY_TXT`, parsed; `None` while it is a placeholder (missing, empty or `{}`).
    fn stored_key(&self, secret: &Fetched) -> Option<KeyStoreResult<Arc<RootKey>>> {
        let value = secret.value(KEY_TXT);
        (!is_placeholder(value)).then(|| self.parse(KEY_TXT, value.unwrap_or_default()))
    }

    fn conflicted(&self, what: &str) -> Failure {
        KeyStoreError::Unavailable(format!(
            "could not {what} in the root key {}: it kept changing under the Safe ({CONFLICT_TRIES} conflicting \
             writes); is another program writing it?",
            self.secret_ref()
        ))
        .into()
    }

    /// Refuses to write a key when `if_absent` says records exist; `what` says what was found.
    fn may_generate(&self, if_absent: IfAbsent, what: &str) -> Result<(), Failure> {
        match if_absent {
            IfAbsent::Generate => Ok(()),
            IfAbsent::Refuse { records } => Err(KeyStoreError::Missing {
                what: format!("the root key {} {what}", self.secret_ref()),
                place: format!("data key {KEY_TXT} of {}", self.secret_ref()),
                records,
            }
            .into()),
        }
    }

    /// One attempt at loading the key, creating it when absent and `if_absent` allows it.
    async fn try_load_or_create(&self, if_absent: IfAbsent) -> Result<(Arc<RootKey>, bool), Failure> {
        for _ in 0..CONFLICT_TRIES {
            let Some(mut secret) = self.get().await? else {
                self.may_generate(if_absent, "does not exist")?;
                let key = Arc::new(RootKey::generate());
                if self.create(&key).await? {
                    return Ok((key, true));
                }
                tracing::info!(secret = %self.secret_ref(), "another Safe created the root key first; using it");
                continue;
            };
            if let Some(key) = self.stored_key(&secret) {
                return Ok((key?, false));
            }
            self.may_generate(if_absent, &format!("holds no key in {KEY_TXT} (missing, empty or {{}})"))?;
            let key = Arc::new(RootKey::generate());
            if let Some(mut old) = secret.data_mut().insert(KEY_TXT.to_owned(), key_bytes(&key)) {
                old.0.zeroize();
            }
            if self.update(&secret).await? {
                return Ok((key, true));
            }
            tracing::info!(secret = %self.secret_ref(), "another Safe wrote the root key first; using it");
        }
        Err(self.conflicted("store a new root key"))
    }

    /// Reads the key without ever writing: for tools such as `aegis import`, which must
    /// not create a key. A missing Secret or one holding no key is an error naming it.
    pub async fn read_existing(&self) -> KeyStoreResult<Arc<RootKey>> {
        let secret = self.get().await.map_err(|f| f.error)?.ok_or_else(|| {
            KeyStoreError::Unavailable(format!(
                "the root key {} does not exist; check --root-key-secret and --root-key-namespace",
                self.secret_ref()
            ))
        })?;
        self.stored_key(&secret).unwrap_or_else(|| {
            Err(KeyStoreError::Unavailable(format!(
                "the root key {} holds no key in {KEY_TXT} (the Safe has not started with it yet)",
                self.secret_ref()
            )))
        })
    }

    /// Reads the Secret, which must exist once the Safe has started.
    async fn get_existing(&self) -> Result<Fetched, Failure> {
        self.get().await?.ok_or_else(|| {
            KeyStoreError::Unavailable(format!(
                "the root key {} is gone; restore it from your backup (without it the secrets cannot be decrypted)",
                self.secret_ref()
            ))
            .into()
        })
    }

    /// Reads, changes with `edit` and writes back, on a fresh read after each conflict.
    /// `edit` returns `false` when nothing needs writing.
    async fn modify(
        &self,
        what: &str,
        mut edit: impl FnMut(&mut Fetched) -> KeyStoreResult<bool>,
    ) -> KeyStoreResult<()> {
        for _ in 0..CONFLICT_TRIES {
            let mut secret = self.get_existing().await.map_err(|f| f.error)?;
            if !edit(&mut secret)? {
                return Ok(());
            }
            if self.update(&secret).await.map_err(|f| f.error)? {
                return Ok(());
            }
        }
        Err(self.conflicted(what).error)
    }
}

/// Sorts a kube error into unreachable, status, or other; keeps no response body.
fn classify(e: kube::Error) -> CallError {
    match e {
        kube::Error::Api(s) => CallError::Status { code: s.code, reason: s.reason.clone(), message: s.message.clone() },
        kube::Error::HyperError(e) => CallError::Unreachable(chain(&e)),
        kube::Error::Service(e) => CallError::Unreachable(chain(e.as_ref())),
        kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => {
            CallError::Other("the API server's answer could not be decoded".to_owned())
        }
        other => CallError::Other(chain(&other)),
    }
}

/// An error and its sources, joined with ": ".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

impl RootKeyStore for SecretStore {
    fn describe(&self) -> String {
        format!("Kubernetes {} (data key {KEY_TXT})", self.secret_ref())
    }

    fn load_or_create(&self, if_absent: IfAbsent) -> BoxFuture<'_, KeyStoreResult<(Arc<RootKey>, bool)>> {
        Box::pin(async move {
            let started = Instant::now();
            let limit = self.settings.start_wait;
            let mut wait = START_BACKOFF.0;
            // When the API server last failed to answer, and when it answered again.
            let mut outage: Option<Instant> = None;
            let mut back: Option<Instant> = None;
            loop {
                let result = self.try_load_or_create(if_absent).await;
                match &result {
                    Err(f) if f.transient => outage = Some(Instant::now()),
                    _ if outage.is_some() && back.is_none() => back = Some(Instant::now()),
                    _ => {}
                }
                let warming = back.is_some_and(|b| b.elapsed() < WARM_UP);
                match result {
                    Ok(k) => return Ok(k),
                    Err(f) if f.refused && warming && started.elapsed() < limit => {
                        tracing::warn!(
                            error = %f.error,
                            "the API server is back after an outage and may still be loading its RBAC rules; retrying"
                        );
                        tokio::time::sleep(START_BACKOFF.0).await;
                    }
                    Err(f) if f.transient && started.elapsed() < limit => {
                        let pause = wait.min(limit.saturating_sub(started.elapsed()));
                        tracing::warn!(error = %f.error, retry_in_ms = pause.as_millis() as u64, "retrying");
                        tokio::time::sleep(pause).await;
                        wait = (wait * 2).min(START_BACKOFF.1);
                    }
                    Err(f) if f.transient => {
                        return Err(KeyStoreError::Unavailable(format!(
                            "{} (gave up after {:.1} s of retries; raise --kube-start-wait-ms to wait longer)",
                            f.error,
                            started.elapsed().as_secs_f64()
                        )))
                    }
                    Err(f) => return Err(f.error),
                }
            }
        })
    }

    fn read_next(&self) -> BoxFuture<'_, KeyStoreResult<Option<Arc<RootKey>>>> {
        Box::pin(async move {
            let secret = self.get_existing().await.map_err(|f| f.error)?;
            match secret.value(KEY_TXT_NEXT) {
                Some(text) => self.parse(KEY_TXT_NEXT, text).map(Some),
                None => Ok(None),
            }
        })
    }

    fn write_next(&self, key: Arc<RootKey>) -> BoxFuture<'_, KeyStoreResult<()>> {
        Box::pin(async move {
            let secret_ref = self.secret_ref();
            self.modify("store the next root key", |secret| {
                if secret.value(KEY_TXT_NEXT).is_some() {
                    return Err(KeyStoreError::Unavailable(format!(
                        "the root key {secret_ref} already holds a next key ({KEY_TXT_NEXT}) from another rotation; \
                         retry the rotation to finish that one"
                    )));
                }
                secret.data_mut().insert(KEY_TXT_NEXT.to_owned(), key_bytes(&key));
                Ok(true)
            })
            .await
        })
    }

    fn promote_next(&self) -> BoxFuture<'_, KeyStoreResult<()>> {
        Box::pin(async move {
            let secret_ref = self.secret_ref();
            self.modify("promote the next root key", |secret| {
                let Some(next) = secret.take(KEY_TXT_NEXT) else {
                    return Err(KeyStoreError::Unavailable(format!(
                        "the root key {secret_ref} has no next key ({KEY_TXT_NEXT}) to promote; another Safe may have \
                         finished the rotation"
                    )));
                };
                if let Some(mut old) = secret.data_mut().insert(KEY_TXT.to_owned(), next) {
                    old.0.zeroize();
                }
                Ok(true)
            })
            .await
        })
    }

    fn discard_next(&self) -> BoxFuture<'_, KeyStoreResult<()>> {
        Box::pin(async move {
            self.modify("remove the unused next root key", |secret| match secret.take(KEY_TXT_NEXT) {
                Some(mut v) => {
                    v.0.zeroize();
                    Ok(true)
                }
                None => Ok(false),
            })
            .await
        })
    }

    fn move_next_aside(&self) -> BoxFuture<'_, KeyStoreResult<String>> {
        Box::pin(async move {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let aside = format!("{KEY_TXT_NEXT}_UNREADABLE_{stamp}");
            self.modify("move the unreadable next root key aside", |secret| match secret.take(KEY_TXT_NEXT) {
                Some(v) => {
                    secret.data_mut().insert(aside.clone(), v);
                    Ok(true)
                }
                None => Ok(false),
            })
            .await?;
            Ok(format!("data key {aside} of {}", self.secret_ref()))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn settings() -> SecretStoreSettings {
        SecretStoreSettings::vsecm_defaults()
    }

    #[test]
    fn placeholders_mean_no_key_yet() {
        assert!(is_placeholder(None));
        assert!(is_placeholder(Some(b"")));
        assert!(is_placeholder(Some(b"  \n")));
        assert!(is_placeholder(Some(b"{}")));
        assert!(is_placeholder(Some(b" {}\n")));
        assert!(!is_placeholder(Some(b"{\"a\":1}")));
        assert!(!is_placeholder(Some(RootKey::generate().to_text().as_bytes())));
    }

    #[test]
    fn names_are_checked() {
        assert!(settings().validate().is_ok());
        let mut s = settings();
        s.namespace = "Bad_NS".into();
        assert!(s.validate().unwrap_err().contains("VSECM_NAMESPACE_SYSTEM"));
        let mut s = settings();
        s.name = "a/b".into();
        assert!(s.validate().unwrap_err().contains("VSECM_ROOT_KEY_NAME"));
        let mut s = settings();
        s.name = "root.key-1".into();
        assert!(s.validate().is_ok());
        s.namespace = "-x".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_forbidden_call_names_the_verb_the_secret_and_the_scope() {
        let store = SecretStore::new(settings()).unwrap();
        let status = |code| CallError::Status {
            code,
            reason: "Forbidden".into(),
            message: "secrets \"vsecm-root-key\" is forbidden".into(),
        };
        let f = store.failure("update", status(403));
        assert!(!f.transient);
        let m = f.error.to_string();
        assert!(m.contains("\"update\"") && m.contains("vsecm-system/vsecm-root-key"), "{m}");
        assert!(m.contains("resourceNames [vsecm-root-key]"), "{m}");
        let m = store.failure("create", status(403)).error.to_string();
        assert!(m.contains("\"create\" on secrets in namespace vsecm-system"), "{m}");
        assert!(store.failure("get", status(503)).transient);
        assert!(store.failure("get", CallError::Unreachable("refused".into())).transient);
        assert!(!store.failure("get", CallError::Other("x".into())).transient);
    }

    #[test]
    fn a_malformed_key_is_reported_without_its_text() {
        let store = SecretStore::new(settings()).unwrap();
        let e = store.parse(KEY_TXT, b"AGE-SECRET-KEY-1NOTAKEY\nage1nope\nzz").err().unwrap().to_string();
        assert!(e.contains("vsecm-system/vsecm-root-key") && e.contains(KEY_TXT), "{e}");
        assert!(!e.contains("NOTAKEY") && !e.contains("age1nope"), "{e}");
        let key = RootKey::generate();
        assert_eq!(store.parse(KEY_TXT, key.to_text().as_bytes()).unwrap().id(), key.id());
    }
}
