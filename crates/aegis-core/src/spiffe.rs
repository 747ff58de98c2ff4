//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`.

use std::fmt;
use std::str::FromStr;

use crate::error::InvalidInput;

/// A syntactically valid SPIFFE ID (see the SPIFFE ID specification).
///
/// The trust domain is lower-case letters, digits, `.`, `-` and `_`; the path
/// is made of non-empty segments of letters, digits, `.`, `-` and `_`, none of
/// them `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    text: String,
    td_end: usize,
}

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;

impl SpiffeId {
    /// Parses a SPIFFE ID, rejecting anything the specification forbids.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let bad = |why: &str| InvalidInput::new("SPIFFE ID", why);
        if s.len() > MAX_LEN {
            return Err(bad("is longer than 2048 bytes"));
        }
        let rest = s.strip_prefix(SCHEME).ok_or_else(|| bad("must start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(bad("has an empty trust domain"));
        }
        if !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
            return Err(bad("trust domain may hold only a-z, 0-9, '.', '-' and '_'"));
        }
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() || seg == "." || seg == ".." {
                    return Err(bad("path segments must be non-empty and not '.' or '..'"));
                }
                if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                    return Err(bad("path may hold only letters, digits, '.', '-', '_' and '/'"));
                }
            }
        }
        Ok(Self { text: s.to_owned(), td_end: SCHEME.len() + td.len() })
    }

    /// The trust domain name, e.g. `vsecm.com`.
    pub fn trust_domain(&self) -> &str {
        &self.text[SCHEME.len()..self.td_end]
    }

    /// The path, starting with `/` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.text[self.td_end..]
    }

    /// The whole ID as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vsecm_ids() {
        let id = SpiffeId::parse("spiffe://vsecm.com/workload/billing/ns/default/sa/billing/n/pod-1").unwrap();
        assert_eq!(id.trust_domain(), "vsecm.com");
        assert_eq!(id.path(), "/workload/billing/ns/default/sa/billing/n/pod-1");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "http://vsecm.com/x",
            "spiffe://",
            "spiffe:///x",
            "spiffe://VSECM.com/x",
            "spiffe://vsecm.com//x",
            "spiffe://vsecm.com/../x",
            "spiffe://vsecm.com/x/",
            "spiffe://vsecm.com/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
