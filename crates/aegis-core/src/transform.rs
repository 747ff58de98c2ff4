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
//! The template and YAML engine is the `aegis-gotmpl` crate: its guards
//! (some constructs are refused, see [`validate_template`]), its [`Budget`]
//! (counted, never timed) and its YAML writer. A stored template that is
//! refused, fails or makes the engine panic leaves the value untouched; a
//! template over its budget is an error, never a fallback to the value: see
//! [`transform`].
//!
//! Without the `transform` feature (the SDK's build) this module holds only
//! the types a secret's metadata carries, [`Template`] (its text) and
//! [`Format`]; checking and rendering need the feature, which pulls in the
//! engine.
//!
//! One job per submodule: `template` (the checked template a secret
//! carries) and `format` (the json/yaml/raw selection).

mod format;
mod template;

pub use format::Format;
pub use template::Template;

#[cfg(feature = "transform")]
pub use aegis_gotmpl::{
    validate_template, Budget, TemplateError, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_PARALLEL_RENDERS,
    DEFAULT_MAX_STEPS, DEFAULT_MAX_TEMPLATE_BYTES, DEFAULT_MAX_WORK_BYTES, MAX_ACTION_REFERENCES, MAX_DECLARATIONS,
    MAX_NESTING, MAX_PRINTF_SIZE,
};

/// Computes what a workload sees for `value` under `template` and `format`,
/// exactly as described in the module documentation, within `budget`.
///
/// Within the budget this never fails: when the template does not parse or
/// fails to run, the (trimmed) value is used, as VSecM does. A template over
/// its budget (see [`Budget`] and [`validate_template`]) is an error: its
/// output is unknown, and serving the raw value instead could hand out
/// fields the template was meant to leave out.
///
/// Output that is (part of) the value itself is borrowed from it: the common
/// case, no template, costs no copy.
#[cfg(feature = "transform")]
pub fn transform<'a>(
    value: &'a str,
    template: Option<&Template>,
    format: Format,
    budget: &Budget,
) -> Result<std::borrow::Cow<'a, str>, TemplateError> {
    let value = value.trim();
    let rendered = match template {
        Some(t) => aegis_gotmpl::apply_template(value, t.as_str(), budget)?.map(drop_missing),
        None => None,
    };
    Ok(match rendered {
        Some(out) => std::borrow::Cow::Owned(format::select(format, value, &out).into_owned()),
        None => format::select(format, value, value),
    })
}

/// Drops the fields the template could not fill, as VSecM does.
///
/// VSecM splits the output at commas and keeps the segments whose text after
/// the first colon is not exactly `<no value>`: a bare `USER:<no value>` goes,
/// a quoted `"USER":"<no value>"` (any JSON template) stays, and so does
/// `USER: <no value>` with a space. Aegis does the same, so a workload gets
/// the bytes VSecM would deliver, with one deliberate difference: VSecM also
/// drops every segment without a colon, which empties output such as
/// `{{.password}}` or cuts a value holding a comma; Aegis keeps them. Output
/// without `<no value>` is returned untouched.
#[cfg(feature = "transform")]
fn drop_missing(rendered: String) -> String {
    if !rendered.contains(aegis_gotmpl::NO_VALUE) {
        return rendered;
    }
    rendered.split(',').filter(|segment| !is_missing_segment(segment)).collect::<Vec<_>>().join(",")
}

/// Whether a `key:value` segment holds a missing value: the text after its
/// first colon is exactly `<no value>`.
#[cfg(feature = "transform")]
fn is_missing_segment(segment: &str) -> bool {
    segment.split_once(':').is_some_and(|(_, value)| value == aegis_gotmpl::NO_VALUE)
}

#[cfg(test)]
#[cfg(feature = "transform")]
mod tests {
    use super::*;

    /// The transformation under the default budget, which these inputs fit.
    pub(super) fn tf(value: &str, template: Option<&str>, format: Format) -> String {
        let template = template.map(Template::unchecked);
        transform(value, template.as_ref(), format, &Budget::default()).unwrap().into_owned()
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

    // Fields the template could not fill, dropped as VSecM drops them.

    #[test]
    fn missing_keys_read_as_vsecm_delivers_them() {
        let value = r#"{"b":"x"}"#;
        let cases = [
            // A quoted `<no value>` is kept, as VSecM keeps it.
            (r#"{"USER":"{{.a}}"}"#, r#"{"USER":"<no value>"}"#),
            (r#"{"A":"{{.a}}","B":"{{.b}}"}"#, r#"{"A":"<no value>","B":"x"}"#),
            (r#"{"B":"{{.b}}", "A":"{{.a}}"}"#, r#"{"B":"x", "A":"<no value>"}"#),
            // A bare `key:<no value>` segment is dropped.
            (r#"{"B":"{{.b}}","A":{{.a}},"C":"{{.b}}"}"#, r#"{"B":"x","C":"x"}"#),
        ];
        for (template, want) in cases {
            assert_eq!(tf(value, Some(template), Format::Json), want, "{template}");
        }
    }

    #[test]
    fn template_output_without_missing_keys_keeps_its_formatting() {
        let value = r#"{"b":"x"}"#;
        let template = "{ \"B\" : \"{{.b}}\" ,\n \"N\": \"<no value> here\" }";
        let want = "{ \"B\" : \"x\" ,\n \"N\": \"<no value> here\" }";
        assert_eq!(tf(value, Some(template), Format::Json), want);
    }

    #[test]
    fn json_null_reads_as_missing() {
        let value = r#"{"a":null,"b":"x"}"#;
        assert_eq!(tf(value, Some("A:{{.a}},B:{{.b}}"), Format::Raw), "B:x");
        let template = r#"{"A":"{{.a}}","B":"{{.b}}"}"#;
        assert_eq!(tf(value, Some(template), Format::Json), r#"{"A":"<no value>","B":"x"}"#);
    }

    #[test]
    fn missing_keys_in_text_output_drop_only_bare_segments() {
        let value = r#"{"u":"admin"}"#;
        assert_eq!(tf(value, Some("USER:{{.u}},PASS:{{.p}}"), Format::Raw), "USER:admin");
        assert_eq!(tf(value, Some("PASS:{{.p}},USER:{{.u}}"), Format::Raw), "USER:admin");
        // VSecM compares the text after the colon exactly: a space or quotes keep it.
        assert_eq!(tf(value, Some("USER: {{.u}}, PASS: {{.p}}"), Format::Raw), "USER: admin, PASS: <no value>");
        assert_eq!(
            tf(value, Some(r#"USER:"{{.u}}","PASS":"{{.p}}""#), Format::Raw),
            r#"USER:"admin","PASS":"<no value>""#
        );
    }

    #[test]
    fn a_missing_key_in_yaml_output_is_kept_as_text() {
        let value = r#"{"u":"admin"}"#;
        let template = r#"{"USER":"{{.u}}","PASS":"{{.p}}"}"#;
        assert_eq!(tf(value, Some(template), Format::Yaml), "PASS: <no value>\nUSER: admin\n");
    }

    #[test]
    fn text_output_without_colons_is_kept() {
        // VSecM would return an empty string here.
        let value = r#"{"user":"admin","pass":"s3cr,et"}"#;
        assert_eq!(tf(value, Some("{{.pass}}"), Format::Raw), "s3cr,et");
        assert_eq!(tf(value, Some("{{.user}},{{.nope}}"), Format::Raw), "admin,<no value>");
    }
}
