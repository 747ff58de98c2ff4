//! The SPIFFE Workload API (a SPIRE agent) as identity source.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{X509Source, X509SourceUpdates};
use tracing::{error, info};

use crate::{IdentityError, IdentitySource, SvidMaterial};

/// The SPIFFE Workload API: follows SVID rotations and bundle updates pushed
/// by the agent, so new connections use them without a restart.
///
/// Uses the agent's default SVID, the bundle of that SVID's trust domain, and
/// the bundles of the trust domains its entry federates with (a Safe accepts
/// peers of those domains only when told to, see [`crate::Federation`]).
/// If an update cannot be used, the previous material stays and an error is
/// logged. The background task and the agent stream stop when this is dropped.
pub struct WorkloadApiSource {
    endpoint: String,
    x509: X509Source,
    material: ArcSwap<SvidMaterial>,
}

impl WorkloadApiSource {
    /// Connects to `endpoint` (e.g. `unix:///tmp/agent.sock`) and waits up to
    /// `timeout` for the first SVID.
    pub async fn start(endpoint: &str, timeout: Duration) -> Result<Arc<Self>, IdentityError> {
        let failed = |reason: String| IdentityError::WorkloadApi { endpoint: endpoint.to_owned(), reason };
        let x509 = X509Source::builder()
            .endpoint(endpoint)
            .initial_sync_timeout(timeout)
            .build()
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Subscribe before reading, so an update in between is not missed.
        let updates = x509.updated();
        let material = material_of(&x509).map_err(|e| failed(e.to_string()))?;
        info!(endpoint, spiffe_id = %material.spiffe_id(), not_after = %material.not_after(),
              "got SVID from the Workload API");
        let source = Arc::new(Self { endpoint: endpoint.to_owned(), x509, material: ArcSwap::from_pointee(material) });
        tokio::spawn(follow(Arc::downgrade(&source), updates));
        Ok(source)
    }

    fn refresh(&self) {
        match material_of(&self.x509) {
            Ok(material) => {
                info!(endpoint = %self.endpoint, spiffe_id = %material.spiffe_id(),
                      not_after = %material.not_after(), "Workload API rotated the SVID or bundle");
                self.material.store(Arc::new(material));
            }
            Err(err) => error!(endpoint = %self.endpoint, error = %err,
                               "Workload API update unusable; keeping the previous SVID"),
        }
    }
}

impl IdentitySource for WorkloadApiSource {
    fn current(&self) -> Arc<SvidMaterial> {
        self.material.load_full()
    }
}

impl fmt::Debug for WorkloadApiSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadApiSource")
            .field("endpoint", &self.endpoint)
            .field("material", &self.material.load())
            .finish()
    }
}

/// Applies every update until the source is dropped or the stream closes.
async fn follow(source: Weak<WorkloadApiSource>, mut updates: X509SourceUpdates) {
    while updates.changed().await.is_ok() {
        let Some(source) = source.upgrade() else {
            return;
        };
        source.refresh();
    }
}

/// Converts the selected SVID and its trust domain's bundle.
fn material_of(x509: &X509Source) -> Result<SvidMaterial, IdentityError> {
    let unusable = |reason: String| IdentityError::NotAnSvid { reason };
    let state = x509.state();
    let svid = state.svid().map_err(|e| unusable(e.to_string()))?;
    let context = state.context().map_err(|e| unusable(e.to_string()))?;
    let trust_domain = svid.spiffe_id().trust_domain();
    let bundle = context
        .bundle_set()
        .get(trust_domain)
        .ok_or_else(|| unusable(format!("the agent sent no bundle for {trust_domain}")))?;
    let chain = svid.cert_chain().iter().map(|c| der(c.as_bytes())).collect();
    let bundle = bundle.authorities().iter().map(|c| der(c.as_bytes())).collect();
    let federated = context
        .bundle_set()
        .iter()
        .filter(|(td, _)| *td != trust_domain)
        .map(|(td, b)| (td.to_string(), b.authorities().iter().map(|c| der(c.as_bytes())).collect()))
        .collect();
    let key = PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec());
    SvidMaterial::from_der(chain, PrivateKeyDer::Pkcs8(key), bundle)?.with_federated(federated)
}

fn der(bytes: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from(bytes.to_vec())
}
