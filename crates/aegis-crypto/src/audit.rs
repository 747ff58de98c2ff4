//! The audit trail's anchor key: HMAC-SHA256 under a key derived from the root key.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::KeyId;

type HmacSha256 = Hmac<Sha256>;

/// The key that authenticates the audit trail's anchors, derived with HKDF
/// from a root key ([`crate::RootKey::audit_key`]). Zeroized on drop; its
/// `Debug` shows the root key's id only.
#[derive(Clone)]
pub struct AuditKey {
    pub(crate) id: KeyId,
    pub(crate) key: Zeroizing<[u8; 32]>,
}

impl AuditKey {
    /// The id of the root key this key was derived from.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// HMAC-SHA256 of `message`.
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        let mut m = self.hmac();
        m.update(message);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC-SHA256 of `message` (compared in constant time).
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        let mut m = self.hmac();
        m.update(message);
        m.verify_slice(tag).is_ok()
    }

    fn hmac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this never fails; the fallback is unreachable.
        HmacSha256::new_from_slice(&self.key[..]).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey(root key id={}, <redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use crate::RootKey;

    #[test]
    fn macs_verify_only_under_the_same_root_key_and_debug_hides_the_key() {
        let root = RootKey::generate();
        let k = root.audit_key();
        let tag = k.mac(b"line");
        assert!(k.verify(b"line", &tag));
        assert!(!k.verify(b"line2", &tag));
        assert!(!RootKey::generate().audit_key().verify(b"line", &tag));
        assert!(RootKey::parse(&root.to_text()).unwrap().audit_key().verify(b"line", &tag));
        let dbg = format!("{k:?}");
        assert!(dbg.contains(&root.id().to_string()) && !dbg.contains(&hex::encode(&k.key[..])), "{dbg}");
    }
}
