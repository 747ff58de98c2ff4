//! Replication between Safes (see docs/REPLICATION.md).
//!
//! A source Safe serves the changes of the secrets matching its patterns to
//! the replicas it names (`--replicate-to`), each allowed by its exact SPIFFE
//! ID ([`source`]). A replica (`--replicate-from ID=URL`) asks its source for
//! the changes after the last one it applied, in a long poll, and applies them
//! as read-only secrets that keep the source's versions and times
//! ([`replica`]). Values travel inside the mTLS connection only; each side
//! seals them under its own root key, and no root key ever leaves a Safe.
//!
//! Every secret a Safe writes gets the next change number
//! ([`aegis_core::secret::SecretDoc::seq`]), stored in its record. A replica
//! keeps the source's number of each change it applied in the secret's
//! origin, so after a cut or a restart it asks for what follows the highest
//! one it holds: no full copy, and no change applied twice.

mod replica;
mod source;

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aegis_core::api::{ReplicaLink, ReplicationStatus, SourceLink};
use aegis_core::policy::NamePattern;
use aegis_core::timefmt::rfc3339;
use aegis_core::{SecretKind, SecretName, SpiffeId};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use replica::spawn_links;
pub use source::changes;

/// A source this Safe replicates from.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// The source Safe's SPIFFE ID: the only one accepted at `url`.
    pub id: SpiffeId,
    /// Its base URL (`https://host:port`).
    pub url: String,
}

/// How this Safe takes part in replication; nothing by default.
#[derive(Debug, Clone)]
pub struct ReplicationSettings {
    /// The replicas allowed to ask for this Safe's changes.
    pub replicas: Vec<SpiffeId>,
    /// The secrets they get: names matching any of these.
    pub patterns: Vec<NamePattern>,
    /// The sources this Safe replicates from.
    pub sources: Vec<SourceSettings>,
    /// A link down for longer than this is an alert (status, metrics, `/readyz`'s body).
    pub alert_after: Duration,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self { replicas: Vec::new(), patterns: Vec::new(), sources: Vec::new(), alert_after: DEFAULT_ALERT_AFTER }
    }
}

/// A link down for longer than this is an alert, unless set otherwise.
pub const DEFAULT_ALERT_AFTER: Duration = Duration::from_secs(60);

impl ReplicationSettings {
    /// Whether any link is configured.
    pub fn is_on(&self) -> bool {
        !self.replicas.is_empty() || !self.sources.is_empty()
    }

    /// Whether this Safe's secret `name` is replicated to its replicas
    /// (policy records never are: each Safe keeps its own).
    pub fn replicates(&self, name: &SecretName) -> bool {
        name.kind() != SecretKind::Policy && self.patterns.iter().any(|p| p.matches(name.as_str()))
    }

    /// A fingerprint of what is replicated (the patterns, in any order),
    /// never 0: a replica whose state was sent under another one gets a snapshot.
    pub fn selection(&self) -> u64 {
        let mut patterns: Vec<String> = self.patterns.iter().map(ToString::to_string).collect();
        patterns.sort_unstable();
        patterns.dedup();
        let digest = Sha256::digest(patterns.join("\n").as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first).max(1)
    }

    /// Checks the links against this Safe's own SPIFFE ID and the trust
    /// domains it federates with; the error says what to fix.
    pub fn check(&self, own: &SpiffeId, federates: impl Fn(&str) -> bool, shared_backend: bool) -> Result<(), String> {
        if !self.is_on() {
            return Ok(());
        }
        if shared_backend {
            return Err("replication is not supported on Safes that share a PostgreSQL database yet: their change \
                        numbers are not one sequence; replicate from (and to) Safes with their own data directory"
                .to_owned());
        }
        if !self.replicas.is_empty() && self.patterns.is_empty() {
            return Err("--replicate-to names replicas but --replicate names no secrets to send them; give the \
                        secret name patterns to replicate (e.g. --replicate 'shared-*')"
                .to_owned());
        }
        if self.replicas.is_empty() && !self.patterns.is_empty() {
            return Err("--replicate names secrets but --replicate-to names no replica to send them to".to_owned());
        }
        let reachable = |id: &SpiffeId, flag: &str| {
            let td = id.trust_domain();
            if id == own {
                return Err(format!("{flag} names this Safe's own SPIFFE ID {id}; name another Safe"));
            }
            if td != own.trust_domain() && !federates(td) {
                return Err(format!(
                    "{flag} names {id}, whose trust domain {td} is not federated: add --federate-with {td} (and \
                     federate the SPIRE servers), or fix the SPIFFE ID"
                ));
            }
            Ok(())
        };
        for id in &self.replicas {
            reachable(id, "--replicate-to")?;
        }
        let mut seen = BTreeSet::new();
        for s in &self.sources {
            reachable(&s.id, "--replicate-from")?;
            if !s.url.starts_with("https://") {
                return Err(format!("--replicate-from {}={}: the URL must start with https://", s.id, s.url));
            }
            if !seen.insert(s.id.as_str()) {
                return Err(format!("--replicate-from names {} twice", s.id));
            }
        }
        Ok(())
    }
}

/// What a source knows of one replica.
#[derive(Debug, Default)]
struct ReplicaState {
    last_seen: Option<(OffsetDateTime, Instant)>,
    confirmed: u64,
    sent: u64,
}

/// What a replica knows of one source.
#[derive(Debug)]
struct SourceState {
    state: &'static str,
    applied: u64,
    source_head: u64,
    caught_up: bool,
    caught_up_at: Instant,
    last_contact: Option<OffsetDateTime>,
    error: Option<String>,
    changes_applied: u64,
    conflicts: BTreeSet<String>,
    too_large: BTreeSet<String>,
    down_since: Option<Instant>,
}

/// The live state of every link: for the status, the metrics and `/readyz`.
pub struct Links {
    own: OnceLock<SpiffeId>,
    replicas: Vec<(SpiffeId, Mutex<ReplicaState>)>,
    sources: Vec<(SourceSettings, Mutex<SourceState>)>,
    patterns: Vec<String>,
    alert_after: Duration,
}

/// A replica not heard from for this long is shown `down` by its source.
const REPLICA_SILENT: Duration = Duration::from_secs(15);

impl Links {
    /// The links of `settings`, none of them contacted yet.
    pub fn new(settings: &ReplicationSettings) -> Self {
        let now = Instant::now();
        Self {
            own: OnceLock::new(),
            replicas: settings.replicas.iter().map(|id| (id.clone(), Mutex::default())).collect(),
            sources: settings
                .sources
                .iter()
                .map(|s| {
                    let state = SourceState {
                        state: "connecting",
                        applied: 0,
                        source_head: 0,
                        caught_up: false,
                        caught_up_at: now,
                        last_contact: None,
                        error: None,
                        changes_applied: 0,
                        conflicts: BTreeSet::new(),
                        too_large: BTreeSet::new(),
                        down_since: Some(now),
                    };
                    (s.clone(), Mutex::new(state))
                })
                .collect(),
            patterns: settings.patterns.iter().map(ToString::to_string).collect(),
            alert_after: settings.alert_after,
        }
    }

    /// Sets this Safe's own SPIFFE ID (the `source` of the pages it serves).
    pub fn set_own(&self, id: SpiffeId) {
        let _ = self.own.set(id);
    }

    fn own(&self) -> String {
        self.own.get().map(ToString::to_string).unwrap_or_default()
    }

    /// Whether any link is configured.
    pub fn is_on(&self) -> bool {
        !self.replicas.is_empty() || !self.sources.is_empty()
    }

    /// Whether `id` is one of this Safe's replicas.
    pub fn is_replica(&self, id: &SpiffeId) -> bool {
        self.replicas.iter().any(|(r, _)| r == id)
    }

    fn replica(&self, id: &SpiffeId) -> Option<&Mutex<ReplicaState>> {
        self.replicas.iter().find(|(r, _)| r == id).map(|(_, s)| s)
    }

    /// Every link, with `head` (this Safe's last change number).
    pub fn status(&self, head: u64) -> ReplicationStatus {
        let now = Instant::now();
        let replicas = self
            .replicas
            .iter()
            .map(|(id, s)| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                let state = match s.last_seen {
                    None => "never",
                    Some((_, at)) if now.duration_since(at) > REPLICA_SILENT => "down",
                    Some(_) => "up",
                };
                ReplicaLink {
                    spiffe_id: id.to_string(),
                    patterns: self.patterns.clone(),
                    state: state.to_owned(),
                    confirmed: s.confirmed,
                    last_seen: s.last_seen.map(|(t, _)| rfc3339(t)),
                    sent: s.sent,
                }
            })
            .collect();
        let sources = self
            .sources
            .iter()
            .map(|(cfg, s)| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                SourceLink {
                    spiffe_id: cfg.id.to_string(),
                    url: cfg.url.clone(),
                    state: s.state.to_owned(),
                    alert: s.down_since.is_some_and(|d| now.duration_since(d) > self.alert_after),
                    applied: s.applied,
                    source_head: s.source_head,
                    lag_seconds: lag(&s, now).as_secs_f64(),
                    last_contact: s.last_contact.map(rfc3339),
                    error: s.error.clone(),
                    changes_applied: s.changes_applied,
                    conflicts: s.conflicts.iter().cloned().collect(),
                    too_large: s.too_large.iter().cloned().collect(),
                }
            })
            .collect();
        ReplicationStatus { head, replicas, sources }
    }

    /// One line per source link down for longer than the alert threshold.
    pub fn alerts(&self) -> Vec<String> {
        let now = Instant::now();
        self.sources
            .iter()
            .filter_map(|(cfg, s)| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                let down = now.duration_since(s.down_since?);
                (down > self.alert_after).then(|| {
                    format!(
                        "replication from {} down for {} s: {}",
                        cfg.id,
                        down.as_secs(),
                        s.error.as_deref().unwrap_or("no answer yet")
                    )
                })
            })
            .collect()
    }
}

/// How far behind the source a replica is: nothing while the last answer
/// left it holding everything, else the time since it last did.
fn lag(s: &SourceState, now: Instant) -> Duration {
    if s.caught_up && s.down_since.is_none() {
        Duration::ZERO
    } else {
        now.duration_since(s.caught_up_at)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn settings(replicas: &[&str], patterns: &[&str], sources: &[(&str, &str)]) -> ReplicationSettings {
        ReplicationSettings {
            replicas: replicas.iter().map(|r| id(r)).collect(),
            patterns: patterns.iter().map(|p| NamePattern::parse(p).unwrap()).collect(),
            sources: sources.iter().map(|(i, u)| SourceSettings { id: id(i), url: (*u).to_owned() }).collect(),
            alert_after: DEFAULT_ALERT_AFTER,
        }
    }

    #[test]
    fn links_to_unfederated_domains_and_half_configurations_are_refused() {
        let own = id("spiffe://a.example/aegis/safe");
        let fed = |td: &str| td == "b.example";
        let ok = settings(&["spiffe://b.example/aegis/safe"], &["shared-*"], &[]);
        assert!(ok.check(&own, fed, false).is_ok());
        let e = settings(&["spiffe://c.example/aegis/safe"], &["shared-*"], &[]).check(&own, fed, false).unwrap_err();
        assert!(e.contains("c.example is not federated") && e.contains("--federate-with c.example"), "{e}");
        let e = settings(&["spiffe://b.example/aegis/safe"], &[], &[]).check(&own, fed, false).unwrap_err();
        assert!(e.contains("--replicate names no secrets"), "{e}");
        let e = settings(&[], &[], &[("spiffe://b.example/s", "http://b:8443")]).check(&own, fed, false).unwrap_err();
        assert!(e.contains("https://"), "{e}");
        let e = settings(&[], &[], &[(own.as_str(), "https://a:8443")]).check(&own, fed, false).unwrap_err();
        assert!(e.contains("own SPIFFE ID"), "{e}");
        let e = ok.check(&own, fed, true).unwrap_err();
        assert!(e.contains("PostgreSQL"), "{e}");
        assert!(ReplicationSettings::default().check(&own, fed, true).is_ok(), "no links, nothing to check");
    }

    #[test]
    fn the_selection_depends_on_the_patterns_not_their_order_and_policies_never_replicate() {
        let a = settings(&[], &["shared-*", "db"], &[]);
        let b = settings(&[], &["db", "shared-*"], &[]);
        let c = settings(&[], &["db"], &[]);
        assert_eq!(a.selection(), b.selection());
        assert_ne!(a.selection(), c.selection());
        assert_ne!(a.selection(), 0);
        let all = settings(&[], &["*"], &[]);
        assert!(all.replicates(&SecretName::parse("db").unwrap()));
        assert!(!all.replicates(&SecretName::parse_stored("policy:p").unwrap()));
        assert!(!c.replicates(&SecretName::parse("shared-x").unwrap()));
    }

    #[test]
    fn a_source_link_is_an_alert_only_after_the_threshold() {
        let mut s = settings(&[], &[], &[("spiffe://b.example/aegis/safe", "https://b:8443")]);
        s.alert_after = Duration::ZERO;
        let links = Links::new(&s);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(links.alerts().len(), 1);
        assert!(links.status(0).sources[0].alert);
        s.alert_after = Duration::from_secs(3600);
        let links = Links::new(&s);
        assert!(links.alerts().is_empty());
        assert!(!links.status(0).sources[0].alert);
    }
}
