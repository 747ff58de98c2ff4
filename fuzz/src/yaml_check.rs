//! Reads the YAML the transformation writes with an independent YAML 1.2
//! parser (`yaml-rust2`) and compares it with the JSON it came from.

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// Why a YAML document does not read back as the JSON object it was written from.
pub fn mismatch(yaml: &str, json: &Map<String, Value>) -> Option<String> {
    let docs = match YamlLoader::load_from_str(yaml) {
        Ok(docs) => docs,
        Err(e) => return Some(format!("the YAML does not parse: {e}")),
    };
    let [doc] = docs.as_slice() else {
        return Some(format!("the YAML holds {} documents, not one", docs.len()));
    };
    compare(doc, &Value::Object(json.clone()), "$")
}

fn compare(yaml: &Yaml, json: &Value, at: &str) -> Option<String> {
    match (yaml, json) {
        (Yaml::Hash(h), Value::Object(m)) => compare_maps(h, m, at),
        (Yaml::Array(a), Value::Array(v)) if a.len() == v.len() => {
            a.iter().zip(v).enumerate().find_map(|(i, (y, j))| compare(y, j, &format!("{at}[{i}]")))
        }
        (Yaml::String(s), Value::String(t)) if s == t => None,
        (Yaml::Boolean(b), Value::Bool(c)) if b == c => None,
        (Yaml::Null, Value::Null) => None,
        (y, Value::Number(n)) if same_number(y, n) => None,
        (y, j) => Some(format!("at {at}: YAML reads {} where JSON has {}", kind(y), kind_json(j))),
    }
}

fn compare_maps(h: &yaml_rust2::yaml::Hash, m: &Map<String, Value>, at: &str) -> Option<String> {
    if h.len() != m.len() {
        return Some(format!("at {at}: {} YAML keys for {} JSON keys", h.len(), m.len()));
    }
    for (k, v) in m {
        let Some(y) = h.get(&Yaml::String(k.clone())) else {
            return Some(format!("at {at}: a key ({} bytes) does not read back as that string", k.len()));
        };
        if let Some(why) = compare(y, v, &format!("{at}.<key of {} bytes>", k.len())) {
            return Some(why);
        }
    }
    None
}

fn same_number(y: &Yaml, n: &serde_json::Number) -> bool {
    let Some(want) = n.as_f64() else { return false };
    let got = match y {
        Yaml::Integer(i) => *i as f64,
        Yaml::Real(r) => match r.parse::<f64>() {
            Ok(f) => f,
            Err(_) => return false,
        },
        _ => return false,
    };
    match (n.as_i64(), y) {
        (Some(i), Yaml::Integer(j)) => i == *j,
        _ => got == want,
    }
}

fn kind(y: &Yaml) -> &'static str {
    match y {
        Yaml::Real(_) => "a float",
        Yaml::Integer(_) => "an integer",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a bool",
        Yaml::Array(_) => "a sequence",
        Yaml::Hash(_) => "a mapping",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "null",
        Yaml::BadValue => "a bad value",
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
