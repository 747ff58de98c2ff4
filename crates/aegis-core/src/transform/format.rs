//! The output formats: [`Format`] and how each one shapes the result.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// The output format of a secret, as VSecM's `-f` flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON object, or the value itself when the result is not one.
    #[default]
    Json,
    /// YAML converted from a JSON object result, keys sorted.
    Yaml,
    /// The template output (or the value) untouched.
    Raw,
}

impl Format {
    /// Reads a format the way VSecM does: `yaml` and `raw` (any case,
    /// surrounding spaces ignored) are themselves, anything else is JSON.
    pub fn parse_lenient(s: &str) -> Format {
        match s.trim().to_ascii_lowercase().as_str() {
            "yaml" => Format::Yaml,
            "raw" => Format::Raw,
            _ => Format::Json,
        }
    }

    /// Reads a format strictly (the native API): `json`, `yaml` or `raw`, in
    /// any case; anything else is an error naming the choices.
    pub fn parse_strict(s: &str) -> Result<Format, InvalidInput> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            "raw" => Ok(Format::Raw),
            _ => Err(InvalidInput::new(
                "format",
                format!("unknown format '{}': use json, yaml or raw", s.escape_debug()),
            )),
        }
    }

    /// The lowercase name used on the wire: `json`, `yaml` or `raw`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Raw => "raw",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a workload sees in `format`, given the trimmed `value` and the
/// template's `result` (the value itself when there is no template output),
/// borrowed from them unless YAML is made.
#[cfg(feature = "transform")]
pub(super) fn select<'a>(format: Format, value: &'a str, result: &'a str) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    match format {
        // Both JSON cases below give the value then: nothing to parse.
        Format::Json if result == value => Cow::Borrowed(value),
        Format::Json if aegis_gotmpl::parse_object(result).is_some() => Cow::Borrowed(result),
        Format::Json => Cow::Borrowed(value),
        Format::Yaml => match aegis_gotmpl::parse_object(result) {
            Some(object) => Cow::Owned(aegis_gotmpl::to_yaml(&object)),
            None => Cow::Borrowed(result),
        },
        Format::Raw => Cow::Borrowed(result),
    }
}

#[cfg(test)]
#[cfg(feature = "transform")]
mod tests {
    use super::*;
    use crate::transform::tests::{tf, CREDS};

    #[test]
    fn format_parses_leniently() {
        assert_eq!(Format::parse_lenient("yaml"), Format::Yaml);
        assert_eq!(Format::parse_lenient(" YAML "), Format::Yaml);
        assert_eq!(Format::parse_lenient("Raw"), Format::Raw);
        assert_eq!(Format::parse_lenient("json"), Format::Json);
        assert_eq!(Format::parse_lenient("xml"), Format::Json);
        assert_eq!(Format::parse_lenient(""), Format::Json);
        assert_eq!(Format::default(), Format::Json);
    }

    #[test]
    fn format_parses_strictly_on_request() {
        assert_eq!(Format::parse_strict("YAML"), Ok(Format::Yaml));
        assert_eq!(Format::parse_strict("raw"), Ok(Format::Raw));
        assert_eq!(Format::parse_strict("json"), Ok(Format::Json));
        for bad in ["xml", "", " json"] {
            let e = Format::parse_strict(bad).unwrap_err().to_string();
            assert!(e.contains("unknown format") && e.contains("json, yaml or raw"), "{e}");
        }
    }

    #[test]
    fn format_names_and_serde() {
        for f in [Format::Json, Format::Yaml, Format::Raw] {
            assert_eq!(f.to_string(), f.as_str());
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.as_str()));
            assert_eq!(serde_json::from_str::<Format>(&json).unwrap(), f);
        }
        assert!(serde_json::from_str::<Format>("\"xml\"").is_err());
    }

    #[test]
    fn json_format_falls_back_to_the_value_when_the_result_is_no_object() {
        let value = r#"{"user":"admin"}"#;
        assert_eq!(tf(value, Some("{{.user}}"), Format::Json), value);
        assert_eq!(tf(value, Some("[\"{{.user}}\"]"), Format::Json), value);
    }

    #[test]
    fn yaml_format_returns_a_non_object_result_as_is() {
        let value = r#"{"user":"admin"}"#;
        assert_eq!(tf(value, Some("user={{.user}}"), Format::Yaml), "user=admin");
        assert_eq!(tf("plain", None, Format::Yaml), "plain");
        assert_eq!(tf("[1, 2]", None, Format::Yaml), "[1, 2]");
    }

    #[test]
    fn raw_format_returns_the_result_untouched() {
        assert_eq!(tf(CREDS, None, Format::Raw), CREDS);
        let template = "user={{.username}}\npass={{.password}}";
        assert_eq!(tf(CREDS, Some(template), Format::Raw), "user=admin\npass=VSecMRocks!");
    }
}
