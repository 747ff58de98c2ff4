//! Names of secrets and workloads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// The longest secret or workload name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 253;

fn check_name(what: &'static str, s: &str) -> Result<(), InvalidInput> {
    let bad = |why: &str| InvalidInput::new(what, why.to_owned());
    if s.is_empty() {
        return Err(bad("must not be empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(bad(&format!("is {} bytes long; the limit is {MAX_NAME_LEN}", s.len())));
    }
    if s.contains('/') || s.contains('\\') {
        return Err(bad("must not contain '/' or '\\'"));
    }
    if s.contains("..") {
        return Err(bad("must not contain '..'"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    Ok(())
}

/// The name of a secret: also the workload name it belongs to, unless it
/// carries a `k8s:` or `raw:` prefix.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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
}

/// The name of the secret whose existence means "initialisation finished".
pub const KEYSTONE: &str = "vsecm-keystone";

impl SecretName {
    /// Parses a secret name: 1 to 253 bytes, no `/`, `\`, `..`, spaces or control characters.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        check_name("secret name", s)?;
        for prefix in ["k8s:", "raw:"] {
            if s.len() == prefix.len() && s == prefix {
                return Err(InvalidInput::new("secret name", format!("'{prefix}' needs a name after it")));
            }
        }
        Ok(Self(s.to_owned()))
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
        } else {
            SecretKind::Workload
        }
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
    /// Parses a workload name with the same rules as a secret name.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_vsecm_names() {
        for ok in ["billing", "k8s:db-credentials", "raw:token", KEYSTONE, "a.b_c-d"] {
            assert!(SecretName::parse(ok).is_ok(), "{ok}");
        }
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
            ("a/b", "'/'"),
            ("a\\b", "'/'"),
            ("..", "'..'"),
            ("a..b", "'..'"),
            ("a\nb", "control"),
            ("a b", "spaces"),
            ("k8s:", "needs a name"),
        ] {
            let err = SecretName::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
