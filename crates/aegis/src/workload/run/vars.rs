//! From a JSON object secret to environment variables.
//!
//! A key's variable name is `--prefix` + key, or the target of its `--rename`.
//! Every name must match `[A-Za-z_][A-Za-z0-9_]*`; messages list the offending
//! key names and never a value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aegis_core::api::WorkloadSecret;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::exit::{CliError, FAILURE};
use crate::workload::delivery::object_entries;

/// Exit code for a bad command line (as clap uses).
const USAGE: u8 = 2;

/// Variables for the command, sorted by name; values are wiped on drop and never printed.
pub struct Environment(Vec<(String, Zeroizing<String>)>);

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "Environment({names:?}, values redacted)")
    }
}

/// Same names and values; values are compared in constant time.
impl PartialEq for Environment {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((n1, v1), (n2, v2))| n1 == n2 && bool::from(v1.as_bytes().ct_eq(v2.as_bytes())))
    }
}

impl Eq for Environment {}

impl Environment {
    /// Name and value pairs.
    pub fn iter(&self) -> impl Iterator<Item = &(String, Zeroizing<String>)> {
        self.0.iter()
    }

    /// How many variables.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// How keys become variable names.
#[derive(Debug)]
pub struct Naming {
    prefix: String,
    renames: BTreeMap<String, String>,
}

/// Parses `KEY=NAME` (for clap).
pub fn parse_rename(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, name)) if !key.is_empty() && valid_name(name) => Ok((key.to_owned(), name.to_owned())),
        _ => Err(format!(
            "'{s}' is not KEY=NAME with NAME a variable name ([A-Za-z_][A-Za-z0-9_]*), e.g. db-password=DB_PASSWORD"
        )),
    }
}

/// Whether `name` is a portable environment variable name.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Naming {
    /// Checks the prefix and the renames.
    pub fn new(prefix: &str, renames: &[(String, String)]) -> Result<Self, CliError> {
        if !prefix.is_empty() && !valid_name(prefix) {
            return Err(CliError::new(
                USAGE,
                format!("--prefix '{prefix}' cannot start a variable name; use letters, digits and '_', not starting with a digit"),
            ));
        }
        let mut map = BTreeMap::new();
        for (key, name) in renames {
            if map.insert(key.clone(), name.clone()).is_some() {
                return Err(CliError::new(USAGE, format!("--rename gives key {key:?} more than one name")));
            }
        }
        Ok(Self { prefix: prefix.to_owned(), renames: map })
    }

    fn name_of(&self, key: &str) -> String {
        self.renames.get(key).cloned().unwrap_or_else(|| format!("{}{key}", self.prefix))
    }

    /// The variables for `secret`, or an error naming the keys that cannot be variables.
    pub fn environment(&self, secret: &WorkloadSecret) -> Result<Environment, CliError> {
        let entries = object_entries(secret).map_err(|e| {
            CliError::new(FAILURE, format!("{e}; `aegis run` turns each key of a JSON object into a variable"))
        })?;
        let (mut bad, mut nul, mut seen, mut clash) = (Vec::new(), Vec::new(), BTreeSet::new(), BTreeSet::new());
        let mut vars = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let name = self.name_of(&key);
            if !valid_name(&name) {
                bad.push(key);
            } else if value.contains('\0') {
                nul.push(key);
            } else {
                if !seen.insert(name.clone()) {
                    clash.insert(name.clone());
                }
                vars.push((name, value));
            }
        }
        check(secret.version, &bad, &nul, &clash)?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Environment(vars))
    }
}

/// Turns the problems found into one message (key names only).
fn check(version: u64, bad: &[String], nul: &[String], clash: &BTreeSet<String>) -> Result<(), CliError> {
    let list = |keys: &mut dyn Iterator<Item = &String>| keys.map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    let mut problems = Vec::new();
    if !bad.is_empty() {
        let example = bad.first().map(|k| format!(" (e.g. --rename {k}={})", suggest(k))).unwrap_or_default();
        problems.push(format!(
            "these keys are not valid environment variable names ([A-Za-z_][A-Za-z0-9_]*) with the prefix and renames \
             given: {}; give them names with --rename KEY=NAME{example}",
            list(&mut bad.iter())
        ));
    }
    if !nul.is_empty() {
        problems.push(format!(
            "the values of these keys hold a NUL byte, which no environment can carry: {}",
            list(&mut nul.iter())
        ));
    }
    if !clash.is_empty() {
        problems.push(format!(
            "several keys would set the same variable: {}; change --rename or --prefix",
            list(&mut clash.iter())
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(CliError::new(FAILURE, format!("cannot use the secret (version {version}): {}", problems.join("; "))))
}

/// A variable name close to `key`, for the hint.
fn suggest(key: &str) -> String {
    let mut s: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aegis_core::secret::SecretValue;

    fn secret(data: &str) -> WorkloadSecret {
        WorkloadSecret {
            name: "app".into(),
            version: 2,
            revision: 5,
            data: SecretValue::new(data),
            updated: String::new(),
        }
    }

    fn pairs(e: &Environment) -> Vec<(String, String)> {
        e.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
    }

    #[test]
    fn names_come_from_prefix_and_renames() {
        let n = Naming::new("APP_", &[("db-pass".into(), "DB_PASS".into())]).unwrap();
        let e = n.environment(&secret(r#"{"user":"al","db-pass":"pw","port":5432,"on":true}"#)).unwrap();
        assert_eq!(
            pairs(&e),
            vec![
                ("APP_on".into(), "true".into()),
                ("APP_port".into(), "5432".into()),
                ("APP_user".into(), "al".into()),
                ("DB_PASS".into(), "pw".into())
            ]
        );
    }

    #[test]
    fn debug_shows_names_not_values_and_equality_needs_both() {
        let n = Naming::new("", &[]).unwrap();
        let e = n.environment(&secret(r#"{"USER":"al","PASS":"s3cr3t"}"#)).unwrap();
        let shown = format!("{e:?}");
        assert!(shown.contains("PASS") && !shown.contains("s3cr3t") && !shown.contains("al\""), "{shown}");
        assert_eq!(e, n.environment(&secret(r#"{"PASS":"s3cr3t","USER":"al"}"#)).unwrap());
        assert_ne!(e, n.environment(&secret(r#"{"USER":"al","PASS":"s3cr3u"}"#)).unwrap());
        assert_ne!(e, n.environment(&secret(r#"{"USER":"al"}"#)).unwrap());
    }

    #[test]
    fn bad_names_are_listed_without_values() {
        let n = Naming::new("", &[]).unwrap();
        let e = n.environment(&secret(r#"{"ok":"v1","bad-key":"s3cr3t-a","9lives":"s3cr3t-b"}"#)).unwrap_err();
        assert!(e.message.contains(r#""9lives", "bad-key""#), "{}", e.message);
        assert!(e.message.contains("--rename 9lives=_9LIVES"), "{}", e.message);
        assert!(!e.message.contains("s3cr3t"), "{}", e.message);
        let e = n.environment(&secret(r#"{"A":"x\u0000y"}"#)).unwrap_err();
        assert!(e.message.contains("NUL") && e.message.contains("\"A\""), "{}", e.message);
        let e = n.environment(&secret("plain s3cr3t")).unwrap_err();
        assert!(e.message.contains("not a JSON object") && !e.message.contains("s3cr3t"), "{}", e.message);
        let n = Naming::new("", &[("B".into(), "A".into())]).unwrap();
        let e = n.environment(&secret(r#"{"A":"1","B":"2"}"#)).unwrap_err();
        assert!(e.message.contains("same variable: \"A\""), "{}", e.message);
    }

    #[test]
    fn flags_are_checked() {
        assert!(Naming::new("9_", &[]).is_err());
        assert!(Naming::new("", &[("a".into(), "X".into()), ("a".into(), "Y".into())]).is_err());
        assert_eq!(parse_rename("a-b=A_B").unwrap(), ("a-b".into(), "A_B".into()));
        for bad in ["a", "=X", "a=", "a=1X", "a=B-C"] {
            assert!(parse_rename(bad).is_err(), "{bad}");
        }
        assert!(valid_name("_x1") && !valid_name("") && !valid_name("1x") && !valid_name("a.b"));
    }
}
