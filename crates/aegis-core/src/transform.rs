//! VSecM transformations: what a workload sees, computed from the stored
//! value, an optional Go `text/template` and an output [`Format`].
//!
//! The steps follow VSecM 0.28.1 (see `docs/VSECM-COMPATIBILITY.md`, "Transformations"):
//!
//! 1. The value is trimmed. If there is a non-empty template and the value is
//!    a JSON object, the template runs with that object as `.`; if parsing or
//!    running it fails, the trimmed value is kept.
//! 2. Fields the template could not fill come out as `<no value>` (Go's text
//!    for a missing map key, which `gtmpl` reproduces) and are dropped: from
//!    a JSON object result, the members whose value is `<no value>`; from any
//!    other text, the comma-separated `key:<no value>` segments.
//! 3. `json`: the result if it is a JSON object, else the trimmed value.
//!    `yaml`: a JSON object result becomes YAML as Go's `gopkg.in/yaml.v3`
//!    writes it, anything else is returned as is. `raw`: the result as is.
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
//! - The YAML document does not end with the line break yaml.v3 adds after
//!   the last line; line breaks that belong to a value are kept.
//!
//! Templates run on `gtmpl`, a Rust port of Go's `text/template`. It differs
//! from Go in places (its `printf` follows Rust's formatting; arrays and maps
//! print in Rust's debug form), and it hangs, panics or overflows the stack
//! on some inputs, so a few constructs are refused (see
//! [`validate_template`]). A stored template that is refused, fails or makes
//! the engine panic leaves the value untouched.
//!
//! Every render runs within a [`Budget`]: output size, steps (actions, range
//! iterations, function calls) and time, plus the fixed bounds on nesting
//! ([`MAX_NESTING`]), `printf` widths ([`MAX_PRINTF_SIZE`]) and data
//! references per action ([`MAX_ACTION_REFERENCES`]). A template over its
//! budget is an error, never a fallback to the value: see [`transform`].
//!
//! The intermediate copies of the value made here (parsed JSON, template
//! engine values) are not zeroized; the caller owns the returned `String`.

use std::fmt;

use serde::{Deserialize, Serialize};

mod budget;

pub use budget::{
    Budget, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_STEPS, DEFAULT_MAX_TIME, DEFAULT_MAX_TIME_MS, MAX_ACTION_REFERENCES,
    MAX_NESTING, MAX_PRINTF_SIZE,
};

/// The text Go's `text/template` (and `gtmpl`) prints for a missing value.
const NO_VALUE: &str = "<no value>";

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

/// A template that is refused: Go's `text/template` syntax (as `gtmpl`
/// parses it) rejects it, the engine cannot run it safely, or it is over its
/// [`Budget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    reason: String,
    over_budget: bool,
}

impl TemplateError {
    fn new(reason: String) -> Self {
        TemplateError { reason, over_budget: false }
    }

    fn budget(reason: String) -> Self {
        TemplateError { reason, over_budget: true }
    }

    /// The explanation of what is wrong (never a value).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the template exceeds a bound of its budget (output, steps,
    /// time, nesting, printf size, references per action) rather than being
    /// malformed.
    pub fn is_over_budget(&self) -> bool {
        self.over_budget
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.over_budget {
            write!(f, "template over budget: {}", self.reason)
        } else {
            write!(
                f,
                "invalid template: {}; the template uses Go text/template syntax, e.g. {{{{.username}}}}",
                self.reason
            )
        }
    }
}

impl std::error::Error for TemplateError {}

/// Checks that `template` parses and stays inside the static bounds of its
/// budget, so a bad template is refused when a secret is written instead of
/// being silently ignored when it is read. Whether it runs within the budget
/// depends on the value: [`transform`] tells.
///
/// An empty template is valid and means "no template". Besides syntax
/// errors, these are refused: named templates (`define`, `block`,
/// `template`, which can recurse until the stack overflows), line breaks
/// inside an action, non-ASCII characters inside an action outside quoted
/// strings, nesting deeper than [`MAX_NESTING`], more than
/// [`MAX_ACTION_REFERENCES`] data references in one action and `printf`
/// widths or precisions above [`MAX_PRINTF_SIZE`].
pub fn validate_template(template: &str) -> Result<(), TemplateError> {
    if template.is_empty() {
        return Ok(());
    }
    let scanned = check_actions(template)?;
    with_stack(scanned.depth, || parse_template(&scanned).map(drop))?
}

/// A template after the lexical checks: rewritten with a step before each
/// action, and how deep it nests.
struct Scanned {
    text: String,
    depth: usize,
}

/// Nesting up to this depth is parsed and run on the caller's thread; deeper
/// templates (up to [`MAX_NESTING`]) on a thread with [`DEEP_STACK_BYTES`].
const INLINE_NESTING: usize = 12;

/// The stack of the thread that parses and runs deeply nested templates.
const DEEP_STACK_BYTES: usize = 16 * 1024 * 1024;

/// Runs `f` here, or on a thread with a stack known to be large enough for
/// `depth` levels of `gtmpl`'s recursion.
fn with_stack<T: Send>(depth: usize, f: impl FnOnce() -> T + Send) -> Result<T, TemplateError> {
    if depth <= INLINE_NESTING {
        return Ok(f());
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("aegis-template".to_owned())
            .stack_size(DEEP_STACK_BYTES)
            .spawn_scoped(s, f)
            .ok()
            .and_then(|h| h.join().ok())
            .ok_or_else(|| TemplateError::budget("no thread could be started to run the template".to_owned()))
    })
}

/// Parses a checked template, keeping `gtmpl` away from the inputs that hang
/// it or crash the process: it loops forever (and grows memory) when the text
/// ends inside an action, panics on non-ASCII text in an action, and
/// overflows the stack on recursive named templates or deep nesting.
fn parse_template(scanned: &Scanned) -> Result<gtmpl::Template, TemplateError> {
    // A trailing comment closes an action left open by a case check_actions
    // misjudged, so the lexer always ends; it renders nothing otherwise.
    let guarded = format!("{}{{{{/* */}}}}", scanned.text);
    // A last line of defence: a gtmpl panic we did not foresee becomes an
    // error instead of taking the caller down.
    let _quiet = quiet::Quiet::enter();
    std::panic::catch_unwind(move || {
        let mut parsed = gtmpl::Template::default();
        parsed.add_funcs(budget::FUNCS);
        parsed.parse(guarded).map(|()| parsed).map_err(|e| TemplateError::new(strip_step(&e.to_string())))
    })
    .map_err(|_| TemplateError::new("the template engine failed on this template".to_owned()))?
}

/// Parse errors quote the text around the error, which now holds the step calls.
fn strip_step(message: &str) -> String {
    message
        .replace(&format!("{{{{{STEP}}}}}", STEP = budget::STEP_FUNC), "")
        .replace(&format!("{{{{- {STEP}}}}}", STEP = budget::STEP_FUNC), "")
}

/// A writer that fails once `limit` bytes are written, which stops `gtmpl`.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("template output limit reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a parsed template within `budget`: `Ok(None)` when it fails (or the
/// engine panics), an error when it exceeds the budget.
fn render(parsed: &gtmpl::Template, data: gtmpl::Value, budget: &Budget) -> Result<Option<String>, TemplateError> {
    let context = gtmpl::Context::from(data);
    let meter = budget::Metered::start(*budget);
    let mut out = Capped { out: Vec::new(), limit: budget.max_output_bytes, over: false };
    let ran = {
        let _quiet = quiet::Quiet::enter();
        let run = std::panic::AssertUnwindSafe(|| parsed.execute(&mut out, &context).is_ok());
        std::panic::catch_unwind(run)
    };
    if let Some(why) = meter.exceeded() {
        return Err(TemplateError::budget(why));
    }
    if out.over {
        return Err(TemplateError::budget(budget.output_exceeded()));
    }
    Ok(match ran {
        Ok(true) => String::from_utf8(out.out).ok(),
        _ => None,
    })
}

/// A quiet panic hook for the template engine: a panic inside `gtmpl` is
/// caught (and the template treated as failing), so the default hook's
/// message, and with `RUST_BACKTRACE` set its backtrace, would only be noise
/// (and the message could quote template data). While a template is parsed
/// or run on a thread, a panic there prints one line with the engine's source
/// location and nothing else; every other panic goes to the hook that was
/// installed before, unchanged.
mod quiet {
    use std::cell::Cell;
    use std::sync::Once;

    thread_local! {
        static ACTIVE: Cell<bool> = const { Cell::new(false) };
    }

    static INSTALL: Once = Once::new();

    /// Marks this thread as running the template engine until dropped.
    pub(super) struct Quiet(bool);

    impl Quiet {
        pub(super) fn enter() -> Self {
            INSTALL.call_once(|| {
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    if ACTIVE.with(Cell::get) {
                        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                        eprintln!("aegis: the template engine panicked{at}; the template is treated as failing");
                    } else {
                        previous(info);
                    }
                }));
            });
            Quiet(ACTIVE.with(|a| a.replace(true)))
        }
    }

    impl Drop for Quiet {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
}

/// Walks the actions (`{{ ... }}`) the way `gtmpl`'s lexer does, refuses the
/// ones it cannot handle and the ones over the static bounds (nesting,
/// references, printf sizes), and puts a step before each action; syntax is
/// left to the parser.
fn check_actions(template: &str) -> Result<Scanned, TemplateError> {
    let mut text = String::with_capacity(template.len() + template.len() / 2);
    // The nesting each open block adds: 1, plus 1 per `else if` of its chain.
    let mut blocks: Vec<usize> = Vec::new();
    let mut open = 0usize;
    let mut deepest = 0usize;
    let mut offset = 0;
    // Characters before `offset`, counted as the walk goes (not from the
    // start for every action, which is quadratic in the template's length).
    let mut counted = 0usize;
    while let Some(found) = template[offset..].find("{{") {
        let start = offset + found;
        let at = counted + template[offset..start].chars().count() + 1;
        let mut body = &template[start + 2..];
        let mut trim = false;
        if let Some(trimmed) = body.strip_prefix("- ") {
            // gtmpl miscounts the bytes to trim after a multi-byte character.
            let before = template[offset..start].trim_end();
            if before.chars().next_back().is_some_and(|c| !c.is_ascii()) {
                return Err(TemplateError::new(format!(
                    "a {{{{- trim marker right after a non-ASCII character is not supported (the action at character {at})"
                )));
            }
            body = trimmed;
            trim = true;
        }
        let action = action_len(body, at)?;
        check_keyword(body).map_err(|why| TemplateError::new(format!("{why} (the action at character {at})")))?;
        if action.references > MAX_ACTION_REFERENCES {
            return Err(TemplateError::budget(format!(
                "the action at character {at} refers to data {} times, more than the limit of {MAX_ACTION_REFERENCES} \
                 (template references per action); split it into several actions",
                action.references
            )));
        }
        let (word, next) = keywords(body);
        let mut closes = 0;
        match word {
            "if" | "with" | "range" => {
                blocks.push(1);
                open += 1;
            }
            "else" if next == "if" => {
                if let Some(chain) = blocks.last_mut() {
                    *chain += 1;
                    open += 1;
                }
            }
            "end" => closes = blocks.pop().unwrap_or(0),
            _ => {}
        }
        let depth = open + action.parens;
        if depth > MAX_NESTING {
            return Err(TemplateError::budget(format!(
                "blocks (if, with, range, else if) and parentheses nest {depth} deep at character {at}, deeper than \
                 the limit of {MAX_NESTING} (template nesting depth); flatten the template"
            )));
        }
        deepest = deepest.max(depth);
        open -= closes;
        let end = template.len() - body.len() + action.len;
        counted = at - 1 + template[start..end].chars().count();
        text.push_str(&template[offset..start]);
        if action.comment {
            text.push_str(&template[start..end]);
        } else if trim {
            text.push_str("{{- ");
            text.push_str(budget::STEP_FUNC);
            text.push_str("}}{{");
            text.push_str(&template[template.len() - body.len()..end]);
        } else {
            text.push_str("{{");
            text.push_str(budget::STEP_FUNC);
            text.push_str("}}");
            text.push_str(&template[start..end]);
        }
        offset = end;
    }
    text.push_str(&template[offset..]);
    Ok(Scanned { text, depth: deepest })
}

/// The first two words of an action, e.g. `("else", "if")`.
fn keywords(body: &str) -> (&str, &str) {
    let word = |s: &str| -> (usize, usize) {
        let s_trim = s.trim_start();
        let skip = s.len() - s_trim.len();
        let len = s_trim.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s_trim.len());
        (skip, len)
    };
    let (skip, len) = word(body);
    let first = &body[skip..skip + len];
    let rest = &body[skip + len..];
    let (skip2, len2) = word(rest);
    (first, &rest[skip2..skip2 + len2])
}

/// What [`action_len`] found in one action.
struct Action {
    /// Length of the body up to and including the closing `}}`.
    len: usize,
    /// Deepest nesting of parentheses.
    parens: usize,
    /// Data references (`.` and `$`) outside quoted strings.
    references: usize,
    /// Whether it is a comment.
    comment: bool,
}

/// Scans an action's body up to and including its closing `}}`.
fn action_len(body: &str, at: usize) -> Result<Action, TemplateError> {
    let syntax = |why: &str| TemplateError::new(format!("{why} in the action at character {at}"));
    if let Some(comment) = body.strip_prefix("/*") {
        let end = comment.find("*/").ok_or_else(|| syntax("unclosed comment"))? + 4;
        let rest = &body[end..];
        let len = match (rest.starts_with("}}"), rest.starts_with(" -}}")) {
            (true, _) => end + 2,
            (_, true) => end + 4,
            _ => return Err(syntax("comment end before closing delimiter")),
        };
        return Ok(Action { len, parens: 0, references: 0, comment: true });
    }
    let (mut parens, mut deepest, mut references) = (0usize, 0usize, 0usize);
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if body[i..].starts_with("}}") {
            return Ok(Action { len: i + 2, parens: deepest, references, comment: false });
        }
        match c {
            '"' | '\'' => skip_quoted(&mut chars, c).map_err(|e| match e {
                Quoted::Syntax(why) => syntax(why),
                Quoted::Budget(why) => TemplateError::budget(format!("{why} in the action at character {at}")),
            })?,
            '`' => {
                // gtmpl decodes escapes in raw strings too, unlike Go, and
                // panics on some; a raw string has no use for them here.
                let (_, end) = chars
                    .find(|&(_, q)| q == '`' || q == '\\')
                    .ok_or_else(|| syntax("unterminated raw quoted string"))?;
                if end == '\\' {
                    return Err(syntax("backslash in a raw string"));
                }
            }
            '(' => {
                parens += 1;
                deepest = deepest.max(parens);
            }
            ')' => parens = parens.saturating_sub(1),
            '.' | '$' => references += 1,
            '\r' | '\n' => return Err(syntax("line break (actions must be on one line)")),
            c if !c.is_ascii() => return Err(syntax("non-ASCII character outside a quoted string")),
            _ => {}
        }
    }
    Err(syntax("unclosed action (no matching }})"))
}

/// Why a quoted string is refused.
enum Quoted {
    Syntax(&'static str),
    Budget(String),
}

/// Skips a quoted string or character constant where `gtmpl`'s lexer ends
/// it, then checks its escapes the way `gtmpl` will decode them.
fn skip_quoted(chars: &mut std::str::CharIndices<'_>, quote: char) -> Result<(), Quoted> {
    let mut content = String::new();
    let mut escaped = false;
    loop {
        let c = chars.next().map(|(_, c)| c);
        match c {
            // gtmpl's rule: a backslash escapes the next character, except
            // another backslash.
            Some('\\') => {
                content.push('\\');
                escaped = true;
                continue;
            }
            None | Some('\n') => return Err(Quoted::Syntax("unterminated quoted string")),
            Some(c) if c == quote && !escaped => {
                check_escapes(&content).map_err(Quoted::Syntax)?;
                return check_printf_sizes(&content).map_err(Quoted::Budget);
            }
            Some(c) => content.push(c),
        }
        escaped = false;
    }
}

/// Allows only the escapes `gtmpl` decodes without panicking or looping:
/// `\b \f \n \r \t \' \" \\`, `\xHH`, `\uHHHH` and `\UHHHHHHHH`.
fn check_escapes(content: &str) -> Result<(), &'static str> {
    let mut rest = content;
    while let Some(i) = rest.find('\\') {
        let after = &rest[i + 1..];
        let hex = |n: usize| after.get(1..=n).is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
        let len = match after.chars().next() {
            Some('b' | 'f' | 'n' | 'r' | 't' | '\'' | '"' | '\\') => 1,
            Some('x') if hex(2) => 3,
            Some('u') if hex(4) => 5,
            Some('U') if hex(8) => 9,
            _ => return Err("unsupported escape sequence in a quoted string"),
        };
        rest = &after[len..];
    }
    Ok(())
}

/// Refuses literal printf widths and precisions above [`MAX_PRINTF_SIZE`] in
/// any quoted string that could be a format: gtmpl allocates them (or
/// panics), and no secret needs them. Widths given with `*` are checked when
/// `printf` runs.
fn check_printf_sizes(content: &str) -> Result<(), String> {
    for (i, _) in content.match_indices('%') {
        let spec = content[i + 1..].split(|c: char| !"+-# 0123456789.[]*".contains(c)).next().unwrap_or("");
        for run in spec.split(|c: char| !c.is_ascii_digit()).filter(|r| !r.is_empty()) {
            let n = run.bytes().fold(0u128, |n, d| n.saturating_mul(10).saturating_add(u128::from(d - b'0')));
            if n > MAX_PRINTF_SIZE as u128 {
                return Err(format!(
                    "printf width or precision {run} is larger than the limit of {MAX_PRINTF_SIZE} (template printf limit)"
                ));
            }
        }
    }
    Ok(())
}

/// Refuses named templates: `{{template "" .}}` alone recurses forever.
fn check_keyword(body: &str) -> Result<(), &'static str> {
    match keywords(body).0 {
        "define" | "block" | "template" => Err("named templates (define, block, template) are not supported"),
        _ => Ok(()),
    }
}

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
    template: Option<&str>,
    format: Format,
    budget: &Budget,
) -> Result<String, TemplateError> {
    let value = value.trim();
    let rendered = match template.filter(|t| !t.is_empty()) {
        Some(t) => apply_template(value, t, budget)?,
        None => None,
    };
    let result = rendered.as_deref().unwrap_or(value);
    Ok(match format {
        Format::Json if parse_object(result).is_some() => result.to_owned(),
        Format::Json => value.to_owned(),
        Format::Yaml => match parse_object(result) {
            Some(object) => yaml::to_yaml(&object),
            None => result.to_owned(),
        },
        Format::Raw => result.to_owned(),
    })
}

/// Parses `text` as a JSON object; anything else (arrays, strings, invalid
/// JSON) is `None`.
fn parse_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Runs `template` over `value` when the value is a JSON object; `None` when
/// it is not, or when the template does not parse or fails to run; an error
/// when it is over `budget`.
fn apply_template(value: &str, template: &str, budget: &Budget) -> Result<Option<String>, TemplateError> {
    let Some(object) = parse_object(value) else { return Ok(None) };
    let scanned = match check_actions(template) {
        Ok(scanned) => scanned,
        Err(e) if e.is_over_budget() => return Err(e),
        Err(_) => return Ok(None),
    };
    let data = to_template_value(serde_json::Value::Object(object));
    let rendered = with_stack(scanned.depth, || match parse_template(&scanned) {
        Ok(parsed) => render(&parsed, data, budget),
        Err(_) => Ok(None),
    })??;
    Ok(rendered.map(drop_missing))
}

/// Converts parsed JSON into the template engine's values.
///
/// Objects become maps, so a missing key reads as `<no value>` as in Go.
/// JSON `null` also prints `<no value>`: Go holds it as a nil `interface{}`.
fn to_template_value(json: serde_json::Value) -> gtmpl::Value {
    use serde_json::Value as J;
    match json {
        J::Null => gtmpl::Value::NoValue,
        J::Bool(b) => gtmpl::Value::Bool(b),
        J::Number(n) => template_number(&n),
        J::String(s) => gtmpl::Value::String(s),
        J::Array(items) => gtmpl::Value::Array(items.into_iter().map(to_template_value).collect()),
        J::Object(map) => gtmpl::Value::Map(map.into_iter().map(|(k, v)| (k, to_template_value(v))).collect()),
    }
}

/// Integers stay integers (printed in full); other numbers are floats.
fn template_number(n: &serde_json::Number) -> gtmpl::Value {
    if let Some(u) = n.as_u64() {
        gtmpl::Value::from(u)
    } else if let Some(i) = n.as_i64() {
        gtmpl::Value::from(i)
    } else {
        n.as_f64().map_or(gtmpl::Value::NoValue, gtmpl::Value::from)
    }
}

/// Drops the fields the template could not fill.
///
/// VSecM splits the output at commas and keeps the segments whose text after
/// the first colon is not `"<no value>"`. That breaks JSON when the first or
/// last field is missing (the brace goes with it) and empties any output
/// without colons. Aegis does this instead:
///
/// - When the output is a JSON object, top-level members whose value is the
///   string `<no value>` are removed and the object is written back compactly,
///   in its original order. Output with no such member is returned untouched.
/// - Otherwise (YAML-like or free text), comma-separated segments whose text
///   after the first colon, trimmed, is `<no value>` or `"<no value>"` are
///   dropped; segments without a colon are kept.
fn drop_missing(rendered: String) -> String {
    if !rendered.contains(NO_VALUE) {
        return rendered;
    }
    if let Ok(OrderedObject(members)) = serde_json::from_str::<OrderedObject>(&rendered) {
        return drop_missing_members(members).unwrap_or(rendered);
    }
    rendered.split(',').filter(|segment| !is_missing_segment(segment)).collect::<Vec<_>>().join(",")
}

/// Whether a `key:value` segment holds a missing value.
fn is_missing_segment(segment: &str) -> bool {
    match segment.split_once(':') {
        Some((_, value)) => {
            let value = value.trim();
            value == NO_VALUE || value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) == Some(NO_VALUE)
        }
        None => false,
    }
}

/// Writes the members back without the missing ones; `None` when nothing was
/// missing (so the caller keeps the template's own formatting).
fn drop_missing_members(members: Vec<(String, serde_json::Value)>) -> Option<String> {
    let before = members.len();
    let kept: Vec<_> = members.into_iter().filter(|(_, v)| v.as_str() != Some(NO_VALUE)).collect();
    if kept.len() == before {
        return None;
    }
    let parts = kept
        .iter()
        .map(|(k, v)| Ok(format!("{}:{}", serde_json::to_string(k)?, serde_json::to_string(v)?)))
        .collect::<Result<Vec<_>, serde_json::Error>>()
        .ok()?;
    Some(format!("{{{}}}", parts.join(",")))
}

/// A JSON object whose members keep their order and duplicates.
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OrderedObjectVisitor)
    }
}

struct OrderedObjectVisitor;

impl<'de> serde::de::Visitor<'de> for OrderedObjectVisitor {
    type Value = OrderedObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, serde_json::Value>()? {
            members.push(member);
        }
        Ok(OrderedObject(members))
    }
}

/// A YAML writer that reproduces what Go's `gopkg.in/yaml.v3` (v3.0.1)
/// `Marshal` writes for a `map[string]any` decoded from JSON.
///
/// No Rust crate reproduces yaml.v3's choices, and VSecM users see them, so
/// this is a port of the few parts of yaml.v3's emitter that such a document
/// reaches: block mappings and sequences indented by 4, `{}`/`[]` for empty
/// collections, keys in yaml.v3's "natural" order, and its scalar styles.
/// A string is written plain unless plain text would read back as something
/// else (`true`, `yes`, `123`, `2024-01-02`, `~`, ...: double quotes) or
/// breaks YAML syntax (a leading `*`, `- `, `: ` inside, ` #`, edge spaces:
/// single quotes); strings with tabs, control or non-BMP characters are
/// double-quoted with escapes; multi-line strings are `|` literals. Keys
/// longer than 128 bytes or spanning lines use the `? key` form.
mod yaml {
    use serde_json::{Map, Value};

    /// yaml.v3's default indentation.
    const INDENT: isize = 4;
    /// Longer keys are written as `? key` (libyaml's simple-key limit).
    const MAX_SIMPLE_KEY: usize = 128;

    /// Writes `map` as a YAML document, without the document's final line break.
    pub(super) fn to_yaml(map: &Map<String, Value>) -> String {
        if map.is_empty() {
            return "{}".to_owned();
        }
        let mut emitter = Emitter { out: String::new(), column: 0, indent: -1, indention: true, whitespace: true };
        emitter.mapping(map, false);
        emitter.out
    }

    /// The emitter state that libyaml keeps and that decides where line
    /// breaks and spaces go.
    struct Emitter {
        out: String,
        column: usize,
        /// The current block indentation; -1 before the root node.
        indent: isize,
        /// Only indentation and indicators so far on this line.
        indention: bool,
        /// The last character written was whitespace.
        whitespace: bool,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Style {
        Plain,
        Single,
        Double,
        Literal,
    }

    impl Emitter {
        fn node(&mut self, value: &Value, in_seq: bool) {
            match value {
                Value::Object(map) if map.is_empty() => self.empty_collection("{}"),
                Value::Array(items) if items.is_empty() => self.empty_collection("[]"),
                Value::Object(map) => self.mapping(map, in_seq),
                Value::Array(items) => self.sequence(items, in_seq),
                Value::String(s) => self.string(s, in_seq, false),
                Value::Number(n) => self.plain(&number_text(n)),
                Value::Bool(b) => self.plain(if *b { "true" } else { "false" }),
                Value::Null => self.plain("null"),
            }
        }

        fn empty_collection(&mut self, text: &str) {
            let (open, close) = text.split_at(1);
            self.indicator(open, true, true, false);
            self.indicator(close, false, false, false);
        }

        fn mapping(&mut self, map: &Map<String, Value>, in_seq: bool) {
            let saved = self.increase_indent(false, in_seq);
            for key in super::yaml_key_order(map.keys().map(String::as_str).collect()) {
                let Some(value) = map.get(key) else { continue };
                self.write_indent();
                if key.len() <= MAX_SIMPLE_KEY && !has_break(key) {
                    self.string(key, false, true);
                    self.indicator(":", false, false, false);
                } else {
                    self.indicator("?", true, false, true);
                    self.string(key, false, false);
                    self.write_indent();
                    self.indicator(":", true, false, true);
                }
                self.node(value, false);
            }
            self.indent = saved;
        }

        fn sequence(&mut self, items: &[Value], in_seq: bool) {
            let saved = self.increase_indent(false, in_seq);
            for item in items {
                self.write_indent();
                self.indicator("-", true, false, true);
                self.node(item, true);
            }
            self.indent = saved;
        }

        /// libyaml's indentation rule: 2 more inside a sequence item (to skip
        /// the "- "), else the next multiple of 4. Returns the old indent.
        fn increase_indent(&mut self, flow: bool, in_seq: bool) -> isize {
            let saved = self.indent;
            self.indent = if self.indent < 0 {
                if flow {
                    INDENT
                } else {
                    0
                }
            } else if in_seq {
                self.indent + 2
            } else {
                INDENT * ((self.indent + INDENT) / INDENT)
            };
            saved
        }

        fn string(&mut self, s: &str, in_seq: bool, simple_key: bool) {
            let saved = self.increase_indent(true, in_seq);
            match select_style(s, simple_key) {
                Style::Plain => self.plain(s),
                Style::Single => self.single_quoted(s),
                Style::Double => self.double_quoted(s),
                Style::Literal => self.literal(s),
            }
            self.indent = saved;
        }

        fn put(&mut self, c: char) {
            self.out.push(c);
            self.column += 1;
        }

        fn put_break(&mut self) {
            self.out.push('\n');
            self.column = 0;
            self.indention = true;
        }

        /// A line break inside a scalar: `\n` is a newline, other breaks
        /// (U+2028, U+2029) are copied and start a new line as far as the
        /// emitter is concerned.
        fn write_break(&mut self, c: char) {
            if c == '\n' {
                self.put_break();
            } else {
                self.out.push(c);
                self.column = 0;
                self.indention = true;
            }
        }

        fn write_indent(&mut self) {
            let indent = usize::try_from(self.indent).unwrap_or(0);
            if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
                self.put_break();
            }
            while self.column < indent {
                self.put(' ');
            }
            self.whitespace = true;
        }

        fn indicator(&mut self, text: &str, need_ws: bool, is_ws: bool, is_indention: bool) {
            if need_ws && !self.whitespace {
                self.put(' ');
            }
            text.chars().for_each(|c| self.put(c));
            self.whitespace = is_ws;
            self.indention = self.indention && is_indention;
        }

        fn plain(&mut self, s: &str) {
            if !s.is_empty() && !self.whitespace {
                self.put(' ');
            }
            s.chars().for_each(|c| self.put(c));
            if !s.is_empty() {
                self.whitespace = false;
            }
            self.indention = false;
        }

        fn single_quoted(&mut self, s: &str) {
            self.indicator("'", true, false, false);
            let mut breaks = false;
            for c in s.chars() {
                if c == ' ' {
                    self.put(c);
                } else if is_break(c) {
                    self.write_break(c);
                    breaks = true;
                } else {
                    if breaks {
                        self.write_indent();
                    }
                    if c == '\'' {
                        self.put('\'');
                    }
                    self.put(c);
                    self.indention = false;
                    breaks = false;
                }
            }
            self.indicator("'", false, false, false);
        }

        fn double_quoted(&mut self, s: &str) {
            self.indicator("\"", true, false, false);
            // yaml.v3 checks for a byte order mark at the start of the value
            // instead of at each character, so such a value is escaped whole.
            let escape_all = s.starts_with('\u{feff}');
            for c in s.chars() {
                if escape_all || !is_printable(c) || is_break(c) || c == '"' || c == '\\' {
                    self.put('\\');
                    escape(c).chars().for_each(|e| self.put(e));
                } else {
                    self.put(c);
                }
            }
            self.indicator("\"", false, false, false);
        }

        fn literal(&mut self, s: &str) {
            self.indicator("|", true, false, false);
            self.indicator(&block_hints(s), false, false, false);
            self.whitespace = true;
            let mut breaks = true;
            for c in s.chars() {
                if is_break(c) {
                    self.write_break(c);
                    breaks = true;
                } else {
                    if breaks {
                        self.write_indent();
                    }
                    self.put(c);
                    self.indention = false;
                    breaks = false;
                }
            }
        }
    }

    /// The indentation and chomping indicators after `|`.
    fn block_hints(s: &str) -> String {
        let mut hints = String::new();
        if s.starts_with(' ') || s.chars().next().is_some_and(is_break) {
            hints.push_str(&INDENT.to_string());
        }
        let mut rev = s.chars().rev();
        match (rev.next(), rev.next()) {
            (Some(last), _) if !is_break(last) => hints.push('-'),
            (Some(_), None) => hints.push('+'),
            (Some(_), Some(before)) if is_break(before) => hints.push('+'),
            (None, _) => hints.push('-'),
            _ => {}
        }
        hints
    }

    /// yaml.v3's scalar style for a string (libyaml's
    /// `yaml_emitter_select_scalar_style` after `encoder.stringv`).
    fn select_style(s: &str, simple_key: bool) -> Style {
        let a = analyze(s);
        let mut style = if s.contains('\n') {
            Style::Literal
        } else if super::resolves_to_string(s) {
            Style::Plain
        } else {
            Style::Double
        };
        if simple_key && a.multiline {
            style = Style::Double;
        }
        if style == Style::Plain && (!a.plain || (s.is_empty() && simple_key)) {
            style = Style::Single;
        }
        if style == Style::Single && !a.single_quoted {
            style = Style::Double;
        }
        if style == Style::Literal && (!a.block || simple_key) {
            style = Style::Double;
        }
        style
    }

    /// Which styles can hold a string (libyaml's `yaml_emitter_analyze_scalar`,
    /// block context only).
    struct Analysis {
        multiline: bool,
        plain: bool,
        single_quoted: bool,
        block: bool,
    }

    fn analyze(s: &str) -> Analysis {
        if s.is_empty() {
            return Analysis { multiline: false, plain: true, single_quoted: true, block: false };
        }
        let chars: Vec<char> = s.chars().collect();
        let spaces = SpaceFlags::of(&chars);
        let tabs = chars.contains(&'\t');
        let special = chars.iter().any(|&c| c != '\t' && !is_printable(c));
        let multiline = chars.iter().any(|&c| is_break(c));
        let edge = spaces.leading_space || spaces.leading_break || spaces.trailing_space || spaces.trailing_break;
        let mixed = spaces.space_break || tabs || special;
        Analysis {
            multiline,
            plain: !(edge || spaces.break_space || mixed || multiline || has_indicator(&chars)),
            single_quoted: !(spaces.break_space || mixed),
            block: !(spaces.trailing_space || spaces.space_break || special),
        }
    }

    /// Where spaces and line breaks sit in a scalar.
    #[derive(Default)]
    struct SpaceFlags {
        leading_space: bool,
        leading_break: bool,
        trailing_space: bool,
        trailing_break: bool,
        /// A space right after a line break.
        break_space: bool,
        /// A line break right after a space.
        space_break: bool,
    }

    impl SpaceFlags {
        fn of(chars: &[char]) -> SpaceFlags {
            let mut f = SpaceFlags::default();
            let last = chars.len().saturating_sub(1);
            let (mut prev_space, mut prev_break) = (false, false);
            for (i, &c) in chars.iter().enumerate() {
                if c == ' ' {
                    f.leading_space |= i == 0;
                    f.trailing_space |= i == last;
                    f.break_space |= prev_break;
                    (prev_space, prev_break) = (true, false);
                } else if is_break(c) {
                    f.leading_break |= i == 0;
                    f.trailing_break |= i == last;
                    f.space_break |= prev_space;
                    (prev_space, prev_break) = (false, true);
                } else {
                    (prev_space, prev_break) = (false, false);
                }
            }
            f
        }
    }

    /// Whether the text holds something a plain block scalar cannot start
    /// with or contain (libyaml's "block indicators").
    fn has_indicator(chars: &[char]) -> bool {
        let starts = |p: &str| chars.iter().take(3).copied().eq(p.chars());
        if chars.len() >= 3 && (starts("---") || starts("...")) {
            return true;
        }
        let mut preceded_by_ws = true;
        for (i, &c) in chars.iter().enumerate() {
            let followed_by_ws = chars.get(i + 1).is_none_or(|&n| n == ' ' || n == '\t');
            let found = match c {
                '#' if i == 0 || preceded_by_ws => true,
                ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%' | '@' | '`' if i == 0 => {
                    true
                }
                '?' if i == 0 => followed_by_ws,
                '-' if i == 0 => followed_by_ws,
                ':' => followed_by_ws,
                _ => false,
            };
            if found {
                return true;
            }
            preceded_by_ws = matches!(c, ' ' | '\t' | '\0') || is_break(c);
        }
        false
    }

    fn has_break(s: &str) -> bool {
        s.chars().any(is_break)
    }

    fn is_break(c: char) -> bool {
        matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
    }

    /// libyaml's printable set: no C0/C1 controls (but `\n`), DEL, surrogates,
    /// U+FEFF, U+FFFE/F, nor anything beyond the Basic Multilingual Plane.
    fn is_printable(c: char) -> bool {
        matches!(c, '\n' | ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}') && c != '\u{FEFF}'
    }

    /// The escape sequence (after the backslash) for `c` in double quotes.
    fn escape(c: char) -> String {
        let short = match c {
            '\0' => "0",
            '\u{7}' => "a",
            '\u{8}' => "b",
            '\t' => "t",
            '\n' => "n",
            '\u{b}' => "v",
            '\u{c}' => "f",
            '\r' => "r",
            '\u{1b}' => "e",
            '"' => "\"",
            '\\' => "\\",
            '\u{85}' => "N",
            '\u{a0}' => "_",
            '\u{2028}' => "L",
            '\u{2029}' => "P",
            _ => "",
        };
        if !short.is_empty() {
            return short.to_owned();
        }
        let code = u32::from(c);
        match code {
            0..=0xFF => format!("x{code:02X}"),
            0x100..=0xFFFF => format!("u{code:04X}"),
            _ => format!("U{code:08X}"),
        }
    }

    /// Integers as written; other numbers as Go's `FormatFloat(f, 'g', -1, 64)`.
    fn number_text(n: &serde_json::Number) -> String {
        if n.is_u64() || n.is_i64() {
            return n.to_string();
        }
        n.as_f64().map_or_else(|| n.to_string(), go_float)
    }

    /// Go's shortest `%g`: exponent form when the exponent is below -4 or
    /// at least 6 (`1e+06`, `1e-07`), plain decimal otherwise.
    fn go_float(f: f64) -> String {
        let sci = format!("{f:e}"); // shortest round-trip digits: "-1.2345e6"
        let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let (sign, mantissa) = match mantissa.strip_prefix('-') {
            Some(m) => ("-", m),
            None => ("", mantissa),
        };
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return sci;
        }
        if !(-4..6).contains(&exp) {
            let (first, rest) = digits.split_at(1);
            let dot = if rest.is_empty() { "" } else { "." };
            let exp_sign = if exp < 0 { '-' } else { '+' };
            return format!("{sign}{first}{dot}{rest}e{exp_sign}{:02}", exp.abs());
        }
        let point = usize::try_from(exp + 1).unwrap_or(0);
        let text = if exp < 0 {
            let zeros = "0".repeat(usize::try_from(-exp - 1).unwrap_or(0));
            format!("0.{zeros}{digits}")
        } else if digits.len() <= point {
            format!("{digits}{}", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        };
        format!("{sign}{text}")
    }
}

/// Whether yaml.v3 would write `s` without quotes as far as its meaning goes:
/// it must read back as a string, not as a YAML 1.2 bool, null, number or
/// timestamp, nor a YAML 1.1 bool (`yes`, `on`, ...) or base-60 float (`1:20`).
fn resolves_to_string(s: &str) -> bool {
    !(resolves_to_other(s) || is_old_bool(s) || is_base60_float(s))
}

/// yaml.v3's `resolve` with no tag: true when `s` is not a string.
fn resolves_to_other(s: &str) -> bool {
    const SPECIAL: [&str; 23] = [
        "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", ".nan", ".NaN", ".NAN",
        ".inf", ".Inf", ".INF", "-.inf", "-.Inf", "-.INF", "+.inf", "+.Inf", "+.INF",
    ];
    // The first character decides whether yaml.v3 looks further at all.
    let hint = s.chars().next();
    let looked_up = match hint {
        None => true,
        Some(c) => "+-0123456789yYnNtTfFoO~.".contains(c),
    };
    if !looked_up {
        return false;
    }
    if SPECIAL.contains(&s) {
        return true;
    }
    match hint {
        Some('.') => is_go_float(s),
        Some(c) if c == '+' || c == '-' || c.is_ascii_digit() => is_timestamp(s) || is_number(&s.replace('_', "")),
        _ => false,
    }
}

/// YAML 1.1 booleans, quoted by yaml.v3 for older parsers.
fn is_old_bool(s: &str) -> bool {
    matches!(
        s,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF"
    )
}

/// YAML 1.1 base-60 floats: `[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?`.
fn is_base60_float(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (body, _) = match body.split_once('.') {
        Some((b, frac)) if frac.chars().all(|c| c.is_ascii_digit() || c == '_') => (b, frac),
        Some(_) => return false,
        None => (body, ""),
    };
    let mut parts = body.split(':');
    let head = parts.next().unwrap_or("");
    let head_ok =
        head.starts_with(|c: char| c.is_ascii_digit()) && head.chars().all(|c| c.is_ascii_digit() || c == '_');
    let mut sixties = parts.peekable();
    head_ok
        && sixties.peek().is_some()
        && sixties.all(|p| {
            let b = p.as_bytes();
            match b {
                [d] => d.is_ascii_digit(),
                [t, d] => (b'0'..=b'5').contains(t) && d.is_ascii_digit(),
                _ => false,
            }
        })
}

/// Numbers as yaml.v3 reads them (underscores already removed): Go integer
/// literals (`0x`, `0o`, `0b`, leading-zero octal) within 64 bits, or
/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` within float range.
fn is_number(s: &str) -> bool {
    is_go_int(s) || (is_yaml_float_syntax(s) && s.parse::<f64>().is_ok_and(f64::is_finite)) || is_prefixed_int(s)
}

/// Go's `strconv.ParseInt(s, 0, 64)` or `ParseUint(s, 0, 64)` succeeds.
fn is_go_int(s: &str) -> bool {
    let (sign, body) = match s.strip_prefix(['-', '+']) {
        Some(body) => (s.chars().next(), body),
        None => (None, s),
    };
    let prefix = body.get(..2).map(str::to_ascii_lowercase);
    let (radix, digits) = match prefix.as_deref() {
        Some("0x") => (16, &body[2..]),
        Some("0o") => (8, &body[2..]),
        Some("0b") => (2, &body[2..]),
        _ if body.len() > 1 && body.starts_with('0') => (8, &body[1..]),
        _ => (10, body),
    };
    fits_go_int(sign, digits, radix)
}

/// yaml.v3's second chance for `0b…`/`0o…` (and `-0b…`/`-0o…`): the digits
/// after the prefix parsed in that base, where Go still accepts a sign.
fn is_prefixed_int(s: &str) -> bool {
    let (negative, body) = match s.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let radix = match body.get(..2) {
        Some("0b") => 2,
        Some("0o") => 8,
        _ => return false,
    };
    let rest = &body[2..];
    match (negative, rest.strip_prefix(['-', '+'])) {
        (true, None) => fits_go_int(Some('-'), rest, radix),
        (true, Some(_)) => false,
        (false, Some(digits)) => fits_go_int(rest.chars().next(), digits, radix),
        (false, None) => fits_go_int(None, rest, radix),
    }
}

/// Whether `sign digits` is a 64-bit integer in `radix` for Go: signed
/// values must fit an int64, unsigned ones a uint64.
fn fits_go_int(sign: Option<char>, digits: &str, radix: u32) -> bool {
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return false;
    }
    match (u64::from_str_radix(digits, radix), sign) {
        (Ok(v), Some('-')) => v <= 1 << 63,
        (Ok(v), Some(_)) => i64::try_from(v).is_ok(),
        (Ok(_), None) => true,
        (Err(_), _) => false,
    }
}

/// yaml.v3's `yamlStyleFloat` pattern.
fn is_yaml_float_syntax(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// Go's `strconv.ParseFloat` for text starting with `.` (`.5`, `.5e3`,
/// `.1_000`: Go allows an underscore between two digits).
fn is_go_float(s: &str) -> bool {
    let b = s.as_bytes();
    let underscores_ok = b.iter().enumerate().all(|(i, &c)| {
        c != b'_' || (i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1).is_some_and(u8::is_ascii_digit))
    });
    let s = s.replace('_', "");
    underscores_ok && is_yaml_float_syntax(&s) && s.parse::<f64>().is_ok_and(f64::is_finite)
}

/// yaml.v3's timestamp forms: `YYYY-M-D`, `YYYY-M-D  h:m:s[.frac]` and
/// `YYYY-M-DTh:m:s[.frac](Z|±hh:mm)`, with a real calendar date and time.
fn is_timestamp(s: &str) -> bool {
    let (date, rest) = match s.find([' ', 'T', 't']) {
        Some(i) => (&s[..i], Some((&s[i..i + 1], &s[i + 1..]))),
        None => (s, None),
    };
    if !is_date(date) {
        return false;
    }
    match rest {
        None => true,
        // A space in Go's layout matches a run of spaces.
        Some((" ", clock)) => is_clock(clock.trim_start_matches(' ')),
        Some((_, clock)) => match clock.strip_suffix('Z') {
            Some(clock) => is_clock(clock),
            None => {
                let split = clock.len().saturating_sub(6);
                match (clock.get(..split), clock.get(split..)) {
                    (Some(clock), Some(zone)) => is_zone(zone) && is_clock(clock),
                    _ => false,
                }
            }
        },
    }
}

fn small_number(s: &str, max_len: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_len || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_date(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if y.len() != 4 {
        return false;
    }
    match (small_number(y, 4), small_number(m, 2), small_number(d, 2)) {
        (Some(y), Some(m), Some(d)) => (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m),
        _ => false,
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `h:m:s` with an optional fraction (`.` or `,` then digits).
fn is_clock(s: &str) -> bool {
    let (hms, frac) = match s.find(['.', ',']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()));
    let mut parts = hms.split(':');
    let fields = (parts.next(), parts.next(), parts.next(), parts.next());
    let (Some(h), Some(m), Some(sec), None) = fields else {
        return false;
    };
    match (small_number(h, 2), small_number(m, 2), small_number(sec, 2)) {
        (Some(h), Some(m), Some(sec)) => frac_ok && h < 24 && m < 60 && sec < 60,
        _ => false,
    }
}

/// `+hh:mm` or `-hh:mm`.
fn is_zone(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[3] == b':'
        && [1, 2, 4, 5].iter().all(|&i| b[i].is_ascii_digit())
}

/// Sorts keys as yaml.v3 does (`keyList.Less`): runs of digits compare as
/// numbers, letters sort before other characters except right after digits.
///
/// A merge sort, because the standard sorts may panic when a comparison is
/// not a total order, and this one (ported as is) is not guaranteed to be.
fn yaml_key_order(keys: Vec<&str>) -> Vec<&str> {
    if keys.len() <= 1 {
        return keys;
    }
    let mut left = keys;
    let right = left.split_off(left.len() / 2);
    let (left, right) = (yaml_key_order(left), yaml_key_order(right));
    let mut merged = Vec::with_capacity(left.len() + right.len());
    let (mut l, mut r) = (left.into_iter().peekable(), right.into_iter().peekable());
    while let (Some(a), Some(b)) = (l.peek(), r.peek()) {
        let next = if yaml_key_less(b, a) { r.next() } else { l.next() };
        merged.extend(next);
    }
    merged.extend(l);
    merged.extend(r);
    merged
}

/// yaml.v3's `keyList.Less` for two string keys. Go's `unicode.IsDigit` is
/// taken as ASCII digits and `unicode.IsLetter` as Rust's `is_alphabetic`.
fn yaml_key_less(a: &str, b: &str) -> bool {
    let (ar, br): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut digits = false;
    for i in 0..ar.len().min(br.len()) {
        if ar[i] == br[i] {
            digits = ar[i].is_ascii_digit();
            continue;
        }
        let (al, bl) = (ar[i].is_alphabetic(), br[i].is_alphabetic());
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return if digits { al } else { bl };
        }
        return digit_run_less(&ar, &br, i);
    }
    ar.len() < br.len()
}

/// Compares the digit runs starting at `i` (both sides differ there and
/// neither is a letter). Arithmetic wraps like Go's int64.
fn digit_run_less(ar: &[char], br: &[char], i: usize) -> bool {
    let (mut an, mut bn) = (0i64, 0i64);
    if ar[i] == '0' || br[i] == '0' {
        let nonzero_before = ar[..i].iter().rev().take_while(|c| c.is_ascii_digit()).any(|&c| c != '0');
        if nonzero_before {
            (an, bn) = (1, 1);
        }
    }
    let run = |chars: &[char], mut n: i64| {
        let mut end = i;
        while end < chars.len() && chars[end].is_ascii_digit() {
            n = n.wrapping_mul(10).wrapping_add(i64::from(u32::from(chars[end]) - u32::from('0')));
            end += 1;
        }
        (n, end)
    };
    let ((an, ai), (bn, bi)) = (run(ar, an), run(br, bn));
    if an != bn {
        return an < bn;
    }
    if ai != bi {
        return ai < bi;
    }
    ar[i] < br[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transformation under the default budget, which these inputs fit.
    fn tf(value: &str, template: Option<&str>, format: Format) -> String {
        transform(value, template, format, &Budget::default()).unwrap()
    }

    const CREDS: &str = r#"{"username": "admin", "password": "VSecMRocks!"}"#;
    const TEMPLATE: &str = r#"{"USR":"{{.username}}", "PWD":"{{.password}}"}"#;

    // The "Known outputs" table of docs/VSECM-COMPATIBILITY.md, one test per row.

    #[test]
    fn known_json_without_template_is_the_value_verbatim() {
        assert_eq!(tf(CREDS, None, Format::Json), CREDS);
    }

    #[test]
    fn known_yaml_without_template() {
        assert_eq!(tf(CREDS, None, Format::Yaml), "password: VSecMRocks!\nusername: admin");
    }

    #[test]
    fn known_json_with_template() {
        assert_eq!(tf(CREDS, Some(TEMPLATE), Format::Json), r#"{"USR":"admin", "PWD":"VSecMRocks!"}"#);
    }

    #[test]
    fn known_yaml_with_template() {
        assert_eq!(tf(CREDS, Some(TEMPLATE), Format::Yaml), "PWD: VSecMRocks!\nUSR: admin");
    }

    #[test]
    fn known_yaml_quotes_leading_star() {
        let value = r#"{"username": "*root*", "password": "*CasHC0w*"}"#;
        let template = r#"{"USERNAME":"{{.username}}", "PASSWORD":"{{.password}}"}"#;
        assert_eq!(tf(value, Some(template), Format::Yaml), "PASSWORD: '*CasHC0w*'\nUSERNAME: '*root*'");
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
    fn validate_accepts_good_and_empty_templates() {
        assert_eq!(validate_template(""), Ok(()));
        assert_eq!(validate_template(TEMPLATE), Ok(()));
        assert_eq!(validate_template("plain text"), Ok(()));
        assert_eq!(validate_template("{{if .a}}x{{else}}y{{end}}"), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_templates_with_the_reason() {
        for bad in ["{{.a}", "{{if .a}}x", "{{end}}", "{{.a | nosuchfunc}}"] {
            let err = validate_template(bad).unwrap_err();
            assert!(!err.reason().is_empty(), "{bad}");
            let shown = err.to_string();
            assert!(shown.starts_with("invalid template: "), "{shown}");
            assert!(shown.contains(err.reason()), "{shown}");
            assert!(shown.contains("{{.username}}"), "{shown}");
        }
    }

    #[test]
    fn validate_refuses_what_the_engine_cannot_run_safely() {
        let cases = [
            ("{{.a ", "unclosed action"),
            ("x {{| ", "unclosed action"),
            ("{{/* c", "unclosed comment"),
            ("{{define \"t\"}}{{template \"t\" .}}{{end}}{{template \"t\" .}}", "named templates"),
            ("{{template \"\" .}}", "named templates"),
            ("{{- block \"b\" .}}x{{end}}", "named templates"),
            ("{{.\u{e9}}}", "non-ASCII"),
            ("caf\u{e9} {{- .a}}", "trim marker"),
            ("{{.a\n}}", "line break"),
            ("{{`\\`}}", "raw string"),
            ("{{\"\\x4\"}}", "escape"),
            ("{{\"\\\u{e9}\"}}", "escape"),
            ("{{'\\q'}}", "escape"),
            ("{{printf \"%99999d\" 1}}", "printf"),
            ("{{printf \"%.123456f\" 1.5}}", "printf"),
        ];
        for (template, why) in cases {
            let err = validate_template(template).unwrap_err();
            assert!(err.reason().contains(why), "{template:?}: {err}");
        }
    }

    #[test]
    fn engine_limits_keep_ordinary_templates_working() {
        let value = r#"{"a":"x","n":5}"#;
        let cases = [
            ("{{/* note */}}{{.a}}", "x"),
            ("{{- .a -}} ", "x"),
            ("caf\u{e9} {{.a}}", "caf\u{e9} x"),
            ("{{printf \"%d-%s-\u{e9}\" .n .a}}", "5-x-\u{e9}"),
            ("{{\"\\u00e9\\t\\\"\"}}", "\u{e9}\t\""),
            ("{{`raw`}}", "raw"),
            ("{{if .a}}yes{{end}}", "yes"),
        ];
        for (template, want) in cases {
            assert_eq!(validate_template(template), Ok(()), "{template:?}");
            assert_eq!(tf(value, Some(template), Format::Raw), want, "{template:?}");
        }
    }

    #[test]
    fn unsafe_stored_templates_leave_the_value_untouched() {
        // Stored before validation existed (e.g. imported from VSecM).
        let value = r#"{"a":"x"}"#;
        for template in ["{{.a ", "{{template \"\" .}}"] {
            assert_eq!(tf(value, Some(template), Format::Raw), value, "{template:?}");
        }
        // Over budget is an error, not the raw value.
        let err = transform(value, Some("{{printf \"%999999999d\" 1}}"), Format::Raw, &Budget::default()).unwrap_err();
        assert!(err.is_over_budget() && err.reason().contains("printf"), "{err}");
    }

    // Budgets (F2) and nesting (F4).

    fn over(value: &str, template: &str, budget: &Budget) -> TemplateError {
        let err = transform(value, Some(template), Format::Raw, budget).unwrap_err();
        assert!(err.is_over_budget(), "{err}");
        assert!(err.to_string().starts_with("template over budget: "), "{err}");
        err
    }

    fn big_array(n: usize) -> String {
        let items = vec!["1"; n].join(",");
        format!(r#"{{"a":[{items}],"m":{{"k":"v"}}}}"#)
    }

    #[test]
    fn output_is_bounded() {
        let value = big_array(20_000);
        let template = format!("{{{{range .a}}}}{}{{{{end}}}}", "x".repeat(100_000));
        let started = std::time::Instant::now();
        let err = over(&value, &template, &Budget::default());
        assert!(err.reason().contains("output is larger than the limit of 1048576 bytes"), "{err}");
        assert!(err.reason().contains("AEGIS_TEMPLATE_MAX_OUTPUT_BYTES"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Exactly at the limit is fine.
        let small = Budget { max_output_bytes: 6, ..Budget::default() };
        assert_eq!(transform(r#"{"a":"abcdef"}"#, Some("{{.a}}"), Format::Raw, &small).unwrap(), "abcdef");
        over(r#"{"a":"abcdefg"}"#, "{{.a}}", &small);
    }

    #[test]
    fn steps_are_bounded() {
        let value = big_array(20_000);
        let started = std::time::Instant::now();
        let err = over(&value, "{{range .a}}{{range $.a}}{{end}}{{end}}", &Budget::default());
        assert!(err.reason().contains("more than 100000 steps"), "{err}");
        assert!(err.reason().contains("AEGIS_TEMPLATE_MAX_STEPS"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Iterations count even with an empty body, and function calls count.
        let tight = Budget { max_steps: 100, ..Budget::default() };
        over(&big_array(200), "{{range .a}}{{end}}", &tight);
        over(&big_array(10), &"{{len .a}}".repeat(60), &tight);
        assert_eq!(transform(&big_array(10), Some("{{range .a}}{{.}}{{end}}"), Format::Raw, &tight).unwrap().len(), 10);
    }

    #[test]
    fn time_is_bounded() {
        let budget = Budget { max_time: std::time::Duration::ZERO, ..Budget::default() };
        std::thread::sleep(std::time::Duration::from_millis(2));
        let err = over(&big_array(1000), "{{range .a}}{{range $.a}}{{end}}{{end}}", &budget);
        assert!(err.reason().contains("AEGIS_TEMPLATE_MAX_TIME_MS"), "{err}");
    }

    #[test]
    fn strings_built_by_functions_are_bounded() {
        // Each declaration doubles the string: 2^40 bytes if nothing stops it.
        let mut template = String::from("{{$x := .a}}");
        for _ in 0..40 {
            template.push_str("{{$x := printf \"%s%s\" $x $x}}");
        }
        let err = over(r#"{"a":"0123456789"}"#, &template, &Budget::default());
        assert!(err.reason().contains("output"), "{err}");
        let mut template = String::from("{{$x := .a}}");
        for _ in 0..40 {
            template.push_str("{{$x := print $x $x}}");
        }
        over(r#"{"a":"0123456789"}"#, &template, &Budget::default());
        // A format from the data with many wide verbs.
        let format = "%9999d".repeat(200);
        over(&format!(r#"{{"f":"{format}"}}"#), "{{printf .f 1}}", &Budget::default());
    }

    #[test]
    fn printf_star_sizes_are_checked_when_run() {
        let value = r#"{"w":65535,"n":1}"#;
        for template in [
            "{{printf \"%*d\" 65535 1}}",
            "{{printf \"%.*f\" 65535 1.5}}",
            "{{printf \"%*d\" .w .n}}",
            "{{printf \"%-*d\" -65535 1}}",
            "{{printf \"%[2]*[1]d\" 1 65535}}",
            "{{printf \"%d %*d\" 1 65535 1}}",
        ] {
            let err = over(value, template, &Budget::default());
            assert!(err.reason().contains("printf width or precision 65535"), "{template}: {err}");
        }
        let err = validate_template("{{printf \"%99999d\" 1}}").unwrap_err();
        assert!(err.is_over_budget() && err.reason().contains("limit of 9999"), "{err}");
        // Ordinary widths still work, and a large value is not a width.
        assert_eq!(tf(value, Some("{{printf \"%*d|%5d\" 3 7 123456}}"), Format::Raw), "  7|123456");
        assert_eq!(tf(value, Some("{{printf \"%.*f\" 2 1.5}}"), Format::Raw), "1.50");
    }

    #[test]
    fn nesting_is_bounded_before_parsing() {
        let deep = |open: &str, close: &str, n: usize| format!("{}{}", open.repeat(n), close.repeat(n));
        let cases = [
            format!("{{{{{}.a{}}}}}", "(".repeat(900), ")".repeat(900)),
            deep("{{if .a}}", "{{end}}", 700),
            deep("{{with .a}}", "{{end}}", 900),
            deep("{{range .a}}", "{{end}}", 900),
            format!("{{{{if .a}}}}{}{{{{end}}}}", "{{else if .a}}".repeat(20_000)),
        ];
        for template in &cases {
            let err = validate_template(template).unwrap_err();
            assert!(err.is_over_budget(), "{err}");
            assert!(err.reason().contains("nest") && err.reason().contains("limit of 48"), "{err}");
            over(r#"{"a":[1]}"#, template, &Budget::default());
        }
        // Up to the limit parses and runs, on any thread (also a small stack).
        let at_limit = [
            format!("{{{{{}.a{}}}}}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING)),
            deep("{{if .a}}", "{{end}}", MAX_NESTING),
            deep("{{range .a}}", "{{end}}", MAX_NESTING),
            format!("{{{{if .b}}}}{}x{{{{end}}}}", "{{else if .b}}".repeat(MAX_NESTING - 1)),
        ];
        for template in at_limit {
            let run = move || {
                assert_eq!(validate_template(&template), Ok(()), "{template}");
                transform(r#"{"a":[1],"b":false}"#, Some(&template), Format::Raw, &Budget::default()).unwrap()
            };
            std::thread::Builder::new().stack_size(256 * 1024).spawn(run).unwrap().join().unwrap();
        }
    }

    #[test]
    fn references_per_action_are_bounded() {
        let many = format!("{{{{if and {}}}}}x{{{{end}}}}", ".a ".repeat(MAX_ACTION_REFERENCES + 1));
        let err = validate_template(&many).unwrap_err();
        assert!(err.is_over_budget() && err.reason().contains("references per action"), "{err}");
        let fine = format!("{{{{if and {}}}}}x{{{{end}}}}", ".a ".repeat(MAX_ACTION_REFERENCES));
        assert_eq!(tf(r#"{"a":1}"#, Some(&fine), Format::Raw), "x");
    }

    #[test]
    fn large_templates_are_checked_in_linear_time() {
        // 85,000 actions in 1 MiB: the lexical walk must not be quadratic.
        let template = "{{.a}}/*x*/".repeat(85_000);
        let started = std::time::Instant::now();
        assert_eq!(validate_template(&template), Ok(()));
        assert_eq!(tf(r#"{"a":"1"}"#, Some(&template), Format::Raw).len(), 85_000 * 6);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }

    #[test]
    fn steps_do_not_change_the_output() {
        let value = r#"{"a":[1,2],"b":"x","c":" y "}"#;
        let cases = [
            ("{{range .a}} {{.}} {{end}}", " 1  2 "),
            ("{{range .a -}} {{.}} {{- end}}", "12"),
            ("a {{- .b -}} b", "axb"),
            ("{{if .b}} yes {{- else}}no{{end}}", " yes"),
            ("{{if .z}}1{{else if .b}}2{{else}}3{{end}}", "2"),
            ("{{range $i, $e := .a}}{{$i}}={{$e}};{{end}}", "0=1;1=2;"),
            ("{{with .b}}{{.}}{{end}}{{/* c */}}", "x"),
            ("x {{- /* c */ -}} y", "xy"),
        ];
        for (template, want) in cases {
            assert_eq!(tf(value, Some(template), Format::Raw), want, "{template:?}");
        }
        // Parse errors do not mention the step function.
        let err = validate_template("{{if .a}}{{else}}{{else}}{{end}}").unwrap_err();
        assert!(!err.reason().contains("aegis_step"), "{err}");
    }

    #[test]
    fn a_panic_in_the_engine_is_caught_and_other_panics_are_not_affected() {
        // An escape gtmpl would panic on cannot be stored, but the render path
        // must survive a panic anyway: make one through the quiet hook.
        let caught = std::panic::catch_unwind(|| {
            let _quiet = quiet::Quiet::enter();
            panic!("inside the engine");
        });
        assert!(caught.is_err());
        let other = std::thread::spawn(|| panic!("elsewhere")).join();
        assert!(other.is_err());
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

    #[test]
    fn template_needs_a_json_object() {
        for value in ["[1,2]", "\"text\"", "42", "null", "plain"] {
            assert_eq!(tf(value, Some("{{.a}}"), Format::Raw), value);
        }
    }

    #[test]
    fn template_failure_keeps_the_value() {
        let value = r#"{"a":"str"}"#;
        // Executing fails: a string has no fields.
        assert_eq!(tf(value, Some("{{.a.b}}"), Format::Raw), value);
        // Parsing fails (such a template is refused on write, but old data may hold one).
        assert_eq!(tf(value, Some("{{.a}"), Format::Raw), value);
    }

    #[test]
    fn missing_keys_are_dropped_wherever_they_are() {
        let value = r#"{"b":"x"}"#;
        let cases = [
            (r#"{"A":"{{.a}}","B":"{{.b}}"}"#, r#"{"B":"x"}"#),
            (r#"{"B":"{{.b}}","A":"{{.a}}"}"#, r#"{"B":"x"}"#),
            (r#"{"B":"{{.b}}", "A":"{{.a}}", "C":"{{.b}}"}"#, r#"{"B":"x","C":"x"}"#),
            (r#"{"A":"{{.a}}"}"#, "{}"),
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
        let template = r#"{"A":"{{.a}}","B":"{{.b}}"}"#;
        assert_eq!(tf(value, Some(template), Format::Json), r#"{"B":"x"}"#);
    }

    #[test]
    fn missing_keys_in_text_output_drop_their_segment() {
        let value = r#"{"u":"admin"}"#;
        assert_eq!(tf(value, Some("USER: {{.u}}, PASS: {{.p}}"), Format::Raw), "USER: admin");
        assert_eq!(tf(value, Some(r#"USER:"{{.u}}","PASS":"{{.p}}""#), Format::Raw), r#"USER:"admin""#);
    }

    #[test]
    fn text_output_without_colons_is_kept() {
        // VSecM would return an empty string here.
        let value = r#"{"user":"admin","pass":"s3cr,et"}"#;
        assert_eq!(tf(value, Some("{{.pass}}"), Format::Raw), "s3cr,et");
        assert_eq!(tf(value, Some("{{.user}},{{.nope}}"), Format::Raw), "admin,<no value>");
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

    #[test]
    fn template_sees_typed_values() {
        let value = r#"{"port":5432,"id":12345678,"ratio":1.5,"on":true,"tags":["a"],"db":{"host":"h"}}"#;
        let template = "{{.port}} {{.id}} {{.ratio}} {{.on}} {{index .tags 0}} {{.db.host}}";
        assert_eq!(tf(value, Some(template), Format::Raw), "5432 12345678 1.5 true a h");
        assert_eq!(tf(value, Some("{{if eq .port 5432}}pg{{end}}"), Format::Raw), "pg");
    }

    #[test]
    fn yaml_of_the_known_values_ends_without_a_line_break() {
        let out = tf(r#"{"a":"b"}"#, None, Format::Yaml);
        assert_eq!(out, "a: b");
        assert_eq!(tf("{}", None, Format::Yaml), "{}");
    }

    #[test]
    fn yaml_keeps_line_breaks_that_belong_to_the_last_value() {
        assert_eq!(tf(r#"{"a":"x\n"}"#, None, Format::Yaml), "a: |\n    x\n");
        assert_eq!(tf(r#"{"a":"x\n\n"}"#, None, Format::Yaml), "a: |+\n    x\n\n");
        assert_eq!(tf(r#"{"a":"x\ny"}"#, None, Format::Yaml), "a: |-\n    x\n    y");
    }

    /// Outputs of Go's `yaml.Marshal` (gopkg.in/yaml.v3 v3.0.1) for
    /// `json.Unmarshal`ed objects, recorded with a small Go program.
    const YAML_V3: &[(&str, &str)] = &[
        (
            "{\"a\":{\"b\":\"c\",\"d\":{\"e\":1}},\"f\":[1,2,3],\"g\":[{\"h\":1,\"i\":2},{\"j\":[]}],\"k\":{},\"l\":[[1,2],[3]],\"m\":null,\"n\":true,\"o\":1.5}",
            "a:\n    b: c\n    d:\n        e: 1\nf:\n    - 1\n    - 2\n    - 3\ng:\n    - h: 1\n      i: 2\n    - j: []\nk: {}\nl:\n    - - 1\n      - 2\n    - - 3\nm: null\n\"n\": true\no: 1.5\n",
        ),
        (
            "{\"s\":\"line1\\nline2\",\"t\":\"line1\\nline2\\n\",\"w\":\" lead\\nx\",\"x\":\"trail \\ny\",\"y\":\"a\\n b\"}",
            "s: |-\n    line1\n    line2\nt: |\n    line1\n    line2\nw: |4-\n     lead\n    x\nx: \"trail \\ny\"\n\"y\": |-\n    a\n     b\n",
        ),
        (
            "{\"e\":\"\",\"sp\":\" x\",\"ts\":\"x \",\"tab\":\"a\\tb\",\"q1\":\"it's\",\"q2\":\"say \\\"hi\\\"\",\"bs\":\"a\\\\b\",\"hash\":\"a #b\",\"hash2\":\"a#b\",\"colon\":\"a: b\",\"colon2\":\"a:b\",\"dash\":\"- a\",\"dash2\":\"-a\",\"q\":\"? a\",\"q3\":\"?a\"}",
            "bs: a\\b\ncolon: 'a: b'\ncolon2: a:b\ndash: '- a'\ndash2: -a\ne: \"\"\nhash: 'a #b'\nhash2: a#b\nq: '? a'\nq1: it's\nq2: say \"hi\"\nq3: ?a\nsp: ' x'\ntab: \"a\\tb\"\nts: 'x '\n",
        ),
        (
            "{\"t1\":\"true\",\"t2\":\"True\",\"t3\":\"yes\",\"t4\":\"on\",\"t5\":\"null\",\"t6\":\"~\",\"t7\":\"123\",\"t8\":\"1.5\",\"t9\":\"0x1F\",\"t10\":\"1e3\",\"t11\":\".5\",\"t12\":\"2024-01-02\",\"t13\":\"1:20\",\"t14\":\"0o17\",\"t16\":\"-\",\"t17\":\"---\",\"t20\":\"<<\",\"t21\":\"1_000\",\"t23\":\"2024-01-02T03:04:05Z\",\"t25\":\"Y\",\"t26\":\"nO\",\"t27\":\"Off\"}",
            "t1: \"true\"\nt2: \"True\"\nt3: \"yes\"\nt4: \"on\"\nt5: \"null\"\nt6: \"~\"\nt7: \"123\"\nt8: \"1.5\"\nt9: \"0x1F\"\nt10: \"1e3\"\nt11: \".5\"\nt12: \"2024-01-02\"\nt13: \"1:20\"\nt14: \"0o17\"\nt16: '-'\nt17: '---'\nt20: <<\nt21: \"1_000\"\nt23: \"2024-01-02T03:04:05Z\"\nt25: \"Y\"\nt26: nO\nt27: \"Off\"\n",
        ),
        (
            "{\"emoji\":\"\u{1f600}\",\"nbsp\":\"a\\u00a0b\",\"ctrl\":\"a\\u0001b\",\"del\":\"a\\u007fb\",\"uni\":\"h\u{e9}llo\",\"bom\":\"\\ufeffx\",\"nel\":\"a\\u0085b\",\"cr\":\"a\\rb\"}",
            "bom: \"\\uFEFF\\x78\"\ncr: \"a\\rb\"\nctrl: \"a\\x01b\"\ndel: \"a\\x7Fb\"\nemoji: \"\\U0001F600\"\nnbsp: a\u{a0}b\nnel: \"a\\Nb\"\nuni: h\u{e9}llo\n",
        ),
        (
            "{\"*k\":\"v\",\"k k\":\"v\",\"1\":\"a\",\"10\":\"b\",\"2\":\"c\",\"a10\":\"x\",\"a2\":\"y\",\"A\":\"z\",\"_\":\"w\",\"\":\"empty\",\"true\":\"t\"}",
            "\"\": empty\n'*k': v\n_: w\n\"1\": a\n\"2\": c\n\"10\": b\nA: z\na2: \"y\"\na10: x\nk k: v\n\"true\": t\n",
        ),
        (
            "{\"k\\nk\":{\"a\":1},\"x\":\"v\"}",
            "? |-\n    k\n    k\n:   a: 1\nx: v\n",
        ),
        (
            "{\"nested\":{\"s\":\"l1\\nl2\",\"arr\":[\"l1\\nl2\",\"x\"]},\"arr2\":[{\"a\":\"l1\\nl2\"}]}",
            "arr2:\n    - a: |-\n        l1\n        l2\nnested:\n    arr:\n        - |-\n          l1\n          l2\n        - x\n    s: |-\n        l1\n        l2\n",
        ),
        (
            "{\"f1\":0.1,\"f2\":1e-7,\"f4\":100,\"f5\":123456,\"f6\":1e21,\"f7\":-2.5,\"f8\":1.5e6}",
            "f1: 0.1\nf2: 1e-07\nf4: 100\nf5: 123456\nf6: 1e+21\nf7: -2.5\nf8: 1.5e+06\n",
        ),
        (
            "{\"amp\":\"&a\",\"star\":\"*a\",\"bang\":\"!a\",\"pipe\":\"|a\",\"gt\":\">a\",\"pct\":\"%a\",\"at\":\"@a\",\"tick\":\"`a\",\"brace\":\"{a\",\"bracket\":\"[a\",\"comma\":\",a\",\"sq\":\"'a\",\"dq\":\"\\\"a\"}",
            "amp: '&a'\nat: '@a'\nbang: '!a'\nbrace: '{a'\nbracket: '[a'\ncomma: ',a'\ndq: '\"a'\ngt: '>a'\npct: '%a'\npipe: '|a'\nsq: '''a'\nstar: '*a'\ntick: '`a'\n",
        ),
    ];

    #[test]
    fn yaml_matches_go_yaml_v3() {
        for (json, go) in YAML_V3 {
            let want = go.strip_suffix('\n').unwrap();
            assert_eq!(tf(json, None, Format::Yaml), want, "{json}");
        }
    }

    #[test]
    fn yaml_long_keys_use_the_complex_form() {
        let key = "k".repeat(129);
        let out = tf(&format!(r#"{{"{key}":"v","a":"b"}}"#), None, Format::Yaml);
        assert_eq!(out, format!("a: b\n? {key}\n: v"));
        let key = "k".repeat(128);
        let out = tf(&format!(r#"{{"{key}":"v"}}"#), None, Format::Yaml);
        assert_eq!(out, format!("{key}: v"));
    }

    #[test]
    fn yaml_integers_are_not_rounded_through_float64() {
        // Go would write 1.2345678e+07 and 1.2345678901234567e+19.
        let out = tf(r#"{"a":12345678,"b":12345678901234567890,"c":-7}"#, None, Format::Yaml);
        assert_eq!(out, "a: 12345678\nb: 12345678901234567890\nc: -7");
    }

    #[test]
    fn yaml_scalars_that_read_as_other_types_are_quoted() {
        let quoted = [
            "true",
            "FALSE",
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "null",
            "~",
            "",
            "123",
            "-1",
            "+1",
            "1.5",
            ".5",
            "1e3",
            "0x1F",
            "0o17",
            "0b101",
            "017",
            "1_000",
            ".inf",
            "-.inf",
            ".nan",
            "1:20",
            "190:20:30",
            "2024-01-02",
            "2024-1-2 3:4:5",
            "2024-01-02T03:04:05.123+01:00",
        ];
        for s in quoted {
            assert!(!resolves_to_string(s), "{s:?} should be quoted");
        }
        let plain = [
            "admin",
            "yess",
            "0x",
            "1.2.3",
            "2024-02-30",
            "2024-01-02T03:04:05",
            "1:60",
            "12:3a",
            "--",
            "<<",
            "0xZZ",
            "1e",
            "0x10000000000000000",
        ];
        for s in plain {
            assert!(resolves_to_string(s), "{s:?} should be plain");
        }
    }

    #[test]
    fn yaml_key_order_is_natural() {
        let keys = vec!["b", "a10", "a2", "a", "10", "9", "B", "_x"];
        assert_eq!(yaml_key_order(keys), vec!["_x", "9", "10", "B", "a", "a2", "a10", "b"]);
    }

    #[test]
    fn yaml_sort_never_panics_on_odd_keys() {
        let keys: Vec<String> =
            (0..200).map(|i| format!("{}{}", ["0", "00", "a0", "_", "é", "1_"][i % 6], i * 7919 % 101)).collect();
        let sorted = yaml_key_order(keys.iter().map(String::as_str).collect());
        assert_eq!(sorted.len(), keys.len());
    }
}
