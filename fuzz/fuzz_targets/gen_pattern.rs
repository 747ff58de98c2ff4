//! `gen:` patterns: a pattern that parses expands within the output limit,
//! the same randomness gives the same value, and text outside `[...]`
//! groups comes out as written.
#![no_main]

use aegis_core::generate::{expand, pattern_of, GenError, Pattern, MAX_OUTPUT_BYTES};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let Some((seed, rest)) = data.split_first_chunk::<8>() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let seed = u64::from_le_bytes(*seed);
    let pattern = match Pattern::parse(text) {
        Ok(p) => p,
        Err(GenError::TooLong { len }) => {
            assert!(len > MAX_OUTPUT_BYTES, "TooLong under the limit");
            return;
        }
        Err(_) => return,
    };
    let a = pattern.expand(&mut StdRng::seed_from_u64(seed));
    let b = pattern.expand(&mut StdRng::seed_from_u64(seed));
    assert!(a == b, "the same randomness gave two values");
    assert!(a.len() <= MAX_OUTPUT_BYTES, "an expansion over the output limit");
    if !text.contains('[') {
        assert!(a == text, "a pattern without groups is its own value");
    }
    let via = expand(text, &mut StdRng::seed_from_u64(seed)).expect("expand agrees with Pattern::parse");
    assert!(via == a, "expand and Pattern::expand differ");
    let prefixed = format!("gen:{text}");
    assert_eq!(pattern_of(&prefixed), Some(text), "pattern_of strips gen:");
});
