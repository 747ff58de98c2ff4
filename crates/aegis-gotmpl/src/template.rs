//! The template: Go `text/template` through `gtmpl`, parsed behind the
//! guards that keep the engine safe, rendered within a [`Budget`], and
//! the fields it could not fill dropped.

use std::borrow::Cow;
use std::fmt;

use super::budget::{self, Budget, MAX_ACTION_REFERENCES, MAX_DECLARATIONS, MAX_NESTING, MAX_PRINTF_SIZE};
use super::parse_object;

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

/// Refuses `text` (trimmed) when it is larger than `budget`'s template
/// size limit. Cheap: it runs before anything copies or parses the text.
pub fn check_template_size(text: &str, budget: &Budget) -> Result<(), TemplateError> {
    budget.check_template_size(text.trim().len()).map_err(TemplateError::budget)
}

/// Checks `text` as it is about to be stored: no larger than `budget`'s
/// template size limit (checked before anything else looks at it), then
/// as [`validate_template`] does, with parsing held to `budget`'s work
/// limit, in its turn among the renders (see
/// [`Budget::max_parallel_renders`]). Call it off the async threads.
pub fn check_template(text: &str, budget: &Budget) -> Result<(), TemplateError> {
    check_template_size(text, budget)?;
    let _turn = super::work::Turn::take(budget.max_parallel_renders);
    validate_within(text, budget)
}

/// Checks that `template` parses and stays inside the static bounds of its
/// budget, so a bad template is refused when a secret is written instead of
/// being silently ignored when it is read. Whether it runs within the budget
/// depends on the value: [`apply_template`] tells.
///
/// An empty template is valid and means "no template". Besides syntax
/// errors, these are refused: named templates (`define`, `block`,
/// `template`, which can recurse until the stack overflows), line breaks
/// inside an action, non-ASCII characters inside an action outside quoted
/// strings, nesting deeper than [`MAX_NESTING`], more than
/// [`MAX_ACTION_REFERENCES`] data references in one action, `printf`
/// widths or precisions above [`MAX_PRINTF_SIZE`], and names starting with
/// `_aegis_` (Aegis's own functions and variables).
pub fn validate_template(template: &str) -> Result<(), TemplateError> {
    validate_within(template, &Budget::default())
}

/// [`validate_template`], with parsing held to `budget`'s work limit.
fn validate_within(template: &str, budget: &Budget) -> Result<(), TemplateError> {
    if template.is_empty() {
        return Ok(());
    }
    let scanned = check_actions(template)?;
    budget.check_parse_cost(scanned.parse_cost).map_err(TemplateError::budget)?;
    with_stack(scanned.depth, || parse_template(&scanned).map(drop))?
}

/// A template after the lexical checks: rewritten with a step before each
/// action, and how deep it nests.
struct Scanned {
    text: String,
    /// The template with only the steps added: what a parse error is
    /// reported on, so that it never shows the other rewrites.
    plain: String,
    depth: usize,
    /// About the bytes `gtmpl` holds while it parses `text` (see
    /// [`budget::PARSE_BYTES_PER_ACTION_BYTE`]).
    parse_cost: usize,
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
    let parse = |text: &str| {
        let guarded = format!("{text}{{{{/* */}}}}");
        // A last line of defence: a gtmpl panic we did not foresee becomes an
        // error instead of taking the caller down.
        let _quiet = quiet::Quiet::enter();
        std::panic::catch_unwind(move || {
            let mut parsed = gtmpl::Template::default();
            parsed.add_funcs(budget::FUNCS);
            parsed.parse(guarded).map(|()| parsed).map_err(|e| TemplateError::new(strip_step(&e.to_string())))
        })
        .map_err(|_| TemplateError::new("the template engine failed on this template".to_owned()))?
    };
    parse(&scanned.text).map_err(|e| match parse(&scanned.plain) {
        Err(plain) => plain,
        Ok(_) => e,
    })
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

/// Runs a parsed template (whose parse cost `parse_cost` bytes of work)
/// within `budget`: `Ok(None)` when it fails (or the engine panics), an
/// error when it exceeds the budget.
fn render(
    parsed: &gtmpl::Template,
    data: gtmpl::Value,
    parse_cost: usize,
    budget: &Budget,
) -> Result<Option<String>, TemplateError> {
    let meter = budget::Metered::start(*budget, data.clone(), parse_cost);
    let context = gtmpl::Context::from(data);
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
    let mut scan = Scan::new(template);
    while let Some(found) = template[scan.offset..].find("{{") {
        scan.action(scan.offset + found)?;
    }
    Ok(scan.finish())
}

/// Where [`check_actions`] is in its walk through a template, and what it
/// has written so far.
struct Scan<'a> {
    template: &'a str,
    /// The rewritten template (see [`Scanned`]).
    text: String,
    /// The template with only the steps added (see [`Scanned`]).
    plain: String,
    blocks: Blocks,
    /// The deepest nesting met so far.
    deepest: usize,
    /// Where the walk is: the end of the last action.
    offset: usize,
    /// Characters before `offset`, counted as the walk goes (not from the
    /// start for every action, which is quadratic in the template's length).
    counted: usize,
    declarations: usize,
    /// Bytes of the template outside actions (text, cheap to parse).
    text_bytes: usize,
    /// Unless the template declares `$` itself (Go lets it), `$.field` is
    /// read from the data directly (see `budget::ROOT_FUNC`). Conservative: a
    /// `$ :=` inside a quoted string also counts.
    dollar_is_data: bool,
}

impl<'a> Scan<'a> {
    fn new(template: &'a str) -> Self {
        Scan {
            template,
            text: String::with_capacity(template.len() + template.len() / 2),
            plain: String::with_capacity(template.len() + template.len() / 2),
            blocks: Blocks::default(),
            deepest: 0,
            offset: 0,
            counted: 0,
            declarations: 0,
            text_bytes: 0,
            dollar_is_data: !template.match_indices('$').any(|(i, _)| declares_dollar(&template[i + 1..])),
        }
    }

    /// Checks the action whose `{{` is at `start`, then writes the text
    /// before it and the action, rewritten.
    fn action(&mut self, start: usize) -> Result<(), TemplateError> {
        let template = self.template;
        let at = self.counted + template[self.offset..start].chars().count() + 1;
        let (body, trim) = trim_marker(template, self.offset, start, at)?;
        let action = action_len(body, at, self.dollar_is_data)?;
        check_keyword(body).map_err(|why| TemplateError::new(format!("{why} (the action at character {at})")))?;
        self.count(&action, at)?;
        let (word, next) = keywords(body);
        let (role, closes) = self.blocks.follow(word, next);
        let depth = self.blocks.open + action.parens;
        check_depth(depth, at)?;
        self.deepest = self.deepest.max(depth);
        self.blocks.open -= closes;
        let end = template.len() - body.len() + action.len;
        self.counted = at - 1 + template[start..end].chars().count();
        self.push_text(start);
        self.push_action(Found { span: start..end, body, trim, action, role });
        self.offset = end;
        Ok(())
    }

    /// Refuses an action (at character `at`) with more data references than
    /// [`MAX_ACTION_REFERENCES`], or that brings the template's declarations
    /// past [`MAX_DECLARATIONS`].
    fn count(&mut self, action: &Action, at: usize) -> Result<(), TemplateError> {
        if action.references > MAX_ACTION_REFERENCES {
            return Err(TemplateError::budget(format!(
                "the action at character {at} refers to data {} times, more than the limit of {MAX_ACTION_REFERENCES} \
                 (template references per action); split it into several actions",
                action.references
            )));
        }
        self.declarations += action.declarations;
        if self.declarations > MAX_DECLARATIONS {
            return Err(TemplateError::budget(format!(
                "the action at character {at} declares variable number {}, more than the limit of \
                 {MAX_DECLARATIONS} (template variable declarations); reuse variables or refer to the data directly",
                self.declarations
            )));
        }
        Ok(())
    }

    /// Writes the text from the walk's offset up to `start`.
    fn push_text(&mut self, start: usize) {
        let text = &self.template[self.offset..start];
        self.text.push_str(text);
        self.text_bytes += text.len();
        self.plain.push_str(text);
    }

    /// Writes an action: a comment as it is; any other with a step before
    /// it (in both texts) and, in the rewritten one, its rewrites and what
    /// its role adds.
    fn push_action(&mut self, found: Found<'_>) {
        let template = self.template;
        let Found { span, body, trim, action, role } = found;
        if action.comment {
            self.text.push_str(&template[span.clone()]);
            self.plain.push_str(&template[span]);
            return;
        }
        let (step, own) = if trim {
            (format!("{{{{- {}}}}}{{{{", budget::STEP_FUNC), &template[template.len() - body.len()..span.end])
        } else {
            (format!("{{{{{}}}}}", budget::STEP_FUNC), &template[span])
        };
        self.text.push_str(&step);
        self.plain.push_str(&step);
        self.plain.push_str(own);
        let own = &with_rewrites(own, own.len() - action.len, &action.rewrites);
        push_role(&mut self.text, own, role, trim, body);
    }

    /// Writes the text after the last action and tells what parsing the
    /// result costs.
    fn finish(mut self) -> Scanned {
        let rest = &self.template[self.offset..];
        self.text.push_str(rest);
        self.text_bytes += rest.len();
        self.plain.push_str(rest);
        let parse_cost = (self.text.len() - self.text_bytes)
            .saturating_mul(budget::PARSE_BYTES_PER_ACTION_BYTE)
            .saturating_add(self.text_bytes.saturating_mul(budget::PARSE_BYTES_PER_TEXT_BYTE));
        Scanned { text: self.text, plain: self.plain, depth: self.deepest, parse_cost }
    }
}

/// One action as [`Scan::action`] found it.
struct Found<'a> {
    /// From its `{{` to the end of its `}}` in the template.
    span: std::ops::Range<usize>,
    /// What follows `{{` and the trim marker (`- `), if any.
    body: &'a str,
    /// Whether it starts with a trim marker (`{{- `).
    trim: bool,
    action: Action,
    role: Role,
}

/// The body of the action whose `{{` is at `start` (the action at character
/// `at`; the text before it starts at `offset`), and whether it starts with a
/// trim marker (`{{- `), which is then not part of the body.
fn trim_marker(template: &str, offset: usize, start: usize, at: usize) -> Result<(&str, bool), TemplateError> {
    let body = &template[start + 2..];
    let Some(trimmed) = body.strip_prefix("- ") else { return Ok((body, false)) };
    // gtmpl miscounts the bytes to trim after a multi-byte character.
    let before = template[offset..start].trim_end();
    if before.chars().next_back().is_some_and(|c| !c.is_ascii()) {
        return Err(TemplateError::new(format!(
            "a {{{{- trim marker right after a non-ASCII character is not supported (the action at character {at})"
        )));
    }
    Ok((trimmed, true))
}

/// Refuses nesting (blocks and parentheses) deeper than [`MAX_NESTING`] at
/// the action at character `at`.
fn check_depth(depth: usize, at: usize) -> Result<(), TemplateError> {
    if depth > MAX_NESTING {
        return Err(TemplateError::budget(format!(
            "blocks (if, with, range, else if) and parentheses nest {depth} deep at character {at}, deeper than \
             the limit of {MAX_NESTING} (template nesting depth); flatten the template"
        )));
    }
    Ok(())
}

/// The blocks open at a point of the walk.
#[derive(Default)]
struct Blocks {
    /// For each open block: its range number, and whether it has an else, if it is a range.
    ranges: Vec<Option<(usize, bool)>>,
    /// How many ranges the walk has met: the number of the next one.
    numbered: usize,
    /// The nesting each open block adds: 1, plus 1 per `else if` of its chain.
    chains: Vec<usize>,
    /// The nesting all open blocks add.
    open: usize,
}

impl Blocks {
    /// Follows an action whose first two words are `word` and `next`: opens,
    /// extends or closes a block. Returns the action's role and how much
    /// nesting it closes (taken off [`Blocks::open`] once its own depth is checked).
    fn follow(&mut self, word: &str, next: &str) -> (Role, usize) {
        match word {
            "if" | "with" => {
                self.chains.push(1);
                self.ranges.push(None);
                self.open += 1;
            }
            "range" => {
                let n = self.numbered;
                self.chains.push(1);
                self.ranges.push(Some((n, false)));
                self.numbered += 1;
                self.open += 1;
                return (Role::Range(n), 0);
            }
            "else" if next == "if" => {
                if let Some(chain) = self.chains.last_mut() {
                    *chain += 1;
                    self.open += 1;
                }
            }
            "else" => return (self.range_else(), 0),
            "end" => {
                let closes = self.chains.pop().unwrap_or(0);
                if let Some(Some((_, true))) = self.ranges.pop() {
                    return (Role::RangeElseEnd, closes);
                }
                return (Role::Other, closes);
            }
            _ => {}
        }
        (Role::Other, 0)
    }

    /// An `else` without `if`: a range's else gets an `if` around it (one more level).
    fn range_else(&mut self) -> Role {
        if let (Some(Some((n, has_else))), Some(chain)) = (self.ranges.last_mut(), self.chains.last_mut()) {
            *has_else = true;
            *chain += 1;
            self.open += 1;
            return Role::RangeElse(*n);
        }
        Role::Other
    }
}

/// Writes an action (its text up to and including `}}`, rewritten) with
/// what its role adds; `body` is the action's body, `trim` whether it
/// starts with a trim marker.
fn push_role(text: &mut String, own: &str, role: Role, trim: bool, body: &str) {
    match role {
        Role::Range(n) => push_sorted_range(text, own, n),
        Role::RangeElse(n) => {
            // gtmpl runs a range's else also after the iterations; Go only when there were none.
            text.push_str(own);
            text.push_str(&format!("{{{{if {} {n}{}}}}}", budget::EMPTY_FUNC, right_trim(own)));
        }
        Role::RangeElseEnd => {
            text.push_str(if trim { "end}}{{" } else { "{{end}}" });
            text.push_str(own);
        }
        Role::Other => {
            let (word, next) = keywords(body);
            push_pipeline(text, own, pipeline_use(word, next, body));
        }
    }
}

/// An action with its rewrites applied (see [`rewrite_at`]): a float
/// literal that `gtmpl` would truncate becomes a call that gives the float
/// as the same numbers in the data reach the template (`-1.5` becomes
/// `(_aegis_float "-1.5")`, see `template_number`), and a field chain
/// becomes a call that evaluates it as Go does. `shift` is where the body
/// starts in `action`.
fn with_rewrites<'a>(action: &'a str, shift: usize, rewrites: &[(std::ops::Range<usize>, String)]) -> Cow<'a, str> {
    if rewrites.is_empty() {
        return Cow::Borrowed(action);
    }
    let mut out = String::with_capacity(action.len() + 24 * rewrites.len());
    let mut from = 0;
    for (range, text) in rewrites {
        let Some(before) = action.get(from..shift + range.start) else { continue };
        out.push_str(before);
        out.push_str(text);
        from = shift + range.end;
    }
    out.push_str(&action[from..]);
    Cow::Owned(out)
}

/// What the rewrite does with an action besides the step before it.
enum Role {
    /// `range` number n: it visits a map sorted by key.
    Range(usize),
    /// The `else` of range number n: only when it ran no iteration.
    RangeElse(usize),
    /// The `end` of a range with an `else`: it also closes the `if` around the `else`.
    RangeElseEnd,
    /// Printed (if it prints anything) as Go prints it.
    Other,
}

/// What an action (other than a `range`) does with its pipeline's value.
enum Use {
    /// Prints it.
    Printed,
    /// Keeps it (a variable) or tests it (`if`, `else if`, `with`): `gtmpl`
    /// copied it, so its bytes are counted.
    Kept,
    /// Nothing: no pipeline (`else`, `end`, ...).
    Neither,
}

/// What an action does with its pipeline's value: it prints it unless it
/// is a block keyword or declares or assigns a variable.
fn pipeline_use(word: &str, next: &str, body: &str) -> Use {
    const KEYWORDS: [&str; 10] =
        ["if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"];
    if matches!(word, "if" | "with") || (word == "else" && next == "if") {
        return Use::Kept;
    }
    if KEYWORDS.contains(&word) {
        return Use::Neither;
    }
    let Some(var) = body.trim_start().strip_prefix('$') else { return Use::Printed };
    let rest = var.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_').trim_start();
    if rest.starts_with(":=") || rest.starts_with(',') || (rest.starts_with('=') && !rest.starts_with("==")) {
        Use::Kept
    } else {
        Use::Printed
    }
}

/// Pushes an action (its text up to and including `}}`); a printing action
/// gets its value printed by [`budget::PRINT_FUNC`], as Go prints it (`gtmpl`
/// prints arrays and maps in Rust's debug form, maps in no fixed order); a
/// kept value goes through [`budget::METER_FUNC`], which counts its bytes.
fn push_pipeline(text: &mut String, action: &str, used: Use) {
    let func = match used {
        Use::Printed => budget::PRINT_FUNC,
        Use::Kept => budget::METER_FUNC,
        Use::Neither => {
            text.push_str(action);
            return;
        }
    };
    // A trim marker (` -}}`, only with a space in `gtmpl`) stays at the end.
    let close = pipeline_end(action);
    text.push_str(&action[..close]);
    text.push_str(" | ");
    text.push_str(func);
    text.push_str(&action[close..]);
}

/// Where an action (its text up to and including `}}`) ends its pipeline:
/// before `}}`, or before a trim marker ` -}}`.
fn pipeline_end(action: &str) -> usize {
    let close = action.len() - 2;
    let bytes = action.as_bytes();
    if close >= 2 && bytes[close - 1] == b'-' && bytes[close - 2] == b' ' {
        close - 2
    } else {
        close
    }
}

/// The action's trim marker (` -`) for an action added right after it, so
/// that the text that follows is still trimmed; empty without one.
fn right_trim(action: &str) -> &'static str {
    if pipeline_end(action) < action.len() - 2 {
        " -"
    } else {
        ""
    }
}

/// Where the key variable of `range $k, $v := ...` is in the action.
fn range_key(action: &str, close: usize) -> Option<std::ops::Range<usize>> {
    let var = |from: usize| -> Option<std::ops::Range<usize>> {
        let rest = &action[from..close];
        let at = from + (rest.len() - rest.trim_start().len());
        let name = action[at..close].strip_prefix('$')?;
        let len = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
        Some(at..at + 1 + len)
    };
    let key = var(action.find("range")? + "range".len())?;
    let comma = &action[key.end..close];
    let after_comma = key.end + (comma.len() - comma.trim_start().len());
    let value = var(action[after_comma..close].strip_prefix(',').map(|_| after_comma + 1)?)?;
    action[value.end..close].trim_start().starts_with(":=").then_some(key)
}

/// Pushes a `range` action so that it visits a map's entries sorted by key,
/// as Go does (`gtmpl` visits them in its `HashMap`'s order, which changes
/// from one render to the next): the pipeline's value goes through
/// [`budget::RANGE_FUNC`], which turns a map into its values in key order,
/// and the key variable of `range $k, $v := ...` is declared from
/// [`budget::KEY_FUNC`] at the start of each iteration. `n` numbers the
/// ranges of the template.
fn push_sorted_range(text: &mut String, action: &str, n: usize) {
    let close = pipeline_end(action);
    let index = format!("$_aegis_index{n}");
    let key = range_key(action, close);
    match &key {
        Some(key) => {
            text.push_str(&action[..key.start]);
            text.push_str(&index);
            text.push_str(&action[key.end..close]);
        }
        None => text.push_str(&action[..close]),
    }
    text.push_str(&format!(" | {} {n}", budget::RANGE_FUNC));
    text.push_str(&action[close..]);
    if let Some(key) = key {
        // With a trim marker, the text after the range is trimmed after this action.
        let trim = right_trim(action);
        text.push_str(&format!("{{{{{} := {} {n} {index}{trim}}}}}", &action[key], budget::KEY_FUNC));
    }
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
    /// Variable declarations (`:=`).
    declarations: usize,
    /// Whether it is a comment.
    comment: bool,
    /// What the rewrite replaces in the body, in order: float literals
    /// `gtmpl` cannot hold, and field chains (see [`rewrite_at`]).
    rewrites: Vec<(std::ops::Range<usize>, String)>,
}

/// Scans an action's body up to and including its closing `}}`.
fn action_len(body: &str, at: usize, dollar_is_data: bool) -> Result<Action, TemplateError> {
    let syntax = |why: &str| TemplateError::new(format!("{why} in the action at character {at}"));
    if let Some(comment) = body.strip_prefix("/*") {
        let end = comment.find("*/").ok_or_else(|| syntax("unclosed comment"))? + 4;
        let rest = &body[end..];
        let len = match (rest.starts_with("}}"), rest.starts_with(" -}}")) {
            (true, _) => end + 2,
            (_, true) => end + 4,
            _ => return Err(syntax("comment end before closing delimiter")),
        };
        return Ok(Action { len, parens: 0, references: 0, declarations: 0, comment: true, rewrites: Vec::new() });
    }
    let (mut parens, mut deepest, mut references, mut declarations) = (0usize, 0usize, 0usize, 0usize);
    let mut rewrites = Vec::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if body[i..].starts_with("}}") {
            return Ok(Action { len: i + 2, parens: deepest, references, declarations, comment: false, rewrites });
        }
        if let Some(rewrite) = rewrite_at(body, i, dollar_is_data) {
            rewrites.push(rewrite);
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
            ')' if parens > 0 => {
                parens -= 1;
                // A parenthesized pipeline's value is counted (see `budget::METER_FUNC`).
                rewrites.push((i..i + 1, format!(" | {})", budget::METER_FUNC)));
            }
            ':' if body[i..].starts_with(":=") => declarations += 1,
            '.' | '$' => references += 1,
            '_' if body[i..].starts_with(budget::RESERVED)
                && !body[..i].ends_with(|p: char| p == '.' || p == '_' || p.is_ascii_alphanumeric()) =>
            {
                return Err(syntax("a name starting with _aegis_ (reserved for Aegis's own functions and variables)"));
            }
            '\r' | '\n' => return Err(syntax("line break (actions must be on one line)")),
            c if !c.is_ascii() => return Err(syntax("non-ASCII character outside a quoted string")),
            _ => {}
        }
    }
    Err(syntax("unclosed action (no matching }})"))
}

/// Whether `$` followed by `rest` declares or assigns `$` itself (`$ :=`,
/// `$ =`, `$, $v :=`), after which `$` is no longer the data.
fn declares_dollar(rest: &str) -> bool {
    if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
        return false;
    }
    let rest = rest.trim_start();
    rest.starts_with(":=") || rest.starts_with(',') || (rest.starts_with('=') && !rest.starts_with("=="))
}

/// A float literal starting at `at` that `gtmpl` would not hold as Go
/// does (see [`super::gofmt::gtmpl_holds`]), with the call that gives it:
/// Go holds a literal with a point or an exponent as a float64, where
/// `gtmpl` truncates a negative or tiny one to an integer (`-1.5` to -1,
/// `1e-20` to 0), saturates a large one and makes a whole one an integer.
fn misheld_float(body: &str, at: usize) -> Option<(std::ops::Range<usize>, String)> {
    let bytes = body.as_bytes();
    let next_is_digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let starts = match bytes[at] {
        b'0'..=b'9' => true,
        b'+' | b'-' => next_is_digit(at + 1) || (bytes.get(at + 1) == Some(&b'.') && next_is_digit(at + 2)),
        b'.' => next_is_digit(at + 1),
        _ => false,
    };
    let after_word =
        body[..at].ends_with(|p: char| p.is_ascii_alphanumeric() || matches!(p, '_' | '.' | '$' | ')' | '+' | '-'));
    if !starts || after_word {
        return None;
    }
    let mut end = at + usize::from(matches!(bytes[at], b'+' | b'-'));
    if body[end..].starts_with("0x") || body[end..].starts_with("0X") {
        return None;
    }
    while let Some(&b) = bytes.get(end) {
        let sign_of_exponent = matches!(b, b'+' | b'-') && matches!(bytes[end - 1], b'e' | b'E');
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || sign_of_exponent) {
            break;
        }
        end += 1;
    }
    let literal = &body[at..end];
    if !literal.contains(['.', 'e', 'E']) {
        return None;
    }
    let f = literal.parse::<f64>().ok().filter(|f| f.is_finite())?;
    (!super::gofmt::gtmpl_holds(f))
        .then(|| (at..end, format!("({} \"{}\")", budget::FLOAT_FUNC, super::gofmt::go_float(f))))
}

/// What the rewrite replaces at `at` in an action's body, if anything: a
/// float literal `gtmpl` would truncate (see [`misheld_float`]), or a field
/// chain (see [`field_chain`]).
fn rewrite_at(body: &str, at: usize, dollar_is_data: bool) -> Option<(std::ops::Range<usize>, String)> {
    misheld_float(body, at).or_else(|| field_chain(body, at, dollar_is_data))
}

/// A field chain starting at `at` whose evaluation `gtmpl` gets wrong, with
/// the call that evaluates it as Go does ([`budget::FIELD_FUNC`]): `.a.b`
/// becomes `(_aegis_field . "a" "b")` and `$x.a` becomes `(_aegis_field $x
/// "a")`. `gtmpl` fails on a field of a missing value, where Go gives
/// `<no value>`. A single field of dot (`.a`) is left as it is: a map's
/// entry or missing, in both. A chain of the data (`$.a`, `$.a.b`) becomes
/// `(_aegis_root "a" "b")`, read without copying all of `$` (see
/// [`budget::ROOT_FUNC`]), unless the template declares `$` itself
/// (`dollar_is_data` false): then `$.a` is `(_aegis_field $ "a")`, a
/// variable's field like the others (so a field of a missing `$` is
/// `<no value>`, as in Go).
fn field_chain(body: &str, at: usize, dollar_is_data: bool) -> Option<(std::ops::Range<usize>, String)> {
    let bytes = body.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let prev = body[..at].bytes().next_back();
    if prev.is_some_and(|p| is_name(p) || matches!(p, b'.' | b'$' | b')' | b']')) {
        return None;
    }
    let (root, mut end, rooted_in_dot) = match bytes[at] {
        b'.' => (".".to_owned(), at, true),
        b'$' => {
            let len = bytes[at + 1..].iter().take_while(|&&b| is_name(b)).count();
            (body[at..at + 1 + len].to_owned(), at + 1 + len, false)
        }
        _ => return None,
    };
    let mut names = Vec::new();
    while bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_') {
        let len = bytes[end + 1..].iter().take_while(|&&b| is_name(b)).count();
        names.push(&body[end + 1..end + 1 + len]);
        end += 1 + len;
    }
    let plain = names.len() < 2 && rooted_in_dot;
    if names.is_empty() || plain {
        return None;
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    if root == "$" && dollar_is_data {
        // Read from the data without copying all of `$` (see `budget::ROOT_FUNC`).
        return Some((at..end, format!("({} {})", budget::ROOT_FUNC, quoted.join(" "))));
    }
    Some((at..end, format!("({} {root} {})", budget::FIELD_FUNC, quoted.join(" "))))
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

/// Runs `template` over `value` when the value is a JSON object; `None` when
/// it is not, or when the template does not parse or fails to run; an error
/// when it is over `budget`. Fields the template could not fill come out as
/// [`NO_VALUE`](crate::NO_VALUE), as in Go.
pub fn apply_template(value: &str, template: &str, budget: &Budget) -> Result<Option<String>, TemplateError> {
    // A stored template larger than the limit (an older version's, or the
    // limit was lowered) is never parsed: parsing holds all of it at once.
    budget.check_template_size(template.len()).map_err(TemplateError::budget)?;
    let Some(object) = parse_object(value) else { return Ok(None) };
    let _turn = super::work::Turn::take(budget.max_parallel_renders);
    let scanned = match check_actions(template) {
        Ok(scanned) => scanned,
        Err(e) if e.is_over_budget() => return Err(e),
        Err(_) => return Ok(None),
    };
    budget.check_parse_cost(scanned.parse_cost).map_err(TemplateError::budget)?;
    let data = to_template_value(serde_json::Value::Object(object));
    let rendered = with_stack(scanned.depth, || match parse_template(&scanned) {
        Ok(parsed) => render(&parsed, data, scanned.parse_cost, budget),
        Err(_) => Ok(None),
    })??;
    Ok(rendered)
}

/// Converts parsed JSON into the template engine's values.
///
/// Objects become maps, so a missing key reads as `<no value>` as in Go.
/// JSON `null` also prints `<no value>`: Go holds it as a nil `interface{}`.
fn to_template_value(json: serde_json::Value) -> gtmpl::Value {
    use serde_json::Value as J;
    match json {
        // Nil, not missing: a field of null fails in Go, a field of a missing value does not.
        J::Null => gtmpl::Value::Nil,
        J::Bool(b) => gtmpl::Value::Bool(b),
        J::Number(n) => template_number(&n),
        J::String(s) => gtmpl::Value::String(s),
        J::Array(items) => gtmpl::Value::Array(items.into_iter().map(to_template_value).collect()),
        J::Object(map) => gtmpl::Value::Map(map.into_iter().map(|(k, v)| (k, to_template_value(v))).collect()),
    }
}

/// Integers stay integers (printed in full); other numbers are floats.
///
/// `gtmpl` holds a float as a float only when it is positive with a
/// fraction of at least `f64::EPSILON`: it truncates any other to an
/// integer (-1.5 becomes -1, 1e-20 becomes 0), saturates a large one
/// (1e21 becomes 18446744073709551615) and makes a whole one an integer.
/// Zero is held as the integer 0 (false in an `if`, as in Go); any other
/// float the engine cannot hold reaches the template as a value only
/// Aegis's functions make (see [`super::gofmt::float_value`]), which they
/// print, format and compare as the float.
fn template_number(n: &serde_json::Number) -> gtmpl::Value {
    if let Some(u) = n.as_u64() {
        gtmpl::Value::from(u)
    } else if let Some(i) = n.as_i64() {
        gtmpl::Value::from(i)
    } else {
        match n.as_f64() {
            #[allow(clippy::cast_possible_truncation)] // whole and below a million
            Some(f) if super::gofmt::gtmpl_holds(f) && f.fract() == 0.0 => gtmpl::Value::from(f as i64),
            Some(f) if super::gofmt::gtmpl_holds(f) => gtmpl::Value::from(f),
            Some(f) => super::gofmt::float_value(f),
            None => gtmpl::Value::NoValue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{render, tf, TEMPLATE};

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
            ("{{.a | _aegis_range 99999999999 | len}}", "reserved"),
            ("{{range $_aegis_index0, $v := .}}{{end}}", "reserved"),
            ("{{_aegis_step}}", "reserved"),
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
            // Only names are reserved: not text, fields or parts of names.
            (r#"{{"_aegis_step"}}{{._aegis_x}}{{.a_aegis_b}}{{$x_aegis_ := 1}}"#, "_aegis_step<no value><no value>"),
            ("{{- .a -}} ", "x"),
            ("caf\u{e9} {{.a}}", "caf\u{e9} x"),
            ("{{printf \"%d-%s-\u{e9}\" .n .a}}", "5-x-\u{e9}"),
            ("{{\"\\u00e9\\t\\\"\"}}", "\u{e9}\t\""),
            ("{{`raw`}}", "raw"),
            ("{{if .a}}yes{{end}}", "yes"),
        ];
        for (template, want) in cases {
            assert_eq!(validate_template(template), Ok(()), "{template:?}");
            assert_eq!(tf(value, template), want, "{template:?}");
        }
    }

    #[test]
    fn unsafe_stored_templates_leave_the_value_untouched() {
        // Stored before validation existed (e.g. imported from VSecM).
        let value = r#"{"a":"x"}"#;
        for template in ["{{.a ", "{{template \"\" .}}"] {
            assert_eq!(tf(value, template), value, "{template:?}");
        }
        // Over budget is an error, not the raw value.
        let err = render(value, "{{printf \"%999999999d\" 1}}", &Budget::default()).unwrap_err();
        assert!(err.is_over_budget() && err.reason().contains("printf"), "{err}");
    }

    // Budgets (F2) and nesting (F4).

    fn over(value: &str, template: &str, budget: &Budget) -> TemplateError {
        let err = render(value, template, budget).unwrap_err();
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
        let template = format!("{{{{range .a}}}}{}{{{{end}}}}", "x".repeat(60_000));
        let started = std::time::Instant::now();
        let err = over(&value, &template, &Budget::default());
        assert!(err.reason().contains("output is larger than the limit of 1048576 bytes"), "{err}");
        assert!(err.reason().contains("AEGIS_TEMPLATE_MAX_OUTPUT_BYTES"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Exactly at the limit is fine.
        let small = Budget { max_output_bytes: 6, ..Budget::default() };
        assert_eq!(render(r#"{"a":"abcdef"}"#, "{{.a}}", &small).unwrap(), "abcdef");
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
        assert_eq!(render(&big_array(10), "{{range .a}}{{.}}{{end}}", &tight).unwrap().len(), 10);
    }

    /// Issue 19, item 17: the budget is counted by the renderer (steps and
    /// bytes), never timed, so the same template fits or not the same way
    /// whatever the machine's load: exactly at its count it fits, one below
    /// it does not, on every run, while other threads keep the cores busy.
    #[test]
    fn the_budget_is_counted_not_timed() {
        let value = big_array(2_000);
        let template = "{{range .a}}{{.}}{{end}}";
        let run = |budget: &Budget| render(&value, template, budget);
        // Find the exact counts: the fewest steps and bytes it fits in.
        let least = |fits: &dyn Fn(usize) -> bool| {
            let (mut low, mut high) = (0usize, 1usize << 24);
            assert!(fits(high));
            while low + 1 < high {
                let mid = (low + high) / 2;
                if fits(mid) {
                    high = mid;
                } else {
                    low = mid;
                }
            }
            high
        };
        let steps = least(&|n| run(&Budget { max_steps: n as u64, ..Budget::default() }).is_ok()) as u64;
        let fits = |w: usize| run(&Budget { max_work_bytes: w, ..Budget::default() }).is_ok();
        let work = least(&fits);
        assert!(steps > 4_000 && work > 2_000 * 32, "{steps} steps, {work} bytes");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            assert!(run(&Budget { max_steps: steps, ..Budget::default() }).is_ok());
            let e = run(&Budget { max_steps: steps - 1, ..Budget::default() }).unwrap_err();
            assert!(e.reason().contains("AEGIS_TEMPLATE_MAX_STEPS"), "{e}");
            assert!(fits(work));
            let e = run(&Budget { max_work_bytes: work - 1, ..Budget::default() }).unwrap_err();
            assert!(e.reason().contains("AEGIS_TEMPLATE_MAX_WORK_BYTES"), "{e}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.into_iter().for_each(|t| t.join().unwrap());
    }

    /// Issue 19, item 4: variables hold copies of values; a template that
    /// keeps copy after copy of the secret is stopped by the work bound
    /// long before it holds much memory.
    #[test]
    fn values_held_in_variables_are_bounded() {
        let value = format!(r#"{{"a":"{}"}}"#, "x".repeat(400_000));
        let err = over(&value, &"{{$v := .a}}".repeat(90), &Budget::default());
        assert!(err.reason().contains("more than 33554432 bytes of values"), "{err}");
        assert!(err.reason().contains("AEGIS_TEMPLATE_MAX_WORK_BYTES") && !err.reason().contains("xxx"), "{err}");
        // Also when assigned, tested, or copied inside parentheses.
        for template in [
            "{{range .n}}{{$v := $}}{{end}}",
            "{{range .n}}{{if $}}{{end}}{{end}}",
            "{{range .n}}{{with $}}{{end}}{{end}}",
            "{{range .n}}{{($).k}}{{end}}",
            "{{range .n}}{{len $}}{{end}}",
        ] {
            let value = format!(r#"{{"a":"{}","k":"v","n":[{}]}}"#, "x".repeat(100_000), vec!["1"; 400].join(","));
            let err = over(&value, template, &Budget::default());
            assert!(err.reason().contains("AEGIS_TEMPLATE_MAX_WORK_BYTES"), "{template}: {err}");
        }
        // A field of the data is read without copying the data: this stays small.
        let value = format!(r#"{{"a":"{}","k":"v","n":[{}]}}"#, "x".repeat(100_000), vec!["1"; 400].join(","));
        let out = render(&value, "{{range .n}}{{$.k}}{{end}}", &Budget::default());
        assert_eq!(out.unwrap(), "v".repeat(400));
    }

    #[test]
    fn a_template_larger_than_the_limit_is_refused_before_it_is_parsed() {
        let small = Budget { max_template_bytes: 12, ..Budget::default() };
        assert!(check_template("{{.a}}{{.b}}", &small).is_ok(), "exactly at the limit");
        let e = check_template("{{.a}}{{.bc}}", &small).unwrap_err();
        assert!(e.is_over_budget(), "{e}");
        assert!(e.reason().contains("the template is 13 bytes, larger than the limit of 12 bytes"), "{e}");
        assert!(e.reason().contains("AEGIS_TEMPLATE_MAX_BYTES"), "{e}");
        // A stored one (never checked against this limit) is over budget when rendered.
        let e = over(r#"{"a":"b"}"#, "{{.a}}{{.bc}}", &small);
        assert!(e.reason().contains("AEGIS_TEMPLATE_MAX_BYTES"), "{e}");
        // The default: 64 KiB.
        let e = check_template(&"{{$v := .a}}".repeat(6_000), &Budget::default()).unwrap_err();
        assert!(e.reason().contains("larger than the limit of 65536 bytes"), "{e}");
    }

    /// Issue 19, item 4: parsing is inside the budget: a template whose
    /// parse would hold more than the work limit is refused before it is
    /// parsed, at write time and when a stored one is rendered; text
    /// outside actions is cheap.
    #[test]
    fn parsing_counts_as_work() {
        let small = Budget { max_work_bytes: 100_000, ..Budget::default() };
        let actions = "{{.a}}".repeat(20);
        assert!(check_template(&actions, &small).is_ok());
        let e = check_template(&"{{.a}}".repeat(200), &small).unwrap_err();
        assert!(e.is_over_budget() && e.reason().starts_with("parsing it takes about"), "{e}");
        assert!(e.reason().contains("AEGIS_TEMPLATE_MAX_WORK_BYTES"), "{e}");
        let e = over(r#"{"a":"b"}"#, &"{{.a}}".repeat(200), &small);
        assert!(e.reason().starts_with("parsing it takes about"), "{e}");
        assert!(check_template(&format!("{{{{.a}}}}{}", "x".repeat(20_000)), &small).is_ok());
    }

    #[test]
    fn declarations_are_bounded_and_dollar_may_be_declared_as_in_go() {
        let ok = "{{$v := .a}}".repeat(MAX_DECLARATIONS);
        assert!(validate_template(&ok).is_ok());
        let e = validate_template(&format!("{ok}{{{{range $i, $x := .a}}}}{{{{end}}}}")).unwrap_err();
        assert!(
            e.is_over_budget() && e.reason().contains("more than the limit of 100 (template variable declarations)"),
            "{e}"
        );
        // Go lets a template declare `$`; then `$.b` is that variable's field (output recorded with Go).
        let value = r#"{"a":{"b":"inner"},"b":"outer"}"#;
        assert_eq!(tf(value, "{{$.b}}|{{$ := .a}}{{$.b}}|{{$.a.b}}"), "outer|inner|<no value>");
        assert_eq!(tf(value, "{{if eq $.b \"outer\"}}{{$.b}}{{end}}"), "outer");
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
        // Verbs the size estimate does not walk: an unknown verb keeps its
        // width in Go's `%!z(...)` text, so the result is bounded as it grows.
        for format in ["%[1]*z".repeat(2000), "%[1]*O".repeat(2000)] {
            let err = over(&format!(r#"{{"f":"{format}"}}"#), "{{printf .f 9999 7}}", &Budget::default());
            assert!(err.reason().contains("output"), "{err}");
        }
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
        assert_eq!(tf(value, "{{printf \"%*d|%5d\" 3 7 123456}}"), "  7|123456");
        assert_eq!(tf(value, "{{printf \"%.*f\" 2 1.5}}"), "1.50");
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
                render(r#"{"a":[1],"b":false}"#, &template, &Budget::default()).unwrap()
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
        assert_eq!(tf(r#"{"a":1}"#, &fine), "x");
    }

    #[test]
    fn large_templates_are_checked_in_linear_time() {
        // 85,000 actions in 1 MiB: the lexical walk must not be quadratic.
        let template = "{{.a}}/*x*/".repeat(85_000);
        let started = std::time::Instant::now();
        assert!(check_actions(&template).is_ok());
        let roomy = Budget { max_template_bytes: usize::MAX, max_work_bytes: usize::MAX, ..Budget::default() };
        let out = render(r#"{"a":"1"}"#, &template, &roomy).unwrap();
        assert_eq!(out.len(), 85_000 * 6);
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
            assert_eq!(tf(value, template), want, "{template:?}");
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
    fn template_needs_a_json_object() {
        for value in ["[1,2]", "\"text\"", "42", "null", "plain"] {
            assert_eq!(tf(value, "{{.a}}"), value);
        }
    }

    #[test]
    fn template_failure_keeps_the_value() {
        let value = r#"{"a":"str"}"#;
        // Executing fails: a string has no fields.
        assert_eq!(tf(value, "{{.a.b}}"), value);
        // Parsing fails (such a template is refused on write, but old data may hold one).
        assert_eq!(tf(value, "{{.a}"), value);
    }

    #[test]
    fn template_sees_typed_values() {
        let value = r#"{"port":5432,"id":12345678,"ratio":1.5,"on":true,"tags":["a"],"db":{"host":"h"}}"#;
        let template = "{{.port}} {{.id}} {{.ratio}} {{.on}} {{index .tags 0}} {{.db.host}}";
        assert_eq!(tf(value, template), "5432 12345678 1.5 true a h");
        assert_eq!(tf(value, "{{if eq .port 5432}}pg{{end}}"), "pg");
    }

    /// Each template renders `value` as Go's `text/template` did.
    fn renders_as_go(value: &str, cases: &[(&str, &str)]) {
        for (template, go) in cases {
            assert_eq!(tf(value, template), *go, "{template}");
        }
    }

    /// Arrays and maps print, and `range` visits them, as Go's
    /// `text/template` does (outputs recorded with Go's `text/template` over
    /// the same JSON decoded into a `map[string]any`), the same on every
    /// render: `gtmpl` alone prints them in Rust's debug form, visits maps
    /// in an order that changes, and runs a range's else after iterations.
    #[test]
    fn arrays_and_maps_print_and_range_as_in_go_every_time() {
        let value =
            r#"{"b":"x","a":1,"c":null,"d":[1,"two",null,{"z":1,"y":[]}],"e":{"g":"h","f":{"k":true}},"s":"plain"}"#;
        let cases = [
            ("{{.}}", "map[a:1 b:x c:<nil> d:[1 two <nil> map[y:[] z:1]] e:map[f:map[k:true] g:h] s:plain]"),
            ("{{.d}}", "[1 two <nil> map[y:[] z:1]]"),
            (r#"{{printf "%v|%v" .e .d}}"#, "map[f:map[k:true] g:h]|[1 two <nil> map[y:[] z:1]]"),
            (
                r#"{{print .d .e 1 "s" .e}}"#,
                "[1 two <nil> map[y:[] z:1]] map[f:map[k:true] g:h] 1smap[f:map[k:true] g:h]",
            ),
            ("{{println .d .s}}", "[1 two <nil> map[y:[] z:1]] plain\n"),
            ("{{with .e}}{{.}}{{end}}", "map[f:map[k:true] g:h]"),
            ("{{range .d}}{{.}},{{end}}", "1,two,<no value>,map[y:[] z:1],"),
            ("{{$x := .e}}{{$x}}", "map[f:map[k:true] g:h]"),
            ("{{.missing}}", "<no value>"),
            ("{{.c}}", "<no value>"),
            ("a {{- .e -}} b", "amap[f:map[k:true] g:h]b"),
            ("{{.e.f}}", "map[k:true]"),
            ("{{index .d 3}}", "map[y:[] z:1]"),
            (r#"{{ .s | printf "%s" }}"#, "plain"),
            ("{{$y := 5}}{{$y}}{{if eq $y 5}}!{{end}}", "5!"),
            // range visits a map's entries sorted by key, as Go does.
            ("{{range .e}}{{.}};{{end}}", "map[k:true];h;"),
            (
                "{{range $v := .}}{{$v}};{{end}}",
                "1;x;<no value>;[1 two <nil> map[y:[] z:1]];map[f:map[k:true] g:h];plain;",
            ),
            (
                "{{range $k, $v := .}}{{$k}}={{$v}} {{end}}",
                "a=1 b=x c=<no value> d=[1 two <nil> map[y:[] z:1]] e=map[f:map[k:true] g:h] s=plain ",
            ),
            (
                r#"{{range $k, $v := .e}}{{if eq $k "f"}}{{range $k, $v := $v}}{{$k}}={{$v}}{{end}}{{end}}{{$k}};{{end}}"#,
                "k=truef;g;",
            ),
            ("{{range $k, $v := .d}}{{$k}}{{end}}", "0123"),
            ("{{range $i, $v := .d}}{{$i}}{{end}}|{{range $k, $v := .e}}{{$k}}{{end}}", "0123|fg"),
            ("{{range $kv, $k := .e}}{{$kv}}{{end}}", "fg"),
            ("{{range .missing}}x{{else}}none{{end}}|{{range .e}}{{else}}none{{end}}", "none|"),
            ("a {{- range $k, $v := .e -}} [{{$k}}] {{- end}}", "a[f][g]"),
            ("{{- range $k, $v := .e}} {{$k}}{{end}}", " f g"),
            // A range's else runs only when there was no iteration, as in Go.
            ("{{range .d}}{{.}},{{else}}none{{end}}", "1,two,<no value>,map[y:[] z:1],"),
            ("[{{range .e -}} x {{- else -}} none {{- end}}]", "[xx]"),
            ("[{{range .nope -}} x {{- else -}} none {{- end}}]", "[none]"),
            ("{{range .nope}}x{{else}}{{range $k, $v := .e}}{{$k}}{{else}}-{{end}}{{end}}", "fg"),
        ];
        for _ in 0..8 {
            renders_as_go(value, &cases);
        }
    }

    /// The functions `gtmpl` lacks or runs differently from Go (`eq` with
    /// several arguments, numbers of different kinds compared, floats
    /// printed, `len` of a map, `urlquery`, `html`, `js`, `slice`), against
    /// outputs recorded with Go's `text/template` over the same JSON.
    #[test]
    fn functions_give_what_go_gives() {
        let value = r##"{"u":"admin","f":1.5,"arr":["a","b","c"],"m":{"k":"v","j":"w"},"q":"a b&c=d+e","url":"a=b+c/d?e#f~g_h.i-j","h":"<a href='x'>\"&","n":3,"e6":1500000.5,"em7":0.0000001,"fl2":0.1,"neg":-7,"jsv":"a\tb\u00a0c\u200bd<=>&'\"\\ é😀\u0001"}"##;
        let cases = [
            ("{{if eq .u \"x\" \"admin\"}}multi{{end}}|{{if eq .u \"x\" \"y\"}}no{{else}}none{{end}}", "multi|none"),
            ("{{if lt .f 10.0}}lt{{end}}|{{if gt .f 1.0}}gt{{end}}|{{if le .f 1.5}}le{{end}}|{{if ge .f 2.0}}ge{{end}}|{{if ne .f 1.5}}ne{{end}}", "lt|gt|le||"),
            ("{{.e6}} {{.em7}} {{.f}} {{.fl2}} {{.neg}}", "1.5000005e+06 1e-07 1.5 0.1 -7"),
            ("{{print .e6 .f}}|{{print .u .f .f \"x\" .arr}}", "1.5000005e+06 1.5|admin1.5 1.5x[a b c]"),
            ("{{printf \"%v|%v|%-6v|%v\" .e6 .f .u .arr}}", "1.5000005e+06|1.5|admin |[a b c]"),
            ("{{html .h}}|{{html .h .n}}", "&lt;a href=&#39;x&#39;&gt;&#34;&amp;|&lt;a href=&#39;x&#39;&gt;&#34;&amp;3"),
            ("{{js .jsv}}", "a\\u0009b\\u00A0c\\u200Bd\\u003C\\u003D\\u003E\\u0026\\'\\\"\\\\ é😀\\u0001"),
            ("{{urlquery .q}}|{{urlquery .q .n}}|{{urlquery .url}}", "a+b%26c%3Dd%2Be|a+b%26c%3Dd%2Be3|a%3Db%2Bc%2Fd%3Fe%23f~g_h.i-j"),
            ("{{slice .arr 1}}|{{slice .arr 1 2}}|{{slice .u}}|{{slice .u 1 3}}|{{slice .arr 3}}", "[b c]|[b]|admin|dm|[]"),
            ("{{len .m}}|{{len .u}}|{{len .arr}}", "2|5|3"),
            ("{{index .m \"k\"}}|{{index .arr 2}}", "v|c"),
        ];
        renders_as_go(value, &cases);
        // Aegis keeps JSON integers as integers: they compare with integer and float literals alike.
        let value = r#"{"port":5432}"#;
        let template = "{{if eq .port 5432}}a{{end}}{{if eq .port 5432.0}}b{{end}}{{if lt .port 10000.5}}c{{end}}";
        assert_eq!(tf(value, template), "abc");
        // Out of range, or inside a character: the template fails, and the value is kept.
        let value = r#"{"u":"admin","s":"é"}"#;
        for template in ["{{slice .u 2 9}}", "{{slice .u 3 1}}", "{{slice .s 1}}"] {
            assert_eq!(tf(value, template), value, "{template}");
        }
    }

    /// `printf` as Go's `fmt.Sprintf` formats (outputs recorded with Go's
    /// `text/template` over the same JSON, its integers decoded as int64s,
    /// as Aegis keeps them): quoting with `%q`, padding, signs, bases,
    /// `%e`, wrong verbs and missing or extra arguments.
    #[test]
    fn printf_formats_as_go_does() {
        let value = r##"{"s": "ab", "n": 3, "neg": -3, "ff": 255, "e8": 8, "n5": 5, "f": 1.5, "qs": "a\"b\\c\td\u0001\u00e9\u00a0", "x": "x", "zw": "\u200b\ud83d\ude00", "f1005": 1.005, "pi": 3.14159, "f25": 2.5, "fm15": -1.5, "f225": 2.25, "fbig": 1234.5678, "fsmall": 0.000123, "e21": 1e+21, "f35": 3.5, "t": true, "fa": false, "n65": 65, "emoji": 128512, "arr": ["a", 1], "m": {"k": "v"}, "e6": 1500000.5, "em7": 1e-07, "u": "admin", "zero": 0, "nul": null, "tiny": 1e-20, "m2": -2.0, "big2": 2000000.0}"##;
        let cases = [
            ("{{printf \"%05s|%-5s|%5s|%.1s|%5.1s\" .s .s .s .s .s}}", "000ab|ab   |   ab|a|    a"),
            ("{{printf \"%5d|%-5d|%05d|%+d|% d|%.3d|%08.3d|%x|%X|%#x|%o|%#o|%b\" .n .n .neg .n .n .n .n .ff .ff .ff .e8 .e8 .n5}}", "    3|3    |-0003|+3| 3|003|     003|ff|FF|0xff|10|010|101"),
            ("{{printf \"%5v|%-5v|%05v|%v\" .s .f .f .n}}", "   ab|1.5  |001.5|3"),
            ("{{printf \"%q|%10q|%-10q|%q\" .qs .x .x .zw}}", "\"a\\\"b\\\\c\\td\\x01é\\u00a0\"|       \"x\"|\"x\"       |\"\\u200b😀\""),
            ("{{printf \"%f|%.2f|%8.3f|%-8.2f|%08.3f|%+.1f|%e|%.2e|%E|%.0f|%.0f\" .f .f1005 .pi .f25 .fm15 .f225 .fbig .fsmall .e21 .f25 .f35}}", "1.500000|1.00|   3.142|2.50    |-001.500|+2.2|1.234568e+03|1.23e-04|1.000000E+21|2|4"),
            ("{{printf \"%t|%6t|%c|%c\" .t .fa .n65 .emoji}}", "true| false|A|😀"),
            ("{{printf \"%d|%s|%d\" .x .n .missing}}", "%!d(string=x)|%!s(int64=3)|%!d(<nil>)"),
            ("{{printf \"%s %s\" .x}}", "x %!s(MISSING)"),
            ("{{printf \"%s\" .x .s .n}}", "x%!(EXTRA string=ab, int64=3)"),
            ("{{printf \"%v|%s|%d\" .missing .missing .t}}", "<nil>|%!s(<nil>)|%!d(bool=true)"),
            ("{{printf \"100%%\"}}", "100%"),
            ("{{printf \"%v|%v\" .arr .m}}", "[a 1]|map[k:v]"),
            ("{{printf \"%x|%X\" .s .s}}", "6162|6162"),
            ("{{printf \"%v %v %v\" .f .e6 .em7}}", "1.5 1.5000005e+06 1e-07"),
            ("{{printf \"%q\" .u}}", "\"admin\""),
            ("{{printf \"{\\\"pw\\\": %q}\" .qs}}", "{\"pw\": \"a\\\"b\\\\c\\td\\x01é\\u00a0\"}"),
            ("{{printf \"%s:%d\" .u .n}}", "admin:3"),
            ("{{printf \"%6.2f%%\" .f}}", "  1.50%"),
            ("{{printf \"%+v|% v|%+d\" .n .n .neg}}", "3| 3|-3"),
            ("{{printf \"%-08d|\" .n}}", "3       |"),
            ("{{printf \"%#o|%#b|%#X\" .zero .n5 .ff}}", "0|0b101|0XFF"),
            ("{{printf \"%.0d|%.0d\" .zero .n}}", "|3"),
            ("{{printf \"%s\" .t}}", "%!s(bool=true)"),
            ("{{printf \"%z\" .n}}", "%!z(int64=3)"),
            ("{{printf \"%5q\" .u}}", "\"admin\""),
            ("{{printf \"%.3q\" .u}}", "\"adm\""),
            ("{{printf \"%v\" .nul}}", "<nil>"),
            ("{{.fm15}} {{.e21}} {{.tiny}} {{.m2}} {{.big2}}", "-1.5 1e+21 1e-20 -2 2e+06"),
            ("{{printf \"%.1f|%v|%e\" .fm15 .fm15 .e21}}", "-1.5|-1.5|1.000000e+21"),
        ];
        renders_as_go(value, &cases);
        // VSecM holds every number as a float64, so %f of a JSON integer is a float there too.
        assert_eq!(tf(r#"{"n":3}"#, r#"{{printf "%.2f" .n}}"#), "3.00");
    }

    /// `%g`, `%U`, `%O`, `*` widths and precisions, `[n]` indexes, zero
    /// padding before a prefix, and flags in `%!verb(...)`, as Go formats
    /// them (outputs recorded with Go's `text/template`, integers as int64s).
    #[test]
    fn printf_formats_the_rest_of_gos_verbs_as_go_does() {
        let value = r#"{"s": "ab", "n": 3, "neg": -3, "ff": 255, "e8": 8, "n5": 5, "f": 1.5, "x": "x", "f1005": 1.005, "pi": 3.14159, "f25": 2.5, "fm15": -1.5, "fbig": 1234.5678, "fsmall": 0.000123, "e21": 1e+21, "f35": 3.5, "t": true, "n65": 65, "emoji": 128512, "e6": 1500000.5, "em7": 1e-07, "u": "admin", "zero": 0, "tiny": 1e-20, "m2": -2.0, "big2": 2000000.0, "e100": 1e100, "f123456": 123456.5, "f1234567": 1234567.5, "f99": 99.5, "f99999": 99999.5}"#;
        let cases = [
            (
                r#"{{printf "%g|%g|%g|%g|%g|%g|%g|%g" .f .e6 .em7 .fbig .fsmall .e21 .tiny .big2}}"#,
                "1.5|1.5000005e+06|1e-07|1234.5678|0.000123|1e+21|1e-20|2e+06",
            ),
            (r#"{{printf "%G|%G" .e21 .em7}}"#, "1E+21|1E-07"),
            (
                r#"{{printf "%.3g|%.3g|%.3g|%.3g|%.10g|%.1g|%.0g|%.2g" .pi .fbig .fsmall .e21 .pi .f25 .f35 .f1005}}"#,
                "3.14|1.23e+03|0.000123|1e+21|3.14159|2|4|1",
            ),
            (
                r#"{{printf "%8.3g|%-8.3g|%08.3g|%+g|% g|%+.2g" .pi .pi .fm15 .f .f .fbig}}"#,
                "    3.14|3.14    |-00001.5|+1.5| 1.5|+1.2e+03",
            ),
            (r#"{{printf "%g|%g|%g|%g" .m2 .e100 .f123456 .f1234567}}"#, "-2|1e+100|123456.5|1.2345675e+06"),
            (r#"{{printf "%.3g|%.5g|%.2g|%.4g" .f123456 .f1234567 .f99 .f99999}}"#, "1.23e+05|1.2346e+06|1e+02|1e+05"),
            (r#"{{printf "%g|%.3g|%g" .s .t .missing}}"#, "%!g(string=ab)|%!g(bool=true)|%!g(<nil>)"),
            (
                r#"{{printf "%U|%U|%8U|%-8U|%.6U|%08U" .n65 .emoji .n65 .n65 .n65 .n65}}"#,
                "U+0041|U+1F600|  U+0041|U+0041  |U+000041|  U+0041",
            ),
            (r#"{{printf "%U|%U|%U" .s .f .neg}}"#, "%!U(string=ab)|%!U(float64=1.5)|U+FFFFFFFFFFFFFFFD"),
            (r#"{{printf "%#U|%#8U|%#U" .n65 .n65 .n5}}"#, "U+0041 'A'|U+0041 'A'|U+0005"),
            (
                r#"{{printf "%*d|%-*d|%*d|%.*f|%*.*f|%*s" .n5 .n .n5 .n .neg .n .n .pi .e8 .n .pi .n5 .s}}"#,
                "    3|3    |3  |3.142|   3.142|   ab",
            ),
            (r#"{{printf "%*d" .s .n}}"#, "%!(BADWIDTH)3"),
            (r#"{{printf "%*d" .f .n}}"#, "%!(BADWIDTH)3"),
            (r#"{{printf "%.*d" .neg .n}}"#, "%!(BADPREC)3"),
            (r#"{{printf "%[2]d %[1]d|%[1]s %[1]s" .n .ff .s}}"#, "255 3|%!s(int64=3) %!s(int64=3)"),
            (r#"{{printf "%[2]s %s" .s .u .x}}"#, "admin x"),
            (r#"{{printf "%[3]d" .n}}"#, "%!d(BADINDEX)"),
            (r#"{{printf "%[0]d" .n}}"#, "%!d(BADINDEX)"),
            (r#"{{printf "%[1]d %d %d" .n .ff}}"#, "3 255 %!d(MISSING)"),
            (r#"{{printf "%d %d %[1]d" .n .ff}}"#, "3 255 3"),
            (r#"{{printf "%[x]d" .n}}"#, "%!d(BADINDEX)"),
            (r#"{{printf "%[2]*[1]d|" .n .n5}}"#, "    3|"),
            (r#"{{printf "%[1]" .n}}"#, "%!(NOVERB)"),
            (r#"{{printf "%[1]d" .n .ff}}"#, "3"),
            (r#"{{printf "%[1]*d" .n5}}"#, "%!d(MISSING)"),
            (r#"{{printf "%[2]d %[2]d %d" .n .ff}}"#, "255 255 %!d(MISSING)"),
            (r#"{{printf "%[1]d %[3]d %d" .n .ff}}"#, "3 %!d(BADINDEX) 255"),
            (
                r#"{{printf "%#08x|%#08o|%+08d|%08.3d|% 08d|%#-8x|%O|%#O|%08O|%#o|%-#8o|" .ff .e8 .n .n .n .ff .e8 .e8 .e8 .zero .e8}}"#,
                "0x000000ff|00000010|+0000003|     003| 0000003|0xff    |0o10|0o010|0o00000010|0|010     |",
            ),
            (r#"{{printf "%08s|%-08s|%08q" .s .s .s}}"#, "000000ab|ab      |0000\"ab\""),
            (r#"{{printf "%5.1%|%-5%|%[2]%" .n}}"#, "%|%|%"),
            (r#"{{printf "%d %!" .n}}"#, "3 %!!(MISSING)"),
            (r#"{{printf "%.d|%5.|" .n .n}}"#, "3|%!|(int64=    3)"),
        ];
        renders_as_go(value, &cases);
        // VSecM holds every number as a float64: %g of a JSON integer is a float's text there too.
        assert_eq!(tf(value, r#"{{printf "%g|%g|%g|%.2g" .n .neg .zero .ff}}"#), "3|-3|0|2.6e+02");
    }

    /// Float literals written in the template print and compare as Go's
    /// (outputs recorded with Go's `text/template`); `gtmpl` alone truncates
    /// `-1.5` to -1 and `1e-20` to 0 and saturates `1e21`.
    #[test]
    fn float_literals_in_the_template_are_the_numbers_go_reads() {
        let value = r#"{"fm15": -1.5, "f": 1.5, "x": "a-1.5", "n": 3}"#;
        let cases = [
            (
                "{{-1.5}} {{1e-20}} {{1e21}} {{-2.25e3}} {{-1e3}} {{.5}} {{-.5}} {{2.0}}",
                "-1.5 1e-20 1e+21 -2250 -1000 0.5 -0.5 2",
            ),
            (
                r#"{{if lt .fm15 -1.25}}lt{{else}}ge{{end}} {{if eq .fm15 -1.5}}eq{{end}} {{printf "%.2f|%v|%g" -1.5 -1.5 -2.5e-7}}"#,
                "lt eq -1.50|-1.5|-2.5e-07",
            ),
            ("{{if lt .f -1.0}}a{{else}}b{{end}}", "b"),
            ("{{$x := -0.25}}{{$x}}", "-0.25"),
            ("{{- -1.5 -}} {{ -2.5 }}", "-1.5-2.5"),
            (r#"{{.x}} {{"-1.5"}} {{print "x" -1.5}}"#, "a-1.5 -1.5 x-1.5"),
            ("{{printf \"%.1f\" -1e-20}} {{if gt 1e21 1e20}}big{{end}}", "-0.0 big"),
            // A whole float is a float64 to Go: `%d` and `*` refuse it.
            ("{{printf \"%d|%*d|%v\" 2.0 2.0 7 2.0}}", "%!d(float64=2)|%!(BADWIDTH)7|2"),
        ];
        renders_as_go(value, &cases);
        // Such floats in the data compare by value with each other too.
        let value = r#"{"fm15": -1.5, "m125": -1.25, "e21": 1e21, "e20": 1e20, "tiny": 1e-20, "two": 2.0}"#;
        let template = "{{if lt .fm15 .m125}}lt{{end}} {{if gt .m125 -1.5}}gt{{end}} {{if le .e21 .e20}}le{{else}}nle{{end}} {{if ge .tiny .tiny}}ge{{end}} {{.two}} {{printf \"%d\" .two}}";
        renders_as_go(value, &[(template, "lt gt nle ge 2 %!d(float64=2)")]);
        // Zero is the one float held as an integer, so that `if` finds it false:
        // -0.0 then prints `0`, where Go prints `-0`.
        assert_eq!(tf(r#"{"z": -0.0}"#, "{{.z}}{{if .z}}t{{else}}f{{end}}{{if -0.0}}t{{else}}f{{end}}"), "0ff");
    }

    #[test]
    fn printing_a_map_larger_than_the_output_limit_is_over_budget() {
        let big = "v".repeat(600);
        let value = format!(r#"{{"a":"{big}","b":"{big}"}}"#);
        let budget = Budget { max_output_bytes: 1000, ..Budget::default() };
        for template in ["{{.}}", "{{print .}}", r#"{{printf "%v" .}}"#, "{{println .}}"] {
            let e = over(&value, template, &budget);
            assert!(!e.to_string().contains("vvv"), "{e}");
        }
        assert!(render(&value, "{{.a}}", &budget).is_ok());
    }

    #[test]
    fn parse_errors_do_not_show_the_print_call() {
        let e = validate_template("{{.a | }}").unwrap_err().to_string();
        assert!(!e.contains("_aegis"), "{e}");
    }
}
