//! The two patterns a policy is made of: which SPIFFE IDs, which secrets.
//!
//! A SPIFFE ID pattern is an exact ID (`spiffe://example.org/ns/a/sa/b`) or an
//! ID path followed by `/*` (`spiffe://example.org/ns/team-a/*`), which
//! matches every ID strictly below that path: one or more further segments.
//! `spiffe://example.org/*` matches every ID of the trust domain. A `*` is
//! allowed only as the whole last segment.
//!
//! A secret name pattern is an exact name (`team-a-db`, `k8s:team-a-tls`), a
//! name start followed by `*` (`team-a-*`, `k8s:*`), or `*` alone (every
//! secret, and the Safe itself for `admin` and `audit`). A `*` is allowed only
//! at the end.

use std::fmt;

use crate::error::InvalidInput;
use crate::name::{is_name_char, SecretName, MAX_NAME_LEN, NAME_PREFIXES};
use crate::spiffe::SpiffeId;

/// Which SPIFFE IDs a policy speaks of.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdPattern {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Every ID that starts with this text, which ends with `/`: the IDs below a path.
    Below(String),
}

impl IdPattern {
    /// Parses a pattern; the error names what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const WHAT: &str = "SPIFFE ID pattern";
        let bad = |why: String| InvalidInput::new(WHAT, why);
        if let Some(base) = s.strip_suffix("/*") {
            if base.contains('*') {
                return Err(bad(format!(
                    "'{}' may hold '*' only as its whole last segment, as in spiffe://example.org/ns/team-a/*",
                    s.escape_debug()
                )));
            }
            let id = SpiffeId::parse(base).map_err(|e| bad(format!("'{}' before its '/*': {e}", s.escape_debug())))?;
            return Ok(Self::Below(format!("{}/", id.as_str())));
        }
        if s.contains('*') {
            return Err(bad(format!(
                "'{}' may hold '*' only as its whole last segment, as in spiffe://example.org/ns/team-a/*",
                s.escape_debug()
            )));
        }
        SpiffeId::parse(s).map(Self::Exact).map_err(|e| bad(format!("'{}': {e}", s.escape_debug())))
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(x) => x == id,
            Self::Below(p) => id.as_str().len() > p.len() && id.as_str().starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => f.write_str(id.as_str()),
            Self::Below(p) => write!(f, "{p}*"),
        }
    }
}

impl fmt::Debug for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdPattern({self})")
    }
}

/// Which secrets a policy speaks of.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamePattern {
    /// Exactly this secret.
    Exact(SecretName),
    /// Every secret whose name starts with this text (never empty).
    Prefix(String),
    /// Every secret, and the Safe itself (`*`).
    All,
}

impl NamePattern {
    /// Parses a pattern; the error names what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const WHAT: &str = "secret name pattern";
        let bad = |why: String| InvalidInput::new(WHAT, why);
        if s == "*" {
            return Ok(Self::All);
        }
        if s.trim_end_matches('*').contains('*') || s.ends_with("**") {
            return Err(bad(format!("'{}' may hold '*' only at its end, as in team-a-*", s.escape_debug())));
        }
        let Some(start) = s.strip_suffix('*') else {
            return SecretName::parse(s).map(Self::Exact).map_err(|e| bad(format!("'{}': {e}", s.escape_debug())));
        };
        if start.len() >= MAX_NAME_LEN {
            return Err(bad(format!("'{}' is longer than a name can be ({MAX_NAME_LEN} bytes)", s.escape_debug())));
        }
        let body = NAME_PREFIXES.iter().find_map(|p| start.strip_prefix(p)).unwrap_or(start);
        if let Some(c) = body.chars().find(|c| !is_name_char(*c)) {
            let why = if c == '*' {
                "may hold '*' only at its end, as in team-a-*".to_owned()
            } else {
                format!(
                    "holds {c:?}, which no secret name can; a name holds ASCII letters, digits, '.', '-' and '_' after an optional 'k8s:' or 'raw:' prefix"
                )
            };
            return Err(bad(format!("'{}' {why}", s.escape_debug())));
        }
        if body.contains("..") {
            return Err(bad(format!("'{}' holds '..', which no secret name can", s.escape_debug())));
        }
        Ok(Self::Prefix(start.to_owned()))
    }

    /// Whether the secret `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(n) => n.as_str() == name,
            Self::Prefix(p) => name.starts_with(p.as_str()),
            Self::All => true,
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => f.write_str(n.as_str()),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::All => f.write_str("*"),
        }
    }
}

impl fmt::Debug for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NamePattern({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("valid id")
    }

    #[test]
    fn an_id_pattern_is_exact_or_below_a_path() {
        let below = IdPattern::parse("spiffe://example.org/ns/team-a/*").expect("parses");
        assert!(below.matches(&id("spiffe://example.org/ns/team-a/sa/x")));
        assert!(below.matches(&id("spiffe://example.org/ns/team-a/x")));
        assert!(!below.matches(&id("spiffe://example.org/ns/team-a")));
        assert!(!below.matches(&id("spiffe://example.org/ns/team-ab/x")));
        let domain = IdPattern::parse("spiffe://example.org/*").expect("parses");
        assert!(domain.matches(&id("spiffe://example.org/a")));
        assert!(!domain.matches(&id("spiffe://example.org")));
        assert!(!domain.matches(&id("spiffe://other.org/a")));
        let exact = IdPattern::parse("spiffe://example.org/a").expect("parses");
        assert!(exact.matches(&id("spiffe://example.org/a")));
        assert!(!exact.matches(&id("spiffe://example.org/a/b")));
        assert_eq!(below.to_string(), "spiffe://example.org/ns/team-a/*");
    }

    #[test]
    fn a_bad_id_pattern_is_refused_with_the_reason() {
        for (p, says) in [
            ("spiffe://example.org/ns/*/sa/x", "whole last segment"),
            ("spiffe://example.org/ns/team-*", "whole last segment"),
            ("https://example.org/a", "must start with spiffe://"),
            ("spiffe://Example.org/a", "trust domain"),
            ("spiffe://example.org//*", "non-empty"),
            ("*", "whole last segment"),
        ] {
            let e = IdPattern::parse(p).expect_err(p).to_string();
            assert!(e.contains(says), "{p}: {e}");
            assert!(e.starts_with("invalid SPIFFE ID pattern"), "{e}");
        }
    }

    #[test]
    fn a_name_pattern_is_exact_a_start_or_everything() {
        let p = NamePattern::parse("team-a-*").expect("parses");
        assert!(p.matches("team-a-db") && p.matches("team-a-") && !p.matches("team-b-db"));
        assert!(NamePattern::parse("k8s:*").expect("parses").matches("k8s:tls"));
        assert!(NamePattern::parse("*").expect("parses").matches("anything"));
        let exact = NamePattern::parse("db").expect("parses");
        assert!(exact.matches("db") && !exact.matches("db2"));
        for (p, says) in [
            ("team-*-db", "only at its end"),
            ("a b*", "' '"),
            ("", "must not be empty"),
            ("te/am*", "'/'"),
            ("..*", "'..'"),
            ("policy:x", "':'"),
        ] {
            let e = NamePattern::parse(p).expect_err(p).to_string();
            assert!(e.contains(says), "{p}: {e}");
        }
    }
}
