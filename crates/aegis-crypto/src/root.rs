//! The root key, in VSecM's three-line text form.

use std::fmt;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::{AuditKey, CryptoError};

/// A short public identifier of a root key (derived, reveals nothing).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// VSecM's root key: an age X25519 identity, its public recipient and an AES-256 key.
pub struct RootKey {
    age_identity: age::x25519::Identity,
    age_recipient: age::x25519::Recipient,
    aes: Zeroizing<[u8; 32]>,
    id: KeyId,
    record_key: Zeroizing<[u8; 32]>,
    audit_key: Zeroizing<[u8; 32]>,
}

const HKDF_SALT: &[u8] = b"aegis/root-key/v1";

impl RootKey {
    /// A fresh key from the OS random source.
    pub fn generate() -> Self {
        let identity = age::x25519::Identity::generate();
        let mut aes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut aes[..]);
        Self::assemble(identity, aes)
    }

    fn assemble(age_identity: age::x25519::Identity, aes: Zeroizing<[u8; 32]>) -> Self {
        let age_recipient = age_identity.to_public();
        let secret = age_identity.to_string();
        let mut ikm = Zeroizing::new(Vec::with_capacity(32 + 80));
        ikm.extend_from_slice(&aes[..]);
        ikm.extend_from_slice(secret.expose_secret().as_bytes());
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &ikm);
        let mut record_key = Zeroizing::new([0u8; 32]);
        let mut audit_key = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 8];
        // All lengths are far below HKDF's 255*32 byte limit, so expand cannot fail.
        let _ = hk.expand(b"record-key", &mut record_key[..]);
        let _ = hk.expand(b"audit-mac-key", &mut audit_key[..]);
        let _ = hk.expand(b"key-id", &mut id);
        Self { age_identity, age_recipient, aes, id: KeyId(id), record_key, audit_key }
    }

    /// Parses the three parts: age secret key, age public key, 64 hex characters.
    pub fn from_parts(age_secret: &str, age_public: &str, aes_hex: &str) -> Result<Self, CryptoError> {
        let identity = age::x25519::Identity::from_str(age_secret.trim())
            .map_err(|_| CryptoError::InvalidRootKey("the first part must be an age secret key (AGE-SECRET-KEY-1…)"))?;
        let public = age::x25519::Recipient::from_str(age_public.trim())
            .map_err(|_| CryptoError::InvalidRootKey("the second part must be an age public key (age1…)"))?;
        if public.to_string() != identity.to_public().to_string() {
            return Err(CryptoError::InvalidRootKey("the age public key does not belong to the age secret key"));
        }
        let mut raw = hex::decode(aes_hex.trim())
            .map_err(|_| CryptoError::InvalidRootKey("the third part must be 64 hexadecimal characters"))?;
        let mut aes = Zeroizing::new([0u8; 32]);
        if raw.len() != 32 {
            raw.zeroize();
            return Err(CryptoError::InvalidRootKey("the third part must be 64 hexadecimal characters"));
        }
        aes.copy_from_slice(&raw);
        raw.zeroize();
        Ok(Self::assemble(identity, aes))
    }

    /// Parses VSecM's text form: three lines (secret key, public key, AES key in hex).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let parts: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match parts.as_slice() {
            [s, p, a] => Self::from_parts(s, p, a),
            _ => Err(CryptoError::InvalidRootKey(
                "expected three lines: the age secret key, the age public key and 64 hex characters",
            )),
        }
    }

    /// VSecM's text form. Handle with care: this is the key itself.
    pub fn to_text(&self) -> Zeroizing<String> {
        let secret = self.age_identity.to_string();
        Zeroizing::new(format!("{}\n{}\n{}\n", secret.expose_secret(), self.age_recipient, hex::encode(&self.aes[..])))
    }

    /// The key's public identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The age public key (safe to share).
    pub fn age_public(&self) -> String {
        self.age_recipient.to_string()
    }

    pub(crate) fn age_recipient(&self) -> &age::x25519::Recipient {
        &self.age_recipient
    }

    pub(crate) fn age_identity(&self) -> &age::x25519::Identity {
        &self.age_identity
    }

    pub(crate) fn record_key(&self) -> &[u8; 32] {
        &self.record_key
    }

    /// The key that anchors the audit trail (HMAC-SHA256), derived from this
    /// root key with HKDF; it reveals nothing of the root key.
    pub fn audit_key(&self) -> AuditKey {
        AuditKey { id: self.id, key: self.audit_key.clone() }
    }

    /// Encrypts a value for storing in git (VSecM `safe -e`): base64 of an age file to this key's recipient.
    pub fn encrypt_for_git(&self, plaintext: &[u8]) -> Result<String, CryptoError> {
        use base64::Engine;
        let ct = age::encrypt(&self.age_recipient, plaintext)
            .map_err(|_| CryptoError::Ciphertext("age encryption failed"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(ct))
    }

    /// Decrypts a value produced by [`RootKey::encrypt_for_git`] or VSecM's `safe -e`.
    pub fn decrypt_from_git(&self, b64: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use base64::Engine;
        let ct = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| CryptoError::Ciphertext("it is not valid base64"))?;
        age::decrypt(&self.age_identity, &ct)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Ciphertext("age decryption failed"))
    }

    /// Decrypts an age file to this key's identity, as VSecM's Safe writes its
    /// `<name>.age` records (binary age format, not base64).
    pub fn decrypt_age_file(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if data.is_empty() {
            return Err(CryptoError::AgeFile("the file is empty"));
        }
        age::decrypt(&self.age_identity, data).map(Zeroizing::new).map_err(|e| {
            CryptoError::AgeFile(match e {
                age::DecryptError::NoMatchingKeys => "it was not encrypted to this root key (wrong root key?)",
                age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
                    "it is not an age file (damaged or not written by VSecM)"
                }
                _ => "the age file is damaged or truncated",
            })
        })
    }
}

impl PartialEq for RootKey {
    fn eq(&self, other: &Self) -> bool {
        self.record_key[..].ct_eq(&other.record_key[..]).into()
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootKey(id={}, <redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_files_decrypt_and_failures_say_why() {
        let k = RootKey::generate();
        let ct = age::encrypt(&k.age_recipient, b"{\"name\":\"x\"}").unwrap();
        assert_eq!(&k.decrypt_age_file(&ct).unwrap()[..], b"{\"name\":\"x\"}");
        let other = RootKey::generate();
        assert!(other.decrypt_age_file(&ct).unwrap_err().to_string().contains("wrong root key"));
        assert!(k.decrypt_age_file(b"").unwrap_err().to_string().contains("empty"));
        assert!(k.decrypt_age_file(b"not age at all").unwrap_err().to_string().contains("not an age file"));
        let mut damaged = ct.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(k.decrypt_age_file(&damaged).unwrap_err().to_string().contains("damaged"));
    }

    #[test]
    fn text_round_trip_and_debug_hides_key() {
        let k = RootKey::generate();
        let text = k.to_text();
        let back = RootKey::parse(&text).unwrap();
        assert_eq!(k, back);
        assert_eq!(k.id(), back.id());
        let dbg = format!("{k:?}");
        let aes_line = text.lines().nth(2).unwrap();
        assert!(!dbg.contains(aes_line) && !dbg.contains("AGE-SECRET"), "{dbg}");
    }

    #[test]
    fn rejects_malformed_keys_with_reason() {
        let k = RootKey::generate();
        let text = k.to_text();
        let lines: Vec<&str> = text.lines().collect();
        let other = RootKey::generate();
        let other_text = other.to_text();
        let other_pub = other_text.lines().nth(1).unwrap();
        let cases = [
            (String::new(), "three lines"),
            (format!("{}\n{}", lines[0], lines[1]), "three lines"),
            (format!("x\n{}\n{}", lines[1], lines[2]), "age secret key"),
            (format!("{}\nage1x\n{}", lines[0], lines[2]), "age public key"),
            (format!("{}\n{}\n{}", lines[0], other_pub, lines[2]), "does not belong"),
            (format!("{}\n{}\nabcd", lines[0], lines[1]), "64 hexadecimal"),
        ];
        for (input, why) in cases {
            let e = RootKey::parse(&input).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn git_ciphertext_round_trip_and_wrong_key() {
        let k = RootKey::generate();
        let ct = k.encrypt_for_git(b"s3cr3t").unwrap();
        assert!(!ct.contains("s3cr3t"));
        assert_eq!(k.decrypt_from_git(&ct).unwrap().as_slice(), b"s3cr3t");
        let e = RootKey::generate().decrypt_from_git(&ct).unwrap_err().to_string();
        assert!(e.contains("safe -e"), "{e}");
        assert!(k.decrypt_from_git("not base64!").is_err());
    }
}
