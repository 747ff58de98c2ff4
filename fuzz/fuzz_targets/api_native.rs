//! The native API's request bodies and paths, through the real router and
//! store: no request gets a server error, error answers are JSON and never
//! repeat the secret value, a name sent percent-encoded is the name stored
//! (decoded once), and a value written is the value read back.
#![no_main]

use aegis_core::WorkloadName;
use aegis_fuzz::safe::{check_answer, sentinel, workload, Answer, Safe};
use aegis_fuzz::CANARY;
use axum::http::Method;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    encode_name: bool,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Put(Put),
    PutRaw(Vec<u8>),
    Get(Option<u64>),
    Delete,
    Undelete,
    Rollback(Vec<u8>),
    History,
    Destroy(String),
    Encrypt(Vec<u8>),
    Workload,
    List(bool),
}

#[derive(Arbitrary, Debug)]
struct Put {
    value: String,
    namespaces: Option<Vec<String>>,
    template: Option<String>,
    format: Option<String>,
    not_before: Option<String>,
    expires_after: Option<String>,
    cas: Option<u64>,
    created: Option<String>,
    updated: Option<String>,
}

impl Put {
    /// The value sent: the fuzzed text with the canary inside.
    fn value(&self) -> String {
        format!("{}{CANARY}", self.value)
    }

    fn body(&self) -> Vec<u8> {
        let mut b = json!({ "value": self.value() });
        let fields = [
            ("template", self.template.as_ref().map(|t| json!(t))),
            ("format", self.format.as_ref().map(|t| json!(t))),
            ("not_before", self.not_before.as_ref().map(|t| json!(t))),
            ("expires_after", self.expires_after.as_ref().map(|t| json!(t))),
            ("namespaces", self.namespaces.as_ref().map(|t| json!(t))),
            ("cas", self.cas.map(|t| json!(t))),
            ("created", self.created.as_ref().map(|t| json!(t))),
            ("updated", self.updated.as_ref().map(|t| json!(t))),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                b[k] = v;
            }
        }
        serde_json::to_vec(&b).expect("a JSON body")
    }

    /// Whether a field other than the value holds the canary (the fuzzer
    /// may copy it): then error answers may rightly repeat it.
    fn canary_elsewhere(&self) -> bool {
        let texts = [&self.template, &self.format, &self.not_before, &self.expires_after, &self.created, &self.updated];
        texts.iter().any(|t| t.as_deref().is_some_and(|t| t.contains(CANARY)))
            || self.namespaces.iter().flatten().any(|n| n.contains(CANARY))
    }
}

fuzz_target!(|input: Input| {
    if input.steps.len() > 6 || input.name.contains(CANARY) {
        return;
    }
    let segment = if input.encode_name {
        utf8_percent_encode(&input.name, NON_ALPHANUMERIC).to_string()
    } else {
        input.name.clone()
    };
    let base = format!("/v1/secrets/{segment}");
    let safe = Safe::new();
    for step in &input.steps {
        run(&safe, &input, &base, step);
    }
});

fn run(safe: &Safe, input: &Input, base: &str, step: &Step) {
    let s = sentinel();
    let (route, a) = match step {
        Step::Put(p) => {
            let Some(a) = safe.call(&s, Method::PUT, base, p.body()) else { return };
            if p.canary_elsewhere() {
                assert!(!a.status.is_server_error(), "PUT: server error {}", a.status);
                return;
            }
            check_answer("PUT /v1/secrets/{name}", &a);
            if a.status.is_success() {
                written(safe, input, base, p, &a);
            }
            return;
        }
        Step::PutRaw(b) => ("PUT /v1/secrets/{name}", safe.call(&s, Method::PUT, base, b.clone())),
        Step::Get(v) => {
            let path = v.map_or_else(|| base.to_owned(), |v| format!("{base}?version={v}"));
            ("GET /v1/secrets/{name}", safe.call(&s, Method::GET, &path, Vec::new()))
        }
        Step::Delete => ("DELETE", safe.call(&s, Method::DELETE, base, Vec::new())),
        Step::Undelete => ("undelete", safe.call(&s, Method::POST, &format!("{base}/undelete"), Vec::new())),
        Step::Rollback(b) => ("rollback", safe.call(&s, Method::POST, &format!("{base}/rollback"), b.clone())),
        Step::History => ("versions", safe.call(&s, Method::GET, &format!("{base}/versions"), Vec::new())),
        Step::Destroy(v) => ("destroy", safe.call(&s, Method::DELETE, &format!("{base}/versions/{v}"), Vec::new())),
        Step::Encrypt(b) => ("encrypt", safe.call(&s, Method::POST, "/v1/encrypt", b.clone())),
        Step::Workload => {
            let Ok(name) = WorkloadName::parse(&input.name) else { return };
            ("workload", safe.call(&workload(&name), Method::GET, "/v1/workload/secret", Vec::new()))
        }
        Step::List(d) => ("list", safe.call(&s, Method::GET, &format!("/v1/secrets?deleted={d}"), Vec::new())),
    };
    if let Some(a) = a {
        check_answer(route, &a);
    }
}

/// After a successful write: the stored name is the name sent (decoded
/// once), and reading it back gives the value written.
fn written(safe: &Safe, input: &Input, base: &str, p: &Put, a: &Answer) {
    let info: Value = serde_json::from_slice(&a.body).expect("a PUT answer is JSON");
    if input.encode_name {
        assert!(info["name"].as_str() == Some(input.name.as_str()), "the stored name is not the name sent");
    }
    let read = safe.call(&sentinel(), Method::GET, base, Vec::new()).expect("the same path again");
    assert!(read.status.is_success(), "a secret just written cannot be read: {}", read.status);
    let read: Value = serde_json::from_slice(&read.body).expect("a GET answer is JSON");
    assert!(read["value"].as_str() == Some(p.value().as_str()), "the value read back is not the value written");
}
