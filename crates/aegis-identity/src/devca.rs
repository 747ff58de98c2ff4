//! Throw-away development CA (for `aegis dev`): never to be mistaken for
//! production identity.
//!
//! The CA's common name says "not for production" so that anyone inspecting a
//! certificate sees where it came from. Its key sits unencrypted in `ca.key`.

use std::fmt;
use std::fs;
use std::path::Path;
use std::time::Duration;

use aegis_core::SpiffeId;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::fsutil::{create_dir, write_atomic, Access};
use crate::x509;
use crate::{IdentityError, SvidMaterial, SvidPaths};

/// Subject common name of every development CA.
pub const CA_COMMON_NAME: &str = "Aegis development CA (not for production)";
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const CA_VALIDITY: time::Duration = time::Duration::days(365);
/// Issued SVIDs start a minute in the past to tolerate clock skew.
const BACKDATE: time::Duration = time::Duration::minutes(1);

/// An ECDSA P-256 self-signed CA for one trust domain.
pub struct DevCa {
    trust_domain: String,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl DevCa {
    /// Loads `ca.crt`/`ca.key` from `dir` or creates them if absent (the key
    /// file with mode 0600, both written atomically). Fails if the CA on disk
    /// is for another trust domain, expired, or does not match its key.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        check_trust_domain(trust_domain)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(dir, trust_domain),
            (false, false) => Self::create(dir, trust_domain),
            _ => Err(dev_ca_error(dir, "only one of ca.crt and ca.key exists; delete the directory to start a new CA")),
        }
    }

    /// The trust domain this CA issues SVIDs in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Issues an SVID valid for `ttl`, starting a minute in the past.
    pub fn issue(&self, spiffe_id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, IdentityError> {
        let now = OffsetDateTime::now_utc();
        let not_after = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .ok_or_else(|| issue_error(spiffe_id, "the lifetime is too long"))?;
        self.issue_with_validity(spiffe_id, now - BACKDATE, not_after)
    }

    /// Issues an SVID (ECDSA P-256, URI SAN = `spiffe_id`, serverAuth and
    /// clientAuth, digitalSignature, not a CA) with explicit validity.
    pub fn issue_with_validity(
        &self,
        spiffe_id: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedSvid, IdentityError> {
        self.check_issuable(spiffe_id)?;
        if not_after <= not_before {
            return Err(issue_error(spiffe_id, "not_after must be after not_before"));
        }
        let params = leaf_params(spiffe_id, not_before, not_after)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| issue_error(spiffe_id, e))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| issue_error(spiffe_id, e))?;
        Ok(IssuedSvid {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            bundle_pem: self.bundle_pem(),
        })
    }

    /// The CA certificate in PEM: the trust bundle for everything it issues.
    pub fn bundle_pem(&self) -> String {
        self.cert_pem.clone()
    }

    fn check_issuable(&self, spiffe_id: &SpiffeId) -> Result<(), IdentityError> {
        if spiffe_id.trust_domain() != self.trust_domain {
            let why = format!("this CA issues only in trust domain {}", self.trust_domain);
            return Err(issue_error(spiffe_id, why));
        }
        if spiffe_id.path().is_empty() {
            return Err(issue_error(spiffe_id, "an SVID needs a path after the trust domain"));
        }
        Ok(())
    }

    fn create(dir: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| dev_ca_error(dir, format!("cannot generate a key: {e}")))?;
        let now = OffsetDateTime::now_utc();
        let params = ca_params(trust_domain, now - BACKDATE, now + CA_VALIDITY)?;
        let cert =
            params.self_signed(&key).map_err(|e| dev_ca_error(dir, format!("cannot sign the CA certificate: {e}")))?;
        create_dir(dir)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        // Key first: a crash in between leaves a key without certificate,
        // which load_or_create reports instead of silently using.
        write_atomic(&dir.join(CA_KEY_FILE), key_pem.as_bytes(), Access::Private)?;
        write_atomic(&dir.join(CA_CERT_FILE), cert.pem().as_bytes(), Access::Public)?;
        tracing::info!(dir = %dir.display(), trust_domain, "created a development CA (not for production)");
        Ok(Self { trust_domain: trust_domain.to_owned(), cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    fn load(dir: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| IdentityError::read(&cert_path, e))?;
        let key_pem = Zeroizing::new(fs::read_to_string(&key_path).map_err(|e| IdentityError::read(&key_path, e))?);
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::Key { reason: e.to_string() }.in_file(&key_path))?;
        check_stored_ca(dir, &cert_pem, &key, trust_domain)?;
        // Issued certificates need only the CA's name, key usages and key;
        // rcgen encodes the name deterministically, so rebuilding the
        // parameters reproduces the issuer name stored in ca.crt.
        let now = OffsetDateTime::now_utc();
        let params = ca_params(trust_domain, now, now + CA_VALIDITY)?;
        Ok(Self { trust_domain: trust_domain.to_owned(), cert_pem, issuer: Issuer::new(params, key) })
    }
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// An SVID issued by the development CA, in PEM.
pub struct IssuedSvid {
    /// The leaf certificate.
    pub cert_pem: String,
    key_pem: Zeroizing<String>,
    /// The CA certificate to verify peers against.
    pub bundle_pem: String,
}

impl IssuedSvid {
    /// The private key (PKCS#8 PEM). Handle with care: never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `svid.pem`, `svid.key` (mode 0600) and `bundle.pem` into `dir`,
    /// each atomically (temporary file and rename), creating `dir` if needed.
    pub fn write_files(&self, dir: &Path) -> Result<SvidPaths, IdentityError> {
        create_dir(dir)?;
        let paths = SvidPaths { cert: dir.join("svid.pem"), key: dir.join("svid.key"), bundle: dir.join("bundle.pem") };
        write_atomic(&paths.key, self.key_pem.as_bytes(), Access::Private)?;
        write_atomic(&paths.cert, self.cert_pem.as_bytes(), Access::Public)?;
        write_atomic(&paths.bundle, self.bundle_pem.as_bytes(), Access::Public)?;
        Ok(paths)
    }

    /// Parses this SVID into the form the TLS configs use.
    pub fn to_material(&self) -> Result<SvidMaterial, IdentityError> {
        SvidMaterial::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes(), self.bundle_pem.as_bytes())
    }
}

impl fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("bundle_pem_len", &self.bundle_pem.len())
            .finish()
    }
}

fn check_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    let invalid = |source| IdentityError::InvalidTrustDomain { value: trust_domain.to_owned(), source };
    let id = SpiffeId::parse(&format!("spiffe://{trust_domain}")).map_err(invalid)?;
    if !id.path().is_empty() {
        return Err(invalid(aegis_core::InvalidInput::new("trust domain", "must not contain '/'")));
    }
    Ok(())
}

/// Verifies that `ca.crt` is our CA for `trust_domain`, unexpired, and
/// belongs to `key`; a stale or foreign CA must not be reused silently.
fn check_stored_ca(dir: &Path, cert_pem: &str, key: &KeyPair, trust_domain: &str) -> Result<(), IdentityError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let ders = crate::material::parse_certs(cert_pem.as_bytes(), "development CA certificate")
        .map_err(|e| e.in_file(&cert_path))?;
    let Some(der) = ders.first() else {
        return Err(dev_ca_error(dir, "ca.crt holds no certificate"));
    };
    let cert = x509::parse(der, "development CA certificate").map_err(|e| e.in_file(&cert_path))?;
    let expected_uri = format!("spiffe://{trust_domain}");
    let uris = x509::uri_sans(&cert).map_err(|e| e.in_file(&cert_path))?;
    if uris != [expected_uri.as_str()] {
        let why = format!("it is for {uris:?}, not {expected_uri}; use another directory or delete this one");
        return Err(dev_ca_error(dir, why));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(dev_ca_error(dir, "ca.key does not belong to ca.crt; delete the directory to start a new CA"));
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        let why = format!("it expired on {not_after}; delete the directory to start a new CA");
        return Err(dev_ca_error(dir, why));
    }
    Ok(())
}

fn ca_params(
    trust_domain: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn leaf_params(
    spiffe_id: &SpiffeId,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Aegis development (not for production)");
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![uri_san(spiffe_id.as_str())?];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, IdentityError> {
    let ia5 = Ia5String::try_from(uri)
        .map_err(|e| IdentityError::Issue { spiffe_id: uri.to_owned(), reason: e.to_string() })?;
    Ok(SanType::URI(ia5))
}

fn issue_error(spiffe_id: &SpiffeId, reason: impl fmt::Display) -> IdentityError {
    IdentityError::Issue { spiffe_id: spiffe_id.to_string(), reason: reason.to_string() }
}

fn dev_ca_error(dir: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::DevCa { dir: dir.to_owned(), reason: reason.into() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn creates_then_loads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevCa::load_or_create(dir.path(), "example.org").unwrap();
        let again = DevCa::load_or_create(dir.path(), "example.org").unwrap();
        assert_eq!(first.bundle_pem(), again.bundle_pem());
        assert_eq!(again.trust_domain(), "example.org");
        assert!(first.bundle_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(dir.path().join(CA_KEY_FILE)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn ca_certificate_says_not_for_production() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), "example.org").unwrap();
        let der = crate::material::parse_certs(ca.bundle_pem().as_bytes(), "x").unwrap();
        let cert = x509::parse(&der[0], "x").unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), CA_COMMON_NAME);
        assert!(cert.is_ca());
        assert_eq!(x509::uri_sans(&cert).unwrap(), ["spiffe://example.org"]);
        let life = cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
        assert!(life >= time::Duration::days(365));
    }

    #[test]
    fn refuses_a_ca_of_another_trust_domain_or_half_present() {
        let dir = tempfile::tempdir().unwrap();
        DevCa::load_or_create(dir.path(), "example.org").unwrap();
        let err = DevCa::load_or_create(dir.path(), "other.org").unwrap_err();
        assert!(matches!(err, IdentityError::DevCa { .. }), "{err}");
        assert!(err.to_string().contains("other.org"));
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let err = DevCa::load_or_create(dir.path(), "example.org").unwrap_err();
        assert!(matches!(err, IdentityError::DevCa { .. }), "{err}");
    }

    #[test]
    fn rejects_invalid_trust_domains() {
        let dir = tempfile::tempdir().unwrap();
        for td in ["", "Upper.org", "a/b", "spiffe://x"] {
            let err = DevCa::load_or_create(dir.path(), td).unwrap_err();
            assert!(matches!(err, IdentityError::InvalidTrustDomain { .. }), "{td}: {err}");
        }
    }

    #[test]
    fn issues_only_in_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), "example.org").unwrap();
        let ttl = Duration::from_secs(60);
        assert!(ca.issue(&id("spiffe://other.org/a"), ttl).is_err());
        assert!(ca.issue(&id("spiffe://example.org"), ttl).is_err());
        assert!(ca.issue(&id("spiffe://example.org/a"), Duration::MAX).is_err());
        let now = OffsetDateTime::now_utc();
        assert!(ca.issue_with_validity(&id("spiffe://example.org/a"), now, now).is_err());
    }

    #[test]
    fn issued_leaf_has_svid_shape() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), "example.org").unwrap();
        let svid = ca.issue(&id("spiffe://example.org/w/a"), Duration::from_secs(60)).unwrap();
        let der = crate::material::parse_certs(svid.cert_pem.as_bytes(), "x").unwrap();
        let cert = x509::parse(&der[0], "x").unwrap();
        assert!(!cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let backdate = OffsetDateTime::now_utc() - cert.validity().not_before.to_datetime();
        assert!(backdate >= time::Duration::seconds(59));
    }

    #[test]
    fn writes_svid_files_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(&dir.path().join("ca"), "example.org").unwrap();
        let svid = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(60)).unwrap();
        let paths = svid.write_files(&dir.path().join("svid")).unwrap();
        assert_eq!(fs::read_to_string(&paths.cert).unwrap(), svid.cert_pem);
        assert_eq!(fs::read_to_string(&paths.key).unwrap(), svid.key_pem());
        assert_eq!(fs::read_to_string(&paths.bundle).unwrap(), ca.bundle_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn debug_hides_the_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), "example.org").unwrap();
        let key = fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap();
        let shown = format!("{ca:?}");
        assert!(shown.contains("example.org"));
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!shown.contains(line));
        }
    }
}
