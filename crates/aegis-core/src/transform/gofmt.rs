//! `printf` as Go's `fmt.Sprintf` formats the values a template sees.
//!
//! `gtmpl`'s `printf` follows Rust's formatting: `%q` does not quote (so
//! `{"pw": {{printf "%q" .pw}}}`, the usual way to write a JSON string,
//! breaks on a quote in the value), zero padding and `%e` differ, and a
//! width pads text on the wrong side. This formats the common verbs as Go
//! does: `%v %s %q %d %x %X %o %b %c %t %f %F %e %E` with the flags
//! `+ - # space 0`, a width and a precision, and Go's `%!d(string=x)`,
//! `%!s(MISSING)` and `%!(EXTRA ...)` texts. A format beyond that (`*`
//! widths, `[n]` indexes, `%g`, `%U`, `%#v`, ...) returns `None`, and
//! `gtmpl` formats it as before. Aegis keeps JSON integers as integers (an
//! int64 to Go: `%d` of 3 is `3`, where VSecM writes `%!d(float64=3)`), and
//! formats them as floats with `%f` and `%e` as VSecM does.

use gtmpl_value::{FuncError, Number, Value};

use super::yaml::go_float;

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
/// cover. `collection` gives Go's text of an array or a map.
pub(super) fn sprintf(
    format: &str,
    args: &[Value],
    collection: &dyn Fn(&Value) -> Result<String, FuncError>,
) -> Option<Result<String, FuncError>> {
    let mut out = String::with_capacity(format.len());
    let mut next = 0usize;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&f) = chars.peek() {
            match f {
                '+' => spec.plus = true,
                '-' => spec.minus = true,
                '#' => spec.sharp = true,
                ' ' => spec.space = true,
                '0' => spec.zero = true,
                _ => break,
            }
            chars.next();
        }
        spec.width = digits(&mut chars);
        if chars.peek() == Some(&'.') {
            chars.next();
            spec.precision = Some(digits(&mut chars).unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        if matches!(verb, '*' | '[') {
            return None;
        }
        // Not a verb of Go's at all: Go names the verb and the value.
        let unknown = !"vTtbcdoOqxXUeEfFgGspw".contains(verb);
        if !unknown && !"vsqdxXobctfFeE".contains(verb) {
            return None;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        if unknown {
            match arg {
                Value::NoValue | Value::Nil => out.push_str(&format!("%!{verb}(<nil>)")),
                _ => out.push_str(&format!("%!{verb}({})", typed(arg, collection)?)),
            }
            continue;
        }
        match verb_text(verb, &spec, arg, collection) {
            Some(Ok(text)) => out.push_str(&text),
            Some(Err(e)) => return Some(Err(e)),
            None => return None,
        }
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..].iter().map(|a| typed(a, collection)).collect::<Option<_>>()?;
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Some(Ok(out))
}

/// A width or precision: digits (bounded before this runs, see `printf_estimate`).
fn digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<usize> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
        chars.next();
    }
    n
}

/// One verb applied to one argument; `None` where this does not follow Go.
fn verb_text(
    verb: char,
    spec: &Spec,
    arg: &Value,
    collection: &dyn Fn(&Value) -> Result<String, FuncError>,
) -> Option<Result<String, FuncError>> {
    let text = match (verb, arg) {
        ('v' | 's', Value::String(s)) => pad_text(truncate(s, spec.precision), spec),
        ('q', Value::String(s)) if !spec.plus && !spec.sharp => pad_text(&quote(truncate(s, spec.precision)), spec),
        ('v', Value::Number(n)) if spec.precision.is_none() && !spec.sharp => {
            // `+` with `v` asks for field names, not a sign.
            let spec = Spec { plus: false, ..*spec };
            match integer(n) {
                Some(i) => int_text(i, 10, false, &spec),
                None => float_text(&go_float(n.as_f64()?), &spec),
            }
        }
        ('v', Value::Bool(b)) | ('t', Value::Bool(b)) => pad_text(if *b { "true" } else { "false" }, spec),
        ('v', Value::NoValue | Value::Nil) => pad_text("<nil>", spec),
        ('v', Value::Array(_) | Value::Map(_) | Value::Object(_)) if !spec.sharp && !spec.plus => {
            return Some(collection(arg).map(|t| pad_text(&t, spec)));
        }
        ('d' | 'x' | 'X' | 'o' | 'b', Value::Number(n)) => {
            let i = integer(n)?;
            let radix = match verb {
                'd' => 10,
                'x' | 'X' => 16,
                'o' => 8,
                _ => 2,
            };
            int_text(i, radix, verb == 'X', spec)
        }
        ('x' | 'X', Value::String(s)) if !spec.sharp && !spec.space => {
            let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            pad_text(truncate_bytes(&if verb == 'X' { hex.to_uppercase() } else { hex }, spec.precision), spec)
        }
        ('c', Value::Number(n)) => {
            let c = integer(n).and_then(|i| u32::try_from(i).ok()).and_then(char::from_u32).unwrap_or('\u{FFFD}');
            pad_text(&c.to_string(), spec)
        }
        ('f' | 'F' | 'e' | 'E', Value::Number(_) | Value::String(_)) if !spec.sharp && float_of(arg).is_some() => {
            let f = float_of(arg)?;
            let precision = spec.precision.unwrap_or(6);
            let body = if matches!(verb, 'f' | 'F') {
                format!("{:.precision$}", f.abs())
            } else {
                exponent(&format!("{:.precision$e}", f.abs()), verb == 'E')
            };
            float_text(&format!("{}{body}", if f.is_sign_negative() { "-" } else { "" }), spec)
        }
        // Go's text for a verb that does not fit the value, e.g. `%!d(string=x)`.
        ('s' | 'q' | 'd' | 'x' | 'X' | 'o' | 'b' | 'c' | 't' | 'f' | 'F' | 'e' | 'E', _)
            if bad_verb_is_plain(verb, arg) =>
        {
            match arg {
                Value::NoValue | Value::Nil => format!("%!{verb}(<nil>)"),
                _ => format!("%!{verb}({})", typed(arg, collection)?),
            }
        }
        _ => return None,
    };
    Some(Ok(text))
}

/// Whether Go writes `%!verb(type=value)` for this pair (and not something
/// this does not reproduce, such as `%s` applied inside an array).
fn bad_verb_is_plain(verb: char, arg: &Value) -> bool {
    match arg {
        Value::String(_) => !matches!(verb, 'x' | 'X'),
        Value::Bool(_) | Value::NoValue | Value::Nil => true,
        Value::Number(n) => {
            matches!(verb, 's' | 'q' | 't') || (integer(n).is_none() && matches!(verb, 'd' | 'o' | 'b' | 'c'))
        }
        _ => false,
    }
}

/// `type=value` as Go writes it in `%!verb(...)` and `%!(EXTRA ...)`; a
/// JSON integer is an int64 here, any other number a float64.
fn typed(arg: &Value, collection: &dyn Fn(&Value) -> Result<String, FuncError>) -> Option<String> {
    Some(match arg {
        Value::String(s) => format!("string={s}"),
        Value::Number(n) => match integer(n) {
            Some(i) => format!("int64={i}"),
            None => format!("float64={}", go_float(n.as_f64()?)),
        },
        Value::Bool(b) => format!("bool={b}"),
        Value::NoValue | Value::Nil => "<nil>".to_owned(),
        Value::Array(_) => format!("[]interface {{}}={}", collection(arg).ok()?),
        Value::Map(_) | Value::Object(_) => format!("map[string]interface {{}}={}", collection(arg).ok()?),
        Value::Function(_) => return None,
    })
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

fn int_text(i: i128, radix: u32, upper: bool, spec: &Spec) -> String {
    let magnitude = i.unsigned_abs();
    let mut digits = match radix {
        16 if upper => format!("{magnitude:X}"),
        16 => format!("{magnitude:x}"),
        8 => format!("{magnitude:o}"),
        2 => format!("{magnitude:b}"),
        _ => magnitude.to_string(),
    };
    if let Some(p) = spec.precision {
        if p == 0 && magnitude == 0 {
            digits.clear();
        } else if digits.len() < p {
            digits = format!("{}{digits}", "0".repeat(p - digits.len()));
        }
    }
    if spec.sharp {
        match radix {
            16 if upper => digits.insert_str(0, "0X"),
            16 => digits.insert_str(0, "0x"),
            8 if !digits.starts_with('0') => digits.insert(0, '0'),
            2 => digits.insert_str(0, "0b"),
            _ => {}
        }
    }
    // A precision turns zero padding off, as in Go.
    pad_number(sign(i < 0, spec), &digits, spec, spec.zero && spec.precision.is_none())
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

/// Go's `strconv.Quote`: a double-quoted string, with `"` and `\`
/// escaped, the usual escapes for control characters, and `\x`, `\u` or
/// `\U` (lowercase hex) for other characters that are not printable.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
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
    out.push('"');
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
