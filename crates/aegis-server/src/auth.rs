//! The authenticated caller and the role checks.

use aegis_core::roles::Role;
use aegis_core::{SpiffeId, WorkloadName};

use crate::error::ApiError;

/// Who is calling: set once per TLS connection from the verified client certificate.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The peer's SPIFFE ID.
    pub id: SpiffeId,
    /// Its role under the configured rules.
    pub role: Role,
    /// The SPIFFE ID as the audit trail names the caller, made once per connection.
    pub audit_name: std::sync::Arc<str>,
}

impl Caller {
    /// The caller `id` with `role`.
    pub fn new(id: SpiffeId, role: Role) -> Self {
        let audit_name = std::sync::Arc::from(id.as_str());
        Self { id, role, audit_name }
    }

    /// Only the Sentinel may write, list and delete.
    pub fn require_sentinel(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Sentinel => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "{} is not the Sentinel; only SPIFFE IDs matching VSECM_SPIFFEID_PREFIX_SENTINEL may do this",
                self.id
            ))),
        }
    }

    /// A workload reads only its own secret.
    pub fn require_workload(&self) -> Result<&WorkloadName, ApiError> {
        match &self.role {
            Role::Workload(name) => Ok(name),
            _ => Err(ApiError::forbidden(format!(
                "{} is not a workload; workload SPIFFE IDs must match VSECM_SPIFFEID_PREFIX_WORKLOAD and VSECM_WORKLOAD_NAME_REGEXP",
                self.id
            ))),
        }
    }
}
