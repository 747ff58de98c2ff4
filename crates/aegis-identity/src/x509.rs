//! Reading SPIFFE IDs and validity out of X.509 certificates.

use aegis_core::SpiffeId;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::IdentityError;

/// What Aegis needs to know about a leaf certificate.
pub(crate) struct LeafInfo {
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) not_after: OffsetDateTime,
}

/// SPIFFE ID of a verified peer from its certificate chain (leaf first).
///
/// The leaf must carry exactly one URI SAN, and it must be a SPIFFE ID with a
/// path (the X.509-SVID specification forbids bare trust-domain IDs in leaves).
/// This does not verify the chain: call it only on chains rustls has verified,
/// e.g. `ServerConnection::peer_certificates()` after the handshake.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, IdentityError> {
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::NotAnSvid { reason: "the peer presented no certificate".to_owned() })?;
    Ok(leaf_info(leaf, "peer certificate")?.spiffe_id)
}

/// Expiry of a verified peer's leaf certificate.
pub fn peer_not_after(chain: &[CertificateDer<'_>]) -> Result<OffsetDateTime, IdentityError> {
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::NotAnSvid { reason: "the peer presented no certificate".to_owned() })?;
    Ok(leaf_info(leaf, "peer certificate")?.not_after)
}

/// Parses the leaf and extracts its SPIFFE ID and expiry.
pub(crate) fn leaf_info(der: &CertificateDer<'_>, what: &'static str) -> Result<LeafInfo, IdentityError> {
    let cert = parse(der, what)?;
    Ok(LeafInfo { spiffe_id: svid_id(&cert)?, not_after: cert.validity().not_after.to_datetime() })
}

/// Parses one DER certificate, naming `what` in the error.
pub(crate) fn parse<'a>(der: &'a CertificateDer<'_>, what: &'static str) -> Result<X509Certificate<'a>, IdentityError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| IdentityError::Certificate { what, reason: e.to_string() })
}

/// The URI SANs of a certificate (any scheme).
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| not_svid(format!("its subjectAltName extension is malformed ({e})")))?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect())
}

/// The single SPIFFE ID of a leaf SVID.
fn svid_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, IdentityError> {
    let uri = match uri_sans(cert)?.as_slice() {
        [one] => *one,
        [] => return Err(not_svid("it has no URI SAN".to_owned())),
        many => return Err(not_svid(format!("it has {} URI SANs", many.len()))),
    };
    let id = SpiffeId::parse(uri).map_err(|e| not_svid(format!("URI SAN {uri:?}: {e}")))?;
    if id.path().is_empty() {
        return Err(not_svid(format!("{id} names a trust domain, not a workload")));
    }
    Ok(id)
}

fn not_svid(reason: String) -> IdentityError {
    IdentityError::NotAnSvid { reason }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with_sans(sans: Vec<SanType>) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn one_spiffe_uri_is_the_id() {
        let der = cert_with_sans(vec![uri("spiffe://example.org/a/b")]);
        let id = peer_spiffe_id(&[der]).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/a/b");
    }

    #[test]
    fn dns_names_beside_the_uri_are_ignored() {
        let dns = SanType::DnsName("safe.example".try_into().unwrap());
        let der = cert_with_sans(vec![dns, uri("spiffe://example.org/a")]);
        assert!(peer_spiffe_id(&[der]).is_ok());
    }

    #[test]
    fn rejects_missing_extra_and_foreign_uris() {
        let cases = [
            vec![],
            vec![uri("spiffe://example.org/a"), uri("spiffe://example.org/b")],
            vec![uri("https://example.org/a")],
            vec![uri("spiffe://example.org")],
            vec![uri("spiffe://Example.org/a")],
        ];
        for sans in cases {
            let der = cert_with_sans(sans.clone());
            let err = peer_spiffe_id(&[der]).unwrap_err();
            assert!(matches!(err, IdentityError::NotAnSvid { .. }), "{sans:?}: {err}");
        }
    }

    #[test]
    fn rejects_empty_chain_and_garbage() {
        assert!(peer_spiffe_id(&[]).is_err());
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff]);
        assert!(matches!(peer_spiffe_id(&[junk]), Err(IdentityError::Certificate { .. })));
    }
}
