//! One line of the trail: its JSON form, its hash and the anchors' MAC input.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The `prev` of the very first line of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Most secret names one event lists; the rest are counted in `more_secrets`.
pub const MAX_SECRETS: usize = 64;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Served (status below 400).
    Ok,
    /// Refused for the caller's identity (401, 403).
    Denied,
    /// Any other failure; the status says which.
    Error,
}

impl Outcome {
    /// The outcome of an HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            0..=399 => Self::Ok,
            401 | 403 => Self::Denied,
            _ => Self::Error,
        }
    }
}

/// The two lines of an admin write: `intent` made durable before the store
/// is changed, `done` with the result before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the change: the write may follow.
    Intent,
    /// After: the result is known.
    Done,
}

/// What one request hands to the sink. Holds names and numbers, never a value.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the request ended (or, for an intent, when the change was about to be made).
    pub time: OffsetDateTime,
    /// The request's id (also in the answer's `x-request-id` header).
    pub request_id: Arc<str>,
    /// The caller's SPIFFE ID.
    pub caller: Arc<str>,
    /// What was done, e.g. `write`, `fetch`, `rotate-root-key`.
    pub action: &'static str,
    /// `vsecm` or `native`.
    pub api: &'static str,
    /// The route template (never a path with a name in it).
    pub route: &'static str,
    /// The secrets the request named.
    pub secrets: Vec<String>,
    /// The secret's version after the request, when there is one.
    pub version: Option<u64>,
    /// The HTTP status (0 for an intent).
    pub status: u16,
    /// Set for admin writes.
    pub phase: Option<Phase>,
    /// The policy that decided the request (a refusal names the one that refused it):
    /// borrowed for the built-ins, so the hot path neither allocates nor shares a counter.
    pub policy: Option<std::borrow::Cow<'static, str>>,
}

/// What a line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The sink (re)started: the first line of a trail, or the first after a restart.
    Start,
    /// One request.
    Request,
    /// Events that could not be written: how many and when.
    Gap,
    /// An HMAC over the chain so far.
    Anchor,
    /// Rotated files deleted by retention: the trail now starts at `first_kept`.
    Retention,
}

/// A line as written, fields in this order; those that do not apply are left out.
#[derive(Serialize, Default)]
pub(crate) struct Out<'a> {
    pub seq: u64,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: Option<Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more_secrets: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Folded repeats: how many identical requests this line stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Folded repeats: when the first of them ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Gap: events (fetches, reads) that were not written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Gap: admin writes refused because the trail could not be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    /// Gap: when the trail stopped being written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Folded lines that stand for requests that differed (a caller's catch-all series).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub varied: Option<bool>,
    /// Retention: rotated files deleted, and the first event of the oldest file kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_kept: Option<u64>,
    /// Start: the trail ended before the anchor its sealed head records (newest lines removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_head_seq: Option<u64>,
    /// Start: the sealed head was missing although the trail had lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_missing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub prev: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl<'a> Out<'a> {
    /// A line of `kind` with no other fields yet.
    pub(crate) fn bare(seq: u64, kind: Kind, time: OffsetDateTime, prev: String) -> Self {
        Self { seq, time: rfc3339(time), kind: Some(kind), prev, ..Self::default() }
    }

    /// The line of one request.
    pub(crate) fn request(seq: u64, e: &'a Event, prev: String) -> Self {
        let shown = e.secrets.len().min(MAX_SECRETS);
        let done = e.phase != Some(Phase::Intent);
        Self {
            request_id: Some(&e.request_id),
            caller: Some(&e.caller),
            action: Some(e.action),
            api: Some(e.api),
            route: Some(e.route),
            phase: e.phase,
            secrets: Some(&e.secrets[..shown]),
            more_secrets: (e.secrets.len() > shown).then(|| e.secrets.len() - shown),
            version: e.version,
            policy: e.policy.as_deref(),
            result: done.then(|| Outcome::of_status(e.status)),
            status: done.then_some(e.status),
            ..Self::bare(seq, Kind::Request, e.time, prev)
        }
    }
}

/// The fields every check needs, read back from a line.
#[derive(Debug, Deserialize)]
pub struct Parsed {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// What the line records.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Hex SHA-256 of the line before.
    pub prev: String,
    /// The caller (request lines).
    #[serde(default)]
    pub caller: Option<String>,
    /// The secrets (request lines).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The root key id of an anchor.
    #[serde(default)]
    pub key_id: Option<String>,
    /// An anchor's MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// Retention lines: the first event of the oldest file kept.
    #[serde(default)]
    pub first_kept: Option<u64>,
    /// Start lines: the Safe found the trail cut back before this anchor of its sealed head.
    #[serde(default)]
    pub cut_head_seq: Option<u64>,
    /// Start lines: the Safe found no sealed head although the trail had lines.
    #[serde(default)]
    pub head_missing: Option<bool>,
}

impl Parsed {
    /// Reads a line (without its newline).
    pub fn parse(line: &[u8]) -> Option<Self> {
        serde_json::from_slice(line).ok()
    }

    /// Whether the line is about `caller` (exactly) and names `secret`; `None` matches anything.
    pub fn matches(&self, caller: Option<&str>, secret: Option<&str>) -> bool {
        caller.is_none_or(|c| self.caller.as_deref() == Some(c))
            && secret.is_none_or(|s| self.secrets.iter().any(|n| n == s))
    }
}

/// SHA-256 of a line's bytes (without its newline).
pub fn hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// What an anchor's MAC covers: its position, the hash of the line before it
/// (which covers the whole chain up to there) and the key's id.
pub fn anchor_message(seq: u64, prev: &str, key_id: &str) -> Vec<u8> {
    format!("aegis-audit-anchor/v1\n{seq}\n{prev}\n{key_id}").into_bytes()
}

/// RFC 3339 in UTC.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(status: u16, phase: Option<Phase>) -> Event {
        Event {
            time: OffsetDateTime::UNIX_EPOCH,
            request_id: "r1".into(),
            caller: "spiffe://td/x".into(),
            action: "write",
            api: "native",
            route: "/v1/secrets/{name}",
            secrets: vec!["billing".into()],
            version: Some(2),
            status,
            phase,
            policy: None,
        }
    }

    fn line(e: &Event) -> String {
        serde_json::to_string(&Out::request(3, e, GENESIS.into())).unwrap()
    }

    #[test]
    fn a_request_line_has_every_field_and_reads_back() {
        let text = line(&event(403, Some(Phase::Done)));
        for field in [
            "\"seq\":3",
            "\"type\":\"request\"",
            "\"request_id\":\"r1\"",
            "\"caller\":\"spiffe://td/x\"",
            "\"action\":\"write\"",
            "\"secrets\":[\"billing\"]",
            "\"version\":2",
            "\"result\":\"denied\"",
            "\"status\":403",
            "\"phase\":\"done\"",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
        let p = Parsed::parse(text.as_bytes()).unwrap();
        assert!(p.matches(Some("spiffe://td/x"), Some("billing")));
        assert!(!p.matches(Some("spiffe://td/y"), None) && !p.matches(None, Some("bill")));
        let intent = line(&event(0, Some(Phase::Intent)));
        assert!(!intent.contains("result") && !intent.contains("status"), "{intent}");
    }

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(Outcome::of_status(200), Outcome::Ok);
        assert_eq!(Outcome::of_status(403), Outcome::Denied);
        assert_eq!(Outcome::of_status(503), Outcome::Error);
    }
}
