//! `gen:` patterns: literal text with generator groups such as `[a-z0-9]{6}`.
//!
//! A group is `[CLASS]{N}` or `[CLASS]{MIN,MAX}` (inclusive). A class holds
//! characters and ranges (`a-z0-9_`) and the shorthands `\w` (letters, digits
//! and symbols), `\d` (digits) and `\x` (symbols). Everything outside a group
//! is copied as is, so JSON braces pass through. Randomness comes from the
//! caller (the CLI passes the OS CSPRNG) and is drawn uniformly.

use rand::{CryptoRng, Rng, RngCore};

/// The most characters one group may produce.
pub const MAX_GROUP: usize = 1024;
/// The longest output.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Symbols of `\x` (and part of `\w`): no quotes, backslash or backtick, so values stay safe in JSON and shells.
pub const SYMBOLS: &str = "!#$%&()*+,-./:;<=>?@[]^_{|}~";

/// A malformed pattern, with the byte position of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why} at position {pos}")]
pub struct GenError {
    /// What is wrong.
    pub why: String,
    /// Byte offset in the pattern.
    pub pos: usize,
}

fn err(why: impl Into<String>, pos: usize) -> GenError {
    GenError { why: why.into(), pos }
}

fn class(spec: &str, start: usize) -> Result<Vec<char>, GenError> {
    let chars: Vec<char> = spec.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1), chars.get(i + 2)) {
            ('\\', Some('w'), _) => {
                out.extend(('a'..='z').chain('A'..='Z').chain('0'..='9').chain(SYMBOLS.chars()));
                i += 2;
            }
            ('\\', Some('d'), _) => {
                out.extend('0'..='9');
                i += 2;
            }
            ('\\', Some('x'), _) => {
                out.extend(SYMBOLS.chars());
                i += 2;
            }
            ('\\', other, _) => {
                return Err(err(format!("unknown escape \\{}", other.copied().unwrap_or(' ')), start + i))
            }
            (lo, Some('-'), Some(&hi)) => {
                if lo > hi {
                    return Err(err(format!("range {lo}-{hi} is backwards"), start + i));
                }
                out.extend(lo..=hi);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(err("empty character class", start));
    }
    Ok(out)
}

fn count(spec: &str, pos: usize) -> Result<(usize, usize), GenError> {
    let num = |s: &str| s.trim().parse::<usize>().map_err(|_| err(format!("'{{{spec}}}' is not a count"), pos));
    let (min, max) = match spec.split_once(',') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(spec)?, num(spec)?),
    };
    if min > max {
        return Err(err(format!("count range {{{spec}}} is backwards"), pos));
    }
    if max > MAX_GROUP {
        return Err(err(format!("a group may produce at most {MAX_GROUP} characters"), pos));
    }
    Ok((min, max))
}

/// Expands a pattern (the text after `gen:`).
pub fn expand(pattern: &str, rng: &mut (impl RngCore + CryptoRng)) -> Result<String, GenError> {
    let mut out = String::new();
    let mut rest = pattern;
    let mut pos = 0;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find(']').ok_or_else(|| err("'[' without a closing ']'", pos + open))?;
        let chars = class(&after[..close], pos + open + 1)?;
        let tail = &after[close + 1..];
        let brace_pos = pos + open + close + 2;
        let spec_end = tail
            .strip_prefix('{')
            .and_then(|t| t.find('}'))
            .ok_or_else(|| err("a group needs a count such as {8} after ']'", brace_pos))?;
        let (min, max) = count(&tail[1..spec_end + 1], brace_pos)?;
        let n = rng.gen_range(min..=max);
        for _ in 0..n {
            out.push(chars[rng.gen_range(0..chars.len())]);
        }
        if out.len() > MAX_OUTPUT {
            return Err(err(format!("the output would exceed {MAX_OUTPUT} bytes"), pos + open));
        }
        let consumed = open + 1 + close + 1 + spec_end + 2;
        pos += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn groups_have_the_right_length_and_classes() {
        let out = expand("admin-[a-z0-9]{6}", &mut rng()).unwrap();
        assert!(out.starts_with("admin-") && out.len() == 12);
        assert!(out[6..].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let d = expand(r"[\d]{40}", &mut rng()).unwrap();
        assert!(d.len() == 40 && d.chars().all(|c| c.is_ascii_digit()));
        let x = expand(r"[\x]{30}", &mut rng()).unwrap();
        assert!(x.chars().all(|c| SYMBOLS.contains(c)));
        let r = expand("[A-Z]{2,5}", &mut rng()).unwrap();
        assert!((2..=5).contains(&r.len()) && r.chars().all(|c| c.is_ascii_uppercase()));
    }

    #[test]
    fn vsecm_init_example_yields_json() {
        let out = expand(r#"{"username":"admin-[a-z0-9]{6}","password":"[a-zA-Z0-9]{12}"}"#, &mut rng()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["password"].as_str().unwrap().len(), 12);
        assert!(v["username"].as_str().unwrap().starts_with("admin-"));
    }

    #[test]
    fn inclusive_range_reaches_both_ends() {
        let mut r = rng();
        let lens: std::collections::HashSet<usize> =
            (0..200).map(|_| expand("[a]{1,3}", &mut r).unwrap().len()).collect();
        assert_eq!(lens, [1, 2, 3].into_iter().collect());
    }

    #[test]
    fn malformed_patterns_say_where() {
        for (p, why) in [
            ("abc[a-z", "closing"),
            ("[a-z]", "needs a count"),
            ("[a-z]{x}", "not a count"),
            ("[a-z]{5,2}", "backwards"),
            ("[z-a]{2}", "backwards"),
            ("[]{2}", "empty"),
            ("[a]{5000}", "at most"),
            (r"[\q]{2}", "unknown escape"),
        ] {
            let e = expand(p, &mut rng()).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("position"), "{p}: {e}");
        }
    }
}
