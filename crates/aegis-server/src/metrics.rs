//! Prometheus metrics.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::limits::RefusalLabels;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template.
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of the Kubernetes sync gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeSyncLabels {
    /// `synced`, `pending`, `error` or `conflict`.
    pub state: &'static str,
}

/// Labels of a replication link's gauges: the other Safe's SPIFFE ID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The source's (on a replica) or the replica's (on a source) SPIFFE ID.
    pub peer: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The replication gauges (see docs/REPLICATION.md).
pub struct ReplicationMetrics {
    lag: Family<PeerLabels, FloatGauge>,
    applied: Family<PeerLabels, Gauge>,
    source_head: Family<PeerLabels, Gauge>,
    up: Family<PeerLabels, Gauge>,
    alert: Family<PeerLabels, Gauge>,
    applied_total: Family<PeerLabels, Gauge>,
    confirmed: Family<PeerLabels, Gauge>,
    sent: Family<PeerLabels, Gauge>,
    head: Gauge,
}

impl ReplicationMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            lag: Family::default(),
            applied: Family::default(),
            source_head: Family::default(),
            up: Family::default(),
            alert: Family::default(),
            applied_total: Family::default(),
            confirmed: Family::default(),
            sent: Family::default(),
            head: Gauge::default(),
        };
        registry.register(
            "replication_lag_seconds",
            "Per source: seconds since this replica last held every change of the source (0 when caught up)",
            m.lag.clone(),
        );
        for (name, help, family) in [
            (
                "replication_applied_sequence",
                "Per source: the source's change number of the last change applied here",
                &m.applied,
            ),
            (
                "replication_source_head_sequence",
                "Per source: the source's last change number, as last heard",
                &m.source_head,
            ),
            ("replication_link_up", "Per source: 1 while the link answers", &m.up),
            (
                "replication_link_alert",
                "Per source: 1 while the link has been down longer than AEGIS_REPLICATION_ALERT_AFTER_MS",
                &m.alert,
            ),
            ("replication_changes_applied", "Per source: changes applied here since start", &m.applied_total),
            (
                "replication_replica_confirmed_sequence",
                "Per replica: the last change number it confirmed holding",
                &m.confirmed,
            ),
            ("replication_changes_sent", "Per replica: changes sent to it since start", &m.sent),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register("replication_head_sequence", "This Safe's last change number", m.head.clone());
        m
    }
}

/// The Safe's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds.
    pub latency: Histogram,
    /// TLS handshakes refused (untrusted or malformed client certificates, timeouts).
    pub handshake_failures: Counter,
    /// Secrets held.
    pub secrets: Gauge,
    /// Client connections held now.
    pub connections_open: Gauge,
    /// Connections refused by a limit, by the limit.
    pub connections_refused: Family<RefusalLabels, Counter>,
    /// Connections closed for being idle.
    pub connections_idle_closed: Counter,
    /// Failed accepts (usually too many open files).
    pub accept_errors: Counter,
    /// Health-port connections refused by its limits.
    pub health_refused: Counter,
    /// Watches held now.
    pub watches_open: Gauge,
    /// 1 while sealed.
    pub sealed: Gauge,
    /// Transformations found over the template budget since start.
    pub transform_failures: Gauge,
    /// `k8s:` secrets by Kubernetes sync state (when the sync is enabled).
    pub kube_sync: Family<KubeSyncLabels, Gauge>,
    /// Age of the oldest change not yet in Kubernetes, in seconds.
    pub kube_sync_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while admin writes can be audited, 0 while they are refused (503), -1 with the trail off.
    pub audit_available: Gauge,
    /// Requests refused (429) because their SPIFFE ID went past its request rate.
    pub rate_limited: Counter,
    /// Audit lines written, requests folded, events lost and admin writes refused since start.
    audit: [AuditCounter; 4],
    replication: ReplicationMetrics,
}

/// An audit counter and the figure of [`aegis_audit::Stats`] it follows.
type AuditCounter = (Counter, fn(&aegis_audit::Stats) -> u64);

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aegis");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]);
        let handshake_failures = Counter::default();
        let secrets = Gauge::default();
        let connections_open = Gauge::default();
        let connections_refused = Family::<RefusalLabels, Counter>::default();
        let connections_idle_closed = Counter::default();
        let accept_errors = Counter::default();
        let health_refused = Counter::default();
        let watches_open = Gauge::default();
        let sealed = Gauge::default();
        sealed.set(1);
        let transform_failures = Gauge::default();
        let kube_sync = Family::<KubeSyncLabels, Gauge>::default();
        let kube_sync_lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let audit_available = Gauge::default();
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited_requests",
            "Requests refused (429) because their SPIFFE ID went past its request rate (AEGIS_RATE_PER_IDENTITY or a policy's rate)",
            rate_limited.clone(),
        );
        registry.register(
            "audit_available",
            "1 while admin writes can be audited; 0 while the audit file cannot be written and they are refused (503); -1 with the trail off",
            audit_available.clone(),
        );
        let audit: [AuditCounter; 4] = [
            (Counter::default(), |s| s.lines),
            (Counter::default(), |s| s.folded),
            (Counter::default(), |s| s.lost),
            (Counter::default(), |s| s.refused),
        ];
        for ((name, help), (c, _)) in [
            ("audit_lines", "Audit lines written since start"),
            ("audit_folded_requests", "Requests folded into another audit line's count (identical repeats)"),
            ("audit_lost_events", "Audit events that could not be written (each gap line says when)"),
            ("audit_refused_writes", "Admin writes refused because the audit trail could not be written"),
        ]
        .into_iter()
        .zip(&audit)
        {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "kubernetes_sync_secrets",
            "k8s: secrets by Kubernetes Secret sync state (synced, pending, error, conflict)",
            kube_sync.clone(),
        );
        registry.register(
            "kubernetes_sync_lag_seconds",
            "Age of the oldest change to a k8s: secret not yet written to Kubernetes (0 when all are synced)",
            kube_sync_lag.clone(),
        );
        registry.register("requests", "Requests by route and status", requests.clone());
        registry.register("request_duration_seconds", "Request latency", latency.clone());
        registry.register("tls_handshake_failures", "Refused TLS handshakes", handshake_failures.clone());
        registry.register("secrets", "Secrets held in memory", secrets.clone());
        registry.register("connections_open", "Client connections held", connections_open.clone());
        registry.register("connections_refused", "Connections refused by a limit", connections_refused.clone());
        registry.register(
            "connections_idle_closed",
            "Connections closed for being idle",
            connections_idle_closed.clone(),
        );
        registry.register("accept_errors", "Failed accepts (e.g. too many open files)", accept_errors.clone());
        registry.register(
            "health_connections_refused",
            "Connections to the health port refused by its limits (AEGIS_HEALTH_MAX_CONNECTIONS and per peer)",
            health_refused.clone(),
        );
        registry.register("watches_open", "Watches (long polls) held now", watches_open.clone());
        registry.register("sealed", "1 while the Safe waits for its root key", sealed.clone());
        registry.register(
            "transform_failures",
            "Stored templates found over the template budget since start (those secrets are served as errors)",
            transform_failures.clone(),
        );
        let replication = ReplicationMetrics::register(&mut registry);
        Self {
            replication,
            registry,
            requests,
            latency,
            handshake_failures,
            secrets,
            connections_open,
            connections_refused,
            connections_idle_closed,
            accept_errors,
            health_refused,
            watches_open,
            sealed,
            transform_failures,
            kube_sync,
            kube_sync_lag,
            rate_limited,
            audit_available,
            audit,
        }
    }

    /// Sets the audit metrics from the trail's figures (`None`: the trail is off).
    pub fn set_audit(&self, stats: Option<aegis_audit::Stats>) {
        let Some(s) = stats else {
            self.audit_available.set(-1);
            return;
        };
        self.audit_available.set(i64::from(s.available));
        for (counter, value) in &self.audit {
            counter.inc_by(value(&s).saturating_sub(counter.get()));
        }
    }

    /// Sets the Kubernetes sync gauges from `s`.
    pub fn set_kube_sync(&self, s: &aegis_core::api::KubeSyncSummary) {
        for &state in aegis_core::api::SyncState::ALL {
            self.kube_sync.get_or_create(&KubeSyncLabels { state: state.as_str() }).set(s.count(state) as i64);
        }
        self.kube_sync_lag.set(s.oldest_pending_ms as f64 / 1000.0);
    }

    /// Sets the replication gauges from the links' state.
    pub fn set_replication(&self, s: &aegis_core::api::ReplicationStatus) {
        let r = &self.replication;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        r.head.set(n(s.head));
        for l in &s.sources {
            let peer = PeerLabels { peer: l.spiffe_id.clone() };
            r.lag.get_or_create(&peer).set(l.lag_seconds);
            r.applied.get_or_create(&peer).set(n(l.applied));
            r.source_head.get_or_create(&peer).set(n(l.source_head));
            r.up.get_or_create(&peer).set(i64::from(l.state == "up" || l.state == "snapshot"));
            r.alert.get_or_create(&peer).set(i64::from(l.alert));
            r.applied_total.get_or_create(&peer).set(n(l.changes_applied));
        }
        for l in &s.replicas {
            let peer = PeerLabels { peer: l.spiffe_id.clone() };
            r.confirmed.get_or_create(&peer).set(n(l.confirmed));
            r.sent.get_or_create(&peer).set(n(l.sent));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(&format!("{name} ")))
    }

    #[test]
    fn the_audit_metrics_follow_the_trail_and_say_when_it_is_off() {
        let m = Metrics::new();
        m.set_audit(None);
        assert_eq!(line(&m.render(), "aegis_audit_available"), Some("aegis_audit_available -1"));
        let stats = aegis_audit::Stats { available: false, lines: 7, folded: 5, lost: 3, refused: 2 };
        m.set_audit(Some(stats));
        m.set_audit(Some(stats));
        let text = m.render();
        for (name, value) in [
            ("aegis_audit_available", 0),
            ("aegis_audit_lines_total", 7),
            ("aegis_audit_folded_requests_total", 5),
            ("aegis_audit_lost_events_total", 3),
            ("aegis_audit_refused_writes_total", 2),
        ] {
            assert_eq!(line(&text, name), Some(format!("{name} {value}").as_str()), "{text}");
        }
    }
}
