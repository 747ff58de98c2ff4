//! Who may do what: the VSecM role rules on SPIFFE IDs.
//!
//! A role value that starts with `^spiffe://<trust domain>/` is a regular
//! expression; any other value is a literal prefix (VSecM manifests use both).

use regex::Regex;

use crate::error::InvalidInput;
use crate::name::WorkloadName;
use crate::spiffe::SpiffeId;

/// The trust domain VSecM uses when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "vsecm.com";

/// One rule matching SPIFFE IDs: a regular expression or a literal prefix.
#[derive(Debug, Clone)]
pub enum RoleRule {
    /// A regular expression, anchored as written.
    Regex(Regex),
    /// A literal prefix.
    Prefix(String),
}

impl RoleRule {
    /// Parses a role value: a regex if it starts with `^spiffe://<trust domain>/`, else a prefix.
    pub fn parse(var: &'static str, value: &str, trust_domain: &str) -> Result<Self, InvalidInput> {
        if value.trim().is_empty() {
            return Err(InvalidInput::new(var, "must not be empty"));
        }
        if value.starts_with(&format!("^spiffe://{trust_domain}/")) {
            Regex::new(value)
                .map(Self::Regex)
                .map_err(|e| InvalidInput::new(var, format!("is not a valid regular expression: {e}")))
        } else if value.starts_with("spiffe://") {
            Ok(Self::Prefix(value.to_owned()))
        } else {
            Err(InvalidInput::new(
                var,
                format!("must start with 'spiffe://' (a prefix) or '^spiffe://{trust_domain}/' (a regular expression)"),
            ))
        }
    }

    /// Whether the ID matches this rule.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Regex(r) => r.is_match(id.as_str()),
            Self::Prefix(p) => id.as_str().starts_with(p.as_str()),
        }
    }
}

/// What a caller is, decided from its SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The Safe itself.
    Safe,
    /// The admin: the only writer.
    Sentinel,
    /// VSecM Scout (read-only relay); recognised, granted nothing yet.
    Scout,
    /// A workload, which may read only the secret with its own name.
    Workload(WorkloadName),
    /// Anything else: denied.
    Unknown,
}

/// The complete set of role rules, as configured by VSecM's environment variables.
#[derive(Debug, Clone)]
pub struct RoleRules {
    trust_domain: String,
    safe: RoleRule,
    sentinel: RoleRule,
    scout: RoleRule,
    workload: RoleRule,
    workload_name: Regex,
}

/// The environment variables read by [`RoleRules::from_lookup`], in order.
pub const ROLE_VARIABLES: [&str; 6] = [
    "SPIFFE_TRUST_DOMAIN",
    "VSECM_SPIFFEID_PREFIX_SAFE",
    "VSECM_SPIFFEID_PREFIX_SENTINEL",
    "VSECM_SPIFFEID_PREFIX_SCOUT",
    "VSECM_SPIFFEID_PREFIX_WORKLOAD",
    "VSECM_WORKLOAD_NAME_REGEXP",
];

fn default_for(var: &str, td: &str) -> String {
    let sys = |n: &str| format!("^spiffe://{td}/workload/{n}/ns/vsecm-system/sa/{n}/n/[^/]+$");
    match var {
        "VSECM_SPIFFEID_PREFIX_SAFE" => sys("vsecm-safe"),
        "VSECM_SPIFFEID_PREFIX_SENTINEL" => sys("vsecm-sentinel"),
        "VSECM_SPIFFEID_PREFIX_SCOUT" => sys("vsecm-scout"),
        "VSECM_SPIFFEID_PREFIX_WORKLOAD" => {
            format!("^spiffe://{td}/workload/[^/]+/ns/[^/]+/sa/[^/]+/n/[^/]+$")
        }
        _ => format!("^spiffe://{td}/workload/([^/]+)/ns/[^/]+/sa/[^/]+/n/[^/]+$"),
    }
}

impl RoleRules {
    /// VSecM's defaults for the trust domain `vsecm.com`.
    pub fn vsecm_defaults() -> Self {
        match Self::from_lookup(|_| None) {
            Ok(r) => r,
            // The defaults are constants tested below; this arm is unreachable in practice.
            Err(_) => unreachable_defaults(),
        }
    }

    /// Reads the rules through `lookup` (usually the process environment),
    /// falling back to VSecM's defaults for the configured trust domain.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, InvalidInput> {
        let td = lookup("SPIFFE_TRUST_DOMAIN").unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        SpiffeId::parse(&format!("spiffe://{td}"))
            .map_err(|_| InvalidInput::new("SPIFFE_TRUST_DOMAIN", "is not a valid trust domain name"))?;
        let get = |var: &'static str| lookup(var).unwrap_or_else(|| default_for(var, &td));
        let rule = |var: &'static str| RoleRule::parse(var, &get(var), &td);
        let name_re = get("VSECM_WORKLOAD_NAME_REGEXP");
        let workload_name = Regex::new(&name_re).map_err(|e| {
            InvalidInput::new("VSECM_WORKLOAD_NAME_REGEXP", format!("is not a valid regular expression: {e}"))
        })?;
        if workload_name.captures_len() < 2 {
            return Err(InvalidInput::new("VSECM_WORKLOAD_NAME_REGEXP", "needs a capture group for the workload name"));
        }
        Ok(Self {
            safe: rule("VSECM_SPIFFEID_PREFIX_SAFE")?,
            sentinel: rule("VSECM_SPIFFEID_PREFIX_SENTINEL")?,
            scout: rule("VSECM_SPIFFEID_PREFIX_SCOUT")?,
            workload: rule("VSECM_SPIFFEID_PREFIX_WORKLOAD")?,
            workload_name,
            trust_domain: td,
        })
    }

    /// The trust domain all roles live in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Decides the role of a caller. IDs from another trust domain are `Unknown`.
    pub fn classify(&self, id: &SpiffeId) -> Role {
        if id.trust_domain() != self.trust_domain {
            return Role::Unknown;
        }
        if self.sentinel.matches(id) {
            return Role::Sentinel;
        }
        if self.safe.matches(id) {
            return Role::Safe;
        }
        if self.scout.matches(id) {
            return Role::Scout;
        }
        if self.workload.matches(id) {
            if let Some(name) = self.workload_name(id) {
                return Role::Workload(name);
            }
        }
        Role::Unknown
    }

    /// Whether `id` is the Safe (clients check the server with this).
    pub fn is_safe(&self, id: &SpiffeId) -> bool {
        id.trust_domain() == self.trust_domain && self.safe.matches(id)
    }

    fn workload_name(&self, id: &SpiffeId) -> Option<WorkloadName> {
        let caps = self.workload_name.captures(id.as_str())?;
        WorkloadName::parse(caps.get(1)?.as_str()).ok()
    }

    /// The SPIFFE ID `aegis dev` gives a role or workload, following VSecM's scheme.
    pub fn dev_spiffe_id(trust_domain: &str, workload: &str, namespace: &str) -> String {
        format!("spiffe://{trust_domain}/workload/{workload}/ns/{namespace}/sa/{workload}/n/{workload}-0")
    }
}

#[allow(clippy::panic)]
fn unreachable_defaults() -> RoleRules {
    // VSecM's default rules are fixed strings covered by unit tests.
    panic!("built-in VSecM role defaults failed to parse")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn default_rules_classify_vsecm_ids() {
        let r = RoleRules::vsecm_defaults();
        let sys = |n: &str| id(&format!("spiffe://vsecm.com/workload/{n}/ns/vsecm-system/sa/{n}/n/x"));
        assert_eq!(r.classify(&sys("vsecm-sentinel")), Role::Sentinel);
        assert_eq!(r.classify(&sys("vsecm-safe")), Role::Safe);
        assert_eq!(r.classify(&sys("vsecm-scout")), Role::Scout);
        let w = id("spiffe://vsecm.com/workload/billing/ns/default/sa/billing/n/p1");
        assert_eq!(r.classify(&w), Role::Workload(WorkloadName::parse("billing").unwrap()));
        assert_eq!(r.classify(&id("spiffe://other.org/workload/billing/ns/d/sa/b/n/p")), Role::Unknown);
        assert_eq!(r.classify(&id("spiffe://vsecm.com/something/else")), Role::Unknown);
        assert!(r.is_safe(&sys("vsecm-safe")));
        assert!(!r.is_safe(&sys("vsecm-sentinel")));
    }

    #[test]
    fn prefix_form_and_custom_trust_domain() {
        let env = |k: &str| match k {
            "SPIFFE_TRUST_DOMAIN" => Some("example.org".to_owned()),
            "VSECM_SPIFFEID_PREFIX_SENTINEL" => Some("spiffe://example.org/admin/".to_owned()),
            _ => None,
        };
        let r = RoleRules::from_lookup(env).unwrap();
        assert_eq!(r.classify(&id("spiffe://example.org/admin/alice")), Role::Sentinel);
        assert_eq!(r.classify(&id("spiffe://vsecm.com/admin/alice")), Role::Unknown);
        let dev = RoleRules::dev_spiffe_id("example.org", "billing", "default");
        assert!(matches!(r.classify(&id(&dev)), Role::Workload(_)));
    }

    #[test]
    fn bad_rules_are_reported_by_variable() {
        let env = |k: &str| (k == "VSECM_SPIFFEID_PREFIX_SAFE").then(|| "vsecm-safe".to_owned());
        let e = RoleRules::from_lookup(env).unwrap_err().to_string();
        assert!(e.contains("VSECM_SPIFFEID_PREFIX_SAFE"), "{e}");
        let env = |k: &str| (k == "VSECM_WORKLOAD_NAME_REGEXP").then(|| "^spiffe://x$".to_owned());
        assert!(RoleRules::from_lookup(env).unwrap_err().to_string().contains("capture group"));
    }
}
