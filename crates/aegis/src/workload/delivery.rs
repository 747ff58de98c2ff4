//! What the sidecar, the init container and the exec wrapper share: how they
//! watch the Safe, how they wait for a secret, and how a JSON object secret
//! becomes named values.
//!
//! All three use the push stream of [`aegis_sdk::Client::watch`]. Their "poll
//! interval" settings (VSecM's names) bound two things: how long one watch
//! request is held open by the Safe when nothing changes (so even a lost
//! notification is caught within one interval), and the longest retry delay
//! while the Safe is unreachable.

use std::time::Duration;

use aegis_core::api::WorkloadSecret;
use aegis_core::secret::SecretValue;
use aegis_sdk::{WatchOptions, WatchUpdate};
use futures::{Stream, StreamExt};
use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

/// Shortest watch request, so a tiny interval cannot make a busy loop.
const MIN_WAIT: Duration = Duration::from_millis(100);
/// First retry delay after a failure (never above the interval).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Watch settings for a poll interval in milliseconds (see the module docs).
pub fn watch_options(poll_interval_ms: u64) -> WatchOptions {
    let interval = Duration::from_millis(poll_interval_ms).max(MIN_WAIT);
    WatchOptions { wait: interval, initial_backoff: FIRST_BACKOFF.min(interval), max_backoff: interval }
}

/// The last thing a waiter learned, for the message when it gives up.
#[derive(Debug, Default)]
pub enum LastSeen {
    /// No answer yet.
    #[default]
    Nothing,
    /// The Safe has no secret for the workload (never written, deleted, or outside its validity window).
    Absent,
    /// The secret exists but its value is empty.
    Empty,
    /// The Safe could not be reached or refused; the error text (never a value).
    Failed(String),
}

impl LastSeen {
    /// A phrase for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Nothing => "the Safe has not answered yet".to_owned(),
            Self::Absent => "the Safe has no secret for this workload".to_owned(),
            Self::Empty => "the workload's secret exists but is empty".to_owned(),
            Self::Failed(e) => format!("the last attempt failed: {e}"),
        }
    }
}

/// Reads `updates` until the secret exists and is not empty (VSecM's init container rule).
///
/// Records in `last` what it saw, so a caller that stops waiting can say why.
pub async fn first_nonempty<S>(updates: &mut S, last: &mut LastSeen) -> Option<WorkloadSecret>
where
    S: Stream<Item = WatchUpdate> + Unpin,
{
    while let Some(update) = updates.next().await {
        match update {
            WatchUpdate::Changed(Some(s)) if !s.data.is_empty() => return Some(s),
            WatchUpdate::Changed(Some(s)) => {
                tracing::info!(version = s.version, revision = s.revision, "the secret is empty; waiting");
                *last = LastSeen::Empty;
            }
            WatchUpdate::Changed(None) => {
                tracing::info!("no secret is registered for this workload yet; waiting");
                *last = LastSeen::Absent;
            }
            WatchUpdate::Unreachable { error, retry_in } => {
                tracing::warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, "cannot get the secret; retrying");
                *last = LastSeen::Failed(error.to_string());
            }
        }
    }
    None
}

/// The secret is not a JSON object (the message gives its version and size only).
#[derive(Debug, thiserror::Error)]
#[error("the secret (version {version}, {bytes} bytes) is not a JSON object; store it as {{\"KEY\": \"value\", …}}")]
pub struct NotAnObject {
    /// Version of the secret.
    pub version: u64,
    /// Its size.
    pub bytes: usize,
}

/// The entries of a JSON object secret, sorted by key: string values as they
/// are, any other value as its JSON text.
pub fn object_entries(secret: &WorkloadSecret) -> Result<Vec<(String, Zeroizing<String>)>, NotAnObject> {
    entries(&secret.data).ok_or(NotAnObject { version: secret.version, bytes: secret.data.len() })
}

fn entries(data: &SecretValue) -> Option<Vec<(String, Zeroizing<String>)>> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(data.expose()) else {
        return None;
    };
    let out = map
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(s) => (key, Zeroizing::new(s)),
            mut other => {
                let text = Zeroizing::new(other.to_string());
                scrub(&mut other);
                (key, text)
            }
        })
        .collect();
    Some(out)
}

/// Wipes the strings inside a parsed value before it is dropped.
fn scrub(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(map) => map.values_mut().for_each(scrub),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secret(data: &str) -> WorkloadSecret {
        WorkloadSecret {
            name: "billing".into(),
            version: 3,
            revision: 9,
            data: SecretValue::new(data),
            updated: String::new(),
        }
    }

    #[test]
    fn objects_become_entries_and_others_are_refused_without_their_value() {
        let e = object_entries(&secret(r#"{"b":"x y","a":5,"c":{"d":[true,null]},"e":"{\"q\":1}"}"#)).unwrap();
        let flat: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(flat, vec![("a", "5"), ("b", "x y"), ("c", r#"{"d":[true,null]}"#), ("e", r#"{"q":1}"#)]);
        for bad in ["hunter2", "[1,2]", "\"str\"", "", "{broken"] {
            let err = object_entries(&secret(bad)).unwrap_err().to_string();
            assert!(err.contains("version 3") && err.contains("not a JSON object"), "{err}");
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn intervals_bound_the_wait_and_the_backoff() {
        let o = watch_options(20_000);
        assert_eq!((o.wait, o.max_backoff), (Duration::from_secs(20), Duration::from_secs(20)));
        assert_eq!(o.initial_backoff, Duration::from_millis(200));
        let o = watch_options(0);
        assert_eq!((o.wait, o.initial_backoff, o.max_backoff), (MIN_WAIT, MIN_WAIT, MIN_WAIT));
    }
}
