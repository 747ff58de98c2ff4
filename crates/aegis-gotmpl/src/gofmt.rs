//! `printf` as Go's `fmt.Sprintf` formats the values a template sees, and
//! Go's text of a float.
//!
//! `gtmpl`'s `printf` follows Rust's formatting: `%q` does not quote (so
//! `{"pw": {{printf "%q" .pw}}}`, the usual way to write a JSON string,
//! breaks on a quote in the value), zero padding and `%e` differ, and a
//! width pads text on the wrong side. This formats the verbs as Go does:
//! `%v %s %q %d %x %X %o %O %b %c %U %t %f %F %e %E %g %G` with the flags
//! `+ - # space 0`, a width and a precision (digits or `*`), `[n]`
//! argument indexes, and Go's `%!d(string=x)`, `%!s(MISSING)`,
//! `%!d(BADINDEX)`, `%!(BADWIDTH)` and `%!(EXTRA ...)` texts. What is
//! beyond that (`%T`, `%p`, `%#v`, `%x` of a float, ...) returns `None`,
//! and `gtmpl` formats it as before. Aegis keeps JSON integers as integers
//! (an int64 to Go: `%d` of 3 is `3`, where VSecM writes
//! `%!d(float64=3)`), and formats them as floats with `%f`, `%e` and `%g`
//! as VSecM does.

use std::collections::HashMap;

use gtmpl_value::{Number, Value};

/// Why a formatting was refused; the caller turns it into the budget's error.
#[derive(Debug)]
pub(super) enum Refused {
    /// The result grew past the output limit.
    Output,
    /// A width or precision above the printf limit.
    Size(usize),
    /// A value Go cannot print (a function).
    Unprintable,
}

/// Refuses a result past the output limit.
fn within(len: usize, limit: Option<usize>) -> Result<(), Refused> {
    match limit {
        Some(limit) if len > limit => Err(Refused::Output),
        _ => Ok(()),
    }
}

/// A verb's flags, width and precision.
#[derive(Default, Clone, Copy)]
struct Spec {
    plus: bool,
    minus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    precision: Option<usize>,
}

/// `fmt.Sprintf(format, args...)`, or `None` for a format this does not
/// cover. Walks the
/// format as Go's `doPrintf` does: flags, an optional `[n]` index, a width
/// (digits or `*`), `.` and a precision (digits or `*`, also after an
/// index), an optional `[n]`, the verb. A width or precision above
/// `max_size` (the template printf limit) is refused, wherever it comes from, and so is a
/// result past the output limit, as soon as it is.
pub(super) fn sprintf(
    format: &str,
    args: &[Value],
    limit: Option<usize>,
    max_size: usize,
) -> Option<Result<String, Refused>> {
    let mut out = String::with_capacity(format.len());
    let mut walk = Walk { bytes: format.as_bytes(), at: 0, arg: 0, reordered: false, good: true };
    while walk.at < format.len() {
        if let Err(e) = within(out.len(), limit) {
            return Some(Err(e));
        }
        walk.literal(format, &mut out);
        if walk.at >= format.len() {
            break;
        }
        walk.at += 1;
        walk.good = true;
        let spec = match walk.spec(args, &mut out, max_size) {
            Ok(spec) => spec,
            Err(e) => return Some(Err(e)),
        };
        let Some(verb) = format.get(walk.at..).and_then(|rest| rest.chars().next()) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        walk.at += verb.len_utf8();
        match walk.verb(verb, spec, args, limit)? {
            Ok(text) => out.push_str(&text),
            Err(e) => return Some(Err(e)),
        }
    }
    if !walk.reordered && walk.arg < args.len() {
        match extra(&args[walk.arg..], limit)? {
            Ok(text) => out.push_str(&text),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(out))
}

/// Go's `%!(EXTRA type=value, ...)` for the arguments no verb took.
fn extra(args: &[Value], limit: Option<usize>) -> Option<Result<String, Refused>> {
    let mut extra = Vec::new();
    for arg in args {
        match typed(arg, limit)? {
            Ok(text) => extra.push(text),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(format!("%!(EXTRA {})", extra.join(", "))))
}

/// Where `sprintf` is in the format and in the arguments.
struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The argument the next verb (or `*`) takes.
    arg: usize,
    /// Whether any `[n]` was met: then unused arguments are not reported.
    reordered: bool,
    /// Whether this verb's indexes are sound (Go's `goodArgNum`).
    good: bool,
}

impl Walk<'_> {
    /// Copies the text up to the next `%` (or the end of `format`) to `out`.
    fn literal(&mut self, format: &str, out: &mut String) {
        let from = self.at;
        while self.at < self.bytes.len() && self.bytes[self.at] != b'%' {
            self.at += 1;
        }
        out.push_str(&format[from..self.at]);
    }

    /// What follows a `%` up to the verb: flags, width and precision, with
    /// their indexes. Go's notes on a bad `*` argument go to `out`; a width
    /// or precision above `max_size` is refused.
    fn spec(&mut self, args: &[Value], out: &mut String, max_size: usize) -> Result<Spec, Refused> {
        let mut spec = self.flags();
        let after_index = self.index(args.len());
        let mut after_index = self.width(args, &mut spec, out, after_index);
        if self.at + 1 < self.bytes.len() && self.bytes[self.at] == b'.' {
            after_index = self.precision(args, &mut spec, out, after_index);
        }
        if !after_index {
            self.index(args.len());
        }
        match [spec.width, spec.precision].into_iter().flatten().find(|&n| n > max_size) {
            Some(size) => Err(Refused::Size(size)),
            None => Ok(spec),
        }
    }

    /// The flags `#0+- `.
    fn flags(&mut self) -> Spec {
        let mut spec = Spec::default();
        while let Some(&f) = self.bytes.get(self.at) {
            match f {
                b'#' => spec.sharp = true,
                b'0' => spec.zero = !spec.minus,
                b'+' => spec.plus = true,
                b'-' => {
                    spec.minus = true;
                    spec.zero = false;
                }
                b' ' => spec.space = true,
                _ => break,
            }
            self.at += 1;
        }
        spec
    }

    /// The width: digits, or `*` for the next argument (a negative one
    /// means `-`). `after_index` tells whether an index came just before;
    /// returns whether one still stands before the next part.
    fn width(&mut self, args: &[Value], spec: &mut Spec, out: &mut String, after_index: bool) -> bool {
        if self.bytes.get(self.at) != Some(&b'*') {
            spec.width = self.number();
            if after_index && spec.width.is_some() {
                self.good = false;
            }
            return after_index;
        }
        self.at += 1;
        match self.int_arg(args) {
            Some(w) => {
                spec.width = usize::try_from(w.unsigned_abs()).ok();
                if w < 0 {
                    spec.minus = true;
                    spec.zero = false;
                }
            }
            None => out.push_str("%!(BADWIDTH)"),
        }
        false
    }

    /// The precision after the `.` the walk is at: an optional index, then
    /// digits or `*` for the next argument. `after_index` as for
    /// [`Walk::width`].
    fn precision(&mut self, args: &[Value], spec: &mut Spec, out: &mut String, after_index: bool) -> bool {
        self.at += 1;
        if after_index {
            self.good = false;
        }
        let after_index = self.index(args.len());
        if self.bytes.get(self.at) != Some(&b'*') {
            spec.precision = Some(self.number().unwrap_or(0));
            return after_index;
        }
        self.at += 1;
        spec.precision = self.int_arg(args).and_then(|p| usize::try_from(p).ok());
        if spec.precision.is_none() {
            out.push_str("%!(BADPREC)");
        }
        false
    }

    /// The text for `verb` with `spec`: the next argument formatted, or
    /// Go's note of what is wrong; `None` for a verb left to `gtmpl`.
    fn verb(
        &mut self,
        verb: char,
        spec: Spec,
        args: &[Value],
        limit: Option<usize>,
    ) -> Option<Result<String, Refused>> {
        if verb == '%' {
            return Some(Ok("%".to_owned()));
        }
        // `%T`, `%p` and Go syntax (`%#v`) are left to `gtmpl`.
        if matches!(verb, 'T' | 'p') || (verb == 'v' && spec.sharp) {
            return None;
        }
        if !self.good {
            return Some(Ok(format!("%!{verb}(BADINDEX)")));
        }
        let Some(arg) = args.get(self.arg) else {
            return Some(Ok(format!("%!{verb}(MISSING)")));
        };
        self.arg += 1;
        // `+` with `v` asks for field names (Go's `plusV`), not a sign.
        let spec = if verb == 'v' { Spec { plus: false, ..spec } } else { spec };
        format_value(verb, &spec, arg, 0, limit)
    }

    /// An optional `[n]` (Go's `argNumber`): moves to argument n and says
    /// whether there was one; a bad index marks the verb `BADINDEX`.
    fn index(&mut self, args: usize) -> bool {
        if self.bytes.get(self.at) != Some(&b'[') {
            return false;
        }
        self.reordered = true;
        let rest = &self.bytes[self.at..];
        let close = if rest.len() < 3 { None } else { rest.iter().skip(1).position(|&b| b == b']').map(|p| p + 1) };
        let Some(close) = close else {
            self.at += 1;
            self.good = false;
            return false;
        };
        self.at += close + 1;
        let inner = &rest[1..close];
        let n = (!inner.is_empty() && inner.len() <= 7 && inner.iter().all(u8::is_ascii_digit))
            .then(|| inner.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')));
        match n {
            Some(n) if (1..=args).contains(&n) => {
                self.arg = n - 1;
                true
            }
            Some(_) => {
                self.good = false;
                true
            }
            None => {
                self.good = false;
                false
            }
        }
    }

    /// A width or precision written as digits (Go's `parsenum`: a number
    /// past a million ends the format).
    fn number(&mut self) -> Option<usize> {
        let mut n: Option<usize> = None;
        while let Some(d) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            if n.is_some_and(|n| n > 1_000_000) {
                self.at = self.bytes.len();
                return None;
            }
            n = Some(n.unwrap_or(0) * 10 + usize::from(d - b'0'));
            self.at += 1;
        }
        n
    }

    /// A `*` width or precision: the next argument, if it is an integer
    /// within a million either way (Go's `intFromArg`).
    fn int_arg(&mut self, args: &[Value]) -> Option<i64> {
        let arg = args.get(self.arg)?;
        self.arg += 1;
        match arg {
            Value::Number(n) => n.as_i64().filter(|i| i.unsigned_abs() <= 1_000_000),
            _ => None,
        }
    }
}

/// What a value is to Go's `fmt`: a JSON integer is an int64, any other
/// number (also one `gtmpl` cannot hold, see [`float_value`]) a float64,
/// JSON null and a missing value nil.
pub(super) enum Arg<'a> {
    Str(&'a str),
    Int(i128),
    Float(f64),
    Bool(bool),
    Nil,
    Array(&'a [Value]),
    Map(&'a HashMap<String, Value>),
}

pub(super) fn arg_of(value: &Value) -> Option<Arg<'_>> {
    Some(match value {
        Value::String(s) => Arg::Str(s),
        Value::Object(_) => Arg::Float(held_float(value)?),
        Value::Number(n) => integer(n).map_or_else(|| n.as_f64().map(Arg::Float), |i| Some(Arg::Int(i)))?,
        Value::Bool(b) => Arg::Bool(*b),
        Value::NoValue | Value::Nil => Arg::Nil,
        Value::Array(items) => Arg::Array(items),
        Value::Map(map) => Arg::Map(map),
        Value::Function(_) => return None,
    })
}

/// One verb applied to one value, as Go's `printArg` (`depth` 0) and
/// `printValue` (inside an array or a map) do; `None` where this does not
/// follow Go. The result is refused once past the output limit.
fn format_value(
    verb: char,
    spec: &Spec,
    value: &Value,
    depth: usize,
    limit: Option<usize>,
) -> Option<Result<String, Refused>> {
    let text = match arg_of(value)? {
        // Inside an array or a map, nil is written as it is, whatever the flags.
        Arg::Nil if depth > 0 => "<nil>".to_owned(),
        Arg::Nil if verb == 'v' => pad_text("<nil>", spec),
        Arg::Nil => format!("%!{verb}(<nil>)"),
        Arg::Array(items) => return format_array(verb, spec, items, depth, limit),
        Arg::Map(map) => return format_map(verb, spec, map, depth, limit),
        Arg::Bool(b) if matches!(verb, 't' | 'v') => pad_text(if b { "true" } else { "false" }, spec),
        Arg::Int(i) => match format_int(verb, spec, i) {
            Some(text) => text,
            None => return bad_verb(verb, spec, value, limit),
        },
        Arg::Float(f) => match float_verb(verb, spec, f) {
            Some(text) => text,
            None => return bad_verb(verb, spec, value, limit),
        },
        Arg::Str(s) => match verb {
            'v' | 's' => pad_text(truncate(s, spec.precision), spec),
            'x' | 'X' => hex_bytes(s, verb == 'X', spec),
            'q' => pad_text(&quote_string(truncate(s, spec.precision), spec), spec),
            _ => return bad_verb(verb, spec, value, limit),
        },
        Arg::Bool(_) => return bad_verb(verb, spec, value, limit),
    };
    Some(Ok(text))
}

/// The elements of an array, as Go's `printValue` writes them: `[a b]`.
fn format_array(
    verb: char,
    spec: &Spec,
    items: &[Value],
    depth: usize,
    limit: Option<usize>,
) -> Option<Result<String, Refused>> {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match format_value(verb, spec, item, depth + 1, limit)? {
            Ok(text) => out.push_str(&text),
            Err(e) => return Some(Err(e)),
        }
        if let Err(e) = within(out.len(), limit) {
            return Some(Err(e));
        }
    }
    out.push(']');
    Some(Ok(out))
}

/// The entries of a map, as Go's `printValue` writes them: `map[k:v]`,
/// the keys sorted.
fn format_map(
    verb: char,
    spec: &Spec,
    map: &HashMap<String, Value>,
    depth: usize,
    limit: Option<usize>,
) -> Option<Result<String, Refused>> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    let mut out = String::from("map[");
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let key_text = format_value(verb, spec, &Value::String(key.clone()), depth + 1, limit)?;
        let value_text = format_value(verb, spec, &map[key], depth + 1, limit)?;
        match (key_text, value_text) {
            (Ok(k), Ok(v)) => {
                out.push_str(&k);
                out.push(':');
                out.push_str(&v);
            }
            (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
        }
        if let Err(e) = within(out.len(), limit) {
            return Some(Err(e));
        }
    }
    out.push(']');
    Some(Ok(out))
}

/// An integer under `verb`; `None` for a verb Go finds wrong for one.
fn format_int(verb: char, spec: &Spec, i: i128) -> Option<String> {
    Some(match verb {
        // VSecM holds every JSON number as a float64: the float verbs take an integer as one.
        #[allow(clippy::cast_precision_loss)] // Go formats the float64 it holds
        // (`float_verb` answers every one of these verbs.)
        'e' | 'E' | 'f' | 'F' | 'g' | 'G' => return float_verb(verb, spec, i as f64),
        'v' | 'd' => int_text(i, 10, verb, spec),
        'b' => int_text(i, 2, verb, spec),
        'o' | 'O' => int_text(i, 8, verb, spec),
        'x' | 'X' => int_text(i, 16, verb, spec),
        'c' => pad_text(&rune_of(i).to_string(), spec),
        'q' => pad_text(&quote(&rune_of(i).to_string(), '\'', spec.plus), spec),
        'U' => unicode_text(i, spec),
        _ => return None,
    })
}

/// A value as Go's `%v` prints it (arrays as `[a b]`, maps as
/// `map[k:v]` with the keys sorted, null inside them as `<nil>`), refused
/// once past the output limit.
pub(super) fn go_value(value: &Value, limit: Option<usize>) -> Result<String, Refused> {
    format_value('v', &Spec::default(), value, 0, limit).unwrap_or(Err(Refused::Unprintable))
}

/// Go's `%!verb(type=value)`: the value printed as `%v` with the verb's
/// flags, width and precision.
fn bad_verb(verb: char, spec: &Spec, value: &Value, limit: Option<usize>) -> Option<Result<String, Refused>> {
    if matches!(arg_of(value)?, Arg::Nil) {
        return Some(Ok(format!("%!{verb}(<nil>)")));
    }
    let name = type_name(value)?;
    Some(format_value('v', spec, value, 0, limit)?.map(|text| format!("%!{verb}({name}={text})")))
}

/// Go's type name of a value, as `%!verb(...)` and `%!(EXTRA ...)` show it.
fn type_name(value: &Value) -> Option<&'static str> {
    Some(match arg_of(value)? {
        Arg::Str(_) => "string",
        Arg::Int(_) => "int64",
        Arg::Float(_) => "float64",
        Arg::Bool(_) => "bool",
        Arg::Array(_) => "[]interface {}",
        Arg::Map(_) => "map[string]interface {}",
        Arg::Nil => return None,
    })
}

/// `type=value` as Go writes it in `%!(EXTRA ...)`, without flags.
fn typed(value: &Value, limit: Option<usize>) -> Option<Result<String, Refused>> {
    match type_name(value) {
        None => Some(Ok("<nil>".to_owned())),
        Some(name) => Some(format_value('v', &Spec::default(), value, 0, limit)?.map(|text| format!("{name}={text}"))),
    }
}

/// A float with a float verb (`v b g G x X f F e E`), as Go's `fmtFloat`
/// writes it; `None` for any other verb.
fn float_verb(verb: char, spec: &Spec, f: f64) -> Option<String> {
    let body = match verb {
        'v' | 'g' | 'G' => go_g(f.abs(), spec.precision, verb == 'G'),
        'f' | 'F' => format!("{:.*}", spec.precision.unwrap_or(6), f.abs()),
        'e' | 'E' => exponent(&format!("{:.*e}", spec.precision.unwrap_or(6), f.abs()), verb == 'E'),
        'b' => binary_float(f.abs()),
        'x' | 'X' => hex_float(f.abs(), spec.precision, verb == 'X'),
        _ => return None,
    };
    let body = if spec.sharp && verb != 'b' { sharp_float(&body, verb, spec.precision) } else { body };
    Some(float_text(&format!("{}{body}", if f.is_sign_negative() { "-" } else { "" }), spec))
}

/// Go's `#` flag on a float: always a decimal point, and with `%v`, `%g`,
/// `%G` and `%x` the trailing zeros up to the precision (6 without one).
fn sharp_float(num: &str, verb: char, precision: Option<usize>) -> String {
    let mut digits: isize = if matches!(verb, 'v' | 'g' | 'G' | 'x') {
        precision.map_or(6, |p| isize::try_from(p).unwrap_or(isize::MAX))
    } else {
        0
    };
    let tail_at = num
        .char_indices()
        .find(|&(_, c)| matches!(c, 'p' | 'P') || (matches!(c, 'e' | 'E') && !matches!(verb, 'x' | 'X')))
        .map_or(num.len(), |(i, _)| i);
    let (mantissa, tail) = num.split_at(tail_at);
    let mut out = mantissa.to_owned();
    let mut nonzero = false;
    for c in mantissa.chars().filter(|&c| c != '.') {
        nonzero = nonzero || c != '0';
        if nonzero {
            digits -= 1;
        }
    }
    if !mantissa.contains('.') {
        if mantissa == "0" {
            digits -= 1;
        }
        out.push('.');
    }
    while digits > 0 {
        out.push('0');
        digits -= 1;
    }
    out.push_str(tail);
    out
}

/// `%b` of a float: decimal mantissa and binary exponent (`4503599627370496p-52`).
fn binary_float(f: f64) -> String {
    let (mant, exp) = mantissa_exponent(f);
    format!("{mant}p{:+}", exp - 52)
}

/// A float's 53-bit mantissa (with its leading 1, if normal) and the
/// power of two of that leading bit: `f = mant * 2^(exp - 52)`.
fn mantissa_exponent(f: f64) -> (u64, i64) {
    let bits = f.to_bits();
    let exp = i64::try_from((bits >> 52) & 0x7ff).unwrap_or(0);
    let mant = bits & ((1 << 52) - 1);
    if exp == 0 {
        (mant, 1 - 1023)
    } else {
        (mant | 1 << 52, exp - 1023)
    }
}

/// `%x` of a float, as Go's `strconv.FormatFloat(f, 'x', precision)`:
/// `0x1.8p+00`, the mantissa rounded to `precision` hex digits if given.
fn hex_float(f: f64, precision: Option<usize>, upper: bool) -> String {
    let (mut mant, mut exp) = mantissa_exponent(f);
    if mant == 0 {
        exp = 0;
    }
    // The leading 1 (if any) at bit 60.
    mant <<= 8;
    while mant != 0 && mant & (1 << 60) == 0 {
        mant <<= 1;
        exp -= 1;
    }
    if let Some(p) = precision.filter(|&p| p < 15) {
        let shift = u32::try_from(p * 4).unwrap_or(0);
        let extra = (mant << shift) & ((1 << 60) - 1);
        mant >>= 60 - shift;
        if extra | (mant & 1) > 1 << 59 {
            mant += 1;
        }
        mant <<= 60 - shift;
        if mant & (1 << 61) != 0 {
            mant >>= 1;
            exp += 1;
        }
    }
    let hex = |d: u64| {
        let c = char::from_digit(u32::try_from(d & 15).unwrap_or(0), 16).unwrap_or('0');
        if upper {
            c.to_ascii_uppercase()
        } else {
            c
        }
    };
    let mut out = format!("0{}{}", if upper { 'X' } else { 'x' }, (mant >> 60) & 1);
    mant <<= 4;
    match precision {
        None if mant != 0 => {
            out.push('.');
            while mant != 0 {
                out.push(hex(mant >> 60));
                mant <<= 4;
            }
        }
        Some(p) if p > 0 => {
            out.push('.');
            for _ in 0..p {
                out.push(hex(mant >> 60));
                mant <<= 4;
            }
        }
        _ => {}
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{out}{}{sign}{:02}", if upper { 'P' } else { 'p' }, exp.unsigned_abs())
}

/// `%x` and `%X` of a string (Go's `fmtSbx`): two hex digits per byte (up
/// to the precision), with `#` a `0x` before them (before each with a
/// space), with a space flag a space between bytes.
fn hex_bytes(s: &str, upper: bool, spec: &Spec) -> String {
    let bytes = &s.as_bytes()[..spec.precision.map_or(s.len(), |p| p.min(s.len()))];
    if bytes.is_empty() {
        return pad_text("", spec);
    }
    let prefix = if upper { "0X" } else { "0x" };
    let mut out = String::new();
    if spec.sharp {
        out.push_str(prefix);
    }
    for (i, b) in bytes.iter().enumerate() {
        if spec.space && i > 0 {
            out.push(' ');
            if spec.sharp {
                out.push_str(prefix);
            }
        }
        out.push_str(&if upper { format!("{b:02X}") } else { format!("{b:02x}") });
    }
    pad_text(&out, spec)
}

/// `%q` of a string: with `#`, in backquotes when Go can (`strconv.CanBackquote`);
/// with `+`, quoted with only ASCII; else Go's `strconv.Quote`.
fn quote_string(s: &str, spec: &Spec) -> String {
    let backquotable = !s.chars().any(|c| (c < ' ' && c != '\t') || c == '`' || c == '\u{7f}' || c == '\u{FEFF}');
    if spec.sharp && backquotable {
        format!("`{s}`")
    } else {
        quote(s, '"', spec.plus)
    }
}

/// An integer as a character, U+FFFD where it is none (as Go does).
fn rune_of(i: i128) -> char {
    u32::try_from(i).ok().and_then(char::from_u32).unwrap_or('\u{FFFD}')
}

/// `%U`: `U+0041`, at least four hex digits (or the precision), with `#`
/// also the character (`U+0041 'A'`) when printable; a negative integer as
/// its 64-bit two's complement; padded with spaces only.
fn unicode_text(i: i128, spec: &Spec) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Go's uint64(i)
    let u = i as i64 as u64;
    let width = spec.precision.filter(|&p| p > 4).unwrap_or(4);
    let mut text = format!("U+{u:0width$X}");
    if spec.sharp {
        if let Some(c) = u32::try_from(u).ok().and_then(char::from_u32).filter(|&c| printable(c) || c == ' ') {
            text.push_str(&format!(" '{c}'"));
        }
    }
    pad_text(&text, &Spec { zero: false, ..*spec })
}

/// Whether `gtmpl` holds a float as Go does: one with a positive fraction
/// as that float, and zero (as the integer 0, so that it is false in an
/// `if`). It truncates any other to an integer (-1.5 becomes -1, 1e-20
/// becomes 0), saturates it (1e21) or makes a whole one an integer (2.0
/// becomes 2, which `%d` and `*` take, where Go refuses a float64), so
/// such a float reaches the template as a [`float_value`].
pub(super) fn gtmpl_holds(f: f64) -> bool {
    f.fract() >= f64::EPSILON || f == 0.0
}

/// A float `gtmpl` cannot hold (see [`gtmpl_holds`]) as the template sees
/// it: a one-entry `Value::Object` (JSON objects are `Value::Map`s, so
/// nothing else is one) holding Go's text of the float under the empty
/// key, which no field name can reach. The functions print, format and
/// compare it as the float; `if` finds it true (it is never zero).
pub(super) fn float_value(f: f64) -> Value {
    Value::Object(HashMap::from([(String::new(), Value::String(go_float(f)))]))
}

/// The float a [`float_value`] carries.
pub(super) fn held_float(value: &Value) -> Option<f64> {
    match value {
        Value::Object(map) => match map.get("") {
            Some(Value::String(text)) => text.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn integer(n: &Number) -> Option<i128> {
    n.as_u64().map(i128::from).or_else(|| n.as_i64().map(i128::from))
}

/// The first `precision` characters (Go's precision for strings).
fn truncate(s: &str, precision: Option<usize>) -> &str {
    match precision.and_then(|p| s.char_indices().nth(p)) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// Text padded to the width with spaces (or zeros with `0`), on the left
/// unless `-`; the width counts characters.
fn pad_text(text: &str, spec: &Spec) -> String {
    let len = text.chars().count();
    let Some(fill) = spec.width.and_then(|w| w.checked_sub(len)).filter(|&n| n > 0) else {
        return text.to_owned();
    };
    if spec.minus {
        format!("{text}{}", " ".repeat(fill))
    } else if spec.zero {
        format!("{}{text}", "0".repeat(fill))
    } else {
        format!("{}{text}", " ".repeat(fill))
    }
}

/// A number's text (sign first) padded: zeros go after the sign.
fn pad_number(sign: &str, digits: &str, spec: &Spec, zero: bool) -> String {
    let len = sign.len() + digits.chars().count();
    let fill = spec.width.map_or(0, |w| w.saturating_sub(len));
    if spec.minus {
        format!("{sign}{digits}{}", " ".repeat(fill))
    } else if zero {
        format!("{sign}{}{digits}", "0".repeat(fill))
    } else {
        format!("{}{sign}{digits}", " ".repeat(fill))
    }
}

fn sign(negative: bool, spec: &Spec) -> &'static str {
    if negative {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    }
}

/// An integer as Go's `fmtInteger` writes it for `verb` (`v`, `d`, `x`,
/// `X`, `o`, `O`, `b`): the precision, or with `0` the width, in leading
/// zeros (before any `0x` prefix), then the sign, then spaces to the width.
fn int_text(i: i128, radix: u32, verb: char, spec: &Spec) -> String {
    let magnitude = i.unsigned_abs();
    let negative = i < 0;
    let mut digits = match radix {
        16 if verb == 'X' => format!("{magnitude:X}"),
        16 => format!("{magnitude:x}"),
        8 => format!("{magnitude:o}"),
        2 => format!("{magnitude:b}"),
        _ => magnitude.to_string(),
    };
    let zeros = match (spec.precision, spec.width) {
        // Precision 0 and value 0: nothing but the padding.
        (Some(0), _) if magnitude == 0 => return " ".repeat(spec.width.unwrap_or(0)),
        (Some(p), _) => p,
        (None, Some(w)) if spec.zero && !spec.minus => {
            w.saturating_sub(usize::from(negative || spec.plus || spec.space))
        }
        _ => 0,
    };
    if digits.len() < zeros {
        digits.insert_str(0, &"0".repeat(zeros - digits.len()));
    }
    if spec.sharp {
        match radix {
            16 if verb == 'X' => digits.insert_str(0, "0X"),
            16 => digits.insert_str(0, "0x"),
            8 if !digits.starts_with('0') => digits.insert(0, '0'),
            2 => digits.insert_str(0, "0b"),
            _ => {}
        }
    }
    if verb == 'O' {
        digits.insert_str(0, "0o");
    }
    pad_number(sign(negative, spec), &digits, spec, false)
}

/// A float's text (with its `-`, if any) signed and padded.
fn float_text(text: &str, spec: &Spec) -> String {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    pad_number(sign(negative, spec), digits, spec, spec.zero)
}

/// Rust's `1.5e3` as Go's `1.5e+03`.
fn exponent(rust: &str, upper: bool) -> String {
    let (mantissa, exp) = rust.split_once('e').unwrap_or((rust, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let e = if upper { 'E' } else { 'e' };
    format!("{mantissa}{e}{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)`, which `%v` and `print` use:
/// the shortest digits that read back as `f`, in exponent form when the
/// exponent is below -4 or at least 6 (`1e+06`, `1e-07`), else plain.
pub(super) fn go_float(f: f64) -> String {
    let Some((digits, exp)) = decimal(&format!("{:e}", f.abs())) else { return f.to_string() };
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        return format!("{sign}{}", scientific(&digits, exp));
    }
    let decimals = usize::try_from(i64::try_from(digits.len()).unwrap_or(0) - i64::from(exp) - 1).unwrap_or(0);
    format!("{sign}{}", fixed(&digits, exp, decimals))
}

/// `%g` of a float that is not negative, as Go's `FormatFloat(f, 'g',
/// precision)`: `precision` significant digits (shortest without one),
/// trailing zeros dropped, exponent form when the exponent is below -4 or
/// at least the precision.
fn go_g(f: f64, precision: Option<usize>, upper: bool) -> String {
    let text = match precision {
        None => go_float(f),
        Some(p) => {
            let p = p.max(1);
            let Some((digits, exp)) = decimal(&format!("{:.*e}", p - 1, f)) else { return f.to_string() };
            let nd = i64::try_from(digits.len()).unwrap_or(0);
            let point = i64::from(exp) + 1;
            let p = i64::try_from(p).unwrap_or(i64::MAX);
            let eprec = if p > nd && nd >= point { nd } else { p };
            if i64::from(exp) < -4 || i64::from(exp) >= eprec {
                scientific(&digits, exp)
            } else {
                let decimals = if p > point { nd - point } else { 0 };
                fixed(&digits, exp, usize::try_from(decimals).unwrap_or(0))
            }
        }
    };
    if upper {
        text.replace('e', "E")
    } else {
        text
    }
}

/// The significant digits (trailing zeros dropped, at least one) and the
/// exponent of Rust's `{:e}` text of a number that is not negative.
fn decimal(sci: &str) -> Option<(String, i32)> {
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let kept = digits.trim_end_matches('0');
    Some((if kept.is_empty() { "0".to_owned() } else { kept.to_owned() }, exp))
}

/// Digits `d1d2...` times 10^exp as `d1.d2...e±XX`.
fn scientific(digits: &str, exp: i32) -> String {
    let (first, rest) = digits.split_at(1);
    let dot = if rest.is_empty() { "" } else { "." };
    format!("{first}{dot}{rest}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
}

/// Digits `d1d2...` times 10^exp as plain decimal with `decimals` digits
/// after the point (zeros added; never fewer than the digits need).
fn fixed(digits: &str, exp: i32, decimals: usize) -> String {
    let point = i64::from(exp) + 1;
    let (int_part, frac) = if point <= 0 {
        ("0".to_owned(), format!("{}{digits}", "0".repeat(usize::try_from(-point).unwrap_or(0))))
    } else {
        let point = usize::try_from(point).unwrap_or(0);
        if point >= digits.len() {
            (format!("{digits}{}", "0".repeat(point - digits.len())), String::new())
        } else {
            (digits[..point].to_owned(), digits[point..].to_owned())
        }
    };
    if decimals == 0 {
        return int_part;
    }
    let fill = decimals.saturating_sub(frac.len());
    format!("{int_part}.{frac}{}", "0".repeat(fill))
}

/// Go's `strconv.Quote`: a double-quoted string, with `"` and `\`
/// escaped, the usual escapes for control characters, and `\x`, `\u` or
/// `\U` (lowercase hex) for other characters that are not printable.
pub(super) fn quote(s: &str, q: char, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if c == ' ' || (!ascii && !c.is_ascii() && printable(c)) || (c.is_ascii() && !c.is_control()) => {
                out.push(c);
            }
            c if u32::from(c) < 0x10000 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push(q);
    out
}

/// Unicode's printable characters (Go's `unicode.IsPrint`), near enough
/// for `%q` and `js`: not a control, not a space other than U+0020, not a
/// format or private-use character that is commonly met.
pub(super) fn printable(c: char) -> bool {
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{AD}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}' | '\u{180E}'
            | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E000}'..='\u{F8FF}'
            | '\u{F0000}'..='\u{10FFFF}'))
}
