use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::name::{SecretName, WorkloadName};
use crate::roles::Role;
use crate::spiffe::SpiffeId;

fn policy(name: &str, effect: Effect, ids: &[&str], secrets: &[&str], actions: &[&str]) -> Arc<Policy> {
    let doc = PolicyDoc {
        name: name.to_owned(),
        effect,
        spiffe_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
        actions: actions.iter().map(|s| (*s).to_owned()).collect(),
        rate: None,
        description: String::new(),
    };
    Arc::new(Policy::from_doc(&doc).expect("valid policy"))
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid id")
}

fn secret(s: &str) -> SecretName {
    SecretName::parse(s).expect("valid name")
}

fn decide(set: &PolicySet, who: &str, role: &Role, action: Action, name: &str) -> Decision {
    let who = id(who);
    let n = secret(name);
    set.decide(Subject { id: &who, role }, action, Target::Secret(&n))
}

const TEAM_A: &str = "spiffe://example.org/ns/team-a/sa/admin";

#[test]
fn deny_by_default_and_an_allow_names_itself() {
    let set = PolicySet::new(
        vec![policy("team-a", Effect::Allow, &["spiffe://example.org/ns/team-a/*"], &["team-a-*"], &["write", "list"])],
        Builtins::default(),
    );
    let allowed = decide(&set, TEAM_A, &Role::Unknown, Action::Write, "team-a-db");
    assert_eq!(allowed, Decision { allowed: true, by: Decider::Policy("team-a".into()) });
    let refused = decide(&set, TEAM_A, &Role::Unknown, Action::Write, "team-b-db");
    assert_eq!(refused, Decision { allowed: false, by: Decider::Default });
    assert!(!decide(&set, TEAM_A, &Role::Unknown, Action::Reveal, "team-a-db").allowed);
    assert!(
        !decide(&set, "spiffe://example.org/ns/team-b/sa/admin", &Role::Unknown, Action::Write, "team-a-db").allowed
    );
}

#[test]
fn an_explicit_deny_wins_over_any_allow_and_over_the_builtins() {
    let set = PolicySet::new(
        vec![
            policy("a-allow", Effect::Allow, &["spiffe://example.org/*"], &["*"], &["read", "write"]),
            policy("z-deny", Effect::Deny, &[TEAM_A], &["team-a-root"], &["write"]),
        ],
        Builtins::default(),
    );
    let d = decide(&set, TEAM_A, &Role::Unknown, Action::Write, "team-a-root");
    assert_eq!(d, Decision { allowed: false, by: Decider::Policy("z-deny".into()) });
    assert!(decide(&set, TEAM_A, &Role::Unknown, Action::Write, "team-a-other").allowed);
    let sentinel =
        PolicySet::new(vec![policy("no-writes", Effect::Deny, &[TEAM_A], &["*"], &["write"])], Builtins::default());
    assert!(!decide(&sentinel, TEAM_A, &Role::Sentinel, Action::Write, "x").allowed);
    assert!(decide(&sentinel, TEAM_A, &Role::Sentinel, Action::List, "x").allowed);
    let who = id(TEAM_A);
    assert!(!sentinel.may_any(Subject { id: &who, role: &Role::Sentinel }, Action::Write));
}

#[test]
fn the_builtins_are_vsecms_rules_without_reveal_and_can_be_turned_off() {
    let w = Role::Workload(WorkloadName::parse("billing").expect("name"));
    let wid = "spiffe://vsecm.com/workload/billing/ns/default/sa/billing/n/p";
    let set = PolicySet::default();
    assert_eq!(decide(&set, wid, &w, Action::Read, "billing").by, Decider::Builtin(BUILTIN_WORKLOAD));
    assert!(!decide(&set, wid, &w, Action::Read, "other").allowed);
    assert!(!decide(&set, wid, &w, Action::List, "billing").allowed);
    let s = "spiffe://vsecm.com/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/p";
    for a in [Action::Write, Action::List, Action::Admin, Action::Audit] {
        assert_eq!(decide(&set, s, &Role::Sentinel, a, "x").by, Decider::Builtin(BUILTIN_SENTINEL), "{a}");
    }
    assert!(!decide(&set, s, &Role::Sentinel, Action::Reveal, "x").allowed, "reveal needs a policy");
    assert!(!decide(&set, s, &Role::Sentinel, Action::Read, "x").allowed);
    let off = PolicySet::new(Vec::new(), Builtins { workload: false, sentinel: false });
    assert!(!decide(&off, wid, &w, Action::Read, "billing").allowed);
    assert!(!decide(&off, s, &Role::Sentinel, Action::Write, "x").allowed);
}

#[test]
fn admin_and_audit_speak_of_the_safe_which_only_star_patterns_cover() {
    let set = PolicySet::new(
        vec![
            policy("all", Effect::Allow, &[TEAM_A], &["*"], &["admin"]),
            policy("some", Effect::Allow, &["spiffe://example.org/ns/b"], &["b-*"], &["admin"]),
        ],
        Builtins::default(),
    );
    let a = id(TEAM_A);
    assert!(set.decide(Subject { id: &a, role: &Role::Unknown }, Action::Admin, Target::Safe).allowed);
    let b = id("spiffe://example.org/ns/b");
    assert!(!set.decide(Subject { id: &b, role: &Role::Unknown }, Action::Admin, Target::Safe).allowed);
}

#[test]
fn rates_come_from_the_first_policy_by_name() {
    let mut slow = (*policy("b-slow", Effect::Allow, &["spiffe://example.org/*"], &["*"], &["read"])).clone();
    slow.rate = Some(Rate { per_second: 1.0, burst: 2 });
    let mut fast = (*policy("a-fast", Effect::Allow, &[TEAM_A], &["x"], &["read"])).clone();
    fast.rate = Some(Rate { per_second: 100.0, burst: 200 });
    let set = PolicySet::new(vec![Arc::new(slow), Arc::new(fast)], Builtins::default());
    assert_eq!(set.rate_for(&id(TEAM_A)).map(|r| r.burst), Some(200));
    assert_eq!(set.rate_for(&id("spiffe://example.org/other")).map(|r| r.burst), Some(2));
    assert_eq!(set.rate_for(&id("spiffe://other.org/x")), None);
}

#[test]
fn bad_documents_are_refused_naming_the_field() {
    let cases: [(&str, &str); 7] = [
        (r#"{"name":"a","spiffe_ids":[],"secrets":["*"],"actions":["read"]}"#, "spiffe_ids: policy 'a' names none"),
        (r#"{"name":"a","spiffe_ids":["spiffe://x/*"],"secrets":["*"],"actions":["raed"]}"#, "'raed' is not an action"),
        (r#"{"name":"a b","spiffe_ids":["spiffe://x/*"],"secrets":["*"],"actions":["read"]}"#, "policy name"),
        (r#"{"name":"a","spiffe_ids":["spiffe://x/*"],"secrets":["*"],"actions":["read"],"extra":1}"#, "unknown field"),
        (r#"{"name":"a","spiffe_ids":["spiffe://x/*/y"],"secrets":["*"],"actions":["read"]}"#, "whole last segment"),
        (r#"{"name":"builtin-x","spiffe_ids":["spiffe://x/*"],"secrets":["*"],"actions":["read"]}"#, "built-in"),
        (
            r#"{"name":"a","spiffe_ids":["spiffe://x/*"],"secrets":["*"],"actions":["read"],"rate":{"per_second":0,"burst":1}}"#,
            "per_second",
        ),
    ];
    for (doc, says) in cases {
        let e = Policy::from_json(doc.as_bytes()).expect_err(doc).to_string();
        assert!(e.contains(says), "{doc}: {e}");
    }
    let ok = Policy::from_json(br#"{"name":"a","spiffe_ids":["spiffe://x/*"],"secrets":["k8s:*"],"actions":["read"]}"#)
        .expect("valid");
    assert_eq!(Policy::from_doc(&ok.to_doc()).expect("round trip"), ok);
}

// The index must agree with the plain reading of the rules: scan every
// policy, an explicit deny wins, then an allow, then the built-ins.
fn reference(policies: &[Arc<Policy>], who: &SpiffeId, role: &Role, action: Action, name: &SecretName) -> Decision {
    let mut sorted = policies.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|b, a| a.name == b.name);
    let applies = |p: &Policy| {
        p.actions.contains(action)
            && p.ids.iter().any(|i| i.matches(who))
            && p.secrets.iter().any(|s| s.matches(name.as_str()))
    };
    for effect in [Effect::Deny, Effect::Allow] {
        if let Some(p) = sorted.iter().find(|p| p.effect == effect && applies(p)) {
            return Decision { allowed: effect == Effect::Allow, by: Decider::Policy(p.name.as_str().into()) };
        }
    }
    let builtin = match role {
        Role::Sentinel if matches!(action, Action::Write | Action::List | Action::Admin | Action::Audit) => {
            Some(BUILTIN_SENTINEL)
        }
        Role::Workload(w) if action == Action::Read && w.as_str() == name.as_str() => Some(BUILTIN_WORKLOAD),
        _ => None,
    };
    builtin.map_or(Decision { allowed: false, by: Decider::Default }, |b| Decision {
        allowed: true,
        by: Decider::Builtin(b),
    })
}

const SEGMENTS: [&str; 4] = ["a", "b", "ab", "c"];
const NAMES: [&str; 6] = ["a", "ab", "abc", "b", "k8s:a", "ba"];

fn id_text() -> impl Strategy<Value = String> {
    (prop::sample::select(vec!["x.org", "y.org"]), prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 0..4))
        .prop_map(|(td, segs)| segs.iter().fold(format!("spiffe://{td}"), |s, g| format!("{s}/{g}")))
}

fn id_pattern() -> impl Strategy<Value = String> {
    (id_text(), any::<bool>()).prop_map(|(id, below)| if below { format!("{id}/*") } else { id })
}

fn name_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
        prop::sample::select(vec!["a*", "ab*", "b*", "k8s:*", "k8s:a*", "*"]).prop_map(str::to_owned),
    ]
}

fn policies() -> impl Strategy<Value = Vec<Arc<Policy>>> {
    let one = (
        0u8..12,
        any::<bool>(),
        prop::collection::vec(id_pattern(), 1..3),
        prop::collection::vec(name_pattern(), 1..3),
        prop::collection::vec(prop::sample::select(Action::ALL.to_vec()), 1..3),
    )
        .prop_map(|(n, deny, ids, secrets, actions)| {
            let doc = PolicyDoc {
                name: format!("p{n}"),
                effect: if deny { Effect::Deny } else { Effect::Allow },
                spiffe_ids: ids,
                secrets,
                actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
                rate: None,
                description: String::new(),
            };
            Arc::new(Policy::from_doc(&doc).expect("generated policies are valid"))
        });
    prop::collection::vec(one, 0..10)
}

proptest! {
    #[test]
    fn the_index_agrees_with_a_scan_of_every_policy(
        ps in policies(),
        who in id_text(),
        name in prop::sample::select(NAMES.to_vec()),
        action in prop::sample::select(Action::ALL.to_vec()),
        role in 0u8..3,
    ) {
        let set = PolicySet::new(ps.clone(), Builtins::default());
        let who = id(&who);
        let name = secret(name);
        let role = match role {
            0 => Role::Unknown,
            1 => Role::Sentinel,
            _ => Role::Workload(WorkloadName::parse(name.as_str().trim_start_matches("k8s:")).expect("name")),
        };
        let got = set.decide(Subject { id: &who, role: &role }, action, Target::Secret(&name));
        prop_assert_eq!(got.clone(), reference(&ps, &who, &role, action, &name));
        if got.allowed {
            prop_assert!(set.may_any(Subject { id: &who, role: &role }, action), "allowed but not on the head");
        }
    }
}
