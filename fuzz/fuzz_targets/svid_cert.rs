//! X.509-SVIDs: a certificate (DER, or a PEM chain with a key and bundle)
//! yields a SPIFFE ID only when it carries exactly that ID, which then
//! parses again; its expiry is read from the same certificate.
#![no_main]

use aegis_core::SpiffeId;
use aegis_identity::{peer_not_after, peer_spiffe_id, SvidMaterial};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, pem)) => pem_material(pem),
        Some((_, der)) => leaf(der),
        None => {}
    }
});

fn leaf(der: &[u8]) {
    let chain = [CertificateDer::from(der)];
    let id = peer_spiffe_id(&chain);
    assert_eq!(id.is_ok(), peer_not_after(&chain).is_ok(), "the ID and the expiry come from one parse");
    let Ok(id) = id else { return };
    assert_eq!(SpiffeId::parse(id.as_str()).ok().as_ref(), Some(&id), "an SVID's ID parses again");
    assert!(!id.path().is_empty(), "a leaf SVID must have a path");
    let text = id.as_str().as_bytes();
    assert!(der.windows(text.len()).any(|w| w == text), "the ID is not in the certificate");
}

/// The PEM input is split at two 0xff bytes into chain, key and bundle.
fn pem_material(pem: &[u8]) {
    let mut parts = pem.splitn(3, |b| *b == 0xff);
    let (chain, key, bundle) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let Ok(m) = SvidMaterial::from_pem(chain, key, bundle) else { return };
    assert_eq!(peer_spiffe_id(m.cert_chain()).ok().as_ref(), Some(m.spiffe_id()), "material and leaf agree");
    assert!(!m.bundle().is_empty(), "SVID material without a trust bundle");
}
