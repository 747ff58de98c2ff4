//! Admin (Sentinel) calls: both the native API and VSecM's.

use aegis_core::api::{
    EncryptRequest, EncryptResponse, Explain, Explained, History, Keystone, PolicyInfo, PolicyList, PutSecret,
    Rollback, Rotated, SecretInfo, SecretList, SecretRead, Status, Unseal, VsecmDelete, VsecmKeys, VsecmList,
    VsecmUpsert,
};
use aegis_core::policy::PolicyDoc;
use aegis_core::secret::{SecretValue, VersionNumber};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;

use crate::{Client, ClientError};

/// What a path segment keeps as it is: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a secret name as one path segment (the Safe decodes it once).
pub(crate) fn seg(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

const NONE: Option<&()> = None;

impl Client {
    /// Writes a new version.
    pub async fn put(&self, name: &str, req: &PutSecret) -> Result<SecretInfo, ClientError> {
        self.call(Method::PUT, &format!("/v1/secrets/{}", seg(name)), Some(req)).await
    }

    /// Reads the latest or a given version.
    pub async fn get(&self, name: &str, version: Option<VersionNumber>) -> Result<SecretRead, ClientError> {
        let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
        self.call(Method::GET, &format!("/v1/secrets/{}{q}", seg(name)), NONE).await
    }

    /// Lists secrets (with soft-deleted ones if asked).
    pub async fn list(&self, deleted: bool) -> Result<SecretList, ClientError> {
        self.call(Method::GET, &format!("/v1/secrets?deleted={deleted}"), NONE).await
    }

    /// Soft-deletes.
    pub async fn delete(&self, name: &str) -> Result<SecretInfo, ClientError> {
        self.call(Method::DELETE, &format!("/v1/secrets/{}", seg(name)), NONE).await
    }

    /// Undoes a soft delete.
    pub async fn undelete(&self, name: &str) -> Result<SecretInfo, ClientError> {
        self.call(Method::POST, &format!("/v1/secrets/{}/undelete", seg(name)), NONE).await
    }

    /// Destroys one version.
    pub async fn destroy(&self, name: &str, version: VersionNumber) -> Result<SecretInfo, ClientError> {
        self.call(Method::DELETE, &format!("/v1/secrets/{}/versions/{version}", seg(name)), NONE).await
    }

    /// Makes an earlier version current again.
    pub async fn rollback(&self, name: &str, version: VersionNumber) -> Result<SecretInfo, ClientError> {
        self.call(Method::POST, &format!("/v1/secrets/{}/rollback", seg(name)), Some(&Rollback { version })).await
    }

    /// Version history.
    pub async fn history(&self, name: &str) -> Result<History, ClientError> {
        self.call(Method::GET, &format!("/v1/secrets/{}/versions", seg(name)), NONE).await
    }

    /// The newest `lines` lines of the Safe's audit trail (needs `audit`), of one caller or secret if given.
    pub async fn audit_lines(
        &self,
        lines: usize,
        caller: Option<&str>,
        secret: Option<&str>,
    ) -> Result<aegis_core::api::AuditLines, ClientError> {
        let mut q = format!("/v1/audit?lines={lines}");
        if let Some(c) = caller {
            q.push_str(&format!("&caller={}", seg(c)));
        }
        if let Some(s) = secret {
            q.push_str(&format!("&secret={}", seg(s)));
        }
        self.call(Method::GET, &q, NONE).await
    }

    /// Every policy in force, and the built-ins that are on.
    pub async fn policies(&self) -> Result<PolicyList, ClientError> {
        self.call(Method::GET, "/v1/policies", NONE).await
    }

    /// One policy.
    pub async fn policy(&self, name: &str) -> Result<PolicyInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/policies/{}", seg(name)), NONE).await
    }

    /// Writes a policy (a new version), in force on the Safe before the answer.
    pub async fn put_policy(&self, doc: &PolicyDoc) -> Result<PolicyInfo, ClientError> {
        self.call(Method::PUT, &format!("/v1/policies/{}", seg(&doc.name)), Some(doc)).await
    }

    /// Deletes a policy (out of force before the answer; its versions are kept).
    pub async fn delete_policy(&self, name: &str) -> Result<PolicyInfo, ClientError> {
        self.call(Method::DELETE, &format!("/v1/policies/{}", seg(name)), NONE).await
    }

    /// What the policies in force decide for a SPIFFE ID, a secret (`None`: the Safe) and an action.
    pub async fn explain(&self, req: &Explain) -> Result<Explained, ClientError> {
        self.call(Method::POST, "/v1/explain", Some(req)).await
    }

    /// Encrypts a value for git.
    pub async fn encrypt(&self, value: SecretValue) -> Result<String, ClientError> {
        let r: EncryptResponse = self.call(Method::POST, "/v1/encrypt", Some(&EncryptRequest { value })).await?;
        Ok(r.ciphertext)
    }

    /// Unseals with the root key text.
    pub async fn unseal(&self, root_key: SecretValue) -> Result<Status, ClientError> {
        self.call(Method::POST, "/v1/unseal", Some(&Unseal { root_key })).await
    }

    /// Status of the Safe.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", NONE).await
    }

    /// Where each replication link stands (`GET /v1/replication`).
    pub async fn replication(&self) -> Result<aegis_core::api::ReplicationStatus, ClientError> {
        self.call(Method::GET, "/v1/replication", NONE).await
    }

    /// Rotates the root key.
    pub async fn rotate_root_key(&self) -> Result<Rotated, ClientError> {
        self.call(Method::POST, "/v1/admin/rotate-root-key", NONE).await
    }

    /// VSecM upsert (or encrypt-only): returns the body (`OK`… or the ciphertext).
    pub async fn vsecm_upsert(&self, req: &VsecmUpsert) -> Result<String, ClientError> {
        self.call_text(Method::POST, "/sentinel/v1/secrets", Some(req)).await
    }

    /// VSecM delete.
    pub async fn vsecm_delete(&self, workloads: Vec<String>) -> Result<String, ClientError> {
        self.call_text(Method::DELETE, "/sentinel/v1/secrets", Some(&VsecmDelete { workloads })).await
    }

    /// VSecM list, as VSecM's CLI asks for it (the query percent-encoded into the path).
    pub async fn vsecm_list(&self, reveal: bool) -> Result<VsecmList, ClientError> {
        let path = if reveal { "/sentinel/v1/secrets%3Freveal=true" } else { "/sentinel/v1/secrets" };
        self.call(Method::GET, path, NONE).await
    }

    /// VSecM root key input.
    pub async fn vsecm_keys(&self, keys: &VsecmKeys) -> Result<String, ClientError> {
        self.call_text(Method::POST, "/sentinel/v1/keys", Some(keys)).await
    }

    /// VSecM keystone status.
    pub async fn keystone(&self) -> Result<Keystone, ClientError> {
        self.call(Method::GET, "/sentinel/v1/keystone", NONE).await
    }

    /// VSecM workload fetch: the raw `data` string, or `None` on 404.
    pub async fn vsecm_fetch(&self) -> Result<Option<aegis_core::api::VsecmFetch>, ClientError> {
        match self.call(Method::GET, "/workload/v1/secrets", NONE).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::seg;

    #[test]
    fn names_become_one_segment() {
        for (name, want) in [
            ("billing", "billing"),
            ("k8s:db-credentials", "k8s%3Adb-credentials"),
            ("a.b_c-d~", "a.b_c-d~"),
            ("a?b", "a%3Fb"),
            ("a%41", "a%2541"),
            ("a/b", "a%2Fb"),
            (" billing", "%20billing"),
            ("caf\u{e9}", "caf%C3%A9"),
        ] {
            assert_eq!(seg(name), want, "{name}");
            let encoded = seg(name);
            let back = percent_encoding::percent_decode_str(&encoded).decode_utf8().unwrap();
            assert_eq!(back, name);
        }
    }
}
