//! What the Kubernetes Secrets of one Aegis secret must be, and whose a
//! Secret is: pure decisions shared by the requests (`ops.rs`) and the drift
//! watcher (`watch.rs`), which import this module and never each other's
//! decisions.

use std::collections::BTreeSet;

use aegis_core::SecretName;
use aegis_store::Entry;
use k8s_openapi::api::core::v1::Secret;

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
    /// Live, but its data cannot be a Secret.
    Invalid(DataError),
}

impl Desired {
    /// What `entry` (the store's, if any) must look like in Kubernetes.
    pub(super) fn of(ctx: &Ctx, entry: Option<&Entry>) -> Desired {
        let Some((v, value)) = entry.and_then(|e| e.doc.live()) else { return Desired::Absent };
        match secret_data(value, &v.meta, &ctx.cfg.template_budget) {
            Ok(data) => {
                Desired::Present { version: v.number, namespaces: v.meta.namespaces.iter().cloned().collect(), data }
            }
            Err(e) => Desired::Invalid(e),
        }
    }
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

/// Whether `obj` already is what `desired` asks for, annotated with this `instance`.
pub(super) fn matches(obj: &Secret, instance: &str, version: u64, data: &SecretData) -> bool {
    let ann = |k: &str| obj.metadata.annotations.as_ref().and_then(|a| a.get(k)).map(String::as_str);
    obj.metadata.deletion_timestamp.is_none()
        && ann(INSTANCE_ANNOTATION) == Some(instance)
        && obj.type_.as_deref() == Some("Opaque")
        && ann(VERSION_ANNOTATION) == Some(version.to_string().as_str())
        && obj.data.as_ref().map_or(data.0.is_empty(), |d| *d == data.0)
}
