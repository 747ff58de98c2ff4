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

use gtmpl_value::{FuncError, Number, Value};

use super::budget::{check_size, printf_size_error, MAX_PRINTF_SIZE};

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
/// cover. `collection` gives Go's text of an array or a map. Walks the
/// format as Go's `doPrintf` does: flags, an optional `[n]` index, a width
/// (digits or `*`), `.` and a precision (digits or `*`, also after an
/// index), an optional `[n]`, the verb. A width or precision above
/// [`MAX_PRINTF_SIZE`] is refused, wherever it comes from, and so is a
/// result past the output limit, as soon as it is.
pub(super) fn sprintf(
    format: &str,
    args: &[Value],
    limit: Option<usize>,
    collection: &dyn Fn(&Value) -> Result<String, FuncError>,
) -> Option<Result<String, FuncError>> {
    let mut out = String::with_capacity(format.len());
    let mut walk = Walk { bytes: format.as_bytes(), at: 0, arg: 0, reordered: false, good: true };
    let end = format.len();
    while walk.at < end {
        if let Err(e) = check_size(out.len(), limit) {
            return Some(Err(e));
        }
        let literal = walk.at;
        while walk.at < end && walk.bytes[walk.at] != b'%' {
            walk.at += 1;
        }
        out.push_str(&format[literal..walk.at]);
        if walk.at >= end {
            break;
        }
        walk.at += 1;
        walk.good = true;
        let mut spec = Spec::default();
        while let Some(&f) = walk.bytes.get(walk.at) {
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
            walk.at += 1;
        }
        let mut after_index = walk.index(args.len());
        if walk.bytes.get(walk.at) == Some(&b'*') {
            walk.at += 1;
            match walk.int_arg(args) {
                Some(w) => {
                    spec.width = usize::try_from(w.unsigned_abs()).ok();
                    if w < 0 {
                        spec.minus = true;
                        spec.zero = false;
                    }
                }
                None => out.push_str("%!(BADWIDTH)"),
            }
            after_index = false;
        } else {
            spec.width = walk.number();
            if after_index && spec.width.is_some() {
                walk.good = false;
            }
        }
        if walk.at + 1 < end && walk.bytes[walk.at] == b'.' {
            walk.at += 1;
            if after_index {
                walk.good = false;
            }
            after_index = walk.index(args.len());
            if walk.bytes.get(walk.at) == Some(&b'*') {
                walk.at += 1;
                spec.precision = walk.int_arg(args).and_then(|p| usize::try_from(p).ok());
                if spec.precision.is_none() {
                    out.push_str("%!(BADPREC)");
                }
                after_index = false;
            } else {
                spec.precision = Some(walk.number().unwrap_or(0));
            }
        }
        if !after_index {
            walk.index(args.len());
        }
        if let Some(size) = [spec.width, spec.precision].into_iter().flatten().find(|&n| n > MAX_PRINTF_SIZE) {
            return Some(Err(printf_size_error(size as u128)));
        }
        let Some(verb) = format.get(walk.at..).and_then(|rest| rest.chars().next()) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        walk.at += verb.len_utf8();
        if verb == '%' {
            out.push('%');
            continue;
        }
        // Not a verb of Go's at all: Go names the verb and the value.
        let unknown = !"vTtbcdoOqxXUeEfFgGsp".contains(verb);
        if !unknown && !"vsqdxXoObctfFeEgGU".contains(verb) {
            return None;
        }
        if !walk.good {
            out.push_str(&format!("%!{verb}(BADINDEX)"));
            continue;
        }
        let Some(arg) = args.get(walk.arg) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        walk.arg += 1;
        if unknown {
            out.push_str(&bad_verb(verb, arg, &spec, collection)?);
            continue;
        }
        match verb_text(verb, &spec, arg, collection) {
            Some(Ok(text)) => out.push_str(&text),
            Some(Err(e)) => return Some(Err(e)),
            None => return None,
        }
    }
    if !walk.reordered && walk.arg < args.len() {
        let extra: Vec<String> = args[walk.arg..].iter().map(|a| typed(a, collection)).collect::<Option<_>>()?;
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Some(Ok(out))
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

/// One verb applied to one argument; `None` where this does not follow Go.
fn verb_text(
    verb: char,
    spec: &Spec,
    arg: &Value,
    collection: &dyn Fn(&Value) -> Result<String, FuncError>,
) -> Option<Result<String, FuncError>> {
    let text = match (verb, arg) {
        ('v', Value::Array(_) | Value::Map(_) | Value::Object(_)) if !spec.sharp && !spec.plus => {
            return Some(collection(arg).map(|t| pad_text(&t, spec)));
        }
        // `+` with `v` asks for field names, not a sign.
        ('v', Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::NoValue | Value::Nil) if !spec.sharp => {
            value_text(arg, &Spec { plus: false, ..*spec }, collection)?
        }
        ('s', Value::String(s)) => pad_text(truncate(s, spec.precision), spec),
        ('q', Value::String(s)) if !spec.plus && !spec.sharp => {
            pad_text(&quote(truncate(s, spec.precision), '"'), spec)
        }
        ('t', Value::Bool(b)) => pad_text(if *b { "true" } else { "false" }, spec),
        ('d' | 'x' | 'X' | 'o' | 'O' | 'b', Value::Number(n)) => {
            let i = integer(n)?;
            let radix = match verb {
                'd' => 10,
                'x' | 'X' => 16,
                'o' | 'O' => 8,
                _ => 2,
            };
            int_text(i, radix, verb, spec)
        }
        ('x' | 'X', Value::String(s)) if !spec.sharp && !spec.space => {
            let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            pad_text(truncate_bytes(&if verb == 'X' { hex.to_uppercase() } else { hex }, spec.precision), spec)
        }
        ('c', Value::Number(n)) => pad_text(&rune_of(integer(n)?).to_string(), spec),
        ('q', Value::Number(n)) if !spec.plus && !spec.sharp && integer(n).is_some() => {
            pad_text(&quote(&rune_of(integer(n)?).to_string(), '\''), spec)
        }
        ('U', Value::Number(n)) if integer(n).is_some() => unicode_text(integer(n)?, spec),
        ('f' | 'F' | 'e' | 'E' | 'g' | 'G', Value::Number(_) | Value::String(_))
            if !spec.sharp && float_of(arg).is_some() =>
        {
            let f = float_of(arg)?;
            let body = match verb {
                'f' | 'F' => format!("{:.*}", spec.precision.unwrap_or(6), f.abs()),
                'e' | 'E' => exponent(&format!("{:.*e}", spec.precision.unwrap_or(6), f.abs()), verb == 'E'),
                _ => go_g(f.abs(), spec.precision, verb == 'G'),
            };
            float_text(&format!("{}{body}", if f.is_sign_negative() { "-" } else { "" }), spec)
        }
        // Go's text for a verb that does not fit the value, e.g. `%!d(string=x)`.
        ('s' | 'q' | 'd' | 'x' | 'X' | 'o' | 'O' | 'b' | 'c' | 't' | 'f' | 'F' | 'e' | 'E' | 'g' | 'G' | 'U', _)
            if bad_verb_is_plain(verb, arg) =>
        {
            bad_verb(verb, arg, spec, collection)?
        }
        _ => return None,
    };
    Some(Ok(text))
}

/// Go's `%!verb(type=value)`: the value printed as `%v` with the verb's
/// flags, width and precision.
fn bad_verb(
    verb: char,
    arg: &Value,
    spec: &Spec,
    collection: &dyn Fn(&Value) -> Result<String, FuncError>,
) -> Option<String> {
    Some(match arg {
        Value::NoValue | Value::Nil => format!("%!{verb}(<nil>)"),
        _ => format!("%!{verb}({}={})", type_name(arg)?, value_text(arg, spec, collection)?),
    })
}

/// Whether Go writes `%!verb(type=value)` for this pair (and not something
/// this does not reproduce, such as `%s` applied inside an array).
fn bad_verb_is_plain(verb: char, arg: &Value) -> bool {
    match arg {
        Value::String(_) => !matches!(verb, 'x' | 'X'),
        Value::Bool(_) | Value::NoValue | Value::Nil => true,
        Value::Number(n) => {
            matches!(verb, 's' | 't')
                || (integer(n).is_none() && matches!(verb, 'd' | 'o' | 'O' | 'b' | 'c' | 'q' | 'U'))
        }
        _ => false,
    }
}

/// Go's type name of a value, as `%!verb(...)` and `%!(EXTRA ...)` show it:
/// a JSON integer is an int64 here, any other number a float64.
fn type_name(arg: &Value) -> Option<&'static str> {
    Some(match arg {
        Value::String(_) => "string",
        Value::Number(n) if integer(n).is_some() => "int64",
        Value::Number(_) => "float64",
        Value::Bool(_) => "bool",
        Value::Array(_) => "[]interface {}",
        Value::Map(_) | Value::Object(_) => "map[string]interface {}",
        Value::NoValue | Value::Nil | Value::Function(_) => return None,
    })
}

/// `type=value` as Go writes it in `%!(EXTRA ...)`, without flags.
fn typed(arg: &Value, collection: &dyn Fn(&Value) -> Result<String, FuncError>) -> Option<String> {
    match arg {
        Value::NoValue | Value::Nil => Some("<nil>".to_owned()),
        _ => Some(format!("{}={}", type_name(arg)?, value_text(arg, &Spec::default(), collection)?)),
    }
}

/// A value as Go's `%v` prints it, with the flags, width and precision.
fn value_text(arg: &Value, spec: &Spec, collection: &dyn Fn(&Value) -> Result<String, FuncError>) -> Option<String> {
    Some(match arg {
        Value::String(s) => pad_text(truncate(s, spec.precision), spec),
        Value::Number(n) => match integer(n) {
            Some(i) => int_text(i, 10, 'v', spec),
            None => float_text(&go_g(n.as_f64()?, spec.precision, false), spec),
        },
        Value::Bool(b) => pad_text(if *b { "true" } else { "false" }, spec),
        Value::NoValue | Value::Nil => pad_text("<nil>", spec),
        Value::Array(_) | Value::Map(_) | Value::Object(_) => pad_text(&collection(arg).ok()?, spec),
        Value::Function(_) => return None,
    })
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
/// as that float, a whole one below a million as the integer it equals
/// (Go prints both alike). It truncates any other to an integer (-1.5
/// becomes -1, 1e-20 becomes 0) or saturates it (1e21), so such a float
/// reaches the template as its text as Go prints it (`-1.5`, `1e+21`).
pub(super) fn gtmpl_holds(f: f64) -> bool {
    f.fract() >= f64::EPSILON || (f.fract() == 0.0 && f.abs() < 1e6 && !(f == 0.0 && f.is_sign_negative()))
}

/// A float that reached the template as its text because `gtmpl` could
/// not hold it (see [`gtmpl_holds`]).
pub(super) fn float_text_of(value: &Value) -> Option<f64> {
    float_of(value).filter(|&f| matches!(value, Value::String(_)) && !gtmpl_holds(f))
}

/// A number as a float: a JSON number, or one that reached the template
/// as its text because `gtmpl` cannot hold it (see `template_number`).
pub(super) fn float_of(value: &Value) -> Option<f64> {
    match value {
        #[allow(clippy::cast_precision_loss)] // Go formats the float64 it holds
        Value::Number(n) => n.as_f64().or_else(|| integer(n).map(|i| i as f64)),
        Value::String(s) => s.parse::<f64>().ok().filter(|f| f.is_finite() && go_float(*f) == *s),
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

fn truncate_bytes(s: &str, precision: Option<usize>) -> &str {
    precision.map_or(s, |p| s.get(..p.saturating_mul(2).min(s.len())).unwrap_or(s))
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
pub(crate) fn go_float(f: f64) -> String {
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
pub(super) fn quote(s: &str, q: char) -> String {
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
            c if c == ' ' || (!c.is_ascii() && printable(c)) || (c.is_ascii() && !c.is_control()) => {
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
            | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E000}'..='\u{F8FF}'))
}
