//! SPIFFE IDs: parse → print → parse, the parts add up to the text, and the
//! role rules classify every valid ID (a workload's name is a valid name).
#![no_main]

use aegis_core::roles::{Role, RoleRules};
use aegis_core::{SpiffeId, WorkloadName};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rules() -> &'static RoleRules {
    static RULES: OnceLock<RoleRules> = OnceLock::new();
    RULES.get_or_init(RoleRules::vsecm_defaults)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(id) = SpiffeId::parse(text) else { return };
    assert_eq!(id.as_str(), text, "a parsed SPIFFE ID prints as its text");
    let again = SpiffeId::parse(id.as_str()).expect("a parsed SPIFFE ID parses again");
    assert!(again == id, "parse → print → parse changed the SPIFFE ID");
    assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), text, "trust domain and path make the ID");
    assert!(!id.trust_domain().is_empty(), "an empty trust domain was accepted");
    assert!(id.path().is_empty() || id.path().starts_with('/'), "a path that does not start with /");
    if let Role::Workload(name) = rules().classify(&id) {
        WorkloadName::parse(name.as_str()).expect("a workload's name from its SPIFFE ID is a valid name");
        assert!(id.as_str().contains(&format!("/workload/{}/", name.as_str())), "the name comes from the ID");
    }
});
