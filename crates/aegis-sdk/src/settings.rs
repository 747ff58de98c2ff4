//! Client settings from prefixed environment variables (through an injectable lookup).

use std::path::PathBuf;
use std::time::Duration;

use aegis_core::roles::RoleRules;
use aegis_identity::IdentityConfig;

use crate::ClientError;

/// VSecM's default Safe URL inside a cluster.
pub const DEFAULT_URL: &str = "https://vsecm-safe.vsecm-system.svc.cluster.local:8443/";
/// VSecM's default Workload API socket.
pub const DEFAULT_SOCKET: &str = "unix:///spire-agent-socket/spire-agent.sock";

/// Where the Safe is and who we are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL of the Safe (`AEGIS_SAFE_URL`, else `VSECM_SAFE_ENDPOINT_URL`); several
    /// replicas separated by commas: the client moves to the next when one cannot be reached.
    pub url: String,
    /// Identity source (`AEGIS_SVID_CERT`/`_KEY`/`_BUNDLE`, else `SPIFFE_ENDPOINT_SOCKET`).
    pub identity: IdentityConfig,
    /// Rules that recognise the Safe's SPIFFE ID (`SPIFFE_TRUST_DOMAIN`, `VSECM_SPIFFEID_PREFIX_SAFE`).
    pub roles: RoleRules,
    /// Per-request timeout (`AEGIS_CLIENT_TIMEOUT_MS`, default 30000).
    pub timeout: Duration,
    /// Open a new connection for every request (as VSecM's Go SDK does); for benchmarks.
    pub new_connection_per_request: bool,
}

/// The URLs of a comma-separated list, trimmed, empty ones dropped.
fn split_urls(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
}

impl Settings {
    /// The Safes' URLs, in the order given (at least one).
    pub fn urls(&self) -> Vec<String> {
        let urls = split_urls(&self.url);
        if urls.is_empty() {
            vec![DEFAULT_URL.to_owned()]
        } else {
            urls
        }
    }

    /// Reads the settings through `lookup`, usually `|k| std::env::var(k).ok()`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let url =
            get("AEGIS_SAFE_URL").or_else(|| get("VSECM_SAFE_ENDPOINT_URL")).unwrap_or_else(|| DEFAULT_URL.to_owned());
        for u in split_urls(&url) {
            if !u.starts_with("https://") {
                return Err(ClientError::Config(format!(
                    "the Safe URL '{u}' must start with https:// (set AEGIS_SAFE_URL; several replicas separated by commas)"
                )));
            }
        }
        let socket = get("SPIFFE_ENDPOINT_SOCKET").unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
        let identity = IdentityConfig::from_settings(
            get("AEGIS_SVID_CERT").map(PathBuf::from),
            get("AEGIS_SVID_KEY").map(PathBuf::from),
            get("AEGIS_SVID_BUNDLE").map(PathBuf::from),
            &socket,
        )?;
        let timeout_ms = match get("AEGIS_CLIENT_TIMEOUT_MS") {
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                ClientError::Config(format!(
                    "AEGIS_CLIENT_TIMEOUT_MS must be a whole number of milliseconds, not '{v}'"
                ))
            })?,
            None => 30_000,
        };
        Ok(Self {
            url,
            identity,
            roles: crate::roles_from_lookup(&lookup)?,
            timeout: Duration::from_millis(timeout_ms),
            new_connection_per_request: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_or_socket_and_rejects_half_settings() {
        let s = Settings::from_lookup(|k| match k {
            "AEGIS_SAFE_URL" => Some("https://127.0.0.1:8443".into()),
            "AEGIS_SVID_CERT" => Some("/c".into()),
            "AEGIS_SVID_KEY" => Some("/k".into()),
            "AEGIS_SVID_BUNDLE" => Some("/b".into()),
            _ => None,
        })
        .unwrap();
        assert!(matches!(s.identity, IdentityConfig::Files(_)));
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.url, DEFAULT_URL);
        assert!(matches!(s.identity, IdentityConfig::WorkloadApi { .. }));
        let e = Settings::from_lookup(|k| (k == "AEGIS_SVID_CERT").then(|| "/c".into())).unwrap_err();
        assert!(e.to_string().contains("together"), "{e}");
        let e = Settings::from_lookup(|k| (k == "AEGIS_SAFE_URL").then(|| "http://x".into())).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }
}
