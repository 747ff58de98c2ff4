//! The write check of the secret sync port ([`aegis_store::SecretSync`]).

use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::{SecretKind, SecretName};
use aegis_store::SecretSync;

use crate::error::ApiError;

/// Asks `sync` whether a write of `name` may be stored; only `k8s:` secrets are checked.
pub(crate) async fn check(
    sync: Option<&dyn SecretSync>,
    name: &SecretName,
    value: &SecretValue,
    meta: &SecretMeta,
) -> Result<(), ApiError> {
    if name.kind() != SecretKind::Kubernetes {
        return Ok(());
    }
    // Stored but never synced would be a silent trap: the workload waits for a
    // Kubernetes Secret that never comes. The binary plugs in a stand-in that
    // says why; this is the answer of a Safe built without one.
    let Some(sync) = sync else {
        return Err(ApiError::conflict(format!(
                "{name} is not stored: this Safe keeps no Kubernetes Secrets, so its Kubernetes Secret would never \
                 be written; give the Safe a Kubernetes API with the sync on, or store the secret without the k8s: prefix"
        )));
    };
    sync.check_write(name, value, meta).await.map_err(ApiError::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn without_a_sync_k8s_writes_are_refused_and_others_pass() {
        let (value, meta) = (SecretValue::new("v"), SecretMeta::defaults(time::OffsetDateTime::UNIX_EPOCH));
        let plain = SecretName::parse("db").unwrap();
        assert!(check(None, &plain, &value, &meta).await.is_ok());
        let k8s = SecretName::parse("k8s:db").unwrap();
        let e = check(None, &k8s, &value, &meta).await.err().unwrap();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.message().contains("k8s:db is not stored") && e.message().contains("k8s: prefix"), "{}", e.message());
    }

    #[test]
    fn each_refusal_gets_its_status_and_says_nothing_was_stored() {
        use aegis_store::Refusal;
        let secret = SecretName::parse("k8s:db").unwrap();
        let cases = [
            (Refusal::InTheWay(vec!["'a/db' is in the way".into(), "'b/db' too".into()]), StatusCode::CONFLICT),
            (Refusal::Unconvertible { secret: secret.clone(), why: "not an object".into() }, StatusCode::CONFLICT),
            (Refusal::TooManyNamespaces { secret, named: 3, total: 9, max: 8 }, StatusCode::BAD_REQUEST),
        ];
        for (refusal, status) in cases {
            let text = refusal.to_string();
            assert!(text.ends_with("nothing was stored"), "{text}");
            assert_eq!(ApiError::from(refusal).status(), status, "{text}");
        }
        assert_eq!(ApiError::from(Refusal::CheckFailed).status(), StatusCode::CONFLICT);
        let two = Refusal::InTheWay(vec!["one".into(), "two".into()]).to_string();
        assert_eq!(two, "one; two; nothing was stored");
    }
}
