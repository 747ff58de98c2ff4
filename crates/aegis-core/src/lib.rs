//! Aegis domain types, with no I/O.
//!
//! Everything here is pure: names and SPIFFE IDs that cannot be constructed
//! invalid, the role rules that decide who may do what, secret documents with
//! their version history, and the VSecM transformations (template and format).
//! Randomness and clocks are passed in by the caller.

pub mod api;
pub mod error;
pub mod generate;
/// The Sentinel init-command file format.
pub mod initcmd;
pub mod name;
pub mod policy;
pub mod roles;
pub mod secret;
pub mod sentinel;
pub mod spiffe;
pub mod timefmt;
pub mod transform;
pub mod vsecm_record;

pub use error::InvalidInput;
pub use name::{Namespace, SecretKind, SecretName, WorkloadName, KEYSTONE};
pub use sentinel::SentinelAction;
pub use spiffe::SpiffeId;
