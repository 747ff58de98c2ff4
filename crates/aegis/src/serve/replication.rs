//! The replication flags of `aegis server` (see docs/REPLICATION.md): the
//! replicas this Safe sends to with the secrets it sends them, and the
//! sources it replicates from.

use std::time::Duration;

use aegis_core::policy::NamePattern;
use aegis_core::SpiffeId;
use aegis_server::replication::{ReplicationSettings, SourceSettings};
use clap::Args;

use crate::exit::{CliError, CONFIG};

/// Replication flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ReplicationArgs {
    /// A replica Safe's SPIFFE ID (repeatable, or comma-separated in the variable): it may ask this
    /// Safe for the secrets named by --replicate. Its trust domain must be this Safe's or federated.
    #[arg(long = "replicate-to", env = "AEGIS_REPLICATE_TO", value_delimiter = ',', value_name = "SPIFFE_ID")]
    pub replicate_to: Vec<String>,
    /// The secrets replicated to the replicas: a name, or a prefix ending in '*' (repeatable, or
    /// comma-separated in the variable).
    #[arg(long = "replicate", env = "AEGIS_REPLICATE_SECRETS", value_delimiter = ',', value_name = "PATTERN")]
    pub replicate: Vec<String>,
    /// A source Safe to replicate from, as SPIFFE_ID=URL (repeatable, or comma-separated in the
    /// variable): its secrets arrive here read-only. Only that SPIFFE ID is accepted at that URL.
    #[arg(long = "replicate-from", env = "AEGIS_REPLICATE_FROM", value_delimiter = ',', value_name = "SPIFFE_ID=URL")]
    pub replicate_from: Vec<String>,
    /// A replication link down for longer than this is an alert (status, metrics, /readyz's body).
    #[arg(long, env = "AEGIS_REPLICATION_ALERT_AFTER_MS", default_value_t = 60_000)]
    pub replication_alert_after_ms: u64,
}

impl ReplicationArgs {
    /// The settings, or a configuration error (exit 64) naming the flag and the value at fault.
    pub fn settings(&self) -> Result<ReplicationSettings, CliError> {
        let bad = |msg: String| CliError::new(CONFIG, msg);
        let id = |flag: &str, s: &str| {
            SpiffeId::parse(s.trim()).map_err(|e| bad(format!("{flag} '{}': {e}", s.escape_debug())))
        };
        let replicas = self.replicate_to.iter().map(|s| id("--replicate-to", s)).collect::<Result<Vec<_>, _>>()?;
        let patterns = self
            .replicate
            .iter()
            .map(|p| NamePattern::parse(p.trim()).map_err(|e| bad(format!("--replicate: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sources = Vec::new();
        for given in &self.replicate_from {
            let Some((sid, url)) = given.split_once('=').filter(|(i, u)| !i.is_empty() && !u.is_empty()) else {
                return Err(bad(format!(
                    "--replicate-from '{}' is not SPIFFE_ID=URL (e.g. spiffe://a.example/aegis/safe=https://safe.a.example:8443)",
                    given.escape_debug()
                )));
            };
            sources.push(SourceSettings { id: id("--replicate-from", sid)?, url: url.trim().to_owned() });
        }
        Ok(ReplicationSettings {
            replicas,
            patterns,
            sources,
            alert_after: Duration::from_millis(self.replication_alert_after_ms),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        let args = |to: &[&str], pats: &[&str], from: &[&str]| ReplicationArgs {
            replicate_to: to.iter().map(|s| (*s).to_owned()).collect(),
            replicate: pats.iter().map(|s| (*s).to_owned()).collect(),
            replicate_from: from.iter().map(|s| (*s).to_owned()).collect(),
            replication_alert_after_ms: 1000,
        };
        let ok = args(&["spiffe://b.example/aegis/safe"], &["shared-*"], &["spiffe://a.example/s=https://a:8443"]);
        let s = ok.settings().unwrap();
        assert_eq!((s.replicas.len(), s.patterns.len(), s.sources[0].url.as_str()), (1, 1, "https://a:8443"));
        for (a, want) in [
            (args(&["b.example/safe"], &[], &[]), "--replicate-to 'b.example/safe'"),
            (args(&[], &["a*b"], &[]), "--replicate:"),
            (args(&[], &[], &["https://a:8443"]), "is not SPIFFE_ID=URL"),
            (args(&[], &[], &["nope=https://a:8443"]), "--replicate-from 'nope'"),
        ] {
            let e = a.settings().unwrap_err();
            assert_eq!(e.code, CONFIG);
            assert!(e.message.contains(want), "{}", e.message);
        }
    }
}
