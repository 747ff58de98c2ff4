//! Property tests for the invariants the fuzz targets check (see `fuzz/`):
//! record file names and the sealed record of a secret document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue};
use aegis_core::SecretName;
use aegis_crypto::{Keyring, RootKey};
use aegis_store::record::{open, seal, OpenError};
use aegis_store::{file_name, name_header, name_of_file, read_name_header};
use proptest::prelude::*;
use time::OffsetDateTime;

proptest! {
    /// Every name maps to a file name that stays in the data directory, is
    /// not hidden, fits common file systems and decodes back to the name
    /// (through the header for hashed names).
    #[test]
    fn file_names_round_trip(name in "\\PC{1,120}") {
        let file = file_name(&name);
        prop_assert!(file.len() <= 255 && file.ends_with(".rec"));
        prop_assert!(!file.contains('/') && !file.starts_with('.'));
        if file.starts_with('=') {
            let header = name_header(&name).unwrap();
            prop_assert_eq!(read_name_header(&mut header.as_slice()).unwrap(), name);
        } else {
            prop_assert_eq!(name_of_file(&file), Some(name));
        }
    }
}

fn rings() -> &'static (Keyring, Keyring) {
    static RINGS: OnceLock<(Keyring, Keyring)> = OnceLock::new();
    RINGS.get_or_init(|| (Keyring::new(Arc::new(RootKey::generate())), Keyring::new(Arc::new(RootKey::generate()))))
}

fn doc(name: &str, values: &[String]) -> SecretDoc {
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut doc = SecretDoc::empty(SecretName::parse_stored(name).unwrap(), now);
    for v in values {
        doc.put(SecretValue::new(v.as_str()), SecretMeta::defaults(now), None, now, 3).unwrap();
    }
    doc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A sealed document opens to itself under its own name and key only,
    /// and not once any byte is changed.
    #[test]
    fn records_open_only_with_their_name_and_key(
        name in "[a-z][a-z0-9-]{0,30}",
        values in proptest::collection::vec("\\PC{1,40}", 0..4),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (ring, other) = rings();
        let doc = doc(&name, &values);
        let sealed = seal(ring, &doc).unwrap();
        let opened = open(ring, &name, &sealed).unwrap();
        prop_assert_eq!(serde_json::to_vec(&opened).unwrap(), serde_json::to_vec(&doc).unwrap());
        prop_assert!(matches!(open(other, &name, &sealed), Err(OpenError::UnknownKey(_))));
        let renamed = format!("{name}x");
        prop_assert!(open(ring, &renamed, &sealed).is_err());
        let mut changed = sealed.clone();
        changed[flip.index(sealed.len())] ^= 1 << bit;
        prop_assert!(open(ring, &name, &changed).is_err());
    }
}
