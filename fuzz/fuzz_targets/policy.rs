//! Policy documents and patterns: a document either is refused with an error
//! or checks into a policy that prints back to the same policy; a pattern
//! prints back to itself; and the index decides as a plain scan of the policy
//! would, for IDs and names taken from the input.
#![no_main]

use std::sync::Arc;

use aegis_core::policy::{Action, Builtins, Effect, IdPattern, NamePattern, Policy, PolicySet, Subject, Target};
use aegis_core::roles::Role;
use aegis_core::{SecretName, SpiffeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Each line as a pattern of either kind.
    for line in text.lines().take(16) {
        if let Ok(p) = IdPattern::parse(line) {
            assert_eq!(IdPattern::parse(&p.to_string()).expect("a printed ID pattern parses"), p);
        }
        if let Ok(p) = NamePattern::parse(line) {
            assert_eq!(NamePattern::parse(&p.to_string()).expect("a printed name pattern parses"), p);
            assert!(p.matches(line.trim_end_matches('*')), "a pattern matches its own start");
        }
    }
    // The whole input as a document.
    let Ok(policy) = Policy::from_json(data) else { return };
    let again = Policy::from_doc(&policy.to_doc()).expect("a checked policy's document checks again");
    assert_eq!(again, policy);
    let set = PolicySet::new(vec![Arc::new(policy.clone())], Builtins { workload: false, sentinel: false });
    // IDs and names to ask about: the patterns' own texts, a step below them.
    let ids: Vec<SpiffeId> = policy
        .ids
        .iter()
        .flat_map(|p| {
            let t = p.to_string();
            let base = t.trim_end_matches("/*").to_owned();
            [SpiffeId::parse(&base).ok(), SpiffeId::parse(&format!("{base}/x")).ok()]
        })
        .flatten()
        .collect();
    let names: Vec<SecretName> = policy
        .secrets
        .iter()
        .flat_map(|p| {
            let t = p.to_string();
            let start = t.trim_end_matches('*').to_owned();
            [SecretName::parse(&start).ok(), SecretName::parse(&format!("{start}x")).ok()]
        })
        .flatten()
        .collect();
    for id in &ids {
        for name in &names {
            for action in Action::ALL {
                let d = set.decide(Subject { id, role: &Role::Unknown }, action, Target::Secret(name));
                let applies = policy.actions.contains(action)
                    && policy.ids.iter().any(|p| p.matches(id))
                    && policy.secrets.iter().any(|p| p.matches(name.as_str()));
                assert_eq!(d.allowed, applies && policy.effect == Effect::Allow, "{id:?} {name:?} {action}");
            }
        }
    }
});
