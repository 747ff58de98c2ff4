//! The VSecM-compatible API's request bodies, through the real router and
//! store: no request gets a server error, error answers never repeat the
//! secret value, and a value upserted for workloads is the value each of
//! them holds afterwards.
#![no_main]

use aegis_core::WorkloadName;
use aegis_fuzz::safe::{check_answer, sentinel, workload, Safe};
use aegis_fuzz::CANARY;
use axum::http::Method;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

const SECRETS: &str = "/sentinel/v1/secrets";

#[derive(Arbitrary, Debug)]
enum Step {
    Upsert(Upsert),
    UpsertRaw(Vec<u8>),
    Delete(Vec<String>),
    DeleteRaw(Vec<u8>),
    Keys(Vec<u8>),
    List(bool),
    Keystone,
    Fetch(String),
}

#[derive(Arbitrary, Debug)]
struct Upsert {
    workloads: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
    value: String,
    template: String,
    format: String,
    encrypt: bool,
    not_before: String,
    expires: String,
}

impl Upsert {
    fn value(&self) -> String {
        format!("{}{CANARY}", self.value)
    }

    fn body(&self) -> Vec<u8> {
        let b = json!({
            "workloads": self.workloads, "namespaces": self.namespaces, "value": self.value(),
            "template": self.template, "format": self.format, "encrypt": self.encrypt,
            "notBefore": self.not_before, "expires": self.expires,
        });
        serde_json::to_vec(&b).expect("a JSON body")
    }

    fn canary_elsewhere(&self) -> bool {
        [&self.template, &self.format, &self.not_before, &self.expires].iter().any(|t| t.contains(CANARY))
            || self.workloads.iter().chain(&self.namespaces).flatten().any(|n| n.contains(CANARY))
    }
}

fuzz_target!(|steps: Vec<Step>| {
    if steps.len() > 6 {
        return;
    }
    let safe = Safe::new();
    for step in &steps {
        run(&safe, step);
    }
});

fn run(safe: &Safe, step: &Step) {
    let s = sentinel();
    let (route, a) = match step {
        Step::Upsert(u) => return upsert(safe, u),
        Step::UpsertRaw(b) => ("POST secrets", safe.call(&s, Method::POST, SECRETS, b.clone())),
        Step::Delete(w) => {
            let body = serde_json::to_vec(&json!({ "workloads": w })).expect("a JSON body");
            ("DELETE secrets", safe.call(&s, Method::DELETE, SECRETS, body))
        }
        Step::DeleteRaw(b) => ("DELETE secrets", safe.call(&s, Method::DELETE, SECRETS, b.clone())),
        Step::Keys(b) => ("POST keys", safe.call(&s, Method::POST, "/sentinel/v1/keys", b.clone())),
        Step::List(reveal) => {
            ("GET secrets", safe.call(&s, Method::GET, &format!("{SECRETS}?reveal={reveal}"), vec![]))
        }
        Step::Keystone => ("GET keystone", safe.call(&s, Method::GET, "/sentinel/v1/keystone", vec![])),
        Step::Fetch(name) => {
            let Ok(name) = WorkloadName::parse(name) else { return };
            let route = aegis_server::routes::WORKLOAD_SECRETS;
            (route, safe.call(&workload(&name), Method::GET, route, vec![]))
        }
    };
    if let Some(a) = a {
        check_answer(route, &a);
    }
}

fn upsert(safe: &Safe, u: &Upsert) {
    let Some(a) = safe.call(&sentinel(), Method::POST, SECRETS, u.body()) else { return };
    if u.canary_elsewhere() {
        assert!(!a.status.is_server_error(), "upsert: server error {}", a.status);
        return;
    }
    check_answer("POST secrets", &a);
    let workloads = u.workloads.as_deref().unwrap_or_default();
    if !a.status.is_success() || u.encrypt || workloads.is_empty() {
        return;
    }
    assert!(a.body == "OK".repeat(workloads.len()).as_bytes(), "an upsert answers OK once per workload");
    for w in workloads {
        let path = format!("/v1/secrets/{}", utf8_percent_encode(w, NON_ALPHANUMERIC));
        let read = safe.call(&sentinel(), Method::GET, &path, vec![]).expect("a valid path");
        assert!(read.status.is_success(), "an upserted secret cannot be read: {}", read.status);
        let read: Value = serde_json::from_slice(&read.body).expect("a GET answer is JSON");
        assert!(read["value"].as_str() == Some(u.value().as_str()), "the value read back is not the value upserted");
    }
}
