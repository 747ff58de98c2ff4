//! Aegis identity: SPIFFE X.509-SVIDs and the mutual-TLS configurations built on them.
//!
//! Every Aegis connection is mutual TLS between X.509-SVIDs. An
//! [`IdentitySource`] yields the current SVID and trust bundle:
//!
//! - [`WorkloadApiSource`]: production, the SPIFFE Workload API of a SPIRE agent;
//! - [`FileSource`]: SVID files written by spiffe-helper or csi-driver-spiffe;
//! - [`StaticSource`]: fixed material, e.g. from the [`devca`] development CA.
//!
//! [`server_config`] and [`client_config`] turn a source into rustls
//! configurations that read the source on every handshake, so rotations apply
//! to new connections without restarts. Peers are identified by the SPIFFE ID
//! in their certificate's URI SAN ([`peer_spiffe_id`]), never by hostname.
//! Only the ring crypto provider is used.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod devca;
mod error;
mod federation;
mod file_source;
mod fsutil;
mod material;
mod tls;
mod verify;
mod workload_api;
mod x509;

pub use aegis_core::SpiffeId;
pub use error::IdentityError;
pub use federation::Federation;
pub use file_source::{FileSource, SvidPaths};
pub use material::SvidMaterial;
pub use tls::{client_config, server_config, server_config_federated};
pub use verify::AuthorizeServer;
pub use workload_api::WorkloadApiSource;
pub use x509::{peer_not_after, peer_spiffe_id};

/// Where the current SVID and bundle come from; implementations update in the background.
pub trait IdentitySource: Send + Sync + 'static {
    /// The SVID and bundle to use for the next handshake.
    fn current(&self) -> Arc<SvidMaterial>;
}

/// A fixed in-memory source (for dev mode and tests).
#[derive(Debug, Clone)]
pub struct StaticSource(pub Arc<SvidMaterial>);

impl IdentitySource for StaticSource {
    fn current(&self) -> Arc<SvidMaterial> {
        Arc::clone(&self.0)
    }
}

/// How often [`start_source`] polls SVID files for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long [`start_source`] waits for the Workload API's first SVID. SPIRE
/// may need a while to attest a freshly started pod.
pub const WORKLOAD_API_TIMEOUT: Duration = Duration::from_secs(60);

/// Picks the source from settings: files if all three paths are given, else
/// the Workload API socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityConfig {
    /// SVID files, polled for changes.
    Files(SvidPaths),
    /// The SPIFFE Workload API.
    WorkloadApi {
        /// E.g. `unix:///spire-agent-socket/spire-agent.sock`.
        endpoint: String,
    },
}

impl IdentityConfig {
    /// Files if all three paths are set, the Workload API at `endpoint` if
    /// none is; an error if only some are, since that is surely a typo.
    pub fn from_settings(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        bundle: Option<PathBuf>,
        endpoint: &str,
    ) -> Result<Self, IdentityError> {
        match (cert, key, bundle) {
            (Some(cert), Some(key), Some(bundle)) => Ok(Self::Files(SvidPaths { cert, key, bundle })),
            (None, None, None) => Ok(Self::WorkloadApi { endpoint: endpoint.to_owned() }),
            _ => Err(IdentityError::Config(
                "SVID certificate, key and bundle files must be given together, \
                 or none of them to use the SPIFFE Workload API"
                    .to_owned(),
            )),
        }
    }
}

/// Starts the source `cfg` names, with [`FILE_POLL_INTERVAL`] or [`WORKLOAD_API_TIMEOUT`].
pub async fn start_source(cfg: &IdentityConfig) -> Result<Arc<dyn IdentitySource>, IdentityError> {
    Ok(match cfg {
        IdentityConfig::Files(paths) => FileSource::start(paths.clone(), FILE_POLL_INTERVAL).await?,
        IdentityConfig::WorkloadApi { endpoint } => WorkloadApiSource::start(endpoint, WORKLOAD_API_TIMEOUT).await?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn settings_pick_files_only_when_complete() {
        let p = |s: &str| Some(PathBuf::from(s));
        let ep = "unix:///tmp/agent.sock";
        assert!(matches!(IdentityConfig::from_settings(p("c"), p("k"), p("b"), ep), Ok(IdentityConfig::Files(_))));
        assert_eq!(
            IdentityConfig::from_settings(None, None, None, ep).unwrap(),
            IdentityConfig::WorkloadApi { endpoint: ep.to_owned() }
        );
        assert!(IdentityConfig::from_settings(p("c"), None, p("b"), ep).is_err());
    }
}
