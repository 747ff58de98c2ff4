//! Names of secrets and workloads.
//!
//! The rule (see "Secret names" in docs/SECURITY.md): 1 to [`MAX_NAME_LEN`]
//! bytes of ASCII letters, digits, `.`, `-` and `_` (the characters of a
//! SPIFFE path segment; Kubernetes names are a subset), after an optional
//! `k8s:` or `raw:` prefix. Not `.`, no `..`. Nothing is trimmed or rewritten:
//! a name that breaks the rule is refused with the character at fault.
//!
//! Names stored by older versions, which allowed more, are still loaded
//! ([`SecretName::parse_stored`]) so no secret vanishes on upgrade.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::InvalidInput;

/// The longest secret or workload name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 253;

/// The prefix of the store's records that hold policies (see `crate::policy`):
/// no request can give such a name (a `:` is allowed only in `k8s:` and `raw:`).
pub const POLICY_RECORD_PREFIX: &str = "policy:";

/// The prefixes with a meaning (VSecM's): the only place a `:` may appear.
pub const NAME_PREFIXES: [&str; 2] = ["k8s:", "raw:"];

/// What a name may hold, for error messages.
const ALLOWED: &str =
    "a name may hold only ASCII letters, digits, '.', '-' and '_', after an optional 'k8s:' or 'raw:' prefix";

/// Whether `c` may appear in a name (after its prefix).
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn check_len(what: &'static str, s: &str) -> Result<(), InvalidInput> {
    if s.is_empty() {
        return Err(InvalidInput::new(what, "must not be empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(InvalidInput::new(what, format!("is {} bytes long; the limit is {MAX_NAME_LEN}", s.len())));
    }
    Ok(())
}

/// The current rule, for names that are created or addressed.
fn check_name(what: &'static str, s: &str) -> Result<(), InvalidInput> {
    let bad = |why: String| InvalidInput::new(what, why);
    check_len(what, s)?;
    if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err(bad(format!(
            "'{}' starts or ends with whitespace; names are never trimmed: remove it",
            s.escape_debug()
        )));
    }
    let body = NAME_PREFIXES.iter().find_map(|p| s.strip_prefix(p)).unwrap_or(s);
    if body.is_empty() {
        return Err(bad(format!("'{s}' needs a name after it")));
    }
    let start = s.len() - body.len();
    if let Some((i, c)) = body.char_indices().find(|(_, c)| !is_name_char(*c)) {
        let at = start + i;
        return Err(bad(if c == ':' {
            format!(
                "':' at byte {at} of '{}' is not allowed: ':' may appear only in a 'k8s:' or 'raw:' prefix",
                s.escape_debug()
            )
        } else {
            format!(
                "character {c:?} (U+{:04X}) at byte {at} of '{}' is not allowed; {ALLOWED}",
                u32::from(c),
                s.escape_debug()
            )
        }));
    }
    if body == "." || body.contains("..") {
        return Err(bad(format!("'{s}' must not be '.' or contain '..'")));
    }
    Ok(())
}

/// The rule of older versions: what may already be stored.
fn check_stored(what: &'static str, s: &str) -> Result<(), InvalidInput> {
    let bad = |why: &str| InvalidInput::new(what, why.to_owned());
    check_len(what, s)?;
    if s.contains('/') || s.contains('\\') {
        return Err(bad("must not contain '/' or '\\'"));
    }
    if s.contains("..") {
        return Err(bad("must not contain '..'"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    if NAME_PREFIXES.contains(&s) {
        return Err(bad(&format!("'{s}' needs a name after it")));
    }
    Ok(())
}

/// The name of a secret: also the workload name it belongs to, unless it
/// carries a `k8s:` or `raw:` prefix.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct SecretName(String);

/// What kind of secret a name denotes (VSecM's special prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// An ordinary secret, readable by the workload of the same name.
    Workload,
    /// `k8s:<name>`: also written as a Kubernetes Secret.
    Kubernetes,
    /// `raw:<name>`: bound to no workload.
    Raw,
    /// `policy:<name>`: a policy record (see [`crate::policy`]), never a secret:
    /// no request names one, no listing or workload shows one.
    Policy,
}

/// The name of the secret whose existence means "initialisation finished".
pub const KEYSTONE: &str = "vsecm-keystone";

impl SecretName {
    /// Parses a secret name under the current rule (see the module docs).
    /// Every name that may be created; the error names the character at fault.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        check_name("secret name", s)?;
        Ok(Self(s.to_owned()))
    }

    /// Parses a name that older versions may have stored: 1 to 253 bytes, no
    /// `/`, `\`, `..`, spaces or control characters. Use it only for names read
    /// back from storage or to reach a secret that already exists, never to
    /// create one.
    pub fn parse_stored(s: &str) -> Result<Self, InvalidInput> {
        check_stored("secret name", s)?;
        Ok(Self(s.to_owned()))
    }

    /// Why this (stored) name breaks the current rule, if it does.
    pub fn current_rule_violation(&self) -> Option<InvalidInput> {
        check_name("secret name", &self.0).err()
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Which kind of secret this is.
    pub fn kind(&self) -> SecretKind {
        if self.0.starts_with("k8s:") {
            SecretKind::Kubernetes
        } else if self.0.starts_with("raw:") {
            SecretKind::Raw
        } else if self.0.starts_with(POLICY_RECORD_PREFIX) {
            SecretKind::Policy
        } else {
            SecretKind::Workload
        }
    }

    /// The store record of the policy named `policy` (already checked by
    /// `PolicyName::parse`; a name no request can give).
    pub(crate) fn policy_record(policy: &str) -> Self {
        Self(format!("{POLICY_RECORD_PREFIX}{policy}"))
    }

    /// The policy a policy record holds, by name.
    pub fn policy_name(&self) -> Option<&str> {
        self.0.strip_prefix(POLICY_RECORD_PREFIX)
    }

    /// The Kubernetes Secret name for a `k8s:` secret.
    pub fn kubernetes_name(&self) -> Option<&str> {
        self.0.strip_prefix("k8s:")
    }
}

impl TryFrom<String> for SecretName {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

/// Deserialising reads stored documents, so it accepts what older versions
/// stored ([`SecretName::parse_stored`]); requests parse names with
/// [`SecretName::parse`].
impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_stored(&s).map_err(serde::de::Error::custom)
    }
}

impl From<SecretName> for String {
    fn from(n: SecretName) -> String {
        n.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretName({})", self.0)
    }
}

/// The name of a workload, taken from its SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadName(String);

impl WorkloadName {
    /// Parses a workload name with the same rule as a secret name.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        check_name("workload name", s)?;
        Ok(Self(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The secret this workload may read.
    pub fn secret_name(&self) -> Result<SecretName, InvalidInput> {
        SecretName::parse(&self.0)
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadName({})", self.0)
    }
}

/// A Kubernetes namespace name (an RFC 1123 label): 1 to 63 lower-case
/// ASCII letters, digits or `-`, not starting or ending with `-`. Read back
/// (from a stored version) under the same rule, which every write has had.
///
/// `default`, the namespace of nearly every secret, is held without an
/// allocation of its own: a million secrets would otherwise carry a million
/// copies of the word.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Namespace(std::borrow::Cow<'static, str>);

/// Kubernetes' (and VSecM's) namespace when none is named.
const DEFAULT_NAMESPACE: &str = "default";

impl Default for Namespace {
    /// `default`, Kubernetes' (and VSecM's) namespace when none is named.
    fn default() -> Self {
        Self(std::borrow::Cow::Borrowed(DEFAULT_NAMESPACE))
    }
}

impl TryFrom<String> for Namespace {
    type Error = InvalidInput;

    fn try_from(s: String) -> Result<Self, InvalidInput> {
        Self::parse(&s)
    }
}

impl Namespace {
    /// Parses a namespace name; never trims.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if s == DEFAULT_NAMESPACE {
            Ok(Self::default())
        } else if ok {
            Ok(Self(std::borrow::Cow::Owned(s.to_owned())))
        } else {
            Err(InvalidInput::new(
                "namespace",
                format!(
                    "'{}': use 1 to 63 lower-case letters, digits or '-', not starting or ending with '-'",
                    s.escape_debug()
                ),
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets a set of namespaces be searched with a `&str` (the name Kubernetes reports).
impl std::borrow::Borrow<str> for Namespace {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<Namespace> for String {
    fn from(n: Namespace) -> String {
        n.0.into_owned()
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_namespace_is_held_without_a_copy_and_reads_like_any_other() {
        #![allow(clippy::unwrap_used)]
        let parsed = Namespace::parse("default").unwrap();
        assert!(matches!(parsed.0, std::borrow::Cow::Borrowed(_)), "'default' is not copied");
        assert_eq!(parsed, Namespace::default());
        let read: Namespace = serde_json::from_str("\"default\"").unwrap();
        assert!(matches!(read.0, std::borrow::Cow::Borrowed(_)), "a stored 'default' is not copied either");
        let other: Namespace = serde_json::from_str("\"payments\"").unwrap();
        assert_eq!(other.as_str(), "payments");
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"payments\"");
        assert_eq!(String::from(read), "default");
        assert!(serde_json::from_str::<Namespace>("\"Not-Valid\"").is_err());
    }

    #[test]
    fn accepts_vsecm_names() {
        for ok in [
            "billing",
            "k8s:db-credentials",
            "raw:token",
            KEYSTONE,
            "a.b_c-d",
            "Billing2",
            "-starts-with-dash",
            "_x",
            ".hidden",
            "raw:k8s",
            "k8s",
        ] {
            assert!(SecretName::parse(ok).is_ok(), "{ok}");
            assert!(WorkloadName::parse(ok).is_ok(), "{ok}");
        }
        let longest = "a".repeat(MAX_NAME_LEN);
        assert!(SecretName::parse(&longest).is_ok());
        assert_eq!(SecretName::parse("k8s:db").unwrap().kind(), SecretKind::Kubernetes);
        assert_eq!(SecretName::parse("raw:x").unwrap().kind(), SecretKind::Raw);
        assert_eq!(SecretName::parse("app").unwrap().kind(), SecretKind::Workload);
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for (bad, why) in [
            ("", "empty"),
            (long.as_str(), "limit"),
            ("a/b", "'/' (U+002F) at byte 1"),
            ("a\\b", "'\\\\' (U+005C)"),
            (".", "must not be '.'"),
            ("..", "contain '..'"),
            ("a..b", "contain '..'"),
            ("k8s:..", "contain '..'"),
            ("a\nb", "U+000A"),
            ("a b", "' ' (U+0020) at byte 1"),
            ("a?b", "'?' (U+003F) at byte 1"),
            ("a%41", "'%' (U+0025) at byte 1"),
            ("a#b", "U+0023"),
            ("a@b", "U+0040"),
            ("a+b", "U+002B"),
            ("a=b", "U+003D"),
            ("caf\u{e9}", "'\u{e9}' (U+00E9) at byte 3"),
            ("b\u{456}lling", "U+0456"),
            ("a:b", "':' may appear only in a 'k8s:' or 'raw:' prefix"),
            ("k8s:a:b", "':' at byte 5"),
            ("K8S:x", "':' at byte 3"),
            (":x", "':' at byte 0"),
            ("k8s:", "needs a name after it"),
            ("raw:", "needs a name after it"),
            (" billing", "never trimmed"),
            ("billing ", "never trimmed"),
            ("billing\t", "never trimmed"),
        ] {
            let err = SecretName::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.starts_with("invalid secret name: "), "{bad:?}: {err}");
        }
        let err = SecretName::parse("a?b").unwrap_err().to_string();
        assert!(err.contains("ASCII letters, digits, '.', '-' and '_'"), "{err}");
    }

    #[test]
    fn stored_names_of_older_versions_still_parse_and_are_flagged() {
        for old in ["a?b", "a%41", "caf\u{e9}", "a:b", "x@y", "."] {
            let n = SecretName::parse_stored(old).unwrap();
            assert!(n.current_rule_violation().is_some(), "{old}");
            let n: SecretName = serde_json::from_str(&serde_json::to_string(old).unwrap()).unwrap();
            assert_eq!(n.as_str(), old);
        }
        assert!(SecretName::parse("billing").unwrap().current_rule_violation().is_none());
        for never in ["a/b", "a b", "..", "a\nb", "", "k8s:"] {
            assert!(SecretName::parse_stored(never).is_err(), "{never:?}");
            assert!(serde_json::from_str::<SecretName>(&serde_json::to_string(never).unwrap()).is_err(), "{never:?}");
        }
    }

    #[test]
    fn current_rule_is_narrower_than_the_stored_rule() {
        // Every name that may be created can also be loaded again.
        for c in (0u8..=127).map(char::from) {
            let s = format!("a{c}b");
            if SecretName::parse(&s).is_ok() {
                assert!(SecretName::parse_stored(&s).is_ok(), "{s:?}");
            }
        }
    }

    #[test]
    fn namespaces_are_rfc1123_labels() {
        for ok in ["default", "vsecm-system", "a", "0", &"n".repeat(63)] {
            assert_eq!(Namespace::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "Bad", "a b", "-a", "a-", "a.b", "a_b", " default", &"n".repeat(64)] {
            let e = Namespace::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid namespace") && e.contains("1 to 63"), "{e}");
        }
        assert_eq!(Namespace::default().as_str(), "default");
    }

    #[test]
    fn namespaces_are_read_back_under_the_same_rule() {
        let ns: Vec<Namespace> = serde_json::from_str(r#"["default","apps"]"#).unwrap();
        assert_eq!(serde_json::to_string(&ns).unwrap(), r#"["default","apps"]"#);
        let e = serde_json::from_str::<Namespace>(r#""Apps""#).unwrap_err().to_string();
        assert!(e.contains("invalid namespace") && e.contains("'Apps'"), "{e}");
    }
}
