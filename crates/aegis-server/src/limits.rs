//! Connection limits: how many connections the Safe holds, how many one
//! identity may hold, and room that is always kept for the Sentinel.
//!
//! Every accepted connection takes a slot of the global limit, which sits
//! below the process's file descriptor limit so that storage, identity and
//! log files always find a descriptor. Until its TLS handshake is done a
//! connection also takes one of a fixed number of handshake slots. Once its
//! SPIFFE ID is known, a connection of any role but the Sentinel's takes a
//! slot of the shared pool and one of its identity's; the pool is the global
//! limit less the handshake slots and the Sentinel's reserve, so no number
//! of workload connections can keep the Sentinel out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_core::roles::Role;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};

/// File descriptors kept free for everything that is not a client connection
/// (records, identity files, the Workload API socket, logs), at most.
pub const FD_RESERVE: u64 = 256;
/// The automatic global limit never goes above this (memory, not descriptors, binds first).
pub const AUTO_MAX_CONNECTIONS: usize = 65_536;
/// Default number of TLS handshakes in progress at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Default number of connection slots only the Sentinel may use.
pub const DEFAULT_SENTINEL_RESERVE: usize = 64;
/// Default connections one SPIFFE ID may hold.
pub const DEFAULT_PER_IDENTITY: usize = 256;
/// Default connections of all identities with no role together (they may only read the API document).
pub const DEFAULT_NO_ROLE_POOL: usize = 64;
/// Default HTTP/2 streams one connection may have open at once.
pub const DEFAULT_STREAMS_PER_CONNECTION: u32 = 32;
/// Default requests (watches aside) one SPIFFE ID other than the Sentinel's may have in flight.
pub const DEFAULT_REQUESTS_PER_IDENTITY: usize = 64;
/// Default watches one SPIFFE ID may hold.
pub const DEFAULT_WATCHES_PER_IDENTITY: usize = 32;
/// Default watches of all identities together.
pub const DEFAULT_MAX_WATCHES: usize = 8192;
/// Default request body bytes being read or held at once, all callers together.
pub const DEFAULT_BODY_BYTES_IN_FLIGHT: usize = 32 << 20;
/// Default request body bytes one SPIFFE ID may have in flight.
pub const DEFAULT_BODY_BYTES_PER_IDENTITY: usize = 8 << 20;
/// The shortest and longest pause after a failed accept (both ports).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(500));
/// Default connections the health port holds at once.
pub const DEFAULT_HEALTH_CONNECTIONS: usize = 32;
/// Default connections one peer address may hold on the health port.
pub const DEFAULT_HEALTH_PER_PEER: usize = 8;
/// Default longest life of a health-port connection.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits as configured; `None` means "derive from the descriptor limit".
#[derive(Debug, Clone, Default)]
pub struct ConnLimitSettings {
    /// Connections held at once, all roles and handshakes included.
    pub max_connections: Option<usize>,
    /// TLS handshakes in progress at once.
    pub max_handshakes: Option<usize>,
    /// Slots only the Sentinel may use.
    pub sentinel_reserve: Option<usize>,
    /// Connections one SPIFFE ID (other than the Sentinel's) may hold.
    pub per_identity: Option<usize>,
    /// Connections of all identities with no role together.
    pub no_role_pool: Option<usize>,
    /// HTTP/2 streams open at once on one connection.
    pub streams_per_connection: Option<u32>,
    /// Requests (watches aside) one SPIFFE ID other than the Sentinel's may have in flight.
    pub requests_per_identity: Option<usize>,
    /// Watches one SPIFFE ID may hold.
    pub watches_per_identity: Option<usize>,
    /// Watches of all identities together.
    pub max_watches: Option<usize>,
    /// Request body bytes in flight, all callers together.
    pub body_bytes_in_flight: Option<usize>,
    /// Request body bytes one SPIFFE ID may have in flight.
    pub body_bytes_per_identity: Option<usize>,
    /// Connections the health port holds at once.
    pub health_connections: Option<usize>,
    /// Connections one peer address may hold on the health port.
    pub health_per_peer: Option<usize>,
    /// Longest life of a health-port connection.
    pub health_timeout: Option<Duration>,
}

/// The limits in force, every one of them a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections held at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Slots only the Sentinel may use.
    pub sentinel_reserve: usize,
    /// Connections of all identities other than the Sentinel's together.
    pub shared_pool: usize,
    /// Connections one SPIFFE ID other than the Sentinel's may hold.
    pub per_identity: usize,
    /// Connections of all identities with no role together (a part of the pool).
    pub no_role_pool: usize,
    /// HTTP/2 streams open at once on one connection.
    pub streams_per_connection: u32,
    /// Requests (watches aside) one SPIFFE ID other than the Sentinel's may have in flight.
    pub requests_per_identity: usize,
    /// Watches one SPIFFE ID may hold.
    pub watches_per_identity: usize,
    /// Watches of all identities together.
    pub max_watches: usize,
    /// Request body bytes in flight, all callers together.
    pub body_bytes_in_flight: usize,
    /// Request body bytes one SPIFFE ID may have in flight.
    pub body_bytes_per_identity: usize,
    /// Connections the health port holds at once.
    pub health_connections: usize,
    /// Connections one peer address may hold on the health port.
    pub health_per_peer: usize,
    /// Longest life of a health-port connection.
    pub health_timeout: Duration,
}

impl ConnLimitSettings {
    /// Resolves the limits against the soft descriptor limit `fd_soft`.
    pub fn resolve(&self, fd_soft: u64) -> ConnLimits {
        let reserve = FD_RESERVE.min(fd_soft / 4);
        let by_fds = usize::try_from(fd_soft.saturating_sub(reserve)).unwrap_or(usize::MAX).max(4);
        let max_connections = self.max_connections.unwrap_or(by_fds.min(AUTO_MAX_CONNECTIONS)).max(4);
        let max_handshakes = self.max_handshakes.unwrap_or(DEFAULT_MAX_HANDSHAKES.min(max_connections / 4)).max(1);
        let sentinel_reserve =
            self.sentinel_reserve.unwrap_or(DEFAULT_SENTINEL_RESERVE.min(max_connections / 4)).max(1);
        let shared_pool = max_connections.saturating_sub(max_handshakes + sentinel_reserve).max(1);
        let per_identity = self.per_identity.unwrap_or(DEFAULT_PER_IDENTITY.min(shared_pool / 4)).clamp(1, shared_pool);
        let no_role_pool = self.no_role_pool.unwrap_or(DEFAULT_NO_ROLE_POOL.min(shared_pool / 4)).clamp(1, shared_pool);
        let max_watches = self.max_watches.unwrap_or(DEFAULT_MAX_WATCHES).max(1);
        let body_bytes_in_flight = self.body_bytes_in_flight.unwrap_or(DEFAULT_BODY_BYTES_IN_FLIGHT).max(1);
        let health_connections = self.health_connections.unwrap_or(DEFAULT_HEALTH_CONNECTIONS).max(1);
        ConnLimits {
            health_connections,
            health_per_peer: self.health_per_peer.unwrap_or(DEFAULT_HEALTH_PER_PEER).clamp(1, health_connections),
            health_timeout: self.health_timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT).max(Duration::from_millis(100)),
            max_connections,
            max_handshakes,
            sentinel_reserve,
            shared_pool,
            per_identity,
            no_role_pool,
            streams_per_connection: self.streams_per_connection.unwrap_or(DEFAULT_STREAMS_PER_CONNECTION).max(1),
            requests_per_identity: self.requests_per_identity.unwrap_or(DEFAULT_REQUESTS_PER_IDENTITY).max(1),
            watches_per_identity: self
                .watches_per_identity
                .unwrap_or(DEFAULT_WATCHES_PER_IDENTITY)
                .clamp(1, max_watches),
            max_watches,
            body_bytes_in_flight,
            body_bytes_per_identity: self
                .body_bytes_per_identity
                .unwrap_or(DEFAULT_BODY_BYTES_PER_IDENTITY)
                .clamp(1, body_bytes_in_flight),
        }
    }
}

/// Why a connection was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Refusal {
    /// The global limit was reached.
    Global,
    /// Too many handshakes in progress.
    Handshakes,
    /// The pool shared by every role but the Sentinel is full.
    SharedPool,
    /// This identity holds its limit already.
    Identity,
    /// Identities with no role hold all the connections kept for them.
    NoRole,
}

/// Labels of the refused-connection counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Which limit refused it.
    pub reason: Refusal,
}

impl Refusal {
    /// What the caller is told (over the connection, when it can be told).
    pub fn explain(self, limits: &ConnLimits) -> String {
        match self {
            Refusal::Global => format!(
                "the Safe holds its limit of {} connections; retry later (AEGIS_MAX_CONNECTIONS)",
                limits.max_connections
            ),
            Refusal::Handshakes => format!(
                "the Safe has {} TLS handshakes in progress; retry later (AEGIS_MAX_HANDSHAKES)",
                limits.max_handshakes
            ),
            Refusal::SharedPool => format!(
                "workloads hold all {} connections open to them; retry later or close idle connections",
                limits.shared_pool
            ),
            Refusal::Identity => format!(
                "this SPIFFE ID holds its limit of {} connections; reuse connections instead of opening more \
                 (AEGIS_MAX_CONNECTIONS_PER_IDENTITY)",
                limits.per_identity
            ),
            Refusal::NoRole => format!(
                "this SPIFFE ID has no role, and identities with no role hold all {} connections kept for them; \
                 register it as a workload or the Sentinel (AEGIS_MAX_CONNECTIONS_NO_ROLE)",
                limits.no_role_pool
            ),
        }
    }
}

/// Counts connections against the limits. Slots are guards: dropping one frees it.
#[derive(Debug)]
pub struct Gate {
    limits: ConnLimits,
    open: AtomicUsize,
    handshaking: AtomicUsize,
    shared: AtomicUsize,
    no_role: AtomicUsize,
    per_id: Mutex<HashMap<String, usize>>,
}

/// A connection's place under the global limit.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Gate>,
}

/// A place among the handshakes in progress.
#[derive(Debug)]
pub struct HandshakeSlot {
    gate: Arc<Gate>,
}

/// A place in the shared pool and under the identity's limit (none for the Sentinel).
#[derive(Debug)]
pub struct IdentitySlot {
    gate: Arc<Gate>,
    id: Option<String>,
    no_role: bool,
}

fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

fn give(counter: &AtomicUsize) {
    counter.fetch_sub(1, Ordering::AcqRel);
}

impl Gate {
    /// A gate with no connection held.
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            shared: AtomicUsize::new(0),
            no_role: AtomicUsize::new(0),
            per_id: Mutex::new(HashMap::new()),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Admits a freshly accepted connection to its handshake.
    pub fn accept(self: &Arc<Self>) -> Result<(Slot, HandshakeSlot), Refusal> {
        if !take(&self.open, self.limits.max_connections) {
            return Err(Refusal::Global);
        }
        let slot = Slot { gate: self.clone() };
        if !take(&self.handshaking, self.limits.max_handshakes) {
            return Err(Refusal::Handshakes);
        }
        Ok((slot, HandshakeSlot { gate: self.clone() }))
    }

    /// Admits an authenticated connection of `role` with SPIFFE ID `id`;
    /// `named`: some policy names the ID (then it is not a caller without a role).
    pub fn admit(self: &Arc<Self>, role: &Role, id: &str, named: bool) -> Result<IdentitySlot, Refusal> {
        if matches!(role, Role::Sentinel) {
            return Ok(IdentitySlot { gate: self.clone(), id: None, no_role: false });
        }
        // Roles granted nothing (no role, Scout) share a small part of the pool.
        let no_role = matches!(role, Role::Unknown | Role::Scout) && !named;
        if no_role && !take(&self.no_role, self.limits.no_role_pool) {
            return Err(Refusal::NoRole);
        }
        // From here on the slot's drop gives back what it took.
        let mut slot = IdentitySlot { gate: self.clone(), id: None, no_role };
        if !take(&self.shared, self.limits.shared_pool) {
            return Err(Refusal::SharedPool);
        }
        let mut map = self.per_id.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(id.to_owned()).or_insert(0);
        if *n >= self.limits.per_identity {
            drop(map);
            give(&self.shared);
            return Err(Refusal::Identity);
        }
        *n += 1;
        slot.id = Some(id.to_owned());
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        give(&self.gate.open);
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        give(&self.gate.handshaking);
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        if self.no_role {
            give(&self.gate.no_role);
        }
        let Some(id) = self.id.take() else { return };
        give(&self.gate.shared);
        let mut map = self.gate.per_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&id);
            }
        }
    }
}

/// Lets a repeated event be logged at most once per interval, counting the rest.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(n)`: log now, mentioning the `n` events not logged since the last line.
    pub fn hit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let skipped = s.1;
                *s = (Some(now), 0);
                Some(skipped)
            }
        }
    }
}

/// The next connection of `listener` (the API's or the health port's). A failed
/// accept, usually too many open files, is counted with `on_error`, logged as
/// often as `log` lets (naming `port`), and followed by a pause that doubles from
/// 5 ms to 500 ms, so the loop waits for descriptors instead of spinning.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    port: &'static str,
    log: &LogLimiter,
    on_error: impl Fn(),
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                on_error();
                if let Some(skipped) = log.hit() {
                    tracing::warn!(error = %e, port, skipped, "accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// The soft descriptor limit in force.
pub fn fd_soft_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Raises the soft descriptor limit to the hard one; returns (soft, hard) in force.
pub fn raise_fd_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return (1024, 1024) };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return (hard, hard);
    }
    (soft, hard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_core::WorkloadName;

    fn wl() -> Role {
        Role::Workload(WorkloadName::parse("billing").unwrap())
    }

    #[test]
    fn limits_follow_the_descriptor_limit() {
        let l = ConnLimitSettings::default().resolve(256);
        assert_eq!(l.max_connections, 192);
        assert_eq!(l.max_handshakes, 48);
        assert_eq!(l.sentinel_reserve, 48);
        assert_eq!(l.shared_pool, 96);
        assert_eq!(l.per_identity, 24);
        let l = ConnLimitSettings::default().resolve(1 << 20);
        assert_eq!(l.max_connections, AUTO_MAX_CONNECTIONS);
        assert_eq!(l.per_identity, DEFAULT_PER_IDENTITY);
        let set = ConnLimitSettings { max_connections: Some(100), per_identity: Some(1000), ..Default::default() };
        let l = set.resolve(20_000);
        assert_eq!((l.max_connections, l.per_identity), (100, l.shared_pool));
    }

    #[test]
    fn one_identity_cannot_take_the_pool_and_the_sentinel_always_fits() {
        let limits = ConnLimitSettings {
            max_connections: Some(10),
            max_handshakes: Some(2),
            sentinel_reserve: Some(3),
            per_identity: Some(2),
            ..Default::default()
        }
        .resolve(1000);
        assert_eq!(limits.shared_pool, 5);
        let gate = Gate::new(limits);
        let mut held = Vec::new();
        for i in 0..5 {
            let (s, h) = gate.accept().unwrap();
            let id = format!("spiffe://x/w{}", i / 2);
            held.push((s, gate.admit(&wl(), &id, false).unwrap()));
            drop(h);
        }
        let (_s, _h) = gate.accept().unwrap();
        assert_eq!(gate.admit(&wl(), "spiffe://x/w0", false).unwrap_err(), Refusal::SharedPool);
        drop(held.pop());
        assert_eq!(gate.admit(&wl(), "spiffe://x/w0", false).unwrap_err(), Refusal::Identity);
        assert!(gate.admit(&wl(), "spiffe://x/new", false).is_ok());
        // The Sentinel is not counted in the pool.
        let sentinel: Vec<_> = (0..3).map(|_| gate.admit(&Role::Sentinel, "spiffe://x/s", false).unwrap()).collect();
        assert_eq!(sentinel.len(), 3);
    }

    #[test]
    fn identities_with_no_role_share_a_small_part_of_the_pool() {
        let limits =
            ConnLimitSettings { max_connections: Some(100), no_role_pool: Some(2), ..Default::default() }.resolve(1000);
        let gate = Gate::new(limits);
        let a = gate.admit(&Role::Unknown, "spiffe://x/a", false).unwrap();
        let _b = gate.admit(&Role::Scout, "spiffe://x/b", false).unwrap();
        assert_eq!(gate.admit(&Role::Unknown, "spiffe://x/c", false).unwrap_err(), Refusal::NoRole);
        // Workloads are not counted against it.
        let _w = gate.admit(&wl(), "spiffe://x/w", false).unwrap();
        drop(a);
        assert!(gate.admit(&Role::Unknown, "spiffe://x/c", false).is_ok());
        assert_eq!(gate.no_role.load(Ordering::Acquire), 1, "a dropped slot gives its place back");
    }

    #[test]
    fn handshakes_and_the_global_limit_refuse_and_free() {
        let limits = ConnLimitSettings {
            max_connections: Some(4),
            max_handshakes: Some(1),
            sentinel_reserve: Some(1),
            ..Default::default()
        }
        .resolve(1000);
        let gate = Gate::new(limits);
        let a = gate.accept().unwrap();
        assert_eq!(gate.accept().unwrap_err(), Refusal::Handshakes);
        assert_eq!(gate.open(), 1, "a refused connection frees its slot");
        drop(a.1);
        let b = gate.accept().unwrap();
        drop(b.1);
        let c = gate.accept().unwrap();
        drop(c.1);
        let d = gate.accept().unwrap();
        assert_eq!(gate.accept().unwrap_err(), Refusal::Global);
        drop((a.0, b.0, c.0, d));
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn the_log_limiter_counts_what_it_holds_back() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.hit(), Some(0));
        assert_eq!(l.hit(), None);
        assert_eq!(l.hit(), None);
        let l2 = LogLimiter::new(Duration::ZERO);
        assert_eq!(l2.hit(), Some(0));
        assert_eq!(l2.hit(), Some(0));
    }
}
