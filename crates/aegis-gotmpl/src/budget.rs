//! What one template may cost: size, output, steps, bytes of values
//! copied, nesting, declarations, printf sizes and data references per
//! action. Every bound is counted by the renderer itself, never by a clock,
//! so a template that fits its budget once fits it on any machine under any
//! load.
//!
//! `gtmpl` has no hooks for any of this, so the budget is enforced from the
//! outside:
//!
//! - Output goes through a writer that fails once the output limit is
//!   reached, which stops execution.
//! - Every action of the template is preceded (by a lexical rewrite, see
//!   `super::template::check_actions`) by a call to [`STEP_FUNC`], and every built-in
//!   function is replaced by a wrapper; each such call is one step. A range
//!   iteration runs at least the step before its `{{end}}`, so iterations are
//!   counted too. The counters live in a thread-local [`Meter`], set for the
//!   duration of one render (rendering is synchronous, so it cannot be seen by
//!   another render).
//! - Every value `gtmpl` copies reaches a point where its size is counted
//!   (see `super::work`): the arguments of every function, every printed
//!   value, every `range`, `if` and `with` pipeline, every declared or
//!   assigned variable, every parenthesized pipeline and every field chain;
//!   `$.field` is read from the meter's copy of the data, without copying
//!   `$`. The sum is held to [`Budget::max_work_bytes`], which bounds both
//!   the time a render takes and the memory it holds.
//! - `printf`, `print`, `println` and `urlquery` estimate the size of their
//!   result before building it and refuse when it would pass the output limit;
//!   `printf` also checks widths and precisions, including the `*` forms that
//!   take them from the arguments at run time.
//! - The template's size, nesting, declarations and data references are
//!   bounded lexically, before `gtmpl`'s recursive parser sees the template.

use std::cell::RefCell;

use gtmpl_value::{Func, FuncError, Number, Value};

/// Default largest output of one render: 1 MiB, the default request body
/// limit, so a rendered secret is never larger than the largest one that can
/// be written.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Default most steps of one render (actions run, range iterations and
/// function calls).
pub const DEFAULT_MAX_STEPS: u64 = 100_000;

/// Default most bytes of values one render may copy (see [`Budget::max_work_bytes`]):
/// 32 MiB, some 30 times the largest secret a default Safe accepts.
pub const DEFAULT_MAX_WORK_BYTES: usize = 32 * 1024 * 1024;

/// Default largest template, in bytes: 64 KiB. VSecM's templates are a
/// line or a few dozen; the limit keeps `gtmpl`'s parser (which holds every
/// token and node of the template at once) small.
pub const DEFAULT_MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// Default most templates rendered at once in the whole process (writes,
/// start-up, the Kubernetes sync): each render may hold up to its budget.
pub const DEFAULT_MAX_PARALLEL_RENDERS: usize = 2;

/// About the bytes `gtmpl`'s parser holds per byte of (rewritten) action
/// text: every token is a separate allocation, sent through a channel, and
/// every node a large enum in its own vector (measured: 110 to 145 bytes per
/// byte, whatever the mix of actions). Parsing counts as work, so a template
/// whose parse would not fit the work limit is refused before it is parsed.
pub(super) const PARSE_BYTES_PER_ACTION_BYTE: usize = 128;

/// The same for text outside actions: one token and one node per run of text.
pub(super) const PARSE_BYTES_PER_TEXT_BYTE: usize = 4;

/// Most variable declarations (`:=`) in one template. `gtmpl` looks a
/// variable up by walking all of those in scope, so this bounds the cost of
/// every reference. Not configurable.
pub const MAX_DECLARATIONS: usize = 100;

/// Deepest nesting of blocks (`if`, `with`, `range`, each `else if` of a
/// chain) plus parentheses inside an action. `gtmpl` parses, runs and drops
/// templates recursively, so this bounds its stack use. Not configurable.
pub const MAX_NESTING: usize = 48;

/// Largest `printf` width or precision, literal or given with `*`.
pub const MAX_PRINTF_SIZE: usize = 9_999;

/// Most references to data (`.field`, `$var`) in one action. Each one copies
/// a value that can be as large as the secret, and all of a function's
/// arguments are held at once.
pub const MAX_ACTION_REFERENCES: usize = 64;

/// What the names of Aegis's own template functions and variables start
/// with; templates may not use such names.
pub(super) const RESERVED: &str = "_aegis_";

/// The function every action is preceded by; it counts one step.
pub(super) const STEP_FUNC: &str = "_aegis_step";

/// The function every printing action's value goes through (see [`go_print`]).
pub(super) const PRINT_FUNC: &str = "_aegis_print";

/// The function a `range` pipeline's value goes through (see [`sorted_range`]).
pub(super) const RANGE_FUNC: &str = "_aegis_range";

/// The function that gives a `range`'s key variable its key (see [`range_key`]).
pub(super) const KEY_FUNC: &str = "_aegis_key";

/// The function that tells whether a `range` ran no iteration (see [`range_empty`]).
pub(super) const EMPTY_FUNC: &str = "_aegis_range_empty";

/// What Go prints for a missing value.
pub const NO_VALUE: &str = "<no value>";

/// The function a float literal `gtmpl` would truncate becomes (see [`float`]).
pub(super) const FLOAT_FUNC: &str = "_aegis_float";

/// The function a field chain such as `.a.b` is evaluated by (see [`field`]).
pub(super) const FIELD_FUNC: &str = "_aegis_field";

/// The function a field chain of the data such as `$.a` becomes (see [`root_field`]).
pub(super) const ROOT_FUNC: &str = "_aegis_root";

/// The function that counts the bytes of a pipeline's value (see [`meter`]).
pub(super) const METER_FUNC: &str = "_aegis_meter";

/// What one render may cost. The nesting, declaration, `printf` and
/// reference limits are constants ([`MAX_NESTING`], [`MAX_DECLARATIONS`],
/// [`MAX_PRINTF_SIZE`], [`MAX_ACTION_REFERENCES`]). Nothing here is a time:
/// every bound is counted by the renderer, so whether a template fits does
/// not depend on the machine or its load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Largest output, and largest string any function may build, in bytes.
    pub max_output_bytes: usize,
    /// Most steps: actions run, range iterations and function calls.
    pub max_steps: u64,
    /// Most bytes of values one render copies: the template's own text
    /// (parsed), every value passed to a function, printed, ranged over,
    /// tested by `if`/`with`, stored in a variable or produced by a
    /// parenthesized pipeline or field chain. Bounds the work of a render
    /// and the memory it holds.
    pub max_work_bytes: usize,
    /// Largest template, in bytes: larger ones are refused before parsing.
    pub max_template_bytes: usize,
    /// Most renders running at once in the process (all budgets share one
    /// count); a render waits for its turn.
    pub max_parallel_renders: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_steps: DEFAULT_MAX_STEPS,
            max_work_bytes: DEFAULT_MAX_WORK_BYTES,
            max_template_bytes: DEFAULT_MAX_TEMPLATE_BYTES,
            max_parallel_renders: DEFAULT_MAX_PARALLEL_RENDERS,
        }
    }
}

impl Budget {
    pub(super) fn output_exceeded(&self) -> String {
        format!(
            "its output is larger than the limit of {} bytes (template output limit, AEGIS_TEMPLATE_MAX_OUTPUT_BYTES); \
             make the template produce less",
            self.max_output_bytes
        )
    }

    fn steps_exceeded(&self) -> String {
        format!(
            "it runs more than {} steps (template step limit: actions, range iterations and function calls, \
             AEGIS_TEMPLATE_MAX_STEPS); loop over less data or simplify the template",
            self.max_steps
        )
    }

    fn work_exceeded(&self) -> String {
        format!(
            "it copies more than {} bytes of values (template work limit: the template's text and every value \
             it passes to a function, prints, ranges over, tests or stores in a variable, \
             AEGIS_TEMPLATE_MAX_WORK_BYTES); refer to the fields you need rather than to . or $, \
             or simplify the template",
            self.max_work_bytes
        )
    }

    /// Why a template whose parse costs `cost` bytes is refused, if that is over the work limit.
    pub(super) fn check_parse_cost(&self, cost: usize) -> Result<(), String> {
        if cost <= self.max_work_bytes {
            return Ok(());
        }
        Err(format!(
            "parsing it takes about {cost} bytes, more than the limit of {} bytes (template work limit, \
             AEGIS_TEMPLATE_MAX_WORK_BYTES); write a smaller template",
            self.max_work_bytes
        ))
    }

    /// Why a template of `len` bytes is refused, if it is larger than the limit.
    pub(super) fn check_template_size(&self, len: usize) -> Result<(), String> {
        if len <= self.max_template_bytes {
            return Ok(());
        }
        Err(format!(
            "the template is {len} bytes, larger than the limit of {} bytes (template size limit, \
             AEGIS_TEMPLATE_MAX_BYTES); write a smaller template",
            self.max_template_bytes
        ))
    }
}

/// The budget of the render running on this thread and what it has spent.
pub(super) struct Meter {
    budget: Budget,
    steps: u64,
    /// Bytes of values copied so far (see [`Budget::max_work_bytes`]).
    work: usize,
    /// The data (`$`), read by [`ROOT_FUNC`] without copying all of it.
    root: Value,
    /// Why the render was stopped, once it was.
    exceeded: Option<String>,
    /// For each `range` of the template (by its number), what it visits:
    /// how many entries, and the keys of a map, sorted.
    ranges: Vec<Visit>,
}

/// What a `range` visits.
#[derive(Clone, Default)]
struct Visit {
    len: usize,
    /// The keys of a map, sorted; `None` for an array.
    keys: Option<Vec<String>>,
}

thread_local! {
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

/// Sets the meter for one render on this thread; dropping it removes the
/// meter (also when the engine panics).
pub(super) struct Metered(());

impl Metered {
    /// Starts a render over `root` of a template whose parse cost
    /// `parse_cost` bytes (parsing it was work too).
    pub(super) fn start(budget: Budget, root: Value, parse_cost: usize) -> Self {
        METER.with(|m| {
            *m.borrow_mut() =
                Some(Meter { budget, steps: 0, work: parse_cost, root, exceeded: None, ranges: Vec::new() });
        });
        Metered(())
    }

    /// Why the render was stopped, if it was.
    pub(super) fn exceeded(&self) -> Option<String> {
        METER.with(|m| m.borrow().as_ref().and_then(|m| m.exceeded.clone()))
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        METER.with(|m| m.borrow_mut().take());
    }
}

/// Records that the budget is spent and returns the error that stops the render.
fn stop(meter: &mut Meter, why: String) -> FuncError {
    let err = FuncError::Generic(why.clone());
    meter.exceeded.get_or_insert(why);
    err
}

/// Charges one step and the bytes of the function's arguments (`gtmpl`
/// copied each of them); fails once the steps or the work are spent.
/// Outside a render (no meter) everything is allowed.
fn charge(args: &[Value]) -> Result<Option<usize>, FuncError> {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        let Some(meter) = m.as_mut() else { return Ok(None) };
        if let Some(why) = &meter.exceeded {
            return Err(FuncError::Generic(why.clone()));
        }
        meter.steps += 1;
        if meter.steps > meter.budget.max_steps {
            let why = meter.budget.steps_exceeded();
            return Err(stop(meter, why));
        }
        add_work(meter, args.iter().map(super::work::size_of))?;
        Ok(Some(meter.budget.max_output_bytes))
    })
}

/// Adds the bytes `sizes` to the work; fails once it passes the limit.
fn add_work(meter: &mut Meter, sizes: impl Iterator<Item = usize>) -> Result<(), FuncError> {
    meter.work = sizes.fold(meter.work, usize::saturating_add);
    if meter.work > meter.budget.max_work_bytes {
        let why = meter.budget.work_exceeded();
        return Err(stop(meter, why));
    }
    Ok(())
}

/// Charges the bytes of `values` (copied by `gtmpl` on their way here), not a step.
fn spend(values: &[Value]) -> Result<(), FuncError> {
    METER.with(|m| match m.borrow_mut().as_mut() {
        Some(meter) => add_work(meter, values.iter().map(super::work::size_of)),
        None => Ok(()),
    })
}

/// Refuses a result estimated (or found) to be larger than the output limit.
fn check_size(estimate: usize, limit: Option<usize>) -> Result<(), FuncError> {
    match limit {
        Some(limit) if estimate > limit => METER.with(|m| {
            let mut m = m.borrow_mut();
            match m.as_mut() {
                Some(meter) => {
                    let why = meter.budget.output_exceeded();
                    Err(stop(meter, why))
                }
                None => Ok(()),
            }
        }),
        _ => Ok(()),
    }
}

fn printf_size_error(size: u128) -> FuncError {
    let why = format!(
        "printf width or precision {size} is larger than the limit of {MAX_PRINTF_SIZE} (template printf limit)"
    );
    METER.with(|m| match m.borrow_mut().as_mut() {
        Some(meter) => stop(meter, why),
        None => FuncError::Generic(why),
    })
}

/// An upper bound of the length of `value` as `gtmpl` prints it. Strings
/// inside arrays and maps are printed in Rust's debug form, whose escapes
/// take at most 10 bytes per character (`\u{10ffff}`).
fn printed_len(value: &Value, quoted: bool) -> usize {
    let text = |s: &str| if quoted { s.len().saturating_mul(10).saturating_add(2) } else { s.len() };
    match value {
        Value::String(s) => text(s),
        Value::Array(items) => items.iter().fold(2, |n, v| n.saturating_add(printed_len(v, true)).saturating_add(2)),
        Value::Object(map) | Value::Map(map) => map.iter().fold(2, |n, (k, v)| {
            n.saturating_add(k.len().saturating_mul(10)).saturating_add(printed_len(v, true)).saturating_add(6)
        }),
        Value::Number(_) => 64,
        Value::Bool(_) | Value::Nil => 5,
        Value::NoValue => 10,
        Value::Function(_) => 32,
    }
}

fn args_len(args: &[Value]) -> usize {
    args.iter().fold(0, |n, v| n.saturating_add(printed_len(v, false)).saturating_add(1))
}

/// The result must fit the output limit too (a `Value::String` result that
/// is too large is refused before it can be doubled again).
fn check_result(result: Result<Value, FuncError>, limit: Option<usize>) -> Result<Value, FuncError> {
    let value = result?;
    if let Value::String(s) = &value {
        check_size(s.len(), limit)?;
    }
    Ok(value)
}

/// A value as Go's `text/template` prints it. Scalars as `gtmpl` prints
/// them; arrays as `[a b]` and maps as `map[k:v k2:v2]` with the keys
/// sorted, nested the same way, a JSON `null` inside them as `<nil>`
/// (`gtmpl` prints them in Rust's debug form, maps in no fixed order, so
/// the same value could render differently from one run to the next).
/// Not a step (the action was counted); refused once over the output limit.
fn go_print(args: &[Value]) -> Result<Value, FuncError> {
    spend(args)?;
    let limit = METER.with(|m| m.borrow().as_ref().map(|m| m.budget.max_output_bytes));
    match args {
        // A missing value, or JSON null, prints as Go prints them: `<no value>`.
        [Value::NoValue | Value::Nil] => Ok(Value::String(NO_VALUE.to_owned())),
        [value] => go_arg(value, limit).map(Value::String),
        _ => Err(FuncError::ExactlyXArgs(PRINT_FUNC.to_owned(), 1)),
    }
}

/// A scalar as Go prints it: a float as Go's `%v` of a float64 (`1.5e+06`,
/// where `gtmpl` prints `1500000`); integers in full (Aegis keeps JSON
/// integers as integers, where Go would print `1.2345678e+07`).
fn scalar_text(value: &Value) -> String {
    match value {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), super::gofmt::go_float),
        other => other.to_string(),
    }
}

/// Go's text of an array or a map, within the output limit.
fn go_text(value: &Value, limit: Option<usize>) -> Result<String, FuncError> {
    super::gofmt::go_value(value, limit).map_err(|r| refused(r, limit))
}

/// The budget's error for a formatting `gofmt` refused.
fn refused(why: super::gofmt::Refused, limit: Option<usize>) -> FuncError {
    match why {
        super::gofmt::Refused::Output => {
            check_size(usize::MAX, limit).err().unwrap_or(FuncError::UnableToConvertFromValue)
        }
        super::gofmt::Refused::Size(size) => printf_size_error(size as u128),
        super::gofmt::Refused::Unprintable => FuncError::UnableToConvertFromValue,
    }
}

/// Which `range` of the template a call is for.
fn range_number(arg: Option<&Value>) -> Result<usize, FuncError> {
    match arg {
        Some(Value::Number(n)) => {
            n.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or(FuncError::UnableToConvertFromValue)
        }
        _ => Err(FuncError::UnableToConvertFromValue),
    }
}

/// `range N` over a map visits its values sorted by key, as Go does: the
/// map becomes an array of its values in key order, and the keys are kept
/// for [`range_key`]. A missing value or nil becomes an empty array (Go
/// runs no iteration over them; `gtmpl` fails). Anything else is returned
/// as it is.
fn sorted_range(args: &[Value]) -> Result<Value, FuncError> {
    let [n, value] = args else { return Err(FuncError::ExactlyXArgs(RANGE_FUNC.to_owned(), 2)) };
    let n = range_number(Some(n))?;
    // Copied on its way here, copied again below, and each item once more by `gtmpl`.
    spend(std::slice::from_ref(value))?;
    spend(std::slice::from_ref(value))?;
    let (visit, value) = match value {
        Value::Map(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let keys: Vec<String> = entries.iter().map(|(k, _)| (*k).clone()).collect();
            (
                Visit { len: keys.len(), keys: Some(keys) },
                Value::Array(entries.into_iter().map(|(_, v)| v.clone()).collect()),
            )
        }
        Value::Array(items) => (Visit { len: items.len(), keys: None }, value.clone()),
        // Go runs no iteration (the `else`, if any) over a missing value or nil.
        Value::NoValue | Value::Nil => (Visit::default(), Value::Array(Vec::new())),
        // A float `gtmpl` cannot hold (a one-entry object, see `gofmt::float_value`): Go cannot range over it.
        Value::Object(_) => return Err(FuncError::Generic("range can't iterate over a number".to_owned())),
        other => (Visit::default(), other.clone()),
    };
    METER.with(|m| {
        if let Some(meter) = m.borrow_mut().as_mut() {
            if meter.ranges.len() <= n {
                meter.ranges.resize(n + 1, Visit::default());
            }
            meter.ranges[n] = visit;
        }
    });
    Ok(value)
}

/// Whether `range N` ran no iteration: its `else` runs only then, as in Go.
fn range_empty(args: &[Value]) -> Result<Value, FuncError> {
    let n = range_number(args.first())?;
    let len = METER.with(|m| m.borrow().as_ref().and_then(|m| m.ranges.get(n).map(|v| v.len)));
    Ok(Value::Bool(len.unwrap_or(0) == 0))
}

/// The key of iteration `i` of `range N`: the map's key, or `i` itself
/// when it visits an array.
fn range_key(args: &[Value]) -> Result<Value, FuncError> {
    let [n, index] = args else { return Err(FuncError::ExactlyXArgs(KEY_FUNC.to_owned(), 2)) };
    let n = range_number(Some(n))?;
    let i = range_number(Some(index));
    let key = METER.with(|m| {
        let m = m.borrow();
        let keys = m.as_ref()?.ranges.get(n)?.keys.as_ref()?;
        keys.get(i.ok()?).cloned()
    });
    Ok(key.map_or_else(|| index.clone(), Value::String))
}

/// `_aegis_field x "a" "b"` is Go's `x.a.b` on JSON data: a field of a map
/// is its entry or missing, a field of a missing value is missing, and a
/// field of JSON null or of anything else fails (`gtmpl` fails on a field of
/// a missing value, where Go gives `<no value>`). Not a step (the action was
/// counted).
fn field(args: &[Value]) -> Result<Value, FuncError> {
    let Some((value, names)) = args.split_first() else {
        return Err(FuncError::AtLeastXArgs(FIELD_FUNC.to_owned(), 2));
    };
    // `gtmpl` copied the whole variable to get here.
    spend(std::slice::from_ref(value))?;
    let found = lookup(value, names)?.clone();
    spend(std::slice::from_ref(&found))?;
    Ok(found)
}

/// What a missing field reads as.
static MISSING: Value = Value::NoValue;

/// The field `names` of `value`, as [`field`] describes.
fn lookup<'v>(mut value: &'v Value, names: &[Value]) -> Result<&'v Value, FuncError> {
    for name in names {
        let Value::String(name) = name else { return Err(FuncError::UnableToConvertFromValue) };
        value = match value {
            Value::Map(map) => map.get(name).unwrap_or(&MISSING),
            Value::NoValue => &MISSING,
            Value::Nil => return Err(FuncError::Generic(format!("nil pointer evaluating interface {{}}.{name}"))),
            _ => return Err(FuncError::Generic(format!("can't evaluate field {name} in type interface {{}}"))),
        };
    }
    Ok(value)
}

/// `_aegis_root "a" "b"` is Go's `$.a.b`, read from the meter's copy of
/// the data: `gtmpl` would copy all of `$` for each such reference, which
/// inside a `range` is the whole secret once per iteration. Not a step.
fn root_field(args: &[Value]) -> Result<Value, FuncError> {
    let found = METER.with(|m| match m.borrow().as_ref() {
        Some(meter) => lookup(&meter.root, args).cloned(),
        None => Err(FuncError::Generic("$ is read outside a render".to_owned())),
    })?;
    spend(std::slice::from_ref(&found))?;
    Ok(found)
}

/// `X | _aegis_meter` is X, its bytes counted: the value of every pipeline
/// whose result `gtmpl` copies and keeps without passing it to a function
/// (a declared variable, an `if` or `with`, a parenthesized pipeline). Not a step.
fn meter(args: &[Value]) -> Result<Value, FuncError> {
    let [value] = args else { return Err(FuncError::ExactlyXArgs(METER_FUNC.to_owned(), 1)) };
    // Copied on its way here and once more when it is returned.
    spend(args)?;
    spend(args)?;
    Ok(value.clone())
}

/// `_aegis_float "-1.5"`: a float literal of the template that `gtmpl`
/// would truncate, as the template sees such a float (see
/// [`super::gofmt::float_value`]). Not a step.
fn float(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [Value::String(text)] => {
            text.parse().map(super::gofmt::float_value).map_err(|_| FuncError::UnableToConvertFromValue)
        }
        _ => Err(FuncError::ExactlyXArgs(FLOAT_FUNC.to_owned(), 1)),
    }
}

/// Counts one step; prints nothing.
fn step(args: &[Value]) -> Result<Value, FuncError> {
    charge(args)?;
    Ok(Value::String(String::new()))
}

macro_rules! metered {
    ($($name:ident => $inner:path),* $(,)?) => {
        $(
            fn $name(args: &[Value]) -> Result<Value, FuncError> {
                charge(args)?;
                $inner(args)
            }
        )*
    };
}

metered! {
    and => gtmpl::funcs::and,
    or => gtmpl::funcs::or,
    not => gtmpl::funcs::not,
    call => gtmpl::funcs::call,
}

/// `gtmpl`'s `print` (a space between two operands that are not strings),
/// with arrays and maps printed as Go prints them ([`go_text`]).
fn print(args: &[Value]) -> Result<Value, FuncError> {
    let limit = charge(args)?;
    check_size(args_len(args), limit)?;
    print_text(args, limit)
}

fn print_text(args: &[Value], limit: Option<usize>) -> Result<Value, FuncError> {
    let mut out = String::new();
    let mut after_string = true;
    for arg in args {
        let is_string = matches!(arg, Value::String(_));
        if !is_string && !after_string {
            out.push(' ');
        }
        out.push_str(&go_arg(arg, limit)?);
        after_string = is_string;
    }
    check_result(Ok(Value::String(out)), limit)
}

/// Go's `println`: the arguments as `print` shows them, a space between
/// every two, and a line break.
fn println(args: &[Value]) -> Result<Value, FuncError> {
    let limit = charge(args)?;
    check_size(args_len(args).saturating_add(1), limit)?;
    let texts: Vec<String> = args.iter().map(|a| go_arg(a, limit)).collect::<Result<_, _>>()?;
    check_result(Ok(Value::String(format!("{}\n", texts.join(" ")))), limit)
}

/// Go's `urlquery`: the arguments' text (as `print` gives it), escaped as
/// Go's `url.QueryEscape` does (`gtmpl` escapes a space as `%20` and leaves
/// `&`, `=`, `+` and others as they are).
fn urlquery(args: &[Value]) -> Result<Value, FuncError> {
    escaped(args, 3, |c, out| match c {
        'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '~' => out.push(c),
        ' ' => out.push('+'),
        c => {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    })
}

/// Go's `html`: the arguments' text with `<`, `>`, `&`, `'`, `"` escaped as
/// Go's `template.HTMLEscapeString` does (NUL becomes U+FFFD).
fn html(args: &[Value]) -> Result<Value, FuncError> {
    escaped(args, 6, |c, out| match c {
        '"' => out.push_str("&#34;"),
        '\'' => out.push_str("&#39;"),
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '\0' => out.push('\u{FFFD}'),
        c => out.push(c),
    })
}

/// Go's `js`: the arguments' text escaped for JavaScript as Go's
/// `template.JSEscapeString` does. Go keeps the characters Unicode calls
/// printable; here that is approximated (see [`super::gofmt::printable`]).
fn js(args: &[Value]) -> Result<Value, FuncError> {
    escaped(args, 6, |c, out| match c {
        '\\' => out.push_str("\\\\"),
        '\'' => out.push_str("\\'"),
        '"' => out.push_str("\\\""),
        '<' => out.push_str("\\u003C"),
        '>' => out.push_str("\\u003E"),
        '&' => out.push_str("\\u0026"),
        '=' => out.push_str("\\u003D"),
        c if u32::from(c) < 0x20 => out.push_str(&format!("\\u00{:02X}", u32::from(c))),
        c if !c.is_ascii() && !super::gofmt::printable(c) => out.push_str(&format!("\\u{:04X}", u32::from(c))),
        c => out.push(c),
    })
}

/// One step: the arguments' text (Go's `evalArgs`) with each character
/// written by `escape`, refused when at most `growth` bytes per byte could
/// pass the output limit.
fn escaped(args: &[Value], growth: usize, escape: fn(char, &mut String)) -> Result<Value, FuncError> {
    let limit = charge(args)?;
    check_size(args_len(args).saturating_mul(growth), limit)?;
    let text = args_text(args, limit)?;
    let mut out = String::with_capacity(text.len());
    text.chars().for_each(|c| escape(c, &mut out));
    check_result(Ok(Value::String(out)), limit)
}

/// The text of `urlquery`, `html` and `js`'s arguments: one string as it
/// is, anything else as `print` gives it (Go's `evalArgs`), except that a
/// missing value or JSON null is the text `<no value>`, as in Go.
fn args_text(args: &[Value], limit: Option<usize>) -> Result<String, FuncError> {
    let missing = |v: &Value| matches!(v, Value::NoValue | Value::Nil);
    if args.iter().any(missing) {
        let args: Vec<Value> =
            args.iter().map(|v| if missing(v) { Value::String(NO_VALUE.to_owned()) } else { v.clone() }).collect();
        return args_text(&args, limit);
    }
    match args {
        [Value::String(s)] => Ok(s.clone()),
        _ => match print_text(args, limit)? {
            Value::String(s) => Ok(s),
            _ => Err(FuncError::UnableToConvertFromValue),
        },
    }
}

/// Go's `slice`: `slice x i j` is `x[i:j]` of a string (in bytes) or an
/// array; no index is `x`, one is `x[i:]`. Out of range, or inside a
/// character of a string, it fails, as in Go (which would cut the character).
fn slice(args: &[Value]) -> Result<Value, FuncError> {
    charge(args)?;
    let Some((item, indexes)) = args.split_first() else {
        return Err(FuncError::AtLeastXArgs("slice".to_owned(), 1));
    };
    let len = match super::gofmt::arg_of(item) {
        Some(super::gofmt::Arg::Str(s)) => s.len(),
        Some(super::gofmt::Arg::Array(items)) => items.len(),
        _ => return Err(FuncError::Generic("slice needs a string or an array".to_owned())),
    };
    let index = |v: &Value| match v {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        _ => None,
    };
    let bounds: Option<Vec<usize>> = indexes.iter().map(index).collect();
    let (from, to) = match bounds.as_deref() {
        Some([]) => (0, len),
        Some([i]) => (*i, len),
        Some([i, j]) => (*i, *j),
        _ => return Err(FuncError::Generic("slice takes a string or an array and up to two indexes".to_owned())),
    };
    if from > to || to > len {
        // Not the indexes or the length: they may come from the secret's data.
        return Err(FuncError::Generic("slice index out of range".to_owned()));
    }
    match item {
        Value::String(s) => s
            .get(from..to)
            .map(|part| Value::String(part.to_owned()))
            .ok_or_else(|| FuncError::Generic("slice would cut a character of the string".to_owned())),
        Value::Array(items) => Ok(Value::Array(items[from..to].to_vec())),
        _ => Err(FuncError::UnableToConvertFromValue),
    }
}

/// Go's `len`: of a string (in bytes), an array or a map (`gtmpl` lacks
/// maps); anything else fails, as in Go.
fn len(args: &[Value]) -> Result<Value, FuncError> {
    use super::gofmt::{arg_of, Arg};
    charge(args)?;
    let [item] = args else { return Err(FuncError::ExactlyXArgs("len".to_owned(), 1)) };
    match arg_of(item) {
        Some(Arg::Str(s)) => Ok(Value::from(s.len())),
        Some(Arg::Array(items)) => Ok(Value::from(items.len())),
        Some(Arg::Map(map)) => Ok(Value::from(map.len())),
        Some(Arg::Nil) => Err(FuncError::Generic("len of nil pointer".to_owned())),
        _ => Err(FuncError::Generic("len of a value that is not a string, an array or a map".to_owned())),
    }
}

/// Go's `index x k1 k2 ...`: a map's entry by a string key (missing if it
/// has none), an array's element by an integer in range, a string's byte;
/// any other key or item fails, as in Go.
fn index(args: &[Value]) -> Result<Value, FuncError> {
    use super::gofmt::{arg_of, Arg};
    charge(args)?;
    let Some((item, keys)) = args.split_first() else {
        return Err(FuncError::AtLeastXArgs("index".to_owned(), 1));
    };
    let mut item = item.clone();
    for key in keys {
        let at = |len: usize| match arg_of(key) {
            Some(Arg::Int(i)) => usize::try_from(i)
                .ok()
                .filter(|&i| i < len)
                // Not the index: it may come from the secret's data.
                .ok_or_else(|| FuncError::Generic("index out of range".to_owned())),
            _ => Err(FuncError::Generic(
                "cannot index an array or a string with a value that is not an integer".to_owned(),
            )),
        };
        item = match arg_of(&item) {
            Some(Arg::Map(map)) => match arg_of(key) {
                Some(Arg::Str(k)) => map.get(k).cloned().unwrap_or(Value::NoValue),
                _ => return Err(FuncError::Generic("a map's key must be a string".to_owned())),
            },
            Some(Arg::Array(items)) => items[at(items.len())?].clone(),
            Some(Arg::Str(s)) => Value::from(s.as_bytes()[at(s.len())?]),
            Some(Arg::Nil) => return Err(FuncError::Generic("index of untyped nil".to_owned())),
            _ => {
                return Err(FuncError::Generic(
                    "can't index a value that is not a map, an array or a string".to_owned(),
                ))
            }
        };
    }
    Ok(item)
}

/// Why two values cannot be compared, in Go's words.
fn incomparable(why: &str) -> FuncError {
    FuncError::Generic(why.to_owned())
}

/// Go's `eq` of two values. Go compares values of one basic kind (bool,
/// number, string) and nil with anything; it refuses to compare other
/// pairs. Numbers compare by value whatever their kind: Aegis keeps JSON
/// integers as integers, so `eq .port 5432.0` (as a VSecM template, where
/// every number is a float64, has to write it) compares 5432 with 5432.
fn equal(a: &Value, b: &Value) -> Result<bool, FuncError> {
    use super::gofmt::{arg_of, Arg};
    let (Some(x), Some(y)) = (arg_of(a), arg_of(b)) else { return Err(incomparable("non-comparable type")) };
    Ok(match (x, y) {
        (Arg::Nil, Arg::Nil) => true,
        (Arg::Nil, _) | (_, Arg::Nil) => false,
        (Arg::Bool(p), Arg::Bool(q)) => p == q,
        (Arg::Str(p), Arg::Str(q)) => p == q,
        (x @ (Arg::Int(_) | Arg::Float(_)), y @ (Arg::Int(_) | Arg::Float(_))) => {
            compare_numbers(&x, &y) == Some(std::cmp::Ordering::Equal)
        }
        (Arg::Array(_) | Arg::Map(_), Arg::Array(_) | Arg::Map(_)) => return Err(incomparable("non-comparable type")),
        _ => return Err(incomparable("incompatible types for comparison")),
    })
}

/// Go's order of two values (`lt` and the others): numbers (by value,
/// whatever their kind) and strings (by bytes); anything else is refused.
fn order_of(a: &Value, b: &Value) -> Result<std::cmp::Ordering, FuncError> {
    use super::gofmt::{arg_of, Arg};
    let (Some(x), Some(y)) = (arg_of(a), arg_of(b)) else { return Err(incomparable("invalid type for comparison")) };
    match (x, y) {
        (Arg::Str(p), Arg::Str(q)) => Ok(p.cmp(q)),
        (x @ (Arg::Int(_) | Arg::Float(_)), y @ (Arg::Int(_) | Arg::Float(_))) => {
            compare_numbers(&x, &y).ok_or_else(|| incomparable("numbers that cannot be compared"))
        }
        (Arg::Str(_) | Arg::Int(_) | Arg::Float(_), Arg::Str(_) | Arg::Int(_) | Arg::Float(_)) => {
            Err(incomparable("incompatible types for comparison"))
        }
        _ => Err(incomparable("invalid type for comparison")),
    }
}

/// Two numbers by value: integers exactly, anything with a float as floats.
fn compare_numbers(a: &super::gofmt::Arg<'_>, b: &super::gofmt::Arg<'_>) -> Option<std::cmp::Ordering> {
    use super::gofmt::Arg;
    #[allow(clippy::cast_precision_loss)] // a float is compared as a float
    let float = |n: &Arg<'_>| match n {
        Arg::Int(i) => Some(*i as f64),
        Arg::Float(f) => Some(*f),
        _ => None,
    };
    match (a, b) {
        (Arg::Int(x), Arg::Int(y)) => Some(x.cmp(y)),
        _ => float(a)?.partial_cmp(&float(b)?),
    }
}

/// Go's `eq`: `eq a b c` is `a == b || a == c` (`gtmpl` requires all); a
/// pair Go cannot compare fails, as in Go, once it is reached.
fn eq(args: &[Value]) -> Result<Value, FuncError> {
    charge(args)?;
    let Some((first, rest)) = args.split_first().filter(|(_, rest)| !rest.is_empty()) else {
        return Err(FuncError::AtLeastXArgs("eq".to_owned(), 2));
    };
    for other in rest {
        if equal(first, other)? {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

fn ne(args: &[Value]) -> Result<Value, FuncError> {
    charge(args)?;
    match args {
        [a, b] => Ok(Value::Bool(!equal(a, b)?)),
        _ => Err(FuncError::ExactlyXArgs("ne".to_owned(), 2)),
    }
}

/// `lt`, `le`, `gt`, `ge` (see [`order_of`]).
fn order(args: &[Value], name: &str, want: fn(std::cmp::Ordering) -> bool) -> Result<Value, FuncError> {
    charge(args)?;
    match args {
        [a, b] => Ok(Value::Bool(want(order_of(a, b)?))),
        _ => Err(FuncError::ExactlyXArgs(name.to_owned(), 2)),
    }
}

fn lt(args: &[Value]) -> Result<Value, FuncError> {
    order(args, "lt", std::cmp::Ordering::is_lt)
}

fn le(args: &[Value]) -> Result<Value, FuncError> {
    order(args, "le", std::cmp::Ordering::is_le)
}

fn gt(args: &[Value]) -> Result<Value, FuncError> {
    order(args, "gt", std::cmp::Ordering::is_gt)
}

fn ge(args: &[Value]) -> Result<Value, FuncError> {
    order(args, "ge", std::cmp::Ordering::is_ge)
}

fn printf(args: &[Value]) -> Result<Value, FuncError> {
    let limit = charge(args)?;
    let mut shown = Vec::new();
    if let Some((Value::String(format), rest)) = args.split_first() {
        // Estimated on the arguments as they are: arrays and maps are
        // estimated larger than the text they are replaced with below.
        let estimate;
        (estimate, shown) = printf_estimate(format, rest)?;
        check_size(estimate, limit)?;
        if let Some(text) = super::gofmt::sprintf(format, rest, limit, MAX_PRINTF_SIZE) {
            return check_result(text.map(Value::String).map_err(|r| refused(r, limit)), limit);
        }
    }
    let mut args = go_args(args, limit)?;
    // `%v` of a float as Go prints it (`gtmpl` cannot format a float with `%v`).
    for at in shown {
        if let Some(arg @ Value::Number(_)) = args.get_mut(at + 1) {
            *arg = Value::String(scalar_text(arg));
        }
    }
    check_result(gtmpl::funcs::printf(&args), limit)
}

/// An argument as `print` shows it: arrays and maps as Go prints them, a
/// missing value or JSON null as `<nil>` (Go passes them as nil).
fn go_arg(arg: &Value, limit: Option<usize>) -> Result<String, FuncError> {
    match arg {
        Value::Array(_) | Value::Map(_) | Value::Object(_) => go_text(arg, limit),
        Value::String(s) => Ok(s.clone()),
        Value::NoValue | Value::Nil => Ok("<nil>".to_owned()),
        other => Ok(scalar_text(other)),
    }
}

/// The arguments with arrays and maps replaced by their text as Go prints
/// them, for `printf` (`%v`, `%s`) and `println`.
fn go_args(args: &[Value], limit: Option<usize>) -> Result<Vec<Value>, FuncError> {
    args.iter()
        .map(|arg| match arg {
            Value::Array(_) | Value::Map(_) | Value::Object(_) => go_text(arg, limit).map(Value::String),
            other => Ok(other.clone()),
        })
        .collect()
}

/// The built-in functions, each counting a step, and the step function.
pub(super) const FUNCS: &[(&str, Func)] = &[
    ("eq", eq as Func),
    ("ne", ne as Func),
    ("lt", lt as Func),
    ("le", le as Func),
    ("gt", gt as Func),
    ("ge", ge as Func),
    ("len", len as Func),
    ("and", and as Func),
    ("or", or as Func),
    ("not", not as Func),
    ("urlquery", urlquery as Func),
    ("html", html as Func),
    ("js", js as Func),
    ("slice", slice as Func),
    ("print", print as Func),
    ("println", println as Func),
    ("printf", printf as Func),
    ("index", index as Func),
    ("call", call as Func),
    (STEP_FUNC, step as Func),
    (PRINT_FUNC, go_print as Func),
    (RANGE_FUNC, sorted_range as Func),
    (KEY_FUNC, range_key as Func),
    (EMPTY_FUNC, range_empty as Func),
    (FIELD_FUNC, field as Func),
    (FLOAT_FUNC, float as Func),
    (METER_FUNC, meter as Func),
    (ROOT_FUNC, root_field as Func),
];

/// An argument as `gtmpl` reads a `*` width or precision: an integer.
fn star_value(arg: Option<&Value>) -> Option<u128> {
    match arg? {
        Value::Number(n) => number_abs(n),
        _ => None,
    }
}

fn number_abs(n: &Number) -> Option<u128> {
    if let Some(u) = n.as_u64() {
        return Some(u128::from(u));
    }
    n.as_i64().map(|i| u128::from(i.unsigned_abs()))
}

/// Walks the verbs of a `printf` format the way `gtmpl` does (flags, then an
/// optional `[n]` index, a width as digits or `*`, `.` and a precision as
/// digits or `*`, an optional `[n]`, the verb), checks every width and
/// precision and returns an upper bound of the result's length.
///
/// `gtmpl` takes a `*` width from the argument it points at when that is an
/// integer, so the same argument is checked here. When the format is beyond
/// this walk (malformed), `gtmpl` fails on it too; as a precaution every
/// integer argument is then held to the width limit if the format has a `*`.
pub(super) fn printf_estimate(format: &str, args: &[Value]) -> Result<(usize, Vec<usize>), FuncError> {
    let mut estimate = format.len();
    let mut shown = Vec::new();
    let mut next = 0usize;
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        let spec = &rest[i + 1..];
        if let Some(after) = spec.strip_prefix('%') {
            rest = after;
            continue;
        }
        let Some(end) = spec.find(|c: char| "vVtTbcdoOqxXUeEfFgGsp".contains(c)) else {
            return malformed(format, args, estimate).map(|e| (e, shown));
        };
        let Some(verb) = Verb::parse(&spec[..end]) else {
            return malformed(format, args, estimate).map(|e| (e, shown));
        };
        let size = |part: Size, next: &mut usize| -> Result<u128, FuncError> {
            let n = match part {
                Size::None => 0,
                Size::Literal(n) => n,
                Size::Star(index) => {
                    let at = index.unwrap_or(*next);
                    *next = at + 1;
                    star_value(args.get(at)).unwrap_or(0)
                }
            };
            if n > MAX_PRINTF_SIZE as u128 {
                return Err(printf_size_error(n));
            }
            Ok(n)
        };
        if let Some(index) = verb.width_index {
            next = index;
        }
        let width = size(verb.width, &mut next)?;
        if let Some(index) = verb.precision_index {
            next = index;
        }
        let precision = size(verb.precision, &mut next)?;
        let at = verb.arg_index.unwrap_or(next);
        next = at + 1;
        if spec.as_bytes().get(end) == Some(&b'v') {
            shown.push(at);
        }
        let printed = args.get(at).map_or(0, |v| printed_len(v, spec.as_bytes().get(end) == Some(&b'q')));
        // A float is printed with all its integer digits (up to 309) plus the precision.
        estimate = estimate.saturating_add((width + precision) as usize).saturating_add(printed).saturating_add(320);
        rest = &spec[end + 1..];
    }
    Ok((estimate, shown))
}

fn malformed(format: &str, args: &[Value], estimate: usize) -> Result<usize, FuncError> {
    if format.contains('*') {
        if let Some(n) = args.iter().filter_map(|a| star_value(Some(a))).find(|&n| n > MAX_PRINTF_SIZE as u128) {
            return Err(printf_size_error(n));
        }
    }
    Ok(estimate.saturating_add(args_len(args)))
}

/// A width or precision.
#[derive(Clone, Copy)]
enum Size {
    None,
    Literal(u128),
    /// From an argument: the explicit `[n]` index (0-based), or the next one.
    Star(Option<usize>),
}

/// The parts of one verb between `%` and the verb letter.
struct Verb {
    width_index: Option<usize>,
    width: Size,
    precision_index: Option<usize>,
    precision: Size,
    arg_index: Option<usize>,
}

impl Verb {
    fn parse(spec: &str) -> Option<Verb> {
        let mut rest = spec.trim_start_matches(['#', '0', '+', '-', ' ']);
        let mut verb = Verb {
            width_index: None,
            width: Size::None,
            precision_index: None,
            precision: Size::None,
            arg_index: None,
        };
        let (index, after) = bracket(rest)?;
        rest = after;
        if let Some(after) = rest.strip_prefix('*') {
            verb.width = Size::Star(index);
            rest = after;
        } else {
            verb.width_index = index;
            let (n, after) = digits(rest);
            if let Some(n) = n {
                verb.width = Size::Literal(n);
            }
            rest = after;
        }
        if let Some(after) = rest.strip_prefix('.') {
            let (index, after) = bracket(after)?;
            rest = after;
            if let Some(after) = rest.strip_prefix('*') {
                verb.precision = Size::Star(index);
                rest = after;
            } else {
                verb.precision_index = index;
                let (n, after) = digits(rest);
                if let Some(n) = n {
                    verb.precision = Size::Literal(n);
                }
                rest = after;
            }
        }
        let (index, after) = bracket(rest)?;
        verb.arg_index = index;
        after.is_empty().then_some(verb)
    }
}

/// An optional `[n]` argument index (1-based in the format, 0-based here).
fn bracket(s: &str) -> Option<(Option<usize>, &str)> {
    let Some(inner) = s.strip_prefix('[') else { return Some((None, s)) };
    let close = inner.find(']')?;
    let n: usize = inner[..close].parse().ok()?;
    Some((Some(n.checked_sub(1)?), &inner[close + 1..]))
}

/// Leading digits as a number (saturating, so a huge literal stays huge).
fn digits(s: &str) -> (Option<u128>, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return (None, s);
    }
    let n = s[..end].bytes().fold(0u128, |n, d| n.saturating_mul(10).saturating_add(u128::from(d - b'0')));
    (Some(n), &s[end..])
}
