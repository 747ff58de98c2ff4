//! Reads the YAML the transformation writes with an independent YAML 1.2
//! parser (`yaml-rust2`'s event parser) and compares it with the JSON it
//! came from. Plain scalars are resolved here by the YAML 1.2 core schema
//! (not by yaml-rust2's looser rules, which read `0x-4F` as a number), and a
//! plain `<<` key, which YAML 1.1 readers take for a merge key, is refused.

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Why a YAML document does not read back as the JSON object it was written from.
pub fn mismatch(yaml: &str, json: &Map<String, Value>) -> Option<String> {
    let mut tree = Tree::default();
    if let Err(e) = Parser::new_from_str(yaml).load(&mut tree, true) {
        return Some(format!("the YAML does not parse: {e}"));
    }
    if let Some(why) = tree.error {
        return Some(why);
    }
    let [doc] = tree.docs.as_slice() else {
        return Some(format!("the YAML holds {} documents, not one", tree.docs.len()));
    };
    compare(doc, &Value::Object(json.clone()), "$")
}

/// A node read back: collections, or a scalar as JSON.
enum Node {
    /// Keys and values, alternating, in document order.
    Map(Vec<Node>),
    Seq(Vec<Node>),
    Scalar(Value),
}

#[derive(Default)]
struct Tree {
    stack: Vec<Node>,
    docs: Vec<Node>,
    error: Option<String>,
}

impl Tree {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(Node::Seq(items) | Node::Map(items)) => items.push(node),
            Some(Node::Scalar(_)) => self.error = Some("a scalar holds a node".to_owned()),
            None => self.docs.push(node),
        }
    }
}

impl MarkedEventReceiver for Tree {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::Scalar(text, style, _, tag) => {
                if tag.is_some() {
                    self.error = Some("a tagged scalar".to_owned());
                }
                let plain = style == TScalarStyle::Plain;
                // YAML 1.2 has no merge key, but 1.1 readers (Go's yaml.v3 among
                // them) merge the value of a plain `<<` key into the mapping.
                let key = matches!(self.stack.last(), Some(Node::Map(items)) if items.len() % 2 == 0);
                if plain && key && text == "<<" {
                    self.error = Some("a plain `<<` key, a merge key to YAML 1.1 readers".to_owned());
                }
                self.push(Node::Scalar(if plain { resolve(&text) } else { Value::String(text) }));
            }
            Event::SequenceStart(..) => self.stack.push(Node::Seq(Vec::new())),
            Event::MappingStart(..) => self.stack.push(Node::Map(Vec::new())),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(node) = self.stack.pop() {
                    self.push(node);
                }
            }
            Event::Alias(_) => self.error = Some("an alias".to_owned()),
            _ => {}
        }
    }
}

/// A plain scalar by the YAML 1.2 core schema (null, bool, int, float, string).
fn resolve(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = core_int(s) {
        return Value::Number(n);
    }
    if is_core_float(s) {
        return match s.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(format!("<non-finite float {s}>")),
        };
    }
    let special = s.strip_prefix(['-', '+']).unwrap_or(s);
    if [".inf", ".Inf", ".INF"].contains(&special) || [".nan", ".NaN", ".NAN"].contains(&s) {
        return Value::String(format!("<non-finite float {s}>"));
    }
    Value::String(s.to_owned())
}

fn core_int(s: &str) -> Option<Number> {
    let digits = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
    let value = if let Some(hex) = s.strip_prefix("0x") {
        digits(hex, 16).then(|| i128::from_str_radix(hex, 16).ok())??
    } else if let Some(oct) = s.strip_prefix("0o") {
        digits(oct, 8).then(|| i128::from_str_radix(oct, 8).ok())??
    } else {
        digits(s.trim_start_matches(['-', '+']), 10).then(|| s.parse::<i128>().ok())??
    };
    if let Ok(i) = i64::try_from(value) {
        return Some(i.into());
    }
    if let Ok(u) = u64::try_from(value) {
        return Some(u.into());
    }
    Number::from_f64(value as f64)
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_core_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let all_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => !frac.is_empty() && all_digits(frac),
        Some((int, frac)) => !int.is_empty() && all_digits(int) && all_digits(frac),
        None => !mantissa.is_empty() && all_digits(mantissa),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exp_ok
}

fn compare(yaml: &Node, json: &Value, at: &str) -> Option<String> {
    match (yaml, json) {
        (Node::Map(entries), Value::Object(m)) => compare_maps(entries, m, at),
        (Node::Seq(items), Value::Array(v)) if items.len() == v.len() => {
            items.iter().zip(v).enumerate().find_map(|(i, (y, j))| compare(y, j, &format!("{at}[{i}]")))
        }
        (Node::Scalar(Value::Number(a)), Value::Number(b)) if same_number(a, b) => None,
        (Node::Scalar(a), b) if a == b => None,
        (y, j) => Some(format!("at {at}: YAML reads {} where JSON has {}", kind(y), kind_json(j))),
    }
}

fn compare_maps(entries: &[Node], m: &Map<String, Value>, at: &str) -> Option<String> {
    if entries.len() != 2 * m.len() {
        return Some(format!("at {at}: {} YAML nodes for {} JSON keys", entries.len(), m.len()));
    }
    for pair in entries.chunks_exact(2) {
        let (k, v) = (&pair[0], &pair[1]);
        let Node::Scalar(Value::String(key)) = k else {
            return Some(format!("at {at}: a key reads back as {}, not a string", kind(k)));
        };
        let Some(j) = m.get(key) else {
            return Some(format!("at {at}: a key ({} bytes) is not one of the JSON keys", key.len()));
        };
        if let Some(why) = compare(v, j, &format!("{at}.<key of {} bytes>", key.len())) {
            return Some(why);
        }
    }
    None
}

fn same_number(a: &Number, b: &Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

fn kind(y: &Node) -> &'static str {
    match y {
        Node::Map(_) => "a mapping",
        Node::Seq(_) => "a sequence",
        Node::Scalar(v) => kind_json(v),
    }
}

fn kind_json(j: &Value) -> &'static str {
    match j {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
