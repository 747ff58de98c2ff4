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
    let Some(sync) = sync else { return Ok(()) };
    if name.kind() != SecretKind::Kubernetes {
        return Ok(());
    }
    sync.check_write(name, value, meta).await.map_err(ApiError::from)
}
