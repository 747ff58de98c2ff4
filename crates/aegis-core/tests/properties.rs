//! Property tests for the invariants the fuzz targets check (see
//! `fuzz/`), where generated input is enough: names, SPIFFE IDs, `gen:`
//! patterns, template budgets and the YAML transformation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aegis_core::generate::{Pattern, MAX_OUTPUT_BYTES};
use aegis_core::transform::{transform, Budget, Format, Template};
use aegis_core::{SecretName, SpiffeId, WorkloadName};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

proptest! {
    /// A name the current rule accepts is kept as written, survives JSON and
    /// is also a stored name (the stored rule is the looser one).
    #[test]
    fn accepted_names_round_trip(name in "(k8s:|raw:)?[A-Za-z0-9_-][A-Za-z0-9._-]{0,60}") {
        prop_assume!(!name.contains(".."));
        let parsed = SecretName::parse(&name).unwrap();
        prop_assert_eq!(parsed.as_str(), name.as_str());
        prop_assert!(SecretName::parse_stored(&name).is_ok());
        let json = serde_json::to_string(&parsed).unwrap();
        prop_assert_eq!(serde_json::from_str::<SecretName>(&json).unwrap(), parsed);
        prop_assert!(WorkloadName::parse(&name).unwrap().secret_name().is_ok());
    }

    /// Any text: the current rule never accepts what the stored rule refuses.
    #[test]
    fn current_rule_is_within_stored_rule(name in "\\PC{0,40}") {
        if SecretName::parse(&name).is_ok() {
            prop_assert!(SecretName::parse_stored(&name).is_ok());
        }
    }

    /// SPIFFE IDs: parse → print → parse, and the parts make the text.
    #[test]
    fn spiffe_ids_round_trip(td in "[a-z0-9._-]{1,20}", path in "(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,10}){0,5}") {
        let text = format!("spiffe://{td}{path}");
        let id = SpiffeId::parse(&text).unwrap();
        prop_assert_eq!(id.as_str(), text.as_str());
        prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id.clone());
        prop_assert_eq!((id.trust_domain(), id.path()), (td.as_str(), path.as_str()));
    }

    /// A `gen:` pattern expands within the output limit, the same
    /// randomness giving the same value, with its literal text kept and as
    /// many characters as the group asks for.
    #[test]
    fn gen_patterns_expand_within_limits(
        prefix in "[a-z:{}\" ]{0,10}",
        class in "(a-z|A-Z|0-9|[!+.=_~])+",
        min in 0usize..20,
        extra in 0usize..20,
        seed in any::<u64>(),
    ) {
        let text = format!("{prefix}[{class}]{{{min},{}}}", min + extra);
        let pattern = Pattern::parse(&text).unwrap();
        let a = pattern.expand(&mut StdRng::seed_from_u64(seed));
        prop_assert_eq!(&a, &pattern.expand(&mut StdRng::seed_from_u64(seed)));
        prop_assert!(a.len() <= MAX_OUTPUT_BYTES);
        prop_assert!(a.starts_with(&prefix));
        let generated = a.len() - prefix.len();
        prop_assert!((min..=min + extra).contains(&generated), "{} characters for {{{},{}}}", generated, min, min + extra);
    }
}

/// Templates built from pieces that loop, repeat and pad.
fn template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{{.a}}".to_owned()),
        Just("{{range .list}}{{.}}{{.}}{{end}}".to_owned()),
        Just("{{range .list}}{{range $.list}}x{{end}}{{end}}".to_owned()),
        (1usize..9_999).prop_map(|w| format!("{{{{printf \"%{w}s\" .a}}}}")),
        Just("{{if .a}}{{.a}}{{else}}none{{end}}".to_owned()),
        "[a-z ,:]{0,8}",
    ];
    proptest::collection::vec(piece, 1..8).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A render stays within its budget: raw output no larger than the
    /// output limit (or the value itself), a result within a
    /// small budget is the same under a larger one, and the same budget
    /// gives the same outcome every time (it is counted, not timed).
    #[test]
    fn templates_respect_their_budget(
        t in template(), out in 16usize..2048, steps in 1u64..500, work in 256usize..65_536, items in 0usize..64
    ) {
        let parsed = Template::parse(&t);
        prop_assert!(parsed.is_ok(), "{}", t);
        let t = parsed.unwrap();
        let list: Vec<String> = (0..items).map(|i| format!("item{i}")).collect();
        let value = serde_json::json!({ "a": "value", "list": list }).to_string();
        let budget = Budget { max_output_bytes: out, max_steps: steps, max_work_bytes: work, ..Budget::default() };
        let result = transform(&value, t.as_ref(), Format::Raw, &budget);
        prop_assert_eq!(&transform(&value, t.as_ref(), Format::Raw, &budget), &result);
        match result {
            Ok(text) => {
                prop_assert!(text.len() <= out.max(value.len()));
                let roomy = transform(&value, t.as_ref(), Format::Raw, &Budget::default()).unwrap();
                prop_assert_eq!(roomy, text);
            }
            Err(e) => prop_assert!(e.is_over_budget(), "{}", e),
        }
    }
}

/// Strings YAML could read as something else, or that break its syntax.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "[ \t\n:#*&!|>'\"%@`-]{0,4}[a-z0-9]{0,4}[ \t\n:#-]{0,3}",
        prop::sample::select(vec!["yes", "~", "2024-01-02", "0x1F", "1e3", ".inf", "null", "- x", "0o17", "+1", "<<"])
            .prop_map(str::to_owned),
    ]
}

/// JSON values of a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        tricky_string().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(tricky_string(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// The YAML of a JSON object reads back (with serde-saphyr, an
    /// independent YAML reader) as the same object.
    #[test]
    fn yaml_reads_back_as_the_json_object(map in proptest::collection::btree_map(tricky_string(), json_value(), 1..5)) {
        let object = serde_json::Value::Object(map.into_iter().collect());
        let yaml = transform(&object.to_string(), None, Format::Yaml, &Budget::default()).unwrap().into_owned();
        let back: serde_json::Value =
            serde_saphyr::from_str(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert!(same(&back, &object), "{}\nread back as {}", yaml, back);
    }
}

/// Equal as JSON, numbers compared by value.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Number, Object};
    match (a, b) {
        (Number(x), Number(y)) => x.as_f64() == y.as_f64(),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Object(x), Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}
