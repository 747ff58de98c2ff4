//! A Safe served in process: the real router and store over a fresh data
//! directory (in `/dev/shm` when it exists, so fsync costs little), called
//! with requests built by a target as the Sentinel or as a workload. Only the
//! TLS layer is left out: the caller is set as the TLS layer sets it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use aegis_core::roles::{Role, RoleRules};
use aegis_core::transform::Budget;
use aegis_core::{SpiffeId, WorkloadName};
use aegis_crypto::{Keyring, RootKey};
use aegis_server::auth::Caller;
use aegis_server::{Adapters, AppState, RootKeyMode, Settings};
use aegis_store::DirBackend;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Largest request body the in-process Safe accepts (small, so the limit is reached).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The template budget of the in-process Safe: small, so fuzzing reaches it.
pub const BUDGET: Budget = Budget {
    max_output_bytes: 4096,
    max_steps: 2_000,
    max_work_bytes: 256 * 1024,
    max_template_bytes: 4096,
    max_parallel_renders: aegis_core::transform::DEFAULT_MAX_PARALLEL_RENDERS,
};

/// One answer of the Safe.
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// The body.
    pub body: Vec<u8>,
}

/// A fresh, unsealed Safe with its data directory (removed on drop).
pub struct Safe {
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime for the fuzz target")
    })
}

fn root_key() -> Arc<RootKey> {
    static KEY: OnceLock<Arc<RootKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(RootKey::generate())).clone()
}

fn settings() -> Settings {
    Settings {
        max_body_bytes: MAX_BODY_BYTES,
        max_restore_bytes: MAX_BODY_BYTES as u64,
        template_budget: BUDGET,
        // No trail: millions of requests a run would fill the disk; the trail has its own tests.
        audit: aegis_audit::SinkConfig::new(None),
        // The Sentinel may reveal values (not a Safe's default), so targets can read back what they wrote.
        policies: aegis_server::policy::PolicySettings {
            from_file: vec![std::sync::Arc::new(
                aegis_core::policy::Policy::from_json(
                    br#"{"name":"fuzz-reveal","spiffe_ids":["spiffe://vsecm.com/workload/vsecm-sentinel/*"],"secrets":["*"],"actions":["reveal"]}"#,
                )
                .expect("a valid policy"),
            )],
            ..Default::default()
        },
        ..Settings::in_process()
    }
}

/// The Sentinel, as VSecM's default rules name it.
pub fn sentinel() -> Caller {
    let id = SpiffeId::parse("spiffe://vsecm.com/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/s-0")
        .expect("the Sentinel's SPIFFE ID");
    Caller::new(id, Role::Sentinel)
}

/// The workload `name` (which must be a valid workload name).
pub fn workload(name: &WorkloadName) -> Caller {
    let id = RoleRules::dev_spiffe_id("vsecm.com", name.as_str(), "default");
    let id = SpiffeId::parse(&id).unwrap_or_else(|_| {
        SpiffeId::parse("spiffe://vsecm.com/workload/x/ns/default/sa/x/n/x-0").expect("a workload SPIFFE ID")
    });
    Caller::new(id, Role::Workload(name.clone()))
}

impl Safe {
    /// A new Safe over an empty data directory, unsealed.
    pub fn new() -> Self {
        let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
        let dir = tempfile::Builder::new().prefix("aegis-fuzz-").tempdir_in(base).expect("a temporary data directory");
        let backend = Arc::new(DirBackend::open(dir.path()).expect("the data directory"));
        let adapters = Adapters { backend, root_key: RootKeyMode::Manual, sync: None };
        let state = AppState::new(settings(), adapters).expect("the Safe's state");
        let keyring = Keyring::new(root_key());
        runtime().block_on(state.unseal(keyring)).map_err(|e| e.message().to_owned()).expect("unsealing");
        Self { state, _dir: dir }
    }

    /// Sends one request as `caller`. `path` must be a valid URI path (with
    /// an optional query); `None` when it is not.
    pub fn call(&self, caller: &Caller, method: Method, path: &str, body: Vec<u8>) -> Option<Answer> {
        let mut req = Request::builder().method(method).uri(path).body(Body::from(body)).ok()?;
        req.extensions_mut().insert(Arc::new(caller.clone()));
        let router = aegis_server::router(self.state.clone());
        runtime().block_on(async move {
            let resp = router.oneshot(req).await.expect("the router is infallible");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("a response body").to_bytes().to_vec();
            Some(Answer { status, body })
        })
    }
}

impl Default for Safe {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks what every answer must be: no server error, and an error body
/// that is JSON (plain text on VSecM's workload fetch) and holds no
/// [`crate::CANARY`].
pub fn check_answer(route: &str, a: &Answer) {
    assert!(!a.status.is_server_error(), "{route}: server error {}", a.status);
    if a.status.is_client_error() && !a.body.is_empty() {
        assert!(!crate::leaks_canary(&a.body), "{route}: an error answer ({}) repeats the secret value", a.status);
        if route != aegis_server::routes::WORKLOAD_SECRETS {
            let v: Result<serde_json::Value, _> = serde_json::from_slice(&a.body);
            assert!(v.is_ok_and(|v| v.get("error").is_some()), "{route}: an error answer is not an error object");
        }
    }
}
