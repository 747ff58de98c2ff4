//! A Go-compatible template and YAML engine, with no I/O: Go's
//! `text/template` on `gtmpl` behind guards and a counted [`Budget`], and a
//! YAML writer that writes what Go's `gopkg.in/yaml.v3` writes.
//!
//! It knows nothing of secrets or of VSecM: `aegis-core` (its
//! `transform` module) decides when a template runs and what a workload
//! sees. This crate only answers "what does Go print for this template over
//! this JSON object" and "what does yaml.v3 write for this object".
//!
//! Templates run on `gtmpl`, a Rust port of Go's `text/template`. It differs
//! from Go in places (its `printf` follows Rust's formatting; arrays and maps
//! print in Rust's debug form; it truncates some floats), and it hangs,
//! panics or overflows the stack on some inputs. So every template is first
//! walked lexically (refusing what the engine cannot run safely, see
//! [`validate_template`]) and rewritten so that Aegis's own functions print,
//! format, compare and range as Go does and count every step. JSON numbers
//! reach the template as integers when they are integers, so `{{.id}}`
//! prints `12345678`, not Go's float64 `1.2345678e+07`.
//!
//! Every render runs within a [`Budget`]: template size, output size, steps
//! (actions, range iterations, function calls) and bytes of values copied,
//! plus the fixed bounds on nesting ([`MAX_NESTING`]), declarations
//! ([`MAX_DECLARATIONS`]), `printf` widths ([`MAX_PRINTF_SIZE`]) and data
//! references per action ([`MAX_ACTION_REFERENCES`]). All are counted, none
//! is a time, so a template fits on every machine under any load or on none.
//! At most [`Budget::max_parallel_renders`] renders run at once in the
//! process.
//!
//! The intermediate copies of the value made here (parsed JSON, template
//! engine values) are not zeroized; the caller owns the returned `String`.
//!
//! One job per module: `template` (the guards, parsing and rendering),
//! `budget` (what one render may cost, and Aegis's functions that count it),
//! `gofmt` (Go's `fmt` verbs and value printing), `work` (bytes copied,
//! renders at once) and `yaml` (the yaml.v3-compatible writer).

mod budget;
mod gofmt;
mod template;
mod work;
mod yaml;

pub use budget::{
    Budget, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_PARALLEL_RENDERS, DEFAULT_MAX_STEPS, DEFAULT_MAX_TEMPLATE_BYTES,
    DEFAULT_MAX_WORK_BYTES, MAX_ACTION_REFERENCES, MAX_DECLARATIONS, MAX_NESTING, MAX_PRINTF_SIZE, NO_VALUE,
};
pub use template::{apply_template, check_template, check_template_size, validate_template, TemplateError};
pub use yaml::to_yaml;

/// Parses `text` as a JSON object; anything else (arrays, strings, invalid
/// JSON) is `None`. A template runs only over an object.
pub fn parse_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// What the tests of this crate share: rendering as a workload with the
/// `raw` format sees it, without the dropping of `<no value>` fields (that
/// is `aegis-core`'s, as VSecM does it).
#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const TEMPLATE: &str = r#"{"USR":"{{.username}}", "PWD":"{{.password}}"}"#;

    /// The trimmed `value` under `template` within `budget`: the rendered
    /// text, or the value when the template does not run.
    pub(crate) fn render(value: &str, template: &str, budget: &Budget) -> Result<String, TemplateError> {
        let value = value.trim();
        Ok(apply_template(value, template, budget)?.unwrap_or_else(|| value.to_owned()))
    }

    /// [`render`] under the default budget, which these inputs fit.
    pub(crate) fn tf(value: &str, template: &str) -> String {
        render(value, template, &Budget::default()).unwrap()
    }

    /// The YAML written for `json`, a JSON object.
    pub(crate) fn yaml(json: &str) -> String {
        to_yaml(&parse_object(json.trim()).unwrap())
    }

    #[test]
    fn only_objects_are_parsed() {
        assert!(parse_object(r#"{"a":1}"#).is_some());
        for other in ["[1]", "\"a\"", "1", "null", "{", ""] {
            assert!(parse_object(other).is_none(), "{other}");
        }
    }
}
