//! The closed sets of words the APIs use as values: each is an enum, written
//! and read as its lower-case word, so that no code matches the words as
//! string literals and a word outside the set is an error naming the choices.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// Declares an enum of wire words with `as_str`, `Display`, `FromStr` (an
/// error names the value and the choices) and comparison with a `&str`.
macro_rules! words {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;

            fn from_str(s: &str) -> Result<Self, InvalidInput> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let choices: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    InvalidInput::new(
                        $what,
                        format!("unknown {} '{}': use {}", $what, s.escape_debug(), choices.join(", ")),
                    )
                })
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

words! {
    /// Where a `k8s:` secret stands in Kubernetes (see docs/KUBERNETES.md).
    SyncState, "Kubernetes sync state" {
        /// Every Kubernetes copy matches the secret.
        Synced = "synced",
        /// Not yet (retried), including while the API server cannot be reached.
        Pending = "pending",
        /// Retried slowly; the reason says what an admin must fix.
        Error = "error",
        /// A Secret Aegis does not manage is in the way.
        Conflict = "conflict",
    }
}

words! {
    /// VSecM's keystone: whether the init commands were applied.
    KeystoneStatus, "keystone status" {
        /// The keystone secret exists: the init commands were applied.
        Ready = "ready",
        /// Not yet.
        Pending = "pending",
    }
}

words! {
    /// How VSecM's revealed list encrypts each value.
    Algorithm, "algorithm" {
        /// age, under the root key's age identity (what Aegis answers).
        Age = "age",
        /// AES-GCM under the root key's AES key (VSecM's FIPS mode; Aegis
        /// never answers it, and it is here so that VSecM's answer reads).
        Aes = "aes",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_on_the_wire_and_in_text() {
        for s in SyncState::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<SyncState>(&json).unwrap(), *s);
            assert_eq!(s.as_str().parse::<SyncState>().unwrap(), *s);
        }
        assert_eq!(serde_json::to_string(&KeystoneStatus::Ready).unwrap(), r#""ready""#);
        assert_eq!(serde_json::to_string(&Algorithm::Age).unwrap(), r#""age""#);
        assert!(SyncState::Pending == "pending" && SyncState::Pending != "synced");
    }

    #[test]
    fn an_unknown_word_names_itself_and_the_choices() {
        let e = "Synced".parse::<SyncState>().unwrap_err().to_string();
        assert!(e.contains("unknown Kubernetes sync state 'Synced'"), "{e}");
        assert!(e.contains("synced, pending, error, conflict"), "{e}");
        let e = "done".parse::<KeystoneStatus>().unwrap_err().to_string();
        assert!(e.contains("'done'") && e.contains("ready, pending"), "{e}");
        let e = "rsa".parse::<Algorithm>().unwrap_err().to_string();
        assert!(e.contains("'rsa'") && e.contains("age, aes"), "{e}");
        assert!(serde_json::from_str::<SyncState>(r#""stale""#).is_err());
    }
}
