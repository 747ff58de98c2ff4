//! The secret document VSecM 0.28's Safe keeps in each `<name>.age` file (after
//! age decryption), for importing a VSecM data directory into Aegis.
//!
//! VSecM marshals its `SecretStored` with Go's `encoding/json`: `name`, `value`,
//! `valueTransformed`, `meta` (`namespaces`, `template`, `Format` — capitalised,
//! the field has no JSON tag — and `correlationId`), and the times `created`,
//! `updated`, `notBefore` and `expiresAfter` as RFC 3339 with nanoseconds.

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::secret::SecretValue;

/// One secret as VSecM stored it. `Debug` never shows the values.
#[derive(Debug, Deserialize)]
pub struct VsecmRecord {
    /// The secret's name (the workload's name, or `k8s:…`, `raw:…`).
    pub name: String,
    /// The raw value as the Sentinel sent it.
    #[serde(default)]
    pub value: SecretValue,
    /// Delivery metadata.
    #[serde(default)]
    pub meta: VsecmRecordMeta,
    /// When the secret was first written.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// When it was last written.
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
    /// Not valid before.
    #[serde(rename = "notBefore", with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Not valid after (VSecM's "never" is 9999-12-31T23:59:59.999999999Z).
    #[serde(rename = "expiresAfter", with = "time::serde::rfc3339")]
    pub expires_after: OffsetDateTime,
}

/// VSecM's `SecretMeta`.
#[derive(Debug, Default, Deserialize)]
pub struct VsecmRecordMeta {
    /// Kubernetes namespaces.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Go template, empty for none.
    #[serde(default)]
    pub template: String,
    /// `json`, `yaml`, `raw` or empty (VSecM writes the key capitalised).
    #[serde(default, rename = "Format")]
    pub format: String,
    /// VSecM's correlation id of the write (kept for the report only).
    #[serde(default, rename = "correlationId")]
    pub correlation_id: String,
}

/// Why a decrypted VSecM record is not usable.
#[derive(Debug, thiserror::Error)]
#[error("not a VSecM 0.28 secret document: {0}")]
pub struct RecordError(String);

impl VsecmRecord {
    /// Parses a decrypted record. Errors name the JSON problem (line, column,
    /// missing field), never the content.
    pub fn parse(json: &[u8]) -> Result<Self, RecordError> {
        let r: Self = serde_json::from_slice(json).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "a field is missing or has the wrong type",
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "it is not valid JSON",
                serde_json::error::Category::Io => "it could not be read",
            };
            RecordError(format!("{what} (line {}, column {})", e.line(), e.column()))
        })?;
        if r.name.is_empty() {
            return Err(RecordError("its name is empty".to_owned()));
        }
        Ok(r)
    }

    /// The namespaces, with VSecM's default `["default"]` when none are stored.
    pub fn namespaces(&self) -> Vec<String> {
        match &self.meta.namespaces {
            Some(n) if !n.is_empty() => n.clone(),
            _ => vec!["default".to_owned()],
        }
    }

    /// The template, trimmed (as VSecM runs it); `None` when blank.
    pub fn template(&self) -> Option<&str> {
        let t = self.meta.template.trim();
        (!t.is_empty()).then_some(t)
    }

    /// The format, `None` when empty (VSecM's default).
    pub fn format(&self) -> Option<&str> {
        (!self.meta.format.is_empty()).then_some(self.meta.format.as_str())
    }

    /// `never` when VSecM's expiry is its "never" (year 9999), else RFC 3339.
    pub fn expires_text(&self) -> String {
        if self.expires_after.year() >= 9999 {
            "never".to_owned()
        } else {
            rfc3339_nanos(self.expires_after)
        }
    }
}

/// RFC 3339 in UTC with the fraction VSecM stored (lossless for import).
pub fn rfc3339_nanos(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| "invalid-time".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOC: &str = r#"{"name":"billing","value":"TOPSECRET","valueTransformed":"TOPSECRET",
        "meta":{"namespaces":["default","apps"],"template":"","Format":"yaml","correlationId":"c1"},
        "created":"2026-11-28T07:43:34.123456789Z","updated":"2026-11-28T07:43:35Z",
        "notBefore":"2024-01-01T00:00:00Z","expiresAfter":"9999-12-31T23:59:59.999999999Z"}"#;

    #[test]
    fn parses_vsecm_shape() {
        let r = VsecmRecord::parse(DOC.as_bytes()).unwrap();
        assert_eq!(r.name, "billing");
        assert_eq!(r.value.expose(), "TOPSECRET");
        assert_eq!(r.namespaces(), ["default", "apps"]);
        assert_eq!(r.format(), Some("yaml"));
        assert_eq!(r.template(), None);
        assert_eq!(r.expires_text(), "never");
        assert_eq!(rfc3339_nanos(r.created), "2026-11-28T07:43:34.123456789Z");
        assert!(!format!("{r:?}").contains("TOPSECRET"));
    }

    #[test]
    fn errors_never_show_content() {
        let e = VsecmRecord::parse(br#"{"name":"x","value":"TOPSECRET"}"#).unwrap_err().to_string();
        assert!(e.contains("missing") && !e.contains("TOPSECRET"), "{e}");
        let e = VsecmRecord::parse(b"TOPSECRET").unwrap_err().to_string();
        assert!(e.contains("not valid JSON") && !e.contains("TOPSECRET"), "{e}");
    }

    #[test]
    fn defaults_when_meta_is_empty() {
        let doc = DOC.replace(r#""namespaces":["default","apps"]"#, r#""namespaces":null"#);
        let r = VsecmRecord::parse(doc.as_bytes()).unwrap();
        assert_eq!(r.namespaces(), ["default"]);
    }
}
