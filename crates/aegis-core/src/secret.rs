//! Secrets, their versions, and the operations on them (pure: the caller
//! passes the clock and persists the result).

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::InvalidInput;
use crate::name::{Namespace, SecretName};
use crate::timefmt::unix_nanos;
use crate::transform::{Format, Template};

/// Default number of versions kept per secret.
pub const DEFAULT_MAX_VERSIONS: usize = 10;

/// A secret value: zeroized on drop, never printed, compared in constant time.
///
/// It is deliberately not `Serialize`: a struct that holds one cannot be
/// written out by accident. A field that must carry the value on the wire or
/// into an encrypted record says so with
/// `#[serde(serialize_with = "reveal::value")]` (or `reveal::option`), the one
/// greppable place where a value leaves through serde.
///
/// ```compile_fail
/// #[derive(serde::Serialize)]
/// struct Leak {
///     value: aegis_core::secret::SecretValue,
/// }
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(Zeroizing<String>);

/// The explicit step that lets serde write a [`SecretValue`]. Use it only on
/// fields of responses to an authorised caller and of records sealed before
/// they are stored.
pub mod reveal {
    use serde::Serializer;

    use super::SecretValue;

    /// Writes the value as a string.
    pub fn value<S: Serializer>(v: &SecretValue, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose())
    }

    /// Writes `Some(value)` as a string and `None` as null.
    pub fn option<S: Serializer>(v: &Option<SecretValue>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(v.expose()),
            None => s.serialize_none(),
        }
    }
}

impl SecretValue {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    /// The value. Call only where the value must leave the process (a response, a file for the workload).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for SecretValue {}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted {} bytes>)", self.0.len())
    }
}

/// How a version is delivered: template, format, namespaces and validity window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    /// Kubernetes namespaces (for `k8s:` secrets); never empty.
    pub namespaces: Vec<Namespace>,
    /// Go text/template applied to a JSON value, if any (checked when it was written).
    pub template: Option<Template>,
    /// Output format.
    pub format: Format,
    /// Not valid before this time.
    #[serde(with = "unix_nanos")]
    pub not_before: OffsetDateTime,
    /// Not valid after this time.
    #[serde(with = "unix_nanos")]
    pub expires_after: OffsetDateTime,
}

impl SecretMeta {
    /// Metadata with VSecM's defaults: namespace `default`, no template, json, valid from now, never expires.
    pub fn defaults(now: OffsetDateTime) -> Self {
        Self {
            namespaces: vec![Namespace::default()],
            template: None,
            format: Format::Json,
            not_before: now,
            expires_after: crate::timefmt::never(),
        }
    }

    /// Whether `now` is inside the validity window (`not_before` to
    /// `expires_after`, both included): outside it, workloads get nothing.
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.expires_after
    }
}

/// A version a caller names (to read, destroy or roll back to): a whole number from 1,
/// parsed once at the edge. On the wire it is a plain number; 0 is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct VersionNumber(std::num::NonZeroU64);

impl VersionNumber {
    /// Parses a decimal version number (from a path segment or query).
    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        text.parse::<u64>()
            .map_err(|_| InvalidInput::new("version", format!("'{}' is not a whole number", text.escape_debug())))
            .and_then(Self::try_from)
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The number after `n` (never 0; saturates at `u64::MAX`).
    pub fn after(n: u64) -> Self {
        Self(std::num::NonZeroU64::MIN.saturating_add(n))
    }
}

impl TryFrom<u64> for VersionNumber {
    type Error = InvalidInput;

    fn try_from(n: u64) -> Result<Self, InvalidInput> {
        std::num::NonZeroU64::new(n)
            .map(Self)
            .ok_or_else(|| InvalidInput::new("version", "versions are numbered from 1; 0 names none"))
    }
}

impl From<VersionNumber> for u64 {
    fn from(v: VersionNumber) -> u64 {
        v.get()
    }
}

impl fmt::Display for VersionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One stored version of a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    /// Version number, from 1, never reused (a stored 0 does not load).
    pub number: VersionNumber,
    /// The raw value; `None` once destroyed.
    #[serde(serialize_with = "crate::secret::reveal::option")]
    pub value: Option<SecretValue>,
    /// Delivery metadata of this version.
    pub meta: SecretMeta,
    /// When this version was written.
    #[serde(with = "unix_nanos")]
    pub created: OffsetDateTime,
}

/// A secret with its bounded version history. This is what is persisted (encrypted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretDoc {
    /// The secret's name.
    pub name: SecretName,
    /// Versions, oldest first, at most `max_versions` of them.
    pub versions: Vec<Version>,
    /// The current version number (0 if none was ever written).
    pub current: u64,
    /// When the secret was first created.
    #[serde(with = "unix_nanos")]
    pub created: OffsetDateTime,
    /// When the secret last changed.
    #[serde(with = "unix_nanos")]
    pub updated: OffsetDateTime,
    /// Set when soft-deleted; `undelete` clears it.
    #[serde(default, with = "option_nanos")]
    pub deleted: Option<OffsetDateTime>,
    /// Increases on every change; used to order writes and notify watchers.
    pub revision: u64,
    /// The store's change number at this secret's last change: every change
    /// a Safe commits gets the next one, so a replica asks for the changes
    /// after the last one it applied. 0 in records written before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// Set on a replica: the Safe this secret is replicated from. Such a
    /// secret is read-only here; only its source's changes replace it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Box<Origin>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a replicated secret comes from (see [`SecretDoc::origin`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The source Safe's SPIFFE ID.
    pub source: String,
    /// The source's change number of the state held here.
    pub seq: u64,
    /// The fingerprint of the source's selection (its replicated name
    /// patterns) this state was sent under; 0 while a snapshot is not complete.
    #[serde(default)]
    pub selection: u64,
}

/// Why an operation on a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Check-and-set failed.
    #[error("secret '{name}' is at version {actual}, not {expected}; re-read it and retry")]
    VersionMismatch {
        /// The secret.
        name: String,
        /// The version the caller expected.
        expected: u64,
        /// The current version.
        actual: u64,
    },
    /// The version does not exist (pruned or never written).
    #[error("secret '{name}' has no version {version}; see its history for the versions kept")]
    NoSuchVersion {
        /// The secret.
        name: String,
        /// The version asked for.
        version: u64,
    },
    /// The version was destroyed.
    #[error("version {version} of secret '{name}' was destroyed and cannot be restored")]
    Destroyed {
        /// The secret.
        name: String,
        /// The destroyed version.
        version: u64,
    },
    /// The operation needs a deleted secret, or a live one.
    #[error("secret '{name}' {state}")]
    WrongState {
        /// The secret.
        name: String,
        /// What is wrong, e.g. "is not deleted".
        state: &'static str,
    },
}

impl SecretDoc {
    /// An empty document for a new secret (no versions yet).
    pub fn empty(name: SecretName, now: OffsetDateTime) -> Self {
        Self {
            name,
            versions: Vec::new(),
            current: 0,
            created: now,
            updated: now,
            deleted: None,
            revision: 0,
            seq: 0,
            origin: None,
        }
    }

    /// The current live version: none if deleted, never written or destroyed.
    pub fn live(&self) -> Option<(&Version, &SecretValue)> {
        if self.deleted.is_some() {
            return None;
        }
        let v = self.version(self.current)?;
        Some((v, v.value.as_ref()?))
    }

    /// A version by number.
    pub fn version(&self, number: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.number.get() == number)
    }

    fn next_number(&self) -> VersionNumber {
        VersionNumber::after(self.versions.last().map_or(self.current, |v| v.number.get().max(self.current)))
    }

    fn touch(&mut self, now: OffsetDateTime) {
        self.updated = now;
        self.revision += 1;
    }

    /// Writes a new version. `cas` is the version the caller expects to be
    /// current (0: the secret must not exist or be deleted). Clears a soft delete.
    pub fn put(
        &mut self,
        value: SecretValue,
        meta: SecretMeta,
        cas: Option<u64>,
        now: OffsetDateTime,
        max_versions: usize,
    ) -> Result<u64, OpError> {
        if let Some(expected) = cas {
            let actual = if self.deleted.is_some() { 0 } else { self.current };
            if expected != actual {
                return Err(OpError::VersionMismatch { name: self.name.to_string(), expected, actual });
            }
        }
        let number = self.next_number();
        self.versions.push(Version { number, value: Some(value), meta, created: now });
        let excess = self.versions.len().saturating_sub(max_versions.max(1));
        self.versions.drain(..excess);
        self.current = number.get();
        self.deleted = None;
        self.touch(now);
        Ok(number.get())
    }

    /// Soft delete: the secret disappears for workloads but its history stays.
    pub fn soft_delete(&mut self, now: OffsetDateTime) -> Result<(), OpError> {
        if self.deleted.is_some() || self.current == 0 {
            return Err(OpError::WrongState { name: self.name.to_string(), state: "is already deleted" });
        }
        self.deleted = Some(now);
        self.touch(now);
        Ok(())
    }

    /// Reverses a soft delete.
    pub fn undelete(&mut self, now: OffsetDateTime) -> Result<(), OpError> {
        if self.deleted.is_none() {
            return Err(OpError::WrongState { name: self.name.to_string(), state: "is not deleted" });
        }
        self.deleted = None;
        self.touch(now);
        Ok(())
    }

    /// Destroys one version's value for good (the metadata stays in the history).
    pub fn destroy(&mut self, number: VersionNumber, now: OffsetDateTime) -> Result<(), OpError> {
        let (name, number) = (self.name.to_string(), number.get());
        let v = self
            .versions
            .iter_mut()
            .find(|v| v.number.get() == number)
            .ok_or(OpError::NoSuchVersion { name: name.clone(), version: number })?;
        if v.value.take().is_none() {
            return Err(OpError::Destroyed { name, version: number });
        }
        self.touch(now);
        Ok(())
    }

    /// Makes an earlier version current again by writing it as a new version.
    pub fn rollback(
        &mut self,
        number: VersionNumber,
        now: OffsetDateTime,
        max_versions: usize,
    ) -> Result<u64, OpError> {
        let (name, number) = (self.name.to_string(), number.get());
        let v = self.version(number).ok_or(OpError::NoSuchVersion { name: name.clone(), version: number })?;
        let value = v.value.clone().ok_or(OpError::Destroyed { name, version: number })?;
        let meta = v.meta.clone();
        self.put(value, meta, None, now, max_versions)
    }
}

mod option_nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.unix_timestamp_nanos()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
        Option::<i128>::deserialize(d)?
            .map(|n| OffsetDateTime::from_unix_timestamp_nanos(n).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> VersionNumber {
        VersionNumber::try_from(n).unwrap()
    }

    #[test]
    fn version_numbers_start_at_one_and_travel_as_plain_numbers() {
        assert_eq!(VersionNumber::parse("3").unwrap().get(), 3);
        for bad in ["0", "-1", "x", "", "1.5", "99999999999999999999"] {
            let e = VersionNumber::parse(bad).unwrap_err();
            assert_eq!(e.what(), "version", "{bad}");
        }
        assert_eq!(serde_json::to_string(&v(7)).unwrap(), "7");
        let r: crate::api::Rollback = serde_json::from_str(r#"{"version":2}"#).unwrap();
        assert_eq!(r.version, v(2));
        let e = serde_json::from_str::<crate::api::Rollback>(r#"{"version":0}"#).unwrap_err();
        assert!(e.to_string().contains("numbered from 1"), "{e}");
    }

    fn doc() -> SecretDoc {
        SecretDoc::empty(SecretName::parse("billing").unwrap(), OffsetDateTime::UNIX_EPOCH)
    }

    fn put(d: &mut SecretDoc, v: &str, max: usize) -> u64 {
        let now = OffsetDateTime::now_utc();
        d.put(SecretValue::new(v), SecretMeta::defaults(now), None, now, max).unwrap()
    }

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::new("hunter2-top-secret");
        let mut d = doc();
        put(&mut d, "hunter2-top-secret", 10);
        for shown in [format!("{v:?}"), format!("{d:?}"), format!("{d:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn history_is_bounded_and_numbers_never_reused() {
        let mut d = doc();
        for i in 0..15 {
            assert_eq!(put(&mut d, &format!("v{i}"), 10), i + 1);
        }
        assert_eq!(d.versions.len(), 10);
        assert_eq!(d.versions[0].number.get(), 6);
        assert_eq!(d.live().unwrap().1.expose(), "v14");
        assert!(matches!(
            d.rollback(v(1), OffsetDateTime::now_utc(), 10),
            Err(OpError::NoSuchVersion { version: 1, .. })
        ));
        assert_eq!(d.rollback(v(7), OffsetDateTime::now_utc(), 10).unwrap(), 16);
        assert_eq!(d.live().unwrap().1.expose(), "v6");
    }

    #[test]
    fn check_and_set() {
        let mut d = doc();
        let now = OffsetDateTime::now_utc();
        let m = SecretMeta::defaults(now);
        assert_eq!(d.put(SecretValue::new("a"), m.clone(), Some(0), now, 10).unwrap(), 1);
        let e = d.put(SecretValue::new("b"), m.clone(), Some(0), now, 10).unwrap_err();
        assert!(e.to_string().contains("is at version 1, not 0"), "{e}");
        assert_eq!(d.put(SecretValue::new("b"), m, Some(1), now, 10).unwrap(), 2);
    }

    #[test]
    fn delete_undelete_destroy() {
        let mut d = doc();
        let now = OffsetDateTime::now_utc();
        put(&mut d, "a", 10);
        put(&mut d, "b", 10);
        d.soft_delete(now).unwrap();
        assert!(d.live().is_none());
        assert!(d.soft_delete(now).is_err());
        d.undelete(now).unwrap();
        assert_eq!(d.live().unwrap().1.expose(), "b");
        d.destroy(v(1), now).unwrap();
        assert!(matches!(d.destroy(v(1), now), Err(OpError::Destroyed { .. })));
        assert!(matches!(d.rollback(v(1), now, 10), Err(OpError::Destroyed { .. })));
        d.destroy(v(2), now).unwrap();
        assert!(d.live().is_none());
        let rev = d.revision;
        put(&mut d, "c", 10);
        assert_eq!(d.revision, rev + 1);
        assert_eq!(d.current, 3);
    }

    #[test]
    fn serde_round_trip_keeps_everything() {
        let mut d = doc();
        put(&mut d, "a", 10);
        d.soft_delete(OffsetDateTime::now_utc()).unwrap();
        let back: SecretDoc = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(back.deleted, d.deleted);
        assert_eq!(back.versions[0].value, d.versions[0].value);
        assert_eq!(back.revision, d.revision);
    }
}
