//! What the Kubernetes Secrets of one Aegis secret must be, and whose a
//! Secret is: pure decisions shared by the requests (`ops.rs`) and the drift
//! watcher (`watch.rs`), which import this module and never each other's
//! decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aegis_core::transform::Budget;
use aegis_core::SecretName;
use aegis_store::Entry;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use super::data::{secret_data, DataError, SecretData};
use super::{Ctx, INSTANCE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, SECRET_ANNOTATION, VERSION_ANNOTATION};

/// What the Secrets of one Aegis secret must be.
pub(super) enum Desired {
    /// The secret is live: its Secret in each namespace.
    Present {
        /// Its version.
        version: u64,
        /// Where.
        namespaces: BTreeSet<String>,
        /// The data.
        data: SecretData,
    },
    /// Deleted, destroyed or unknown: no Secret (or kept, by configuration).
    Absent,
    /// Live, but before its `notBefore` or after its `expires`: no Secret,
    /// whatever the configuration (workloads get nothing either).
    Outside,
    /// Live, but its data cannot be a Secret.
    Invalid(DataError),
}

impl Desired {
    /// What `entry` (the store's, if any) must look like in Kubernetes,
    /// computed off the async threads (it may render a template).
    pub(super) async fn of(ctx: &Ctx, entry: Option<Arc<Entry>>) -> Desired {
        let Some(entry) = entry.filter(|e| e.doc.live().is_some()) else { return Desired::Absent };
        if entry.doc.live().is_some_and(|(v, _)| !v.meta.valid_at(time::OffsetDateTime::now_utc())) {
            return Desired::Outside;
        }
        let budget = ctx.cfg.template_budget;
        ctx.off_runtime(move || Desired::compute(&entry, &budget)).await.unwrap_or_else(|| {
            Desired::Invalid(DataError::Template("the render stopped unexpectedly; see the Safe's log".to_owned()))
        })
    }

    /// [`Desired::of`], on the calling thread.
    fn compute(entry: &Entry, budget: &Budget) -> Desired {
        let Some((v, value)) = entry.doc.live() else { return Desired::Absent };
        match secret_data(value, &v.meta, budget) {
            Ok(data) => Desired::Present {
                version: v.number.get(),
                namespaces: v.meta.namespaces.iter().map(|n| n.as_str().to_owned()).collect(),
                data,
            },
            Err(e) => Desired::Invalid(e),
        }
    }

    /// What the watchers compare copies with: no value, only a digest.
    pub(super) fn fingerprint(&self, revision: u64) -> Fingerprint {
        let wants = match self {
            Desired::Present { version, namespaces, data } => {
                Wants::Copies { version: *version, namespaces: namespaces.clone(), digest: digest(Some(&data.0)) }
            }
            Desired::Absent => Wants::Nothing,
            Desired::Outside => Wants::NoCopy,
            Desired::Invalid(_) => Wants::Unknown,
        };
        Fingerprint { revision, wants }
    }
}

/// What the copies of a secret at `revision` must be, without its data: a
/// watcher decides from it whether a copy drifted, without rendering.
#[derive(Debug)]
pub(super) struct Fingerprint {
    /// The store's revision of the secret it was computed for.
    pub revision: u64,
    /// What it asks for.
    pub wants: Wants,
}

/// See [`Fingerprint`].
#[derive(Debug)]
pub(super) enum Wants {
    /// A copy holding `version` in each namespace, its data hashing to `digest`.
    Copies { version: u64, namespaces: BTreeSet<String>, digest: [u8; 32] },
    /// No copy (unless copies of deleted secrets are kept).
    Nothing,
    /// No copy, whatever the configuration: outside the validity window.
    NoCopy,
    /// The data cannot be a Secret: the sync retries on its own.
    Unknown,
}

impl Fingerprint {
    /// Whether the copy `obj` in `ns` is what is wanted (`Unknown`: yes, as
    /// nothing a watcher could do would help).
    pub(super) fn accepts(&self, ns: &str, obj: &Secret, instance: &str, keep_on_delete: bool) -> bool {
        match &self.wants {
            Wants::Copies { version, namespaces, digest: want } => {
                namespaces.contains(ns) && same_meta(obj, instance, *version) && digest(obj.data.as_ref()) == *want
            }
            Wants::Nothing => keep_on_delete,
            Wants::NoCopy => false,
            Wants::Unknown => true,
        }
    }
}

/// SHA-256 over the keys and values with their lengths, so no two maps share it.
fn digest(data: Option<&BTreeMap<String, ByteString>>) -> [u8; 32] {
    let mut h = Sha256::new();
    for (k, v) in data.into_iter().flatten() {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_le_bytes());
        h.update(&v.0);
    }
    h.finalize().into()
}

/// Whose a Secret is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// This Safe manages it for this secret.
    Ours,
    /// No `managed-by=aegis` label.
    Unmanaged,
    /// Another Safe instance, or another secret, manages it.
    Other(String),
}

/// The instance name every Safe had before instance names were unique. A Secret
/// annotated with it and with one of this Safe's secrets is this Safe's: after an
/// upgrade a Safe takes back its own Secrets (and re-annotates them), never others'.
pub(super) const LEGACY_INSTANCE: &str = "default";

/// Whose `obj` is, for the Aegis secret `name` of this `instance`.
pub(super) fn owner(obj: &Secret, name: &SecretName, instance: &str) -> Owner {
    let label = obj.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL));
    if label.map(String::as_str) != Some(MANAGED_BY) {
        return Owner::Unmanaged;
    }
    let ann = |k: &str| obj.metadata.annotations.as_ref().and_then(|a| a.get(k)).cloned().unwrap_or_default();
    let their_instance = ann(INSTANCE_ANNOTATION);
    if their_instance != instance && their_instance != LEGACY_INSTANCE {
        return Owner::Other(format!("the Aegis Safe instance '{}'", their_instance.escape_debug()));
    }
    let theirs = ann(SECRET_ANNOTATION);
    if theirs != name.as_str() {
        return Owner::Other(format!("the Aegis secret '{}'", theirs.escape_debug()));
    }
    Owner::Ours
}

/// The Aegis secret a managed Secret of this `instance` belongs to.
pub(super) fn secret_of(obj: &Secret, instance: &str) -> Option<SecretName> {
    let ann = obj.metadata.annotations.as_ref()?;
    if ann.get(INSTANCE_ANNOTATION).map(String::as_str) != Some(instance) {
        return None;
    }
    let name = SecretName::parse_stored(ann.get(SECRET_ANNOTATION)?).ok()?;
    (name.kubernetes_name() == obj.metadata.name.as_deref()).then_some(name)
}

/// Whether `obj` already is what `desired` asks for.
pub(super) fn matches(obj: &Secret, instance: &str, version: u64, data: &SecretData) -> bool {
    same_meta(obj, instance, version) && obj.data.as_ref().map_or(data.0.is_empty(), |d| *d == data.0)
}

/// Whether `obj` is a live Opaque Secret of this `instance` annotated with `version`.
fn same_meta(obj: &Secret, instance: &str, version: u64) -> bool {
    let ann = |k: &str| obj.metadata.annotations.as_ref().and_then(|a| a.get(k)).map(String::as_str);
    obj.metadata.deletion_timestamp.is_none()
        && ann(INSTANCE_ANNOTATION) == Some(instance)
        && obj.type_.as_deref() == Some("Opaque")
        && ann(VERSION_ANNOTATION) == Some(version.to_string().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()
    }

    #[test]
    fn the_digest_tells_data_apart_and_empty_equals_none() {
        assert_eq!(digest(None), digest(Some(&bs(&[]))));
        assert_ne!(digest(Some(&bs(&[("ab", "c")]))), digest(Some(&bs(&[("a", "bc")]))));
        assert_ne!(digest(Some(&bs(&[("a", "1")]))), digest(Some(&bs(&[("a", "2")]))));
        assert_eq!(digest(Some(&bs(&[("a", "1"), ("b", "2")]))), digest(Some(&bs(&[("b", "2"), ("a", "1")]))));
    }
}
