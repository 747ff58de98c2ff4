//! Who may do what: policies by SPIFFE ID and secret name (see docs/POLICIES.md).
//!
//! A [`Policy`] names SPIFFE ID patterns, secret name patterns and the
//! [`Action`]s it allows or denies. A [`PolicySet`] indexes them and decides
//! each request: deny by default, an explicit deny wins over any allow, and
//! VSecM's fixed rules are two built-in policies that can be turned off.
//! Documents are parsed into types here, at the edge; a bad one is refused
//! with an error that names the field and the problem.

mod pattern;
pub mod set;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::name::is_name_char;

pub use pattern::{IdPattern, NamePattern};
pub use set::{Builtins, Decider, Decision, PolicySet, Subject, Target, BUILTIN_SENTINEL, BUILTIN_WORKLOAD};

/// The longest policy name, in bytes.
pub const MAX_POLICY_NAME: usize = 128;
/// The most SPIFFE ID patterns one policy may hold.
pub const MAX_ID_PATTERNS: usize = 32;
/// The most secret name patterns one policy may hold.
pub const MAX_NAME_PATTERNS: usize = 64;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;
/// The most policies a Safe holds (stored and from the policy file together).
pub const MAX_POLICIES: usize = 100_000;
/// The prefix of the store's record names that hold policies (never a secret's).
pub use crate::name::POLICY_RECORD_PREFIX as RECORD_PREFIX;

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Read a secret as a workload gets it.
    Read,
    /// See names and metadata (list, history, status).
    List,
    /// Change a secret: put, delete, undelete, rollback, destroy, encrypt for it.
    Write,
    /// Read a stored value in the clear as an admin (`aegis get`).
    Reveal,
    /// Policies, the root key, backup and restore.
    Admin,
    /// Read the audit trail.
    Audit,
}

impl Action {
    /// Every action, in the order they are documented.
    pub const ALL: [Action; 6] =
        [Action::Read, Action::List, Action::Write, Action::Reveal, Action::Admin, Action::Audit];

    /// The action's name in documents and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::List => "list",
            Action::Write => "write",
            Action::Reveal => "reveal",
            Action::Admin => "admin",
            Action::Audit => "audit",
        }
    }

    /// Parses an action name.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            InvalidInput::new(
                "policy action",
                format!(
                    "'{}' is not an action; the actions are read, list, write, reveal, admin and audit",
                    s.escape_debug()
                ),
            )
        })
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    /// No action.
    pub const EMPTY: ActionSet = ActionSet(0);

    /// The set of `actions`.
    pub fn of(actions: impl IntoIterator<Item = Action>) -> Self {
        Self(actions.into_iter().fold(0, |b, a| b | a.bit()))
    }

    /// Whether `a` is in the set.
    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    /// Both sets together.
    pub fn union(self, other: ActionSet) -> Self {
        Self(self.0 | other.0)
    }

    /// The actions in the set, in documented order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// Whether a policy allows or denies what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Allows (the default).
    #[default]
    Allow,
    /// Denies, over any allow.
    Deny,
}

/// A per-identity request rate: `per_second` on average, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second, on average.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// Checks the numbers (finite and positive, a burst of at least 1 and at most a million).
    pub fn check(self, what: &'static str) -> Result<Self, InvalidInput> {
        if !(self.per_second.is_finite() && self.per_second > 0.0 && self.per_second <= 1e6) {
            return Err(InvalidInput::new(what, "per_second must be a number above 0 and at most 1000000"));
        }
        if self.burst == 0 || self.burst > 1_000_000 {
            return Err(InvalidInput::new(what, "burst must be a whole number from 1 to 1000000"));
        }
        Ok(self)
    }
}

/// A policy's name: 1 to [`MAX_POLICY_NAME`] bytes of ASCII letters, digits, `.`, `-` and `_`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyName(String);

impl PolicyName {
    /// Parses a name; the error names the character at fault.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const WHAT: &str = "policy name";
        if s.is_empty() {
            return Err(InvalidInput::new(WHAT, "must not be empty"));
        }
        if s.len() > MAX_POLICY_NAME {
            return Err(InvalidInput::new(WHAT, format!("is {} bytes long; the limit is {MAX_POLICY_NAME}", s.len())));
        }
        if let Some((i, c)) = s.char_indices().find(|(_, c)| !is_name_char(*c)) {
            return Err(InvalidInput::new(
                WHAT,
                format!(
                    "character {c:?} at byte {i} of '{}' is not allowed; a policy name holds only ASCII letters, digits, '.', '-' and '_'",
                    s.escape_debug()
                ),
            ));
        }
        if s.starts_with("builtin") {
            return Err(InvalidInput::new(
                WHAT,
                format!("'{s}' starts with 'builtin', which the built-in policies use"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The store record that holds this policy.
    pub fn record(&self) -> crate::name::SecretName {
        crate::name::SecretName::policy_record(&self.0)
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyName({})", self.0)
    }
}

/// A policy document as written by people and stored (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// The policy's name.
    pub name: String,
    /// Allow (default) or deny.
    #[serde(default)]
    pub effect: Effect,
    /// SPIFFE ID patterns.
    pub spiffe_ids: Vec<String>,
    /// Secret name patterns.
    pub secrets: Vec<String>,
    /// Action names.
    pub actions: Vec<String>,
    /// A per-identity request rate for the IDs it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Its name.
    pub name: PolicyName,
    /// Allow or deny.
    pub effect: Effect,
    /// Whose requests it speaks of.
    pub ids: Vec<IdPattern>,
    /// Which secrets.
    pub secrets: Vec<NamePattern>,
    /// What it allows or denies.
    pub actions: ActionSet,
    /// The request rate of the IDs it names, if it sets one.
    pub rate: Option<Rate>,
    /// What it is for.
    pub description: String,
}

impl Policy {
    /// Checks a document; the error names the field and the problem.
    pub fn from_doc(doc: &PolicyDoc) -> Result<Self, InvalidInput> {
        let name = PolicyName::parse(&doc.name)?;
        let counted = |what: &'static str, n: usize, max: usize| {
            if n == 0 {
                Err(InvalidInput::new(what, format!("policy '{name}' names none; give at least one")))
            } else if n > max {
                Err(InvalidInput::new(what, format!("policy '{name}' names {n}; the limit is {max}")))
            } else {
                Ok(())
            }
        };
        counted("policy spiffe_ids", doc.spiffe_ids.len(), MAX_ID_PATTERNS)?;
        counted("policy secrets", doc.secrets.len(), MAX_NAME_PATTERNS)?;
        counted("policy actions", doc.actions.len(), Action::ALL.len() * 2)?;
        if doc.description.len() > MAX_DESCRIPTION {
            return Err(InvalidInput::new("policy description", format!("is longer than {MAX_DESCRIPTION} bytes")));
        }
        let ids = doc.spiffe_ids.iter().map(|p| IdPattern::parse(p)).collect::<Result<Vec<_>, _>>()?;
        let secrets = doc.secrets.iter().map(|p| NamePattern::parse(p)).collect::<Result<Vec<_>, _>>()?;
        let actions = ActionSet::of(doc.actions.iter().map(|a| Action::parse(a)).collect::<Result<Vec<_>, _>>()?);
        let rate = doc.rate.map(|r| r.check("policy rate")).transpose()?;
        Ok(Self { name, effect: doc.effect, ids, secrets, actions, rate, description: doc.description.clone() })
    }

    /// Parses and checks a JSON document.
    pub fn from_json(text: &[u8]) -> Result<Self, InvalidInput> {
        let doc: PolicyDoc = serde_json::from_slice(text)
            .map_err(|e| InvalidInput::new("policy document", format!("is not a policy: {e}")))?;
        Self::from_doc(&doc)
    }

    /// The document of this policy (patterns and actions as text).
    pub fn to_doc(&self) -> PolicyDoc {
        PolicyDoc {
            name: self.name.to_string(),
            effect: self.effect,
            spiffe_ids: self.ids.iter().map(ToString::to_string).collect(),
            secrets: self.secrets.iter().map(ToString::to_string).collect(),
            actions: self.actions.iter().map(|a| a.as_str().to_owned()).collect(),
            rate: self.rate,
            description: self.description.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
