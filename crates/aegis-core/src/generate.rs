//! `gen:` patterns: secret values generated from a template of literal text
//! and generator groups (see `docs/VSECM-COMPATIBILITY.md`, "`gen:` patterns").
//!
//! A pattern is the text after `gen:`. A generator group `[class]{n}` makes
//! `n` random characters from `class`; `[class]{min,max}` makes between `min`
//! and `max` of them (both inclusive). Everything else is copied as is, so
//! JSON such as `{"username":"admin-[a-z0-9]{6}"}` works unchanged.
//!
//! A class lists characters and ranges (`a-z0-9`, `A-Z`), plus `\w` (letters,
//! digits and [`SYMBOLS`]), `\d` (digits) and `\x` ([`SYMBOLS`]). A backslash
//! before any other character makes it literal (`\]`, `\-`, `\\`); a `-`
//! first or last in the class is literal. Each distinct character is equally
//! likely, however often it is listed.
//!
//! Unlike VSecM, which leaves anything that is not a well-formed group as
//! literal text, every `[` starts a group here and a malformed group is an
//! error: a typo such as `[a-z]{6` would otherwise become a predictable
//! "secret". Write `\[` for a literal `[` (outside a group, a backslash before
//! anything else stays a backslash, so JSON escapes survive). Counts are
//! bounded ([`MAX_GROUP_LEN`], [`MAX_OUTPUT_BYTES`]) and checked before any
//! randomness is drawn.
//!
//! Randomness comes from the caller's cryptographically secure generator and
//! is drawn with `gen_range`, which is uniform (no modulo bias).

use std::collections::BTreeSet;

use rand::Rng;

/// The prefix that marks a value as a pattern to expand.
pub const GEN_PREFIX: &str = "gen:";

/// The most characters one group may produce.
pub const MAX_GROUP_LEN: usize = 1024;

/// The longest expansion a pattern may produce, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The most distinct characters a class may hold.
pub const MAX_CLASS_CHARS: usize = 4096;

/// The symbols of `\x` and `\w`.
///
/// Chosen to need no quoting or escaping in JSON strings, URL user-info
/// (`postgres://user:PASSWORD@host`), `.env` files and shell words, and not
/// to be `,` or `:`, which VSecM's `<no value>` filter splits on. Characters
/// such as `"`, `\`, `$`, `` ` ``, `'`, `#`, `%`, `&`, `@`, `:`, `/`, `?`
/// and brackets are left out for those reasons; a pattern that needs them
/// can list them explicitly, e.g. `[!@#$%]{2}`.
pub const SYMBOLS: &str = "!+-.=_~";

const DIGITS: &str = "0123456789";
const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Returns the pattern of a `gen:` value, or `None` for an ordinary value.
pub fn pattern_of(value: &str) -> Option<&str> {
    value.strip_prefix(GEN_PREFIX)
}

/// Parses `pattern` and expands it with `rng`.
pub fn expand(pattern: &str, rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Result<String, GenError> {
    Ok(Pattern::parse(pattern)?.expand(rng))
}

/// Why a pattern was refused. Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenError {
    /// A `[` without its `]`.
    #[error("unclosed '[' at character {at}: a generator group is [class]{{n}}; write \\[ for a literal '['")]
    UnclosedClass {
        /// Where the group starts.
        at: usize,
    },
    /// `[]`.
    #[error("empty class in the group at character {at}")]
    EmptyClass {
        /// Where the group starts.
        at: usize,
    },
    /// `[^...]`.
    #[error("negated class in the group at character {at}: list the characters to use instead")]
    NegatedClass {
        /// Where the group starts.
        at: usize,
    },
    /// A range such as `z-a`.
    #[error("bad range in the group at character {at}: {why}")]
    BadRange {
        /// Where the group starts.
        at: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A class with more than [`MAX_CLASS_CHARS`] characters.
    #[error("the class of the group at character {at} has more than {MAX_CLASS_CHARS} characters")]
    ClassTooLarge {
        /// Where the group starts.
        at: usize,
    },
    /// A group without `{n}` or `{min,max}`.
    #[error("the group at character {at} must be followed by {{n}} or {{min,max}}; write \\[ for a literal '['")]
    MissingCount {
        /// Where the group starts.
        at: usize,
    },
    /// A malformed count.
    #[error("bad count for the group at character {at}: {why}")]
    BadCount {
        /// Where the group starts.
        at: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A count above [`MAX_GROUP_LEN`].
    #[error("the group at character {at} asks for more than {MAX_GROUP_LEN} characters")]
    CountTooLarge {
        /// Where the group starts.
        at: usize,
    },
    /// A pattern that could expand past [`MAX_OUTPUT_BYTES`].
    #[error("the pattern can expand to {len} bytes; the limit is {MAX_OUTPUT_BYTES}")]
    TooLong {
        /// The longest possible expansion, in bytes.
        len: usize,
    },
}

/// A parsed pattern, ready to expand any number of times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Group {
        /// Distinct characters, sorted.
        chars: Vec<char>,
        min: usize,
        max: usize,
    },
}

impl Pattern {
    /// Parses a pattern (the text after `gen:`).
    pub fn parse(pattern: &str) -> Result<Pattern, GenError> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            if c == '\\' && chars.get(i + 1) == Some(&'[') {
                literal.push('[');
                i += 2;
            } else if c == '[' {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                let (group, next) = parse_group(&chars, i)?;
                parts.push(group);
                i = next;
            } else {
                literal.push(c);
                i += 1;
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let pattern = Pattern { parts };
        match pattern.max_len() {
            len if len > MAX_OUTPUT_BYTES => Err(GenError::TooLong { len }),
            _ => Ok(pattern),
        }
    }

    /// The longest expansion possible, in bytes.
    fn max_len(&self) -> usize {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.len(),
                Part::Group { chars, max, .. } => {
                    let widest = chars.iter().map(|c| c.len_utf8()).max().unwrap_or(0);
                    max.saturating_mul(widest)
                }
            })
            .fold(0, usize::saturating_add)
    }

    /// Produces one value; every call draws fresh randomness from `rng`.
    pub fn expand(&self, rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> String {
        let mut out = String::with_capacity(self.max_len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Group { chars, min, max } => {
                    // Parsing guarantees a non-empty class; checked again
                    // because gen_range panics on an empty range.
                    if chars.is_empty() {
                        continue;
                    }
                    let count = rng.gen_range(*min..=*max);
                    for _ in 0..count {
                        if let Some(&c) = chars.get(rng.gen_range(0..chars.len())) {
                            out.push(c);
                        }
                    }
                }
            }
        }
        out
    }
}

/// Parses `[class]{count}` starting at the `[` at `start`; returns the
/// group and the index after it.
fn parse_group(chars: &[char], start: usize) -> Result<(Part, usize), GenError> {
    let at = start + 1;
    let (class, after_class) = parse_class(chars, start + 1, at)?;
    let (min, max, next) = parse_count(chars, after_class, at)?;
    let group = Part::Group { chars: class, min, max };
    Ok((group, next))
}

/// Parses a class body starting at `i` (after `[`); returns its characters
/// and the index after the closing `]`.
fn parse_class(chars: &[char], mut i: usize, at: usize) -> Result<(Vec<char>, usize), GenError> {
    if chars.get(i) == Some(&'^') {
        return Err(GenError::NegatedClass { at });
    }
    let mut set = BTreeSet::new();
    loop {
        match chars.get(i) {
            None => return Err(GenError::UnclosedClass { at }),
            Some(']') => break,
            Some(_) => i = class_item(chars, i, at, &mut set)?,
        }
        if set.len() > MAX_CLASS_CHARS {
            return Err(GenError::ClassTooLarge { at });
        }
    }
    if set.is_empty() {
        return Err(GenError::EmptyClass { at });
    }
    Ok((set.into_iter().collect(), i + 1))
}

/// One element of a class.
enum Item {
    Char(char),
    Set(&'static [&'static str]),
}

/// Reads one character or `\w`/`\d`/`\x` at `i`; returns it and the next index.
fn read_item(chars: &[char], i: usize, at: usize) -> Result<(Item, usize), GenError> {
    match (chars.get(i), chars.get(i + 1)) {
        (Some('\\'), Some('w')) => Ok((Item::Set(&[LETTERS, DIGITS, SYMBOLS]), i + 2)),
        (Some('\\'), Some('d')) => Ok((Item::Set(&[DIGITS]), i + 2)),
        (Some('\\'), Some('x')) => Ok((Item::Set(&[SYMBOLS]), i + 2)),
        (Some('\\'), Some(&c)) => Ok((Item::Char(c), i + 2)),
        (Some(&c), _) if c != '\\' => Ok((Item::Char(c), i + 1)),
        _ => Err(GenError::UnclosedClass { at }),
    }
}

/// Adds the item (or range) at `i` to `set`; returns the next index.
fn class_item(chars: &[char], i: usize, at: usize, set: &mut BTreeSet<char>) -> Result<usize, GenError> {
    let (item, next) = read_item(chars, i, at)?;
    let lo = match item {
        Item::Set(groups) => {
            set.extend(groups.iter().flat_map(|g| g.chars()));
            return Ok(next);
        }
        Item::Char(c) => c,
    };
    // A '-' makes a range unless it is the last thing in the class.
    let is_range = chars.get(next) == Some(&'-') && chars.get(next + 1).is_some_and(|&c| c != ']');
    if !is_range {
        set.insert(lo);
        return Ok(next);
    }
    let (Item::Char(hi), after) = read_item(chars, next + 1, at)? else {
        return Err(GenError::BadRange { at, why: "a range must end in a single character, not \\w, \\d or \\x" });
    };
    if hi < lo {
        return Err(GenError::BadRange { at, why: "its end comes before its start" });
    }
    if (u32::from(hi) - u32::from(lo)) as usize >= MAX_CLASS_CHARS {
        return Err(GenError::ClassTooLarge { at });
    }
    set.extend(lo..=hi);
    Ok(after)
}

/// Parses `{n}` or `{min,max}` at `i`; returns min, max and the next index.
fn parse_count(chars: &[char], i: usize, at: usize) -> Result<(usize, usize, usize), GenError> {
    if chars.get(i) != Some(&'{') {
        return Err(GenError::MissingCount { at });
    }
    let close = chars[i..]
        .iter()
        .position(|&c| c == '}')
        .map(|p| i + p)
        .ok_or(GenError::BadCount { at, why: "unclosed '{'" })?;
    let body: String = chars[i + 1..close].iter().collect();
    let (min, max) = match body.split_once(',') {
        Some((min, max)) => (count(min, at)?, count(max, at)?),
        None => {
            let n = count(&body, at)?;
            (n, n)
        }
    };
    if min > max {
        return Err(GenError::BadCount { at, why: "the minimum is greater than the maximum" });
    }
    Ok((min, max, close + 1))
}

/// Parses one count: digits only, at most [`MAX_GROUP_LEN`].
fn count(text: &str, at: usize) -> Result<usize, GenError> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(GenError::BadCount { at, why: "a count is written with digits only, as in {8} or {8,12}" });
    }
    match text.parse::<usize>() {
        Ok(n) if n <= MAX_GROUP_LEN => Ok(n),
        _ => Err(GenError::CountTooLarge { at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn gen(pattern: &str) -> String {
        expand(pattern, &mut rng()).unwrap()
    }

    fn all_in(s: &str, class: &str) -> bool {
        s.chars().all(|c| class.contains(c))
    }

    #[test]
    fn literal_text_is_copied() {
        assert_eq!(gen("hello"), "hello");
        assert_eq!(gen(r#"{"a":"b","c":{"d":\[1]}}"#), r#"{"a":"b","c":{"d":[1]}}"#);
        assert_eq!(gen(r#"a\"b\n ] } {"#), r#"a\"b\n ] } {"#);
        assert_eq!(gen(""), "");
    }

    #[test]
    fn escaped_bracket_is_literal() {
        assert_eq!(gen(r"\[x]{3}"), "[x]{3}");
        assert_eq!(gen(r"\\[x]{3}"), r"\[x]{3}");
    }

    #[test]
    fn ranges_make_exact_lengths() {
        let s = gen("[a-z0-9]{6}");
        assert_eq!(s.chars().count(), 6);
        assert!(all_in(&s, "abcdefghijklmnopqrstuvwxyz0123456789"), "{s}");
        let s = gen("[A-Z]{4}");
        assert_eq!(s.len(), 4);
        assert!(s.chars().all(|c| c.is_ascii_uppercase()), "{s}");
    }

    #[test]
    fn named_classes() {
        let word = format!("{LETTERS}{DIGITS}{SYMBOLS}");
        let s = gen(r"[\w]{64}");
        assert_eq!(s.len(), 64);
        assert!(all_in(&s, &word), "{s}");
        let s = gen(r"[\d]{4}");
        assert_eq!(s.len(), 4);
        assert!(all_in(&s, DIGITS), "{s}");
        let s = gen(r"[\x]{32}");
        assert_eq!(s.len(), 32);
        assert!(all_in(&s, SYMBOLS), "{s}");
    }

    #[test]
    fn symbols_are_safe_in_json_and_urls() {
        for c in SYMBOLS.chars() {
            assert!(!"\"\\$`'#%&@:/?,;<>()[]{}| ".contains(c), "{c}");
        }
    }

    #[test]
    fn min_max_counts_are_inclusive() {
        let pattern = Pattern::parse("[a]{2,5}").unwrap();
        let mut r = rng();
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let n = pattern.expand(&mut r).len();
            assert!((2..=5).contains(&n), "{n}");
            seen.insert(n);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        assert_eq!(gen("x[a]{0}y"), "xy");
        assert_eq!(gen("[a]{3,3}"), "aaa");
    }

    #[test]
    fn vsecm_init_example_yields_valid_json() {
        let pattern = r#"{"username":"admin-[a-z0-9]{6}","password":"[a-zA-Z0-9]{12}"}"#;
        let out = gen(pattern);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        let user = json["username"].as_str().unwrap();
        let suffix = user.strip_prefix("admin-").unwrap();
        assert_eq!(suffix.len(), 6);
        assert!(suffix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let pass = json["password"].as_str().unwrap();
        assert_eq!(pass.len(), 12);
        assert!(pass.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn same_seed_same_value_other_seed_other_value() {
        let pattern = r"[\w]{32}";
        assert_eq!(gen(pattern), gen(pattern));
        let other = expand(pattern, &mut StdRng::seed_from_u64(8)).unwrap();
        assert_ne!(gen(pattern), other);
    }

    #[test]
    fn each_distinct_character_is_equally_likely() {
        // "aab" lists 'a' twice; it must still be a fair coin.
        let s = gen("[aab]{1000}");
        let a = s.chars().filter(|&c| c == 'a').count();
        assert!((430..=570).contains(&a), "{a}");
    }

    #[test]
    fn class_escapes_and_literal_dashes() {
        assert_eq!(gen(r"[\]]{3}"), "]]]");
        assert_eq!(gen(r"[\\]{2}"), r"\\");
        assert!(all_in(&gen("[-a]{20}"), "-a"));
        assert!(all_in(&gen("[a-]{20}"), "-a"));
        assert!(all_in(&gen(r"[a\-z]{20}"), "-az"));
        assert!(all_in(&gen(r"[\d-]{20}"), "-0123456789"));
        assert!(all_in(&gen("[é-ë]{20}"), "éêë"));
    }

    #[test]
    fn malformed_patterns_say_what_and_where() {
        let cases = [
            ("abc[a-z", GenError::UnclosedClass { at: 4 }),
            (r"[a\", GenError::UnclosedClass { at: 1 }),
            ("x[]{3}", GenError::EmptyClass { at: 2 }),
            ("[^a]{2}", GenError::NegatedClass { at: 1 }),
            ("ab[a-z]", GenError::MissingCount { at: 3 }),
            ("[a-z] {3}", GenError::MissingCount { at: 1 }),
            ("[a]{3", GenError::BadCount { at: 1, why: "unclosed '{'" }),
            ("[a]{5,2}", GenError::BadCount { at: 1, why: "the minimum is greater than the maximum" }),
            ("[a]{2000}", GenError::CountTooLarge { at: 1 }),
            ("[a]{99999999999999999999999}", GenError::CountTooLarge { at: 1 }),
            ("[z-a]{2}", GenError::BadRange { at: 1, why: "its end comes before its start" }),
            ("[\u{0}-\u{10FFFF}]{2}", GenError::ClassTooLarge { at: 1 }),
        ];
        for (pattern, want) in cases {
            assert_eq!(Pattern::parse(pattern), Err(want), "{pattern:?}");
        }
        for bad in ["[a]{}", "[a]{x}", "[a]{ 3 }", "[a]{1,}", "[a]{-1}"] {
            assert!(matches!(Pattern::parse(bad), Err(GenError::BadCount { at: 1, .. })), "{bad}");
        }
        assert!(matches!(Pattern::parse(r"[a-\d]{2}"), Err(GenError::BadRange { .. })));
    }

    #[test]
    fn output_is_bounded_before_drawing() {
        let ok = r"[\w]{1024}".repeat(64);
        assert!(Pattern::parse(&ok).is_ok());
        let too_long = format!("{ok}x");
        assert_eq!(Pattern::parse(&too_long), Err(GenError::TooLong { len: MAX_OUTPUT_BYTES + 1 }));
        assert_eq!(Pattern::parse(&"é".repeat(40_000)), Err(GenError::TooLong { len: 80_000 }));
    }

    #[test]
    fn error_messages_name_the_position() {
        let err = Pattern::parse("abc[a-z").unwrap_err().to_string();
        assert!(err.contains("character 4") && err.contains(r"\["), "{err}");
        let err = Pattern::parse(r#"{"roles":["admin"]}"#).unwrap_err().to_string();
        assert!(err.contains("character 10") && err.contains("{n} or {min,max}"), "{err}");
        assert!(err.contains(r"\["), "{err}");
    }

    #[test]
    fn gen_prefix() {
        assert_eq!(pattern_of("gen:[a]{2}"), Some("[a]{2}"));
        assert_eq!(pattern_of("plain"), None);
        assert_eq!(pattern_of("GEN:x"), None);
    }
}
