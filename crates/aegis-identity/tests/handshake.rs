//! Real TLS handshakes between `server_config` and `client_config`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aegis_identity::devca::DevCa;
use aegis_identity::{
    client_config, peer_spiffe_id, server_config, AuthorizeServer, IdentityError, SpiffeId, StaticSource, SvidMaterial,
};
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SAFE: &str = "spiffe://example.org/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/safe-0";
const BILLING: &str = "spiffe://example.org/workload/billing/ns/default/sa/billing/n/billing-0";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

struct Ca {
    _dir: tempfile::TempDir,
    ca: DevCa,
}

fn ca(trust_domain: &str) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::load_or_create(dir.path(), trust_domain).unwrap();
    Ca { _dir: dir, ca }
}

fn svid(ca: &Ca, spiffe_id: &str) -> Arc<SvidMaterial> {
    let issued = ca.ca.issue(&id(spiffe_id), Duration::from_secs(3600)).unwrap();
    Arc::new(issued.to_material().unwrap())
}

/// An SVID from `issuer` that trusts `trusted` (so it accepts that CA's server).
fn svid_trusting(issuer: &Ca, spiffe_id: &str, trusted: &str) -> Arc<SvidMaterial> {
    let issued = issuer.ca.issue(&id(spiffe_id), Duration::from_secs(3600)).unwrap();
    let m = SvidMaterial::from_pem(issued.cert_pem.as_bytes(), issued.key_pem().as_bytes(), trusted.as_bytes());
    Arc::new(m.unwrap())
}

fn safe_only() -> AuthorizeServer {
    Arc::new(|id: &SpiffeId| id.path().starts_with("/workload/vsecm-safe/"))
}

/// What each side saw: the peer's SPIFFE ID or the error text.
struct Outcome {
    server: Result<SpiffeId, std::io::Error>,
    client: Result<SpiffeId, std::io::Error>,
}

async fn handshake(server_svid: Arc<SvidMaterial>, client: rustls::ClientConfig) -> Outcome {
    pipe(server_config(Arc::new(StaticSource(server_svid))).unwrap(), client).await
}

/// One handshake between `server` and `client` over an in-memory pipe.
async fn pipe(server: rustls::ServerConfig, client: rustls::ClientConfig) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let serve = async move {
        let mut tls = TlsAcceptor::from(Arc::new(server)).accept(server_io).await?;
        let peer = peer_id(tls.get_ref().1.peer_certificates())?;
        tls.write_all(b"ok").await?;
        tls.shutdown().await?;
        Ok(peer)
    };
    let connect = async move {
        let name = ServerName::try_from("safe.invalid").unwrap();
        let mut tls = TlsConnector::from(Arc::new(client)).connect(name, client_io).await?;
        let peer = peer_id(tls.get_ref().1.peer_certificates())?;
        // In TLS 1.3 the client finishes before the server has judged its
        // certificate: reading proves the server accepted it.
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        if buf != b"ok" {
            return Err(std::io::Error::other("server sent nothing"));
        }
        Ok(peer)
    };
    let both = async { tokio::join!(serve, connect) };
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), both).await.unwrap();
    Outcome { server, client }
}

fn peer_id(chain: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> std::io::Result<SpiffeId> {
    peer_spiffe_id(chain.unwrap_or_default()).map_err(std::io::Error::other)
}

fn client(svid: Arc<SvidMaterial>, authorize: AuthorizeServer) -> rustls::ClientConfig {
    client_config(Arc::new(StaticSource(svid)), authorize).unwrap()
}

/// The rustls error behind an I/O error from tokio-rustls.
fn tls_error(err: &std::io::Error) -> &rustls::Error {
    err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()).unwrap_or_else(|| panic!("not a TLS error: {err}"))
}

fn certificate_error(err: &std::io::Error) -> &rustls::CertificateError {
    match tls_error(err) {
        rustls::Error::InvalidCertificate(e) => e,
        other => panic!("not a certificate error: {other}"),
    }
}

/// All development CAs share one subject name, so webpki finds a candidate
/// issuer and then fails its signature check, or finds none at all.
fn assert_not_our_ca(err: &std::io::Error) {
    assert!(
        matches!(
            certificate_error(err),
            rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
        ),
        "{err}"
    );
}

/// The `IdentityError` a verifier attached to its rejection.
fn identity_error(err: &std::io::Error) -> &IdentityError {
    match certificate_error(err) {
        rustls::CertificateError::Other(other) => other.0.downcast_ref().unwrap(),
        e => panic!("not an identity error: {e}"),
    }
}

#[tokio::test]
async fn mutual_tls_reports_both_spiffe_ids_and_negotiates_h2() {
    let ca = ca("example.org");
    let mut cfg = client(svid(&ca, BILLING), safe_only());
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let out = handshake(svid(&ca, SAFE), cfg).await;
    assert_eq!(out.server.unwrap().as_str(), BILLING);
    assert_eq!(out.client.unwrap().as_str(), SAFE);
}

#[tokio::test]
async fn alpn_is_offered_by_the_server() {
    let ca = ca("example.org");
    let cfg = server_config(Arc::new(StaticSource(svid(&ca, SAFE)))).unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca1 = ca("example.org");
    let ca2 = ca("example.org");
    let rogue = svid_trusting(&ca2, BILLING, &ca1.ca.bundle_pem());
    let out = handshake(svid(&ca1, SAFE), client(rogue, safe_only())).await;
    let err = out.server.unwrap_err();
    assert_not_our_ca(&err);
    assert!(out.client.is_err());
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let ca = ca("example.org");
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let issued = ca.ca.issue_with_validity(&id(BILLING), now - 2 * hour, now - hour).unwrap();
    let expired = Arc::new(issued.to_material().unwrap());
    let out = handshake(svid(&ca, SAFE), client(expired, safe_only())).await;
    let err = out.server.unwrap_err();
    assert!(
        matches!(
            certificate_error(&err),
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
        ),
        "{err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = ca("example.org");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    let out = handshake(svid(&ca, SAFE), cfg).await;
    let err = out.server.unwrap_err();
    assert!(matches!(tls_error(&err), rustls::Error::NoCertificatesPresented), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_failing_authorization_is_refused_by_the_client() {
    let ca = ca("example.org");
    let impostor = svid(&ca, "spiffe://example.org/workload/impostor/ns/default/sa/x/n/x-0");
    let out = handshake(impostor, client(svid(&ca, BILLING), safe_only())).await;
    let err = out.client.unwrap_err();
    assert!(matches!(identity_error(&err), IdentityError::UnauthorizedServer(_)), "{err}");
    assert!(err.to_string().contains("impostor"));
    assert!(out.server.is_err());
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    let ours = ca("example.org");
    let other = ca("other.org");
    let stranger = svid_trusting(&other, "spiffe://other.org/workload/billing", &ours.ca.bundle_pem());
    let out = handshake(svid(&ours, SAFE), client(stranger, safe_only())).await;
    let err = out.server.unwrap_err();
    // Refused for its domain, before its chain is looked at: the error (and the Safe's log) names the domain.
    assert!(matches!(identity_error(&err), IdentityError::ForeignTrustDomain { .. }), "{err}");
    assert!(err.to_string().contains("other.org"), "{err}");
}

/// Even when the bundle holds the other domain's CA too, its SVIDs are not
/// accepted: a peer must be in the server's own trust domain.
#[tokio::test]
async fn trusted_chain_from_a_foreign_trust_domain_is_refused() {
    let ours = ca("example.org");
    let other = ca("other.org");
    let both = format!("{}{}", ours.ca.bundle_pem(), other.ca.bundle_pem());
    let server = svid_trusting(&ours, SAFE, &both);
    let stranger = svid_trusting(&other, "spiffe://other.org/workload/billing", &ours.ca.bundle_pem());
    let out = handshake(server, client(stranger, safe_only())).await;
    let err = out.server.unwrap_err();
    assert!(matches!(identity_error(&err), IdentityError::ForeignTrustDomain { .. }), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn client_refuses_server_of_another_ca() {
    let ca1 = ca("example.org");
    let ca2 = ca("example.org");
    let out = handshake(svid(&ca2, SAFE), client(svid(&ca1, BILLING), safe_only())).await;
    let err = out.client.unwrap_err();
    assert_not_our_ca(&err);
}

/// A CA reloaded from disk issues SVIDs that chain to the original ca.crt.
#[tokio::test]
async fn reloaded_dev_ca_issues_compatible_svids() {
    let dir = tempfile::tempdir().unwrap();
    let first = DevCa::load_or_create(dir.path(), "example.org").unwrap();
    let again = DevCa::load_or_create(dir.path(), "example.org").unwrap();
    let server = first.issue(&id(SAFE), Duration::from_secs(60)).unwrap();
    let client_svid = again.issue(&id(BILLING), Duration::from_secs(60)).unwrap();
    let server = Arc::new(server.to_material().unwrap());
    let client_svid = Arc::new(client_svid.to_material().unwrap());
    let out = handshake(server, client(client_svid, safe_only())).await;
    assert_eq!(out.server.unwrap().as_str(), BILLING);
    assert_eq!(out.client.unwrap().as_str(), SAFE);
}

/// Test-only verifier for a client that presents no certificate.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A source whose material the test replaces, as a rotation would.
struct Swappable(arc_swap::ArcSwap<SvidMaterial>);

impl aegis_identity::IdentitySource for Swappable {
    fn current(&self) -> Arc<SvidMaterial> {
        self.0.load_full()
    }
}

/// One server config sees a rotated SVID and bundle on the next handshake:
/// the cached client verifier is rebuilt for the new bundle.
#[tokio::test]
async fn rotation_applies_to_the_next_handshake() {
    let old_ca = ca("example.org");
    let new_ca = ca("example.org");
    let source = Arc::new(Swappable(arc_swap::ArcSwap::new(svid(&old_ca, SAFE))));
    let server = Arc::new(server_config(source.clone()).unwrap());
    let old_client = || client(svid(&old_ca, BILLING), safe_only());
    let new_client = || client(svid(&new_ca, BILLING), safe_only());

    assert!(run(&server, old_client()).await.is_ok());
    assert!(run(&server, new_client()).await.is_err());
    source.0.store(svid(&new_ca, "spiffe://example.org/workload/vsecm-safe/n/safe-1"));
    assert!(run(&server, old_client()).await.is_err());
    let seen = run(&server, new_client()).await.unwrap();
    assert_eq!(seen.as_str(), "spiffe://example.org/workload/vsecm-safe/n/safe-1");
}

/// Handshake against a shared server config; the server's ID as the client saw it.
async fn run(server: &Arc<rustls::ServerConfig>, client: rustls::ClientConfig) -> std::io::Result<SpiffeId> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::clone(server));
    let serve = async move {
        let mut tls = acceptor.accept(server_io).await?;
        tls.write_all(b"ok").await?;
        tls.shutdown().await
    };
    let connect = async move {
        let name = ServerName::try_from("safe.invalid").unwrap();
        let mut tls = TlsConnector::from(Arc::new(client)).connect(name, client_io).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        peer_id(tls.get_ref().1.peer_certificates())
    };
    let both = async { tokio::join!(serve, connect) };
    let (served, seen) = tokio::time::timeout(Duration::from_secs(10), both).await.unwrap();
    served?;
    seen
}

/// The server also speaks TLS 1.2 with mandatory client certificates.
#[tokio::test]
async fn tls12_client_with_svid_is_served() {
    use rustls::pki_types::pem::PemObject;
    let ca = ca("example.org");
    let issued = ca.ca.issue(&id(BILLING), Duration::from_secs(60)).unwrap();
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem().as_bytes()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let out = handshake(svid(&ca, SAFE), cfg).await;
    assert_eq!(out.server.unwrap().as_str(), BILLING);
    assert_eq!(out.client.unwrap().as_str(), SAFE);
}

const B_BILLING: &str = "spiffe://b.example/workload/billing/ns/default/sa/billing/n/billing-0";

/// The certificates of a PEM bundle.
fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

/// A handshake with a Safe that federates as `federation` says.
async fn federated_handshake(
    server_svid: Arc<SvidMaterial>,
    federation: aegis_identity::Federation,
    client: rustls::ClientConfig,
) -> Outcome {
    let source = Arc::new(StaticSource(server_svid));
    pipe(aegis_identity::server_config_federated(source, Arc::new(federation)).unwrap(), client).await
}

/// A Safe federating with b.example through a bundle file.
async fn federating_with_b(dir: &std::path::Path, b: &Ca) -> aegis_identity::Federation {
    let file = dir.join("b.pem");
    std::fs::write(&file, b.ca.bundle_pem()).unwrap();
    aegis_identity::Federation::start(
        vec!["b.example".to_owned()],
        vec![("b.example".to_owned(), file)],
        Duration::from_secs(1),
    )
    .await
    .unwrap()
}

/// A client of b.example whose agent gave it example.org's bundle (it federates with the Safe's domain).
fn b_client(b: &Ca, issuer: &Ca, a: &Ca) -> rustls::ClientConfig {
    let issued = issuer.ca.issue(&id(B_BILLING), Duration::from_secs(3600)).unwrap();
    let m =
        SvidMaterial::from_pem(issued.cert_pem.as_bytes(), issued.key_pem().as_bytes(), b.ca.bundle_pem().as_bytes())
            .unwrap()
            .with_federated([("example.org".to_owned(), certs(&a.ca.bundle_pem()))].into())
            .unwrap();
    client(Arc::new(m), safe_only())
}

#[tokio::test]
async fn a_federated_domain_is_accepted_against_its_own_bundle_only() {
    let (a, b, rogue_b) = (ca("example.org"), ca("b.example"), ca("b.example"));
    let dir = tempfile::tempdir().unwrap();

    let out = federated_handshake(svid(&a, SAFE), federating_with_b(dir.path(), &b).await, b_client(&b, &b, &a)).await;
    assert_eq!(out.server.unwrap().as_str(), B_BILLING, "the Safe sees the federated workload");
    assert_eq!(out.client.unwrap().as_str(), SAFE, "the workload checked the Safe with the federated bundle");

    // Not federated: refused, naming the domain, although the chain is B's genuine one.
    let out = handshake(svid(&a, SAFE), b_client(&b, &b, &a)).await;
    let err = out.server.unwrap_err();
    assert!(matches!(identity_error(&err), IdentityError::ForeignTrustDomain { .. }), "{err}");
    assert!(err.to_string().contains("b.example"), "{err}");

    // Another CA claiming b.example: its chain does not verify against b.example's bundle.
    let out =
        federated_handshake(svid(&a, SAFE), federating_with_b(dir.path(), &b).await, b_client(&b, &rogue_b, &a)).await;
    assert_not_our_ca(&out.server.unwrap_err());

    // A client given neither the Safe's domain's bundle nor a federated one refuses the Safe.
    let bare = client(svid_trusting(&b, B_BILLING, &b.ca.bundle_pem()), safe_only());
    let out = federated_handshake(svid(&a, SAFE), federating_with_b(dir.path(), &b).await, bare).await;
    assert_not_our_ca(&out.client.unwrap_err());
}
