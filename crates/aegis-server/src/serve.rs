//! Start-up and the mTLS accept loop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_crypto::Keyring;
use aegis_identity::{peer_spiffe_id, IdentitySource};
use aegis_store::Ticket;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tracing::Instrument;

use aegis_core::roles::Role;
use aegis_core::SpiffeId;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::health;
use crate::inflight::BodyRule;
use crate::limits::{accept, HandshakeSlot, LogLimiter, Refusal, RefusalLabels, Slot};
use crate::metrics::RequestLabels;
use crate::router::{router, RouteLabel};
use crate::routes::path_label;
use crate::state::{Adapters, AppState, Settings};
use crate::watchconn::Prefixed;

pub use crate::error::StartError;

/// A started Safe.
pub struct Running {
    /// Shared state.
    pub state: Arc<AppState>,
    /// Bound mTLS address.
    pub addr: SocketAddr,
    /// Bound health address.
    pub health_addr: SocketAddr,
    /// The accept loops; they run until aborted.
    pub tasks: Vec<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

/// The first and longest pause between attempts to finish an interrupted rotation.
const ROTATION_RETRY: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

/// Loads the root key and unseals. A rotation left unfinished is finished if
/// possible; if not, the Safe still starts on the old key (the next key stays
/// loaded so records already re-sealed under it open) and the returned task
/// retries with backoff.
async fn load_root_key(state: &Arc<AppState>) -> Result<Option<JoinHandle<()>>, StartError> {
    let Some(keys) = state.root_key().store() else {
        tracing::warn!("root key mode is manual: the Safe is sealed until an admin provides the root key");
        return Ok(None);
    };
    // A key is generated only for an empty data directory: over existing records it
    // would open nothing, and the lost key could no longer be restored unnoticed.
    let if_absent = aegis_store::IfAbsent::for_records(state.sealed_records().await?);
    let (key, created) = keys.load_or_create(if_absent).await?;
    if created {
        tracing::info!(store = %keys.describe(), key_id = %key.id(), "generated a new root key");
    } else {
        tracing::info!(store = %keys.describe(), key_id = %key.id(), "loaded the root key");
    }
    let next = match keys.read_next().await {
        Ok(next) => next,
        Err(e @ aegis_store::KeyStoreError::Invalid { .. }) => {
            // Only records sealed under it need it: try without it first.
            if let Err(load) = state.unseal(Keyring::new(key)).await {
                return Err(StartError::Load(format!(
                    "{}; the key of an unfinished root key rotation is unreadable ({e}) and the secrets cannot be \
                     loaded without it: restore the next key of {} from your backup",
                    load.message(),
                    keys.describe()
                )));
            }
            match keys.move_next_aside().await {
                Ok(moved) => tracing::error!(
                    error = %e,
                    moved_to = %moved,
                    "the key of an unfinished root key rotation is unreadable and no record needs it; moved it aside"
                ),
                Err(m) => tracing::error!(
                    error = %e,
                    move_error = %m,
                    "the key of an unfinished root key rotation is unreadable and no record needs it; could not move it aside"
                ),
            }
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut ring = Keyring::new(key);
    if let Some(n) = &next {
        ring = ring.with_older(n.clone());
    }
    state.unseal(ring).await.map_err(|e| StartError::Load(e.message().to_owned()))?;
    if next.is_none() {
        return Ok(None);
    }
    tracing::warn!("finishing a root key rotation that was interrupted");
    match state.finish_rotation().await {
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::error!(
                error = %e.message(),
                retry_in_s = ROTATION_RETRY.0.as_secs(),
                "could not finish the interrupted root key rotation; serving on the old root key and retrying"
            );
            Ok(Some(tokio::spawn(retry_rotation(state.clone()))))
        }
    }
}

/// Retries finishing an interrupted rotation until it succeeds or another rotation finished it.
async fn retry_rotation(state: Arc<AppState>) {
    let mut wait = ROTATION_RETRY.0;
    loop {
        tokio::time::sleep(wait).await;
        match state.finish_rotation().await {
            Ok(Some(r)) => {
                tracing::info!(key_id = %r.key_id, records = r.records, "finished the interrupted root key rotation");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                wait = (wait * 2).min(ROTATION_RETRY.1);
                tracing::error!(
                    error = %e.message(),
                    retry_in_s = wait.as_secs(),
                    "could not finish the interrupted root key rotation; serving on the old root key and retrying"
                );
            }
        }
    }
}

/// Checks the identity, loads the root key (or stays sealed), binds both
/// ports and starts serving on the given adapters.
pub async fn start(
    settings: Settings,
    adapters: Adapters,
    identity: Arc<dyn IdentitySource>,
) -> Result<Running, StartError> {
    let me = identity.current();
    if !settings.roles.is_safe(me.spiffe_id()) {
        return Err(StartError::NotSafe(me.spiffe_id().to_string()));
    }
    let (fd_soft, fd_hard) = crate::limits::raise_fd_limit();
    let state = AppState::new(settings, adapters)?;
    let l = state.gate.limits();
    tracing::info!(
        fd_soft,
        fd_hard,
        max_connections = l.max_connections,
        max_handshakes = l.max_handshakes,
        sentinel_reserve = l.sentinel_reserve,
        per_identity = l.per_identity,
        idle_timeout_ms = state.settings.idle_timeout.as_millis() as u64,
        "connection limits"
    );
    let retry = load_root_key(&state).await?;
    let federated: Vec<&str> = state.settings.federation.domains().collect();
    if !federated.is_empty() {
        let me = identity.current();
        let fed = &state.settings.federation;
        let without: Vec<&str> = federated.iter().copied().filter(|td| fed.bundle(td, &me).is_none()).collect();
        tracing::info!(domains = ?federated, "clients of these federated trust domains are accepted (policies decide what they may do)");
        if !without.is_empty() {
            tracing::warn!(
                domains = ?without,
                "the SPIRE agent delivers no bundle for these federated trust domains (the Safe's entry must federate \
                 with them) and no bundle file names them: their clients are refused until one does"
            );
        }
    }
    let fed = &state.settings.federation;
    state
        .settings
        .replication
        .check(me.spiffe_id(), |td| fed.accepts(td), state.backend_is_shared())
        .map_err(StartError::Replication)?;
    state.replication.set_own(me.spiffe_id().clone());
    let links = crate::replication::spawn_links(state.clone(), identity.clone());
    let tls = Arc::new(aegis_identity::server_config_federated(identity, Arc::clone(&state.settings.federation))?);
    let listener = bind(state.settings.listen).await?;
    let health_listener = bind(state.settings.health_listen).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: state.settings.listen, source })?;
    let health_addr = health_listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: state.settings.health_listen, source })?;
    let mut tasks = vec![
        tokio::spawn(serve(listener, tls, state.clone())),
        tokio::spawn(health::serve(health_listener, state.clone())),
    ];
    tasks.extend(retry);
    tasks.extend(links);
    tracing::info!(%addr, %health_addr, spiffe_id = %me.spiffe_id(), "Safe listening");
    Ok(Running { state, addr, health_addr, tasks })
}

/// Longest a refused connection is kept to tell the client why.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// Repeated events that are logged at most once a second, with a count.
struct Noisy {
    accept: LogLimiter,
    handshake: LogLimiter,
    refused: LogLimiter,
}

impl Noisy {
    fn new() -> Self {
        let every = Duration::from_secs(1);
        Self { accept: LogLimiter::new(every), handshake: LogLimiter::new(every), refused: LogLimiter::new(every) }
    }
}

/// Accepts mTLS connections until the listener fails for good.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, state: Arc<AppState>) {
    let app = router(state.clone());
    let noisy = Arc::new(Noisy::new());
    loop {
        let (tcp, peer) = accept(&listener, "api", &noisy.accept, || {
            state.metrics.accept_errors.inc();
        })
        .await;
        let slots = match state.gate.accept() {
            Ok(s) => s,
            Err(why) => {
                // Cheapest refusal: close before any TLS work.
                refused(&state, &noisy, why, peer, None);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, peer, slots, tls.clone(), app.clone(), state.clone(), noisy.clone()));
    }
}

fn refused(state: &AppState, noisy: &Noisy, why: Refusal, peer: SocketAddr, id: Option<&SpiffeId>) {
    state.metrics.connections_refused.get_or_create(&RefusalLabels { reason: why }).inc();
    if let Some(skipped) = noisy.refused.hit() {
        let id = id.map(ToString::to_string).unwrap_or_default();
        tracing::warn!(%peer, spiffe_id = %id, reason = ?why, skipped, "connection refused by a limit");
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    (_slot, handshake): (Slot, HandshakeSlot),
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    state: Arc<AppState>,
    noisy: Arc<Noisy>,
) {
    let deadline = state.settings.handshake_timeout;
    // Boxed: the handshake state is freed once done instead of sizing the connection task.
    let failure = match tokio::time::timeout(deadline, Box::pin(crate::tlsconn::accept(tcp, tls))).await {
        // On the heap from here: moved and borrowed below, it would otherwise take several slots of the task.
        Ok(Ok(t)) => Ok(Box::new(t)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("TLS handshake timed out".to_owned()),
    };
    let tls = match failure {
        Ok(t) => t,
        Err(error) => {
            state.metrics.handshake_failures.inc();
            if let Some(skipped) = noisy.handshake.hit() {
                tracing::info!(%peer, %error, skipped, "TLS handshake refused");
            }
            return;
        }
    };
    let id = tls.peer_certificates().and_then(|chain| peer_spiffe_id(chain).ok());
    let Some(id) = id else {
        state.metrics.handshake_failures.inc();
        if let Some(skipped) = noisy.handshake.hit() {
            tracing::info!(%peer, skipped, "client certificate has no usable SPIFFE ID");
        }
        return;
    };
    let caller = Arc::new(Caller::new(id.clone(), state.settings.roles.classify(&id)));
    let named = state.policies.current().speaks_of(&caller.id) || state.replication.is_replica(&caller.id);
    let _identity = match state.gate.admit(&caller.role, caller.id.as_str(), named) {
        Ok(s) => s,
        Err(why) => {
            refused(&state, &noisy, why, peer, Some(&caller.id));
            // Still holding the handshake slot: refusals are bounded like handshakes.
            // The answer gets at most REFUSAL_DEADLINE, so refused clients hold those slots briefly.
            refusal(tls, why.explain(state.gate.limits()), deadline.min(REFUSAL_DEADLINE)).await;
            return;
        }
    };
    drop(handshake);
    let not_after = tls.peer_certificates().and_then(|c| aegis_identity::peer_not_after(c).ok());
    let left = not_after
        .map(|t| Duration::try_from(t - time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::ZERO);
    // An instant, not a timer: each phase waits on it only while it reads (an idle watch holds no timer for it).
    let expires = tokio::time::Instant::now() + left;
    let mut tls = tls;
    let mut prefix = Vec::new();
    // Workloads' long polls are served without hyper (see watchconn); anything else goes on below.
    if matches!(caller.role, Role::Workload(_)) {
        match crate::watchconn::serve(&mut tls, &mut prefix, &state, &caller, expires).await {
            Ok(crate::watchconn::Phase::Handoff) => {}
            Ok(crate::watchconn::Phase::Closed) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "watch connection ended with an error");
                return;
            }
        }
    }
    hyper_phase(Prefixed::new(prefix, tls), peer, caller, app, state, expires).await;
}

type Tls = Box<crate::tlsconn::TlsStream>;

/// The hyper phase of a connection, built on the heap by a plain function, so that hyper's
/// state never sizes the connection's task (which an idle watcher keeps for minutes).
fn hyper_phase(
    io: Prefixed<Tls>,
    peer: SocketAddr,
    caller: Arc<Caller>,
    app: Router,
    state: Arc<AppState>,
    expires: tokio::time::Instant,
) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(serve_hyper(io, peer, caller, app, state, expires))
}

/// [`refuse_politely`] built on the heap, for the same reason as [`hyper_phase`]: built inline,
/// its hyper connection made every connection's task 12.8 KB instead of 7 KB.
fn refusal(io: Tls, message: String, deadline: Duration) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(refuse_politely(io, message, deadline))
}

/// Answers the first request on a refused connection with 503 and the reason, then closes it.
async fn refuse_politely<S>(io: S, message: String, deadline: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let mut resp = ApiError::unavailable(message.clone()).into_response();
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false).timer(TokioTimer::new()).header_read_timeout(deadline);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let _ = tokio::time::timeout(deadline, conn).await;
}

/// When a hyper connection last finished a request, and whether one is in flight.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the last request ended; `u64::MAX` before the first.
    last_done_ms: AtomicU64,
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(u64::MAX),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection counts as idle if nothing starts before then; `None` while a request is in flight.
    /// Before its first request a connection gets `first`, afterwards `idle`.
    fn idle_at(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match self.last_done_ms.load(Ordering::Acquire) {
            u64::MAX => self.started + first,
            ms => self.started + Duration::from_millis(ms) + idle,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.0.last_done_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The most an HTTP/1.1 request head (and read buffer) or an HTTP/2 header list
/// may take: request heads of both APIs are a few hundred bytes.
const HEAD_BUFFER: usize = 16 * 1024;
/// HTTP/2 flow-control windows: what a client may send before the Safe reads
/// it, per stream and per connection (hyper's defaults are 1 MiB each).
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;

async fn serve_hyper<S>(
    io: Prefixed<S>,
    peer: SocketAddr,
    caller: Arc<Caller>,
    app: Router,
    state: Arc<AppState>,
    expires: tokio::time::Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let deadline = state.settings.handshake_timeout;
    let (first, idle) = (deadline, state.settings.idle_timeout);
    let activity = Activity::new();
    let expiry = tokio::time::sleep_until(expires);
    tokio::pin!(expiry);
    let svc = {
        let (state, activity) = (state.clone(), activity.clone());
        hyper::service::service_fn(move |req| {
            let busy = activity.begin();
            // Boxed once here: the request's future is several kilobytes, and hyper moves what it is given.
            let reply = Box::pin(handle(req, caller.clone(), app.clone(), state.clone()));
            async move {
                let r = reply.await;
                drop(busy);
                r
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(deadline).max_buf_size(HEAD_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(state.gate.limits().streams_per_connection)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(HEAD_BUFFER as u32);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // A closing connection gets as long as a request may take to finish what is in flight.
    let grace = state.settings.request_timeout;
    loop {
        let wake = activity.idle_at(first, idle).unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut expiry => {
                tracing::info!(%peer, "the client's SVID expired: closing its connection");
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(grace, conn.as_mut()).await;
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if activity.idle_at(first, idle).is_some_and(|at| at <= Instant::now()) {
                    state.metrics.connections_idle_closed.inc();
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// How much of an oversized body is read (and thrown away) beyond the limit,
/// as a multiple of the limit, so the client finishes sending and reads the
/// 413: an HTTP/2 stream then ends normally instead of being reset. A body
/// declared larger than that is refused at once.
const DRAIN_FACTOR: u64 = 4;

/// Applies `rule` to the body before routing: refused or dropped unread, or
/// read whole (within the limit). An oversized body
/// is a 413: refused at once when its declared length is far over the limit,
/// otherwise after reading the rest of it (up to [`DRAIN_FACTOR`] times the
/// limit), so the client is not cut off before it reads the answer.
async fn read_body(req: Request<Incoming>, rule: BodyRule) -> Result<Request<Body>, ApiError> {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    // Refused or dropped, not a byte is read: the stream is reset or the connection closed after the answer.
    let limit = match rule {
        BodyRule::Read(limit) => limit,
        BodyRule::Refuse if req.body().size_hint().exact() != Some(0) => {
            return Err(ApiError::too_large("this request takes no body: only the Sentinel sends request bodies"))
        }
        BodyRule::Refuse | BodyRule::Discard => {
            let (parts, _) = req.into_parts();
            return Ok(Request::from_parts(parts, Body::empty()));
        }
    };
    let max = limit as u64;
    let drain = max.saturating_add(max.saturating_mul(DRAIN_FACTOR));
    let declared =
        req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain) {
        return Err(crate::extract::too_large(limit));
    }
    let (parts, mut body) = req.into_parts();
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::bad_request("could not read the request body"))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len() as u64);
        if seen > drain {
            return Err(crate::extract::too_large(limit));
        }
        if seen <= max {
            buf.extend_from_slice(&data);
        }
    }
    if seen > max {
        return Err(crate::extract::too_large(limit));
    }
    Ok(Request::from_parts(parts, Body::from(buf)))
}

/// How long a request whose write the store writer took up before the
/// deadline may still take to commit it.
fn commit_grace(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

async fn handle(
    mut req: Request<Incoming>,
    caller: Arc<Caller>,
    app: Router,
    state: Arc<AppState>,
) -> Result<Response<Body>, Infallible> {
    crate::path::vsecm_encoded_query(req.uri_mut());
    let path_route = path_label(req.uri().path());
    let method = req.method().clone();
    let span = tracing::info_span!("request", caller = %caller.id, %method, route = path_route);
    let start = Instant::now();
    // A transfer streams its body to its handler and has the longer deadline.
    let transfer = crate::routes::is_transfer(&method, path_route);
    // Whether the body is read by the time the answer goes: one left unread (a
    // refusal on the head, a body over its limit, a refused transfer) closes an
    // HTTP/1.1 connection after the answer, which must then say so.
    let http1 = req.version() < hyper::Version::HTTP_2;
    let body_read = Arc::new(std::sync::atomic::AtomicBool::new({
        use hyper::body::Body as _;
        req.body().size_hint().exact() == Some(0)
    }));
    let read_flag = body_read.clone();
    let timeout = if transfer { state.settings.transfer_timeout } else { state.settings.request_timeout };
    let scope = crate::audit::Scope::new(caller.audit_name.clone(), method.clone(), path_route, start + timeout);
    // Writes taken up by the store writer after the deadline are refused
    // (not applied); a write taken up before it gets a grace to commit. When
    // even that runs out, the answer says whether the write may have been applied.
    let ticket = Ticket::new(start + timeout);
    // Authorized on the head: nothing of the body is read before the caller's
    // role allows the route and the request fits the in-flight budgets.
    let admitted = {
        use hyper::body::Body as _;
        // A transfer's body is not held: it takes none of the body budget.
        let size = if transfer { Some(0) } else { req.body().size_hint().exact() };
        let policies = state.policies.current();
        match over_rate(&state, &caller, &policies) {
            Some(refused) => Err(refused),
            None => state.in_flight.admit(&caller, &policies, &method, path_route, size, state.settings.max_body_bytes),
        }
    };
    req.extensions_mut().insert(caller);
    let call = Ticket::scope(
        ticket.clone(),
        scope.run(async move {
            let held = match admitted {
                Ok(held) => held,
                Err(refused) => {
                    if refused.status() == hyper::StatusCode::FORBIDDEN {
                        crate::audit::note_policy(&aegis_core::policy::Decider::Default);
                    }
                    return Ok(*refused);
                }
            };
            let read = if transfer && matches!(held.body, BodyRule::Read(_)) {
                Ok(req.map(Body::new))
            } else {
                read_body(req, held.body).await
            };
            if read.is_ok() && !transfer {
                read_flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let resp = match read {
                Ok(req) => app.oneshot(req).await,
                Err(refused) => Ok(refused.into_response()),
            };
            drop(held);
            resp
        }),
    );
    let resp = match tokio::time::timeout(timeout + commit_grace(timeout), call).instrument(span.clone()).await {
        Ok(Ok(r)) if r.status() == StatusCode::REQUEST_TIMEOUT && ticket.picked() => {
            // One write of the request was applied (or may be) before a later one timed out.
            ApiError::may_have_applied().into_response()
        }
        Ok(Ok(r)) => r,
        Ok(Err(never)) => match never {},
        Err(_) if ticket.abandon() => ApiError::may_have_applied().into_response(),
        Err(_) => ApiError::not_applied().into_response(),
    };
    let mut resp = crate::audit::finish(&state, &scope, commit_grace(timeout), resp).await;
    let failed = resp.status().is_client_error() || resp.status().is_server_error();
    let unread = !body_read.load(std::sync::atomic::Ordering::Relaxed) && (!transfer || failed);
    if http1 && unread {
        // Else a client may send its next request on the closing connection and see it cut.
        resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    }
    let status = resp.status().as_u16();
    // The route axum matched; the path's template when axum did not route it.
    let route = resp.extensions().get::<RouteLabel>().map_or(path_route, |r| r.0);
    let latency = start.elapsed();
    state.metrics.requests.get_or_create(&RequestLabels { route, status }).inc();
    state.metrics.latency.observe(latency.as_secs_f64());
    let _enter = span.enter();
    let micros = latency.as_micros() as u64;
    if status >= 400 {
        let reason = resp.extensions().get::<crate::error::Reason>().map_or("", |r| r.0.as_str());
        // A caller can be refused as fast as it can ask: INFO lines are rate-limited, DEBUG has each.
        match state.refused_log.hit() {
            Some(skipped) => tracing::info!(status, latency_us = micros, reason, skipped, "request refused"),
            None => tracing::debug!(status, latency_us = micros, reason, "request refused"),
        }
    } else {
        tracing::debug!(status, latency_us = micros, "request served");
    }
    Ok(resp)
}

/// The 429 of a request past its SPIFFE ID's rate (a policy's, else the
/// global one), with `Retry-After`; `None` when it may go on.
fn over_rate(
    state: &AppState,
    caller: &Caller,
    policies: &aegis_core::policy::PolicySet,
) -> Option<Box<hyper::Response<axum::body::Body>>> {
    let rate = policies.rate_for(&caller.id).or(state.quotas.global)?;
    let wait = state.quotas.take(caller.id.as_str(), rate, Instant::now()).err()?;
    state.metrics.rate_limited.inc();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = crate::error::ApiError::too_many(format!(
        "{} is over its request rate of {}/s (bursts of {}); retry in {secs} s (AEGIS_RATE_PER_IDENTITY, or the rate of a policy naming it)",
        caller.id, rate.per_second, rate.burst
    ))
    .into_response();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    Some(Box::new(resp))
}
