//! The authenticated caller.

use aegis_core::policy::Subject;
use aegis_core::roles::Role;
use aegis_core::{SpiffeId, WorkloadName};

use crate::error::ApiError;

/// Who is calling: set once per TLS connection from the verified client
/// certificate. What it may do is decided per request by the policies in
/// force (`crate::policy::allow`), so a policy change reaches kept-alive connections.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The peer's SPIFFE ID.
    pub id: SpiffeId,
    /// Its role under the configured rules (what the built-in policies speak of).
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

    /// The caller as the policies see it.
    pub fn subject(&self) -> Subject<'_> {
        Subject { id: &self.id, role: &self.role }
    }

    /// The workload name in the caller's SPIFFE ID, for the routes that serve
    /// a workload its own secret (which secret that is depends on it).
    pub fn require_workload(&self) -> Result<&WorkloadName, ApiError> {
        match &self.role {
            Role::Workload(name) => Ok(name),
            _ => Err(ApiError::forbidden(format!(
                "{} is not a workload; workload SPIFFE IDs must match VSECM_SPIFFEID_PREFIX_WORKLOAD and VSECM_WORKLOAD_NAME_REGEXP \
                 (other callers read a secret by name: GET /v1/workload/secrets/{{name}}, allowed by a policy)",
                self.id
            ))),
        }
    }
}
