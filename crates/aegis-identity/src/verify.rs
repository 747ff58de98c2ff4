//! Certificate verifiers that check SPIFFE identities against the current bundle.

use std::fmt;
use std::slice;
use std::sync::Arc;

use aegis_core::SpiffeId;
use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::debug;

use crate::{peer_spiffe_id, IdentityError, IdentitySource, SvidMaterial};

/// A predicate on the server's SPIFFE ID, supplied by the client.
pub type AuthorizeServer = Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>;

type Bundle = Arc<[CertificateDer<'static>]>;

/// Remembers what was built from the last bundle seen, so handshakes do not
/// re-parse trust anchors; rebuilt as soon as the source's bundle changes.
struct PerBundle<T> {
    slot: ArcSwapOption<(Bundle, T)>,
}

impl<T: Clone> PerBundle<T> {
    fn new() -> Self {
        Self { slot: ArcSwapOption::empty() }
    }

    fn get(
        &self,
        bundle: &Bundle,
        build: impl FnOnce(&[CertificateDer<'static>]) -> Result<T, rustls::Error>,
    ) -> Result<T, rustls::Error> {
        if let Some(entry) = &*self.slot.load() {
            // Sources may hand out a fresh Arc with the same certificates;
            // comparing a few kilobytes is far cheaper than rebuilding.
            if Arc::ptr_eq(&entry.0, bundle) || entry.0 == *bundle {
                return Ok(entry.1.clone());
            }
        }
        let built = build(bundle)?;
        self.slot.store(Some(Arc::new((Arc::clone(bundle), built.clone()))));
        Ok(built)
    }
}

fn root_store(bundle: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for cert in bundle {
        roots.add(cert.clone())?;
    }
    Ok(Arc::new(roots))
}

/// The peer's SPIFFE ID, required to be in the trust domain of `own`.
fn peer_in_own_domain(end_entity: &CertificateDer<'_>, own: &SvidMaterial) -> Result<SpiffeId, rustls::Error> {
    let peer = peer_spiffe_id(slice::from_ref(end_entity)).map_err(reject)?;
    let expected = own.spiffe_id().trust_domain();
    if peer.trust_domain() != expected {
        return Err(reject(IdentityError::ForeignTrustDomain { peer, expected: expected.to_owned() }));
    }
    Ok(peer)
}

fn reject(err: IdentityError) -> rustls::Error {
    debug!(error = %err, "peer certificate refused");
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Server side: requires a client SVID of the own trust domain.
pub(crate) struct SpiffeClientVerifier {
    source: Arc<dyn IdentitySource>,
    provider: Arc<CryptoProvider>,
    webpki: PerBundle<Arc<dyn ClientCertVerifier>>,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(source: Arc<dyn IdentitySource>, provider: Arc<CryptoProvider>) -> Self {
        Self { source, provider, webpki: PerBundle::new() }
    }

    fn build(&self, bundle: &[CertificateDer<'static>]) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        WebPkiClientVerifier::builder_with_provider(root_store(bundle)?, Arc::clone(&self.provider))
            .build()
            .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeClientVerifier")
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: the bundle can change at any time and clients have a
    /// single SVID to present anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let own = self.source.current();
        let webpki = self.webpki.get(own.bundle_arc(), |b| self.build(b))?;
        webpki.verify_client_cert(end_entity, intermediates, now)?;
        peer_in_own_domain(end_entity, &own)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Client side: requires a server SVID of the own trust domain that the
/// caller authorizes. Hostnames are ignored, as SPIFFE prescribes.
pub(crate) struct SpiffeServerVerifier {
    source: Arc<dyn IdentitySource>,
    authorize: AuthorizeServer,
    provider: Arc<CryptoProvider>,
    roots: PerBundle<Arc<RootCertStore>>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(
        source: Arc<dyn IdentitySource>,
        authorize: AuthorizeServer,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self { source, authorize, provider, roots: PerBundle::new() }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeServerVerifier")
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let own = self.source.current();
        let roots = self.roots.get(own.bundle_arc(), root_store)?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, &roots, intermediates, now, algs)?;
        // No trust-domain check here: which server IDs are acceptable,
        // including their trust domain, is exactly what `authorize` decides.
        let server = peer_spiffe_id(slice::from_ref(end_entity)).map_err(reject)?;
        if !(self.authorize)(&server) {
            return Err(reject(IdentityError::UnauthorizedServer(server)));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
