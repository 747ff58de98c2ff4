//! Certificate verifiers that check SPIFFE identities against the current bundle.

use std::collections::BTreeMap;
use std::fmt;
use std::slice;
use std::sync::{Arc, Mutex};

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

use crate::{peer_spiffe_id, Federation, IdentityError, IdentitySource, SvidMaterial};

/// A predicate on the server's SPIFFE ID, supplied by the client.
pub type AuthorizeServer = Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>;

type Bundle = Arc<[CertificateDer<'static>]>;

type ClientVerifier = Arc<dyn ClientCertVerifier>;

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

/// The SPIFFE ID the peer's certificate claims, read before its chain is
/// verified so that the chain is checked against the bundle of the domain it
/// claims: a certificate of one domain can never pass for another's.
fn claimed_id(end_entity: &CertificateDer<'_>) -> Result<SpiffeId, rustls::Error> {
    peer_spiffe_id(slice::from_ref(end_entity)).map_err(reject)
}

fn reject(err: IdentityError) -> rustls::Error {
    debug!(error = %err, "peer certificate refused");
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Server side: requires a client SVID of the own trust domain, or of a
/// trust domain the Safe federates with, verified against that domain's bundle.
pub(crate) struct SpiffeClientVerifier {
    source: Arc<dyn IdentitySource>,
    provider: Arc<CryptoProvider>,
    webpki: PerBundle<Arc<dyn ClientCertVerifier>>,
    federation: Arc<Federation>,
    /// What was built from each federated domain's bundle.
    foreign: Mutex<BTreeMap<String, Arc<PerBundle<ClientVerifier>>>>,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(
        source: Arc<dyn IdentitySource>,
        provider: Arc<CryptoProvider>,
        federation: Arc<Federation>,
    ) -> Self {
        Self { source, provider, webpki: PerBundle::new(), federation, foreign: Mutex::default() }
    }

    /// The verifier for the chain of a client claiming `peer`: the own
    /// bundle's, or a federated domain's; a refusal naming the domain otherwise.
    fn verifier_for(&self, peer: &SpiffeId, own: &SvidMaterial) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let td = peer.trust_domain();
        if td == own.spiffe_id().trust_domain() {
            return self.webpki.get(own.bundle_arc(), |b| self.build(b));
        }
        if !self.federation.accepts(td) {
            // Refused before its chain is looked at, so that the log names
            // the domain rather than an unknown issuer.
            let expected = own.spiffe_id().trust_domain().to_owned();
            return Err(reject(IdentityError::ForeignTrustDomain { peer: peer.clone(), expected }));
        }
        let Some(bundle) = self.federation.bundle(td, own) else {
            return Err(reject(IdentityError::NoFederatedBundle { peer: peer.clone() }));
        };
        let cache = {
            let mut foreign = self.foreign.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(foreign.entry(td.to_owned()).or_insert_with(|| Arc::new(PerBundle::new())))
        };
        cache.get(&bundle, |b| self.build(b))
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
        let peer = claimed_id(end_entity)?;
        self.verifier_for(&peer, &own)?.verify_client_cert(end_entity, intermediates, now)?;
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

/// Client side: requires a server SVID that the caller authorizes, verified
/// against the client's bundle, or against the bundle of the server's trust
/// domain when the SPIRE agent delivers one because the client's entry
/// federates with it (a Safe in another cluster). Hostnames are ignored, as
/// SPIFFE prescribes.
pub(crate) struct SpiffeServerVerifier {
    source: Arc<dyn IdentitySource>,
    authorize: AuthorizeServer,
    provider: Arc<CryptoProvider>,
    roots: PerBundle<Arc<RootCertStore>>,
    foreign: PerBundle<Arc<RootCertStore>>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(
        source: Arc<dyn IdentitySource>,
        authorize: AuthorizeServer,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self { source, authorize, provider, roots: PerBundle::new(), foreign: PerBundle::new() }
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
        let server = claimed_id(end_entity)?;
        // A Safe of another trust domain is checked against that domain's
        // bundle when the agent delivered one (the client's entry federates
        // with it); otherwise against the bundle the client was given, as
        // before federation (SVID files may name the Safe's bundle directly).
        let roots = match own.federated_bundle(server.trust_domain()) {
            Some(bundle) if server.trust_domain() != own.spiffe_id().trust_domain() => {
                self.foreign.get(bundle, root_store)?
            }
            _ => self.roots.get(own.bundle_arc(), root_store)?,
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, &roots, intermediates, now, algs)?;
        // Which server IDs are acceptable, including their trust domain, is
        // exactly what `authorize` decides.
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
