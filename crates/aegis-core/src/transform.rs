//! VSecM transformations: what a workload sees, computed from the stored
//! value, an optional Go `text/template` and an output [`Format`].
//!
//! The steps follow VSecM 0.28.1 (see `docs/VSECM-COMPATIBILITY.md`, "Transformations"):
//!
//! 1. The value is trimmed. If there is a non-empty template and the value is
//!    a JSON object, the template runs with that object as `.`; if parsing or
//!    running it fails, the trimmed value is kept.
//! 2. Fields the template could not fill come out as `<no value>` (Go's text
//!    for a missing map key, which `gtmpl` reproduces). As in VSecM, the
//!    output is split at commas and the `key:<no value>` segments (the text
//!    after the first colon is exactly `<no value>`) are dropped; a quoted
//!    `"<no value>"`, as in a JSON template, is kept, so `{"USER":"{{.u}}"}`
//!    without `u` delivers `{"USER":"<no value>"}` exactly as VSecM does.
//! 3. `json`: the result if it is a JSON object, else the trimmed value.
//!    `yaml`: a JSON object result becomes YAML as Go's `gopkg.in/yaml.v3`
//!    writes it (ending with its line break), anything else is returned as
//!    is. `raw`: the result as is.
//!
//! Where Aegis differs from VSecM on purpose (each is a VSecM bug that no
//! client can depend on):
//!
//! - JSON numbers reach the template as integers when they are integers, so
//!   `{{.id}}` prints `12345678`, not Go's float64 `1.2345678e+07`; the same
//!   holds in YAML output (fractions and exponents are written as yaml.v3
//!   writes a float64).
//! - VSecM drops every comma-separated segment of the template output that
//!   has no colon, so a template such as `{{.password}}` yields an empty
//!   string; Aegis keeps such segments.
//!
//! Templates run on `gtmpl`, a Rust port of Go's `text/template`. It differs
//! from Go in places (its `printf` follows Rust's formatting; arrays and maps
//! print in Rust's debug form), and it hangs, panics or overflows the stack
//! on some inputs, so a few constructs are refused (see
//! [`validate_template`]). A stored template that is refused, fails or makes
//! the engine panic leaves the value untouched.
//!
//! Every render runs within a [`Budget`]: template size, output size, steps
//! (actions, range iterations, function calls) and bytes of values copied,
//! plus the fixed bounds on nesting ([`MAX_NESTING`]), declarations
//! ([`MAX_DECLARATIONS`]), `printf` widths ([`MAX_PRINTF_SIZE`]) and data
//! references per action ([`MAX_ACTION_REFERENCES`]). All are counted, none
//! is a time, so a template fits on every machine under any load or on none.
//! A template over its budget is an error, never a fallback to the value:
//! see [`transform`]. At most [`Budget::max_parallel_renders`] renders run
//! at once in the process.
//!
//! The intermediate copies of the value made here (parsed JSON, template
//! engine values) are not zeroized; the caller owns the returned `String`.
//!
//! One job per submodule: `template` (the guards, parsing and rendering),
//! `budget` (what one render may cost), `work` (bytes copied, renders at
//! once), `format` (the json/yaml/raw
//! selection) and `yaml` (the yaml.v3-compatible writer).

mod budget;
mod format;
mod gofmt;
mod template;
mod work;
mod yaml;

pub use budget::{
    Budget, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_PARALLEL_RENDERS, DEFAULT_MAX_STEPS, DEFAULT_MAX_TEMPLATE_BYTES,
    DEFAULT_MAX_WORK_BYTES, MAX_ACTION_REFERENCES, MAX_DECLARATIONS, MAX_NESTING, MAX_PRINTF_SIZE,
};
pub use format::Format;
pub use template::{validate_template, Template, TemplateError};

use template::apply_template;

/// Computes what a workload sees for `value` under `template` and `format`,
/// exactly as described in the module documentation, within `budget`.
///
/// Within the budget this never fails: when the template does not parse or
/// fails to run, the (trimmed) value is used, as VSecM does. A template over
/// its budget (see [`Budget`] and [`validate_template`]) is an error: its
/// output is unknown, and serving the raw value instead could hand out
/// fields the template was meant to leave out.
pub fn transform(
    value: &str,
    template: Option<&Template>,
    format: Format,
    budget: &Budget,
) -> Result<String, TemplateError> {
    let value = value.trim();
    let rendered = match template {
        Some(t) => apply_template(value, t.as_str(), budget)?,
        None => None,
    };
    let result = rendered.as_deref().unwrap_or(value);
    Ok(format::select(format, value, result))
}

/// Parses `text` as a JSON object; anything else (arrays, strings, invalid
/// JSON) is `None`.
fn parse_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transformation under the default budget, which these inputs fit.
    pub(super) fn tf(value: &str, template: Option<&str>, format: Format) -> String {
        let template = template.map(Template::unchecked);
        transform(value, template.as_ref(), format, &Budget::default()).unwrap()
    }

    pub(super) const CREDS: &str = r#"{"username": "admin", "password": "VSecMRocks!"}"#;
    pub(super) const TEMPLATE: &str = r#"{"USR":"{{.username}}", "PWD":"{{.password}}"}"#;

    // The "Known outputs" table of docs/VSECM-COMPATIBILITY.md, one test per row.

    #[test]
    fn known_json_without_template_is_the_value_verbatim() {
        assert_eq!(tf(CREDS, None, Format::Json), CREDS);
    }

    #[test]
    fn known_yaml_without_template() {
        assert_eq!(tf(CREDS, None, Format::Yaml), "password: VSecMRocks!\nusername: admin\n");
    }

    #[test]
    fn known_json_with_template() {
        assert_eq!(tf(CREDS, Some(TEMPLATE), Format::Json), r#"{"USR":"admin", "PWD":"VSecMRocks!"}"#);
    }

    #[test]
    fn known_yaml_with_template() {
        assert_eq!(tf(CREDS, Some(TEMPLATE), Format::Yaml), "PWD: VSecMRocks!\nUSR: admin\n");
    }

    #[test]
    fn known_yaml_quotes_leading_star() {
        let value = r#"{"username": "*root*", "password": "*CasHC0w*"}"#;
        let template = r#"{"USERNAME":"{{.username}}", "PASSWORD":"{{.password}}"}"#;
        assert_eq!(tf(value, Some(template), Format::Yaml), "PASSWORD: '*CasHC0w*'\nUSERNAME: '*root*'\n");
    }

    #[test]
    fn known_invalid_json_is_the_value_verbatim() {
        let value = "not json: {";
        for template in [None, Some(TEMPLATE), Some("{{.x}}")] {
            assert_eq!(tf(value, template, Format::Json), value);
            assert_eq!(tf(value, template, Format::Yaml), value);
        }
    }

    #[test]
    fn value_is_trimmed() {
        assert_eq!(tf("  secret \n", None, Format::Raw), "secret");
        assert_eq!(tf("\n{\"a\":\"b\"}\n", None, Format::Json), "{\"a\":\"b\"}");
        let padded = format!("\n {CREDS} \t");
        assert_eq!(tf(&padded, Some(TEMPLATE), Format::Raw), r#"{"USR":"admin", "PWD":"VSecMRocks!"}"#);
    }

    #[test]
    fn empty_template_means_none() {
        assert_eq!(tf(CREDS, Some(""), Format::Json), CREDS);
    }
}
