//! One X.509-SVID with its key and trust bundle, parsed and checked.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aegis_core::SpiffeId;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::x509::leaf_info;
use crate::IdentityError;

/// One X.509-SVID with its private key and the trust bundle to verify peers against.
///
/// The key is held only as a rustls signing key; the DER bytes it was parsed
/// from are zeroized once parsed. `Debug` shows the SPIFFE ID and expiry, never
/// the key.
pub struct SvidMaterial {
    spiffe_id: SpiffeId,
    not_after: OffsetDateTime,
    /// Leaf-first chain plus signing key, shared with every handshake.
    certified: Arc<CertifiedKey>,
    /// CA certificates of our trust domain. An `Arc` so verifiers can cache
    /// what they build from it and notice cheaply when it changes.
    bundle: Arc<[CertificateDer<'static>]>,
    /// Bundles of other trust domains, by trust domain name, as the SPIRE
    /// agent delivers them to an entry that federates with those domains.
    /// Having one trusts nobody: a Safe accepts a peer of a foreign domain
    /// only when told to federate with it ([`crate::Federation`]).
    federated: Arc<BTreeMap<String, Arc<[CertificateDer<'static>]>>>,
}

impl SvidMaterial {
    /// Parses PEM input: the certificate chain (leaf first), the private key
    /// (PKCS#8, SEC1 or PKCS#1) and the trust bundle (CA certificates).
    ///
    /// Requires exactly one `spiffe://` URI SAN in the leaf and a key that
    /// matches it. Expired certificates are accepted here; peers reject them.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8], bundle_pem: &[u8]) -> Result<Self, IdentityError> {
        let chain = parse_certs(cert_chain_pem, "certificate chain")?;
        let bundle = parse_bundle(bundle_pem)?;
        // Parsed last: from_der zeroizes it, and nothing may fail in between.
        let key = parse_key(key_pem)?;
        Self::from_der(chain, key, bundle)
    }

    /// Same as [`SvidMaterial::from_pem`] for DER input (as the Workload API
    /// delivers it). The key bytes are zeroized before this returns.
    pub fn from_der(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let key = Zeroizing::new(key);
        let leaf = cert_chain.first().ok_or(IdentityError::NoCertificate { what: "certificate chain" })?;
        let info = leaf_info(leaf, "leaf certificate")?;
        check_bundle(&bundle)?;
        let signer = any_supported_type(&key).map_err(|e| IdentityError::Key { reason: e.to_string() })?;
        let certified = CertifiedKey::new(cert_chain, signer);
        check_key_matches(&certified, &info.spiffe_id)?;
        Ok(Self {
            spiffe_id: info.spiffe_id,
            not_after: info.not_after,
            certified: Arc::new(certified),
            bundle: bundle.into(),
            federated: Arc::default(),
        })
    }

    /// The same SVID with `federated` as the bundles of other trust domains
    /// (each checked like the own bundle; one for the own domain is left out).
    pub fn with_federated(
        mut self,
        federated: BTreeMap<String, Vec<CertificateDer<'static>>>,
    ) -> Result<Self, IdentityError> {
        let own = self.spiffe_id.trust_domain().to_owned();
        let mut map = BTreeMap::new();
        for (td, bundle) in federated {
            if td == own {
                continue;
            }
            check_bundle(&bundle)?;
            map.insert(td, Arc::from(bundle));
        }
        self.federated = Arc::new(map);
        Ok(self)
    }

    /// The bundle of the foreign trust domain `td`, if the source gave one.
    pub fn federated_bundle(&self, td: &str) -> Option<&Arc<[CertificateDer<'static>]>> {
        self.federated.get(td)
    }

    /// The foreign trust domains whose bundles the source gave.
    pub fn federated_domains(&self) -> impl Iterator<Item = &str> {
        self.federated.keys().map(String::as_str)
    }

    /// The SPIFFE ID in the leaf certificate's URI SAN.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// When the leaf certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The CA certificates of the own trust domain, used to verify peers.
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The chain and signing key in the form rustls resolvers hand out.
    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }

    /// The bundle as a shared handle, for per-bundle caches.
    pub(crate) fn bundle_arc(&self) -> &Arc<[CertificateDer<'static>]> {
        &self.bundle
    }
}

impl fmt::Debug for SvidMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidMaterial")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("cert_chain_len", &self.certified.cert.len())
            .field("bundle_len", &self.bundle.len())
            .field("federated", &self.federated.keys().collect::<Vec<_>>())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Every `CERTIFICATE` block of `pem` (other blocks are skipped); at least one.
pub(crate) fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate { what });
    }
    Ok(certs)
}

/// The first private key block of `pem`.
pub(crate) fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| IdentityError::Key { reason: e.to_string() })
}

/// The CA certificates of a trust bundle, each usable as a trust anchor.
pub(crate) fn parse_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bundle = parse_certs(pem, "trust bundle")?;
    check_bundle(&bundle)?;
    Ok(bundle)
}

/// Rejects bundles that verifiers could not turn into trust anchors, so a bad
/// bundle fails at load time rather than in every later handshake.
fn check_bundle(bundle: &[CertificateDer<'static>]) -> Result<(), IdentityError> {
    if bundle.is_empty() {
        return Err(IdentityError::NoCertificate { what: "trust bundle" });
    }
    for cert in bundle {
        webpki::anchor_from_trusted_cert(cert)
            .map_err(|e| IdentityError::Certificate { what: "trust bundle certificate", reason: e.to_string() })?;
    }
    Ok(())
}

fn check_key_matches(certified: &CertifiedKey, spiffe_id: &SpiffeId) -> Result<(), IdentityError> {
    match certified.keys_match() {
        // rustls reports Unknown for key types that cannot expose their public
        // half; the handshake signature check still catches a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(IdentityError::KeyMismatch { spiffe_id: spiffe_id.clone() })
        }
        Err(e) => Err(IdentityError::Certificate { what: "leaf certificate", reason: e.to_string() }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::devca::DevCa;

    fn ca() -> (tempfile::TempDir, DevCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), "example.org").unwrap();
        (dir, ca)
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn parses_issued_svid() {
        let (_dir, ca) = ca();
        let svid = ca.issue(&id("spiffe://example.org/w/a"), Duration::from_secs(3600)).unwrap();
        let m = svid.to_material().unwrap();
        assert_eq!(m.spiffe_id().as_str(), "spiffe://example.org/w/a");
        assert_eq!(m.cert_chain().len(), 1);
        assert_eq!(m.bundle().len(), 1);
        let left = m.not_after() - OffsetDateTime::now_utc();
        assert!(left > time::Duration::minutes(59) && left <= time::Duration::hours(1));
    }

    #[test]
    fn rejects_key_of_another_svid() {
        let (_dir, ca) = ca();
        let a = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(60));
        let b = ca.issue(&id("spiffe://example.org/b"), Duration::from_secs(60));
        let (a, b) = (a.unwrap(), b.unwrap());
        let err =
            SvidMaterial::from_pem(a.cert_pem.as_bytes(), b.key_pem().as_bytes(), a.bundle_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("spiffe://example.org/a"));
    }

    #[test]
    fn rejects_missing_parts() {
        let (_dir, ca) = ca();
        let a = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(60)).unwrap();
        let (cert, key, bundle) = (a.cert_pem.as_bytes(), a.key_pem().as_bytes(), a.bundle_pem.as_bytes());
        assert!(matches!(SvidMaterial::from_pem(b"", key, bundle), Err(IdentityError::NoCertificate { .. })));
        assert!(matches!(SvidMaterial::from_pem(cert, b"nope", bundle), Err(IdentityError::Key { .. })));
        assert!(matches!(SvidMaterial::from_pem(cert, key, b"garbage"), Err(IdentityError::NoCertificate { .. })));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (_dir, ca) = ca();
        let svid = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(60)).unwrap();
        let m = svid.to_material().unwrap();
        let shown = format!("{m:?} {svid:?} {ca:?}");
        assert!(shown.contains("spiffe://example.org/a"));
        assert!(!shown.contains("PRIVATE"));
        for line in svid.key_pem().lines().filter(|l| !l.starts_with("-----")) {
            assert!(!shown.contains(line), "key line leaked: {shown}");
        }
    }
}
