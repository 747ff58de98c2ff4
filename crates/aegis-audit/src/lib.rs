//! The Aegis audit trail (see `docs/AUDIT.md`).
//!
//! - [`Event`]: what one request hands over: time, caller, action, secret
//!   names, version, result, request id. Never a value.
//! - [`line`]: the JSON line each event becomes, chained by SHA-256 (each line
//!   carries the hash of the line before it) and anchored now and then by an
//!   HMAC-SHA256 under a key derived from the root key ([`aegis_crypto::AuditKey`]).
//! - [`Sink`]: the writer thread behind a bounded queue. Requests never wait
//!   on it past their deadline; admin writes wait for their line to be durable.
//! - [`verify`]: checks a trail and names the first line that was changed,
//!   removed, reordered or truncated.
//! - [`files`]: where a trail's files are (rotation carries the chain across).
//! - [`head`]: the sealed head, kept with the store's records, that proves the newest lines are there.
//! - `fold`: identical requests that change nothing become one counted line.

mod durable;
pub mod files;
mod fold;
pub mod head;
pub mod line;
pub mod sink;
pub mod verify;

pub use head::Head;
pub use line::{Event, Outcome, Phase};
pub use sink::{Sink, SinkConfig, Stats, Unavailable};
pub use verify::{verify, verify_with_head, Finding, FindingKind, Summary};
