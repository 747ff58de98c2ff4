//! The indexed set of policies and the decision of one request.
//!
//! The index costs a few hash lookups per request whatever the number of
//! policies: the SPIFFE ID is looked up exactly and once per `/` of its path
//! (the patterns that end in `/*`), and within each ID bucket the secret name
//! exactly, once per distinct length of the name patterns that end in `*`,
//! and the `*` rules. No policy is scanned.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::{Action, ActionSet, Effect, IdPattern, NamePattern, Policy, Rate};
use crate::name::SecretName;
use crate::roles::Role;
use crate::spiffe::SpiffeId;

/// The built-in policy that lets a workload read the secret named after it.
pub const BUILTIN_WORKLOAD: &str = "builtin:workload";
/// The built-in policy that lets the Sentinel write, list, administer and read the trail.
pub const BUILTIN_SENTINEL: &str = "builtin:sentinel";

/// The actions the built-in Sentinel policy allows (not `reveal`, as in VSecM).
pub const SENTINEL_ACTIONS: [Action; 4] = [Action::Write, Action::List, Action::Admin, Action::Audit];

/// Which built-in policies are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtins {
    /// [`BUILTIN_WORKLOAD`].
    pub workload: bool,
    /// [`BUILTIN_SENTINEL`].
    pub sentinel: bool,
}

impl Default for Builtins {
    fn default() -> Self {
        Self { workload: true, sentinel: true }
    }
}

/// Who asks: the SPIFFE ID and the VSecM role it has under the role rules.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The caller's SPIFFE ID.
    pub id: &'a SpiffeId,
    /// Its role (for the built-in policies).
    pub role: &'a Role,
}

/// What the request is about.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One secret.
    Secret(&'a SecretName),
    /// The Safe as a whole (`admin`, `audit`): only `*` patterns speak of it.
    Safe,
}

/// What decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// A policy by that name.
    Policy(Arc<str>),
    /// A built-in policy.
    Builtin(&'static str),
    /// Nothing allowed it: deny by default.
    Default,
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(p) => write!(f, "policy '{p}'"),
            Self::Builtin(b) => write!(f, "built-in policy '{b}'"),
            Self::Default => f.write_str("no policy (deny by default)"),
        }
    }
}

impl Decider {
    /// The name recorded in the audit trail.
    pub fn name(&self) -> &str {
        match self {
            Self::Policy(p) => p,
            Self::Builtin(b) => b,
            Self::Default => "default-deny",
        }
    }
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// Which policy decided.
    pub by: Decider,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    policy: u32,
    actions: ActionSet,
    deny: bool,
}

/// The rules of the policies that name one SPIFFE ID pattern, by secret name.
#[derive(Default)]
struct Bucket {
    exact: HashMap<Box<str>, Vec<Rule>>,
    prefixes: HashMap<Box<str>, Vec<Rule>>,
    /// The distinct lengths of `prefixes`' keys, ascending.
    prefix_lens: Vec<usize>,
    all: Vec<Rule>,
    /// Every action some rule here allows, on some secret.
    allows: ActionSet,
    /// Every action a `*` rule here denies.
    denies_all: ActionSet,
    /// The first policy (by name) naming this pattern with a rate.
    rate: Option<(u32, Rate)>,
}

/// The best allow and deny found so far (the lowest policy index wins, so a
/// decision does not depend on the order of the index).
#[derive(Default)]
struct Found {
    allow: Option<u32>,
    deny: Option<u32>,
}

impl Found {
    fn take(&mut self, rules: &[Rule], action: Action) {
        for r in rules.iter().filter(|r| r.actions.contains(action)) {
            let slot = if r.deny { &mut self.deny } else { &mut self.allow };
            *slot = Some(slot.map_or(r.policy, |p| p.min(r.policy)));
        }
    }
}

impl Bucket {
    fn add(&mut self, pattern: &NamePattern, rule: Rule) {
        let rules = match pattern {
            NamePattern::Exact(n) => self.exact.entry(n.as_str().into()).or_default(),
            NamePattern::Prefix(p) => {
                if let Err(at) = self.prefix_lens.binary_search(&p.len()) {
                    self.prefix_lens.insert(at, p.len());
                }
                self.prefixes.entry(p.as_str().into()).or_default()
            }
            NamePattern::All => {
                if rule.deny {
                    self.denies_all = self.denies_all.union(rule.actions);
                }
                &mut self.all
            }
        };
        rules.push(rule);
        if !rule.deny {
            self.allows = self.allows.union(rule.actions);
        }
    }

    fn find(&self, target: Target<'_>, action: Action, found: &mut Found) {
        found.take(&self.all, action);
        let Target::Secret(name) = target else { return };
        let name = name.as_str();
        if let Some(rules) = self.exact.get(name) {
            found.take(rules, action);
        }
        for &len in self.prefix_lens.iter().take_while(|&&l| l <= name.len()) {
            if let Some(rules) = name.get(..len).and_then(|start| self.prefixes.get(start)) {
                found.take(rules, action);
            }
        }
    }
}

/// Policies, indexed for decisions, with the built-in ones.
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
    names: Vec<Arc<str>>,
    exact: HashMap<Box<str>, Bucket>,
    below: HashMap<Box<str>, Bucket>,
    builtins: Builtins,
    /// Whether some policy sets a rate (else [`PolicySet::rate_for`] looks nothing up).
    rates: bool,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet").field("policies", &self.names).field("builtins", &self.builtins).finish()
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        Self::new(Vec::new(), Builtins::default())
    }
}

impl PolicySet {
    /// Indexes `policies` (sorted by name here; the first of two with one name is kept).
    pub fn new(mut policies: Vec<Arc<Policy>>, builtins: Builtins) -> Self {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        policies.dedup_by(|b, a| a.name == b.name);
        let mut set = Self {
            names: policies.iter().map(|p| Arc::from(p.name.as_str())).collect(),
            policies: Vec::new(),
            exact: HashMap::new(),
            below: HashMap::new(),
            builtins,
            rates: policies.iter().any(|p| p.rate.is_some()),
        };
        for (i, p) in policies.iter().enumerate() {
            let rule = Rule { policy: i as u32, actions: p.actions, deny: p.effect == Effect::Deny };
            for id in &p.ids {
                let bucket = match id {
                    IdPattern::Exact(x) => set.exact.entry(x.as_str().into()).or_default(),
                    IdPattern::Below(prefix) => set.below.entry(prefix.as_str().into()).or_default(),
                };
                for s in &p.secrets {
                    bucket.add(s, rule);
                }
                if let Some(rate) = p.rate {
                    bucket.rate = Some(bucket.rate.map_or((i as u32, rate), |(j, r)| {
                        if j < i as u32 {
                            (j, r)
                        } else {
                            (i as u32, rate)
                        }
                    }));
                }
            }
        }
        set.policies = policies;
        set
    }

    /// The policies, sorted by name.
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// Which built-in policies are on.
    pub fn builtins(&self) -> Builtins {
        self.builtins
    }

    /// The buckets whose ID pattern matches `id`: its exact one, then one per `/` of its path.
    fn buckets<'s>(&'s self, id: &'s SpiffeId) -> impl Iterator<Item = &'s Bucket> + 's {
        let text = id.as_str();
        let start = text.len() - id.path().len();
        let below = text[start..].match_indices('/').filter_map(move |(i, _)| self.below.get(&text[..=start + i]));
        self.exact.get(text).into_iter().chain(below)
    }

    /// Whether a built-in policy allows `action` on `target` to `who`, and which.
    fn builtin(&self, who: Subject<'_>, action: Action, target: Target<'_>) -> Option<&'static str> {
        match who.role {
            Role::Sentinel if self.builtins.sentinel && SENTINEL_ACTIONS.contains(&action) => Some(BUILTIN_SENTINEL),
            Role::Workload(w) if self.builtins.workload && action == Action::Read => match target {
                // The secret named after the workload (compared as text: no allocation per request).
                Target::Secret(n) if n.as_str() == w.as_str() => Some(BUILTIN_WORKLOAD),
                _ => None,
            },
            _ => None,
        }
    }

    /// Decides whether `who` may do `action` on `target`.
    pub fn decide(&self, who: Subject<'_>, action: Action, target: Target<'_>) -> Decision {
        let mut found = Found::default();
        for b in self.buckets(who.id) {
            b.find(target, action, &mut found);
        }
        let named = |i: u32| Decider::Policy(self.names[i as usize].clone());
        if let Some(i) = found.deny {
            return Decision { allowed: false, by: named(i) };
        }
        if let Some(i) = found.allow {
            return Decision { allowed: true, by: named(i) };
        }
        match self.builtin(who, action, target) {
            Some(b) => Decision { allowed: true, by: Decider::Builtin(b) },
            None => Decision { allowed: false, by: Decider::Default },
        }
    }

    /// Whether some policy could allow `action` to `who` on some secret (or on
    /// the Safe): what a route checks on the request head, before the body.
    pub fn may_any(&self, who: Subject<'_>, action: Action) -> bool {
        let (mut allows, mut denies) = (false, false);
        for b in self.buckets(who.id) {
            allows |= b.allows.contains(action);
            denies |= b.denies_all.contains(action);
        }
        let builtin = match who.role {
            Role::Sentinel => self.builtins.sentinel && SENTINEL_ACTIONS.contains(&action),
            Role::Workload(_) => self.builtins.workload && action == Action::Read,
            _ => false,
        };
        (allows || builtin) && !denies
    }

    /// Whether some policy names a pattern matching `id` (then it is not a
    /// caller granted nothing, whatever its role).
    pub fn speaks_of(&self, id: &SpiffeId) -> bool {
        self.buckets(id).next().is_some()
    }

    /// The request rate the policies set for `id`: the first policy by name
    /// that names a pattern matching it and sets one.
    pub fn rate_for(&self, id: &SpiffeId) -> Option<Rate> {
        if !self.rates {
            return None;
        }
        self.buckets(id).filter_map(|b| b.rate).min_by_key(|(i, _)| *i).map(|(_, r)| r)
    }
}
