//! Wire types of both HTTP APIs, shared by the Safe and its clients.
//!
//! Types that carry a secret hold it in [`SecretValue`], so `{:?}` never shows it.

use serde::{Deserialize, Serialize};

use crate::secret::SecretValue;

mod values;
pub use values::{Algorithm, KeystoneStatus, SyncState};

/// `GET /workload/v1/secrets` (VSecM): `created`/`updated` are RFC 3339 times
/// wrapped in literal double quotes, as VSecM's Go SDK expects.
#[derive(Debug, Serialize, Deserialize)]
pub struct VsecmFetch {
    /// What the workload sees.
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub data: SecretValue,
    /// `"\"<RFC3339>\""`.
    pub created: String,
    /// `"\"<RFC3339>\""`.
    pub updated: String,
}

/// `POST /sentinel/v1/secrets` (VSecM upsert or encrypt-only).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsecmUpsert {
    /// Target workloads (secret names); `null` with `encrypt` means encrypt-only.
    #[serde(default)]
    pub workloads: Option<Vec<String>>,
    /// Kubernetes namespaces; empty means `["default"]`.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// The value (or a `safe -e` ciphertext when `encrypt` and workloads are set).
    #[serde(serialize_with = "crate::secret::reveal::value", default)]
    pub value: SecretValue,
    /// Go template, empty for none.
    #[serde(default)]
    pub template: String,
    /// `json`, `yaml` or `raw`.
    #[serde(default)]
    pub format: String,
    /// See the type docs.
    #[serde(default)]
    pub encrypt: bool,
    /// `now` or RFC 3339.
    #[serde(default)]
    pub not_before: String,
    /// `never` or RFC 3339.
    #[serde(default)]
    pub expires: String,
}

/// `DELETE /sentinel/v1/secrets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VsecmDelete {
    /// Secrets to delete.
    pub workloads: Vec<String>,
}

/// One row of `GET /sentinel/v1/secrets`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsecmListItem {
    /// Secret name.
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339 (`9999-12-31T23:59:59Z` for never).
    pub expires_after: String,
    /// With `reveal=true`: base64 age ciphertext of the raw value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `GET /sentinel/v1/secrets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VsecmList {
    /// The secrets.
    pub secrets: Vec<VsecmListItem>,
    /// With `reveal=true`: `age`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
}

/// `POST /sentinel/v1/keys`: the root key in three parts.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VsecmKeys {
    /// `AGE-SECRET-KEY-1…`.
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub age_secret_key: SecretValue,
    /// `age1…`.
    pub age_public_key: String,
    /// 64 hex characters.
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub aes_cipher_key: SecretValue,
}

/// `GET /sentinel/v1/keystone`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Keystone {
    /// `ready` or `pending`.
    pub status: KeystoneStatus,
}

/// `PUT /v1/secrets/{name}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The raw value.
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub value: SecretValue,
    /// Kubernetes namespaces (default `["default"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Go template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `json` (default), `yaml` or `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `now` (default) or RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// `never` (default) or RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after: Option<String>,
    /// Check-and-set: the version expected to be current (0: must not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cas: Option<u64>,
    /// For imports (RFC 3339): the secret's creation time, kept when this write creates the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// For imports (RFC 3339): the time of this version and the secret's last update, instead of now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

impl PutSecret {
    /// A write of `value` with every option at its default.
    pub fn new(value: SecretValue) -> Self {
        Self {
            value,
            namespaces: None,
            template: None,
            format: None,
            not_before: None,
            expires_after: None,
            cas: None,
            created: None,
            updated: None,
        }
    }
}

/// A secret's metadata (no value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    /// Name.
    pub name: String,
    /// Current version number.
    pub version: u64,
    /// Changes so far (increases on every change).
    pub revision: u64,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
    /// RFC 3339 time of the soft delete, if deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    /// Namespaces of the current version.
    pub namespaces: Vec<String>,
    /// Template of the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Format of the current version.
    pub format: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub expires_after: String,
    /// Versions kept.
    pub versions_kept: usize,
    /// For a `k8s:` secret when the Safe keeps Kubernetes Secrets: how far
    /// Kubernetes has caught up with this secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeSync>,
    /// Set when the secret is replicated from another Safe (read-only here):
    /// that Safe's SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicated_from: Option<String>,
}

/// Where a `k8s:` secret stands in Kubernetes (see docs/KUBERNETES.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeSync {
    /// `synced` (every Kubernetes copy matches the secret), `pending` (not
    /// yet; retried), `error` (retried; the reason says what to fix) or
    /// `conflict` (a Secret Aegis does not manage is in the way).
    pub state: SyncState,
    /// The secret's version the Kubernetes Secrets hold, once synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_version: Option<u64>,
    /// Why it is not synced (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Totals of [`KubeSync`] states over all `k8s:` secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeSyncSummary {
    /// Secrets whose Kubernetes copies match.
    pub synced: usize,
    /// Secrets waiting to be written to Kubernetes (including those retried
    /// after the API server could not be reached).
    pub pending: usize,
    /// Secrets that failed for a reason an admin must fix (e.g. a permission).
    pub errors: usize,
    /// Secrets blocked by a Kubernetes Secret that Aegis does not manage.
    pub conflicts: usize,
    /// How long the oldest unsynced change has waited, in milliseconds.
    pub oldest_pending_ms: u64,
}

impl KubeSyncSummary {
    /// The secrets in `state`.
    pub fn count(&self, state: SyncState) -> usize {
        match state {
            SyncState::Synced => self.synced,
            SyncState::Pending => self.pending,
            SyncState::Error => self.errors,
            SyncState::Conflict => self.conflicts,
        }
    }

    /// Counts one more secret in `state`.
    pub fn add(&mut self, state: SyncState) {
        let n = match state {
            SyncState::Synced => &mut self.synced,
            SyncState::Pending => &mut self.pending,
            SyncState::Error => &mut self.errors,
            SyncState::Conflict => &mut self.conflicts,
        };
        *n += 1;
    }
}

/// `GET /v1/secrets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretList {
    /// All secrets, by name.
    pub secrets: Vec<SecretInfo>,
}

/// `GET /v1/secrets/{name}`: one version with its raw value.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretRead {
    /// Metadata of the secret.
    #[serde(flatten)]
    pub info: SecretInfo,
    /// The version returned.
    pub read_version: u64,
    /// Its raw value.
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub value: SecretValue,
    /// What the workload receives (current version only).
    #[serde(serialize_with = "crate::secret::reveal::option", default, skip_serializing_if = "Option::is_none")]
    pub data: Option<SecretValue>,
}

/// One row of a secret's history.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// RFC 3339.
    pub created: String,
    /// Whether its value was destroyed.
    pub destroyed: bool,
    /// Whether it is the current version.
    pub current: bool,
}

/// `GET /v1/secrets/{name}/versions`.
#[derive(Debug, Serialize, Deserialize)]
pub struct History {
    /// Secret name.
    pub name: String,
    /// Oldest first.
    pub versions: Vec<VersionInfo>,
}

/// `POST /v1/secrets/{name}/rollback`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version to make current again (from 1).
    pub version: crate::secret::VersionNumber,
}

/// `GET /v1/workload/secret`: the caller's own secret.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkloadSecret {
    /// Secret name.
    pub name: String,
    /// Current version.
    pub version: u64,
    /// Revision (changes on every write, delete, undelete).
    pub revision: u64,
    /// What the workload sees.
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub data: SecretValue,
    /// RFC 3339.
    pub updated: String,
}

/// `GET /v1/audit`: the newest lines of the audit trail (value-free JSON objects).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditLines {
    /// The lines, oldest first.
    pub lines: Vec<serde_json::Value>,
}

/// One policy as `GET /v1/policies[/{name}]` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The policy's document.
    pub policy: crate::policy::PolicyDoc,
    /// `stored` (managed over the API), `file` (the policy file) or `deleted` (the answer of a delete).
    pub source: String,
    /// The stored record's version (stored policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// When it was last written, RFC 3339 (stored policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// `GET /v1/policies`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyList {
    /// The policies in force, by name.
    pub policies: Vec<PolicyInfo>,
    /// The built-in policies that are on.
    pub builtins: Vec<String>,
}

/// `POST /v1/explain`: what the policies decide for this request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explain {
    /// The caller's SPIFFE ID.
    pub spiffe_id: String,
    /// The secret (omitted or `*`: the Safe as a whole, for `admin` and `audit`).
    #[serde(default)]
    pub secret: Option<String>,
    /// The action.
    pub action: String,
}

/// The answer of `POST /v1/explain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explained {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// The name of the policy that decided (`default-deny` when none allowed it).
    pub decided_by: String,
    /// The same, in words.
    pub reason: String,
}

/// `GET /v1/workload/watch?revision=N`: answers as soon as the caller's
/// secret is at another revision than `N`, or when the wait ends.
#[derive(Debug, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The secret's current revision (0 if it never existed).
    pub revision: u64,
    /// The secret as the workload sees it; `None` if it does not exist, is
    /// deleted, or is outside its validity window.
    pub secret: Option<WorkloadSecret>,
}

/// `POST /v1/encrypt`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// The value to encrypt.
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub value: SecretValue,
}

/// The answer to `POST /v1/encrypt`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EncryptResponse {
    /// Base64 age ciphertext, the format of VSecM's `safe -e`.
    pub ciphertext: String,
}

/// `POST /v1/unseal`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unseal {
    /// The root key text (three lines).
    #[serde(serialize_with = "crate::secret::reveal::value")]
    pub root_key: SecretValue,
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// Whether the Safe waits for its root key.
    pub sealed: bool,
    /// Secrets held.
    pub secrets: usize,
    /// Id of the root key in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Aegis version.
    pub version: String,
    /// Kubernetes Secret sync of `k8s:` secrets, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeSyncSummary>,
    /// The foreign trust domains whose clients are accepted (see docs/FEDERATION.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federated_domains: Vec<String>,
    /// Replication links, when any is configured (see docs/REPLICATION.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
}

/// `GET /v1/replication/changes`: one page of a source Safe's changes, in
/// the order of their change numbers. Values travel in plaintext inside the
/// mTLS connection only; the replica seals them under its own root key.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicationPage {
    /// The source Safe's SPIFFE ID.
    pub source: String,
    /// The source's latest change number when the page was made.
    pub head: u64,
    /// Fingerprint of what the source replicates (its name patterns).
    pub selection: u64,
    /// The changes start a snapshot: the replica's state could not be
    /// continued (first link, another selection, or a source whose history
    /// restarted), so every replicated secret is sent again, and the replica
    /// drops the ones the snapshot does not hold once it is complete.
    pub snapshot: bool,
    /// More changes are ready: ask again at once.
    pub more: bool,
    /// Where to ask from next (the change number)…
    pub next_seq: u64,
    /// …and its secret (absent: from the start). Past the secrets looked at
    /// and not replicated, so a replica's next request does not look at them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_name: Option<String>,
    /// The changes (whole secrets with their versions).
    pub changes: Vec<ReplicatedChange>,
}

/// One secret as its source holds it after its change number `seq`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicatedChange {
    /// The source's change number.
    pub seq: u64,
    /// The secret, values included.
    pub doc: crate::secret::SecretDoc,
    /// The secret's history was larger than one change may carry, so only its
    /// current version is sent (the replica holds no older versions of it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history_trimmed: bool,
    /// Even its current version is larger than one change may carry: `doc`
    /// holds no versions, and the replica does not apply it (its status lists it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub omitted: bool,
}

/// `GET /v1/replication`: this Safe's replication links.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// This Safe's latest change number.
    pub head: u64,
    /// The replicas this Safe sends to (as a source).
    #[serde(default)]
    pub replicas: Vec<ReplicaLink>,
    /// The sources this Safe replicates from (as a replica).
    #[serde(default)]
    pub sources: Vec<SourceLink>,
}

/// A replica, as its source sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaLink {
    /// The replica Safe's SPIFFE ID (the only one allowed to ask).
    pub spiffe_id: String,
    /// The secret name patterns replicated.
    pub patterns: Vec<String>,
    /// `up` while it asks at least every few seconds, `down` otherwise, `never` before its first request.
    pub state: String,
    /// The last change number it confirmed holding (what it asked after).
    pub confirmed: u64,
    /// Its last request (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Changes sent to it since this Safe started.
    pub sent: u64,
}

/// A source, as its replica sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceLink {
    /// The source Safe's SPIFFE ID (the only one accepted at that URL).
    pub spiffe_id: String,
    /// Its URL.
    pub url: String,
    /// `up` (caught up or catching up), `snapshot` (a snapshot is being
    /// applied), `down` (the last attempt failed; `error` says why) or `connecting`.
    pub state: String,
    /// Whether the link has been down longer than the alert threshold.
    pub alert: bool,
    /// The source's change number of the last change applied here.
    pub applied: u64,
    /// The source's latest change number, as last heard.
    pub source_head: u64,
    /// Seconds since this Safe last held everything the source had: 0 when caught up.
    pub lag_seconds: f64,
    /// The last answer from the source (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<String>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Changes applied since this Safe started.
    pub changes_applied: u64,
    /// Secrets not replicated because a local secret of the same name is in the way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// Secrets not replicated because even their current version is larger than one change may carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub too_large: Vec<String>,
}

/// `POST /v1/admin/rotate-root-key`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Rotated {
    /// Id of the new root key.
    pub key_id: String,
    /// Records re-sealed.
    pub records: usize,
}

/// The body of `POST /v1/admin/backup` (optional).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// Age recipients (`age1…`) the backup is also encrypted to, so that it
    /// can be restored without the root key.
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// What a backup file holds, as checked (`POST /v1/admin/backup/verify`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupChecked {
    /// When its snapshot was taken (RFC 3339).
    pub taken_at: String,
    /// The Safe's commit it goes up to (counted since that Safe started).
    pub commit: u64,
    /// Secrets in it.
    pub secrets: u64,
    /// Versions those hold together.
    pub versions: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// `POST /v1/admin/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreDone {
    /// The backup restored.
    pub backup: BackupChecked,
    /// Secrets written.
    pub restored: usize,
    /// Of those, how many replaced a secret of the same name.
    pub replaced: usize,
    /// Secrets the Safe held that the backup does not (kept as they were).
    pub kept: usize,
}

/// Every error answer of the Safe.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_secret_carriers_shows_no_value() {
        let up: VsecmUpsert = serde_json::from_str(r#"{"workloads":null,"value":"TOPSECRET","encrypt":true}"#).unwrap();
        let keys: VsecmKeys =
            serde_json::from_str(r#"{"ageSecretKey":"TOPSECRET","agePublicKey":"age1x","aesCipherKey":"TOPSECRET"}"#)
                .unwrap();
        for s in [format!("{up:?}"), format!("{keys:?}")] {
            assert!(!s.contains("TOPSECRET"), "{s}");
        }
        assert!(up.workloads.is_none() && up.encrypt);
    }
}
