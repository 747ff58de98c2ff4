//! rustls configurations for SPIFFE mutual TLS.
//!
//! Both sides read the identity source on every handshake, so a rotated SVID
//! or bundle applies to the next connection without rebuilding the config.

use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme, SupportedProtocolVersion};

use crate::verify::{AuthorizeServer, SpiffeClientVerifier, SpiffeServerVerifier};
use crate::{Federation, IdentityError, IdentitySource};

const VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ring provider, named explicitly: aws-lc-rs is not compiled in, and
/// relying on a process-wide default would break when another crate installs one.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls server config for the Safe.
///
/// Presents the current SVID, requires a client certificate chaining to the
/// current bundle, and accepts only clients whose single SPIFFE ID is in the
/// server's own trust domain. ALPN offers `h2` and `http/1.1`; TLS 1.2 and 1.3.
/// The client's SPIFFE ID is then available via [`crate::peer_spiffe_id`] on
/// `ServerConnection::peer_certificates()`.
pub fn server_config(source: Arc<dyn IdentitySource>) -> Result<ServerConfig, IdentityError> {
    server_config_federated(source, Arc::new(Federation::none()))
}

/// [`server_config`] that also accepts clients of the trust domains of
/// `federation`, each verified against its own domain's bundle.
pub fn server_config_federated(
    source: Arc<dyn IdentitySource>,
    federation: Arc<Federation>,
) -> Result<ServerConfig, IdentityError> {
    let provider = provider();
    let verifier = SpiffeClientVerifier::new(Arc::clone(&source), Arc::clone(&provider), federation);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SvidResolver(source)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// rustls client config for talking to the Safe.
///
/// Presents the current SVID as client certificate and verifies the server's
/// chain against the current bundle without any hostname check (SPIFFE has
/// none: the server name passed to `connect` is ignored). The server's SPIFFE
/// ID must then satisfy `authorize_server`, which therefore also decides the
/// acceptable trust domain (VSecM's Safe pattern names it).
/// No ALPN protocols are set; the HTTP client sets the ones it speaks.
pub fn client_config(
    source: Arc<dyn IdentitySource>,
    authorize_server: AuthorizeServer,
) -> Result<ClientConfig, IdentityError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(Arc::clone(&source), authorize_server, Arc::clone(&provider));
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SvidResolver(source)));
    Ok(config)
}

/// Hands out the source's current SVID on each handshake, for both sides.
struct SvidResolver(Arc<dyn IdentitySource>);

impl SvidResolver {
    fn current(&self) -> Arc<CertifiedKey> {
        self.0.current().certified_key()
    }
}

impl fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SvidResolver").field(self.0.current().spiffe_id()).finish()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
