//! What a `k8s:` secret becomes in Kubernetes: the `data` of its Secret.
//!
//! VSecM's rules (docs/KUBERNETES.md, "Data"):
//!
//! - no template: a value that is a JSON object of strings becomes one key
//!   per field; any other value becomes the single key `VALUE`;
//! - a template: it is applied to the value as workloads see it (the
//!   template code of [`aegis_core::transform`]), and its output, when it is a
//!   JSON object of strings, becomes the data; otherwise (the value is not a
//!   JSON object, or the template fails or yields something else) the rule
//!   without a template applies, as in VSecM.

use std::collections::BTreeMap;
use std::fmt;

use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::transform::{transform, Budget, Format};
use k8s_openapi::ByteString;

/// The key of a value that is not a JSON object of strings.
pub const VALUE_KEY: &str = "VALUE";

/// The longest key of a Kubernetes Secret.
const MAX_KEY_LEN: usize = 253;

/// The `data` of a Kubernetes Secret. Its `Debug` shows the keys only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretData(pub BTreeMap<String, ByteString>);

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData").field("keys", &self.0.keys().collect::<Vec<_>>()).finish()
    }
}

/// Why a secret cannot become a Kubernetes Secret. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The template is over the template budget.
    #[error("the template cannot be rendered: {0}")]
    Template(String),
    /// A key Kubernetes refuses. The key itself is never quoted: it comes
    /// from the value (or a template's output) and may be part of a secret.
    #[error(
        "key {position} of {count} (in alphabetical order; {len} bytes long) is not a valid Kubernetes Secret \
         key: {rule}; Kubernetes accepts 1 to 253 of letters, digits, '-', '_' and '.' (not '.' or '..' alone); \
         rename the field"
    )]
    BadKey {
        /// 1-based position among the keys, in alphabetical order.
        position: usize,
        /// How many keys there are.
        count: usize,
        /// The key's length in bytes.
        len: usize,
        /// Which rule it breaks.
        rule: &'static str,
    },
}

/// The data of the Secret for `value` under `meta`.
pub fn secret_data(value: &SecretValue, meta: &SecretMeta, budget: &Budget) -> Result<SecretData, DataError> {
    let raw = value.expose();
    let map = match meta.template.as_ref() {
        Some(template) => {
            let out = transform(raw, Some(template), Format::Raw, budget)
                .map_err(|e| DataError::Template(e.reason().to_owned()))?;
            match string_object(&out) {
                Some(map) => map,
                None => without_template(raw),
            }
        }
        None => without_template(raw),
    };
    let count = map.len();
    let bad = map.keys().enumerate().find_map(|(i, k)| key_rule_broken(k).map(|rule| (i + 1, k.len(), rule)));
    if let Some((position, len, rule)) = bad {
        return Err(DataError::BadKey { position, count, len, rule });
    }
    Ok(SecretData(map.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()))
}

fn without_template(raw: &str) -> BTreeMap<String, String> {
    if raw.is_empty() {
        return BTreeMap::new();
    }
    string_object(raw).unwrap_or_else(|| BTreeMap::from([(VALUE_KEY.to_owned(), raw.to_owned())]))
}

/// `text` as a JSON object whose values are all strings.
fn string_object(text: &str) -> Option<BTreeMap<String, String>> {
    serde_json::from_str(text).ok()
}

/// The rule of Kubernetes Secret keys that `k` breaks, if any (never the key).
fn key_rule_broken(k: &str) -> Option<&'static str> {
    if k.is_empty() {
        Some("it is empty")
    } else if k.len() > MAX_KEY_LEN {
        Some("it is longer than 253 bytes")
    } else if k == "." || k == ".." {
        Some("it is '.' or '..'")
    } else if !k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        Some("it holds a character other than letters, digits, '-', '_' and '.'")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(value: &str, template: Option<&str>) -> Result<BTreeMap<String, String>, DataError> {
        let mut meta = SecretMeta::defaults(time::OffsetDateTime::now_utc());
        meta.template = template.and_then(|t| aegis_core::transform::Template::parse(t).unwrap());
        let d = secret_data(&SecretValue::new(value), &meta, &Budget::default())?;
        Ok(d.0.into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect())
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_object_of_strings_becomes_one_key_per_field() {
        let d = data(r#"{"username": "admin", "password": "VSecMRocks!"}"#, None).unwrap();
        assert_eq!(d, map(&[("username", "admin"), ("password", "VSecMRocks!")]));
    }

    #[test]
    fn anything_else_is_the_single_key_value() {
        for v in ["plain text", r#"{"n": 1}"#, "[\"a\"]", "\"s\"", "{not json"] {
            assert_eq!(data(v, None).unwrap(), map(&[("VALUE", v)]), "{v}");
        }
    }

    #[test]
    fn a_template_output_object_becomes_the_data() {
        let d = data(
            r#"{"username": "admin", "password": "pw"}"#,
            Some(r#"{"USR":"{{.username}}", "PWD":"{{.password}}"}"#),
        )
        .unwrap();
        assert_eq!(d, map(&[("USR", "admin"), ("PWD", "pw")]));
    }

    #[test]
    fn a_template_that_yields_no_object_falls_back_to_the_rule_without_template() {
        assert_eq!(data(r#"{"a": "b"}"#, Some("{{.a}}")).unwrap(), map(&[("a", "b")]));
        assert_eq!(data("not json", Some(r#"{"X":"{{.a}}"}"#)).unwrap(), map(&[("VALUE", "not json")]));
    }

    #[test]
    fn keys_kubernetes_refuses_are_described_never_quoted() {
        let err = data(r#"{"a": "1", "bad key CANARY": "x"}"#, None).unwrap_err().to_string();
        assert!(err.contains("key 2 of 2") && err.contains("14 bytes long"), "{err}");
        assert!(err.contains("a character other than letters"), "{err}");
        assert!(!err.contains("CANARY") && !err.contains("\"x\""), "{err}");
        let long = format!(r#"{{"{}": "x"}}"#, "k".repeat(254));
        assert!(data(&long, None).unwrap_err().to_string().contains("longer than 253"));
        assert!(data(r#"{"..": "x"}"#, None).unwrap_err().to_string().contains("'.' or '..'"));
        assert!(data(r#"{"": "x"}"#, None).unwrap_err().to_string().contains("it is empty"));
        // From a template's output too.
        let err = data(r#"{"a": "b"}"#, Some(r#"{"CANARY key":"{{.a}}"}"#)).unwrap_err().to_string();
        assert!(!err.contains("CANARY"), "{err}");
    }

    #[test]
    fn debug_shows_keys_only() {
        let d = secret_data(
            &SecretValue::new(r#"{"user": "s3cr3t-value"}"#),
            &SecretMeta::defaults(time::OffsetDateTime::now_utc()),
            &Budget::default(),
        )
        .unwrap();
        let text = format!("{d:?}");
        assert!(text.contains("user") && !text.contains("s3cr3t"), "{text}");
    }
}
