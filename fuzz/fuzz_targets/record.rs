//! The stored record envelope. Arbitrary bytes never open. A document sealed
//! by the store opens back to the same document, only under its own name,
//! only with a key that is loaded, and not once any byte is changed. A
//! plaintext sealed under the right name and key that is not a valid
//! document is refused without its content in the reason.
//!
//! Input: a selector byte, then the name (up to a NUL) and the rest.
#![no_main]

use std::sync::{Arc, OnceLock};

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue};
use aegis_core::SecretName;
use aegis_crypto::{Keyring, RootKey};
use aegis_store::record::{open, seal, OpenError};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

struct Keys {
    ring: Keyring,
    other: Keyring,
    rotated: Keyring,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (a, b) = (Arc::new(RootKey::generate()), Arc::new(RootKey::generate()));
        Keys { ring: Keyring::new(a.clone()), other: Keyring::new(b.clone()), rotated: Keyring::new(b).with_older(a) }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (name, body) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
    let Ok(name) = std::str::from_utf8(name) else { return };
    match selector % 3 {
        0 => arbitrary_bytes(name, body),
        1 => sealed_plaintext(name, body),
        _ => document(name, body, selector),
    }
});

/// Bytes nobody sealed never open, whatever the name.
fn arbitrary_bytes(name: &str, bytes: &[u8]) {
    let k = keys();
    assert!(k.ring.open(name, bytes).is_err(), "arbitrary bytes opened as a record");
    assert!(open(&k.ring, name, bytes).is_err(), "arbitrary bytes loaded as a document");
}

/// A plaintext sealed under the right key and name that is not the
/// document of that name is refused, and the reason does not repeat it.
fn sealed_plaintext(name: &str, plain: &[u8]) {
    let k = keys();
    let Ok(sealed) = k.ring.seal(name, 1, plain) else { return };
    match open(&k.ring, name, &sealed) {
        Ok(doc) => assert!(doc.name.as_str() == name && doc.revision == 1, "a document loaded under another name"),
        Err(OpenError::UnknownKey(_)) => panic!("the current key is not known"),
        Err(OpenError::Bad(reason)) => no_plaintext_in(&reason, name),
    }
}

/// Sealed under the right name and key, only two reasons remain, and neither
/// holds anything from the content but a line and a column.
fn no_plaintext_in(reason: &str, name: &str) {
    if reason == "record content does not match its name or revision" || SecretName::parse_stored(name).is_err() {
        return;
    }
    let rest = reason
        .strip_prefix("record content is not a secret document (invalid JSON or an unexpected field at line ")
        .and_then(|r| r.strip_suffix(')'))
        .expect("a reason for refusing a record that is neither of the two");
    let position = rest.replace(" column ", "");
    assert!(position.chars().all(|c| c.is_ascii_digit()), "the reason for refusing a record repeats its content");
}

/// A document sealed by the store opens to itself under its name, with the
/// current or an older loaded key, and under nothing else.
fn document(name: &str, value: &[u8], selector: u8) {
    let Ok(parsed) = SecretName::parse_stored(name) else { return };
    let Ok(value) = std::str::from_utf8(value) else { return };
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut doc = SecretDoc::empty(parsed, now);
    if !value.is_empty() && doc.put(SecretValue::new(value), SecretMeta::defaults(now), None, now, 4).is_err() {
        return;
    }
    let k = keys();
    let sealed = seal(&k.ring, &doc).expect("a document seals");
    let same = |d: &SecretDoc| serde_json::to_vec(d).ok() == serde_json::to_vec(&doc).ok();
    assert!(open(&k.ring, name, &sealed).is_ok_and(|d| same(&d)), "seal → open is not the same document");
    assert!(open(&k.rotated, name, &sealed).is_ok_and(|d| same(&d)), "an older loaded key does not open it");
    assert!(matches!(open(&k.other, name, &sealed), Err(OpenError::UnknownKey(_))), "opened without its key");
    let other = format!("{name}x");
    assert!(open(&k.ring, &other, &sealed).is_err(), "a record opened under another name");
    let mut flipped = sealed.clone();
    let at = usize::from(selector) * 7 % flipped.len();
    flipped[at] ^= 1 << (selector % 8);
    assert!(open(&k.ring, name, &flipped).is_err(), "a changed byte went unnoticed");
}
