//! The policy flags of `aegis server` and `aegis dev`: which built-in policies
//! are on, the policy file an install starts with, and the per-identity
//! request rate (see docs/POLICIES.md).

use std::path::PathBuf;
use std::sync::Arc;

use aegis_core::policy::{Builtins, Policy, PolicyDoc, Rate, MAX_POLICIES};
use aegis_server::policy::PolicySettings;
use clap::Args;

use crate::exit::{CliError, CONFIG};

/// The largest policy file read, in bytes.
pub const MAX_POLICY_FILE_BYTES: u64 = 16 << 20;

/// Policy flags.
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Built-in policies that are on: `workload` (a workload reads the secret named after
    /// it), `sentinel` (the Sentinel writes, lists, administers and reads the audit trail),
    /// both (the default, VSecM's rules) or `none`.
    #[arg(long, env = "AEGIS_BUILTIN_POLICIES", default_value = "workload,sentinel")]
    pub builtin_policies: String,
    /// A JSON file of policies the Safe starts with (a list of policy documents, or
    /// {"policies": [...]}); they cannot be changed over the API. Empty: none.
    #[arg(long, env = "AEGIS_POLICY_FILE")]
    pub policy_file: Option<String>,
    /// Requests per second each SPIFFE ID may make on average (0: no limit unless a policy
    /// sets one); past it, 429 with Retry-After.
    #[arg(long, env = "AEGIS_RATE_PER_IDENTITY", default_value_t = 0.0)]
    pub rate_per_identity: f64,
    /// Requests a SPIFFE ID may make at once after a quiet spell (with --rate-per-identity).
    #[arg(long, env = "AEGIS_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum PolicyFile {
    List(Vec<PolicyDoc>),
    Wrapped { policies: Vec<PolicyDoc> },
}

impl PolicyArgs {
    fn builtins(&self) -> Result<Builtins, CliError> {
        let mut b = Builtins { workload: false, sentinel: false };
        for item in self.builtin_policies.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "workload" => b.workload = true,
                "sentinel" => b.sentinel = true,
                "none" => {}
                other => {
                    return Err(CliError::new(
                        CONFIG,
                        format!(
                            "AEGIS_BUILTIN_POLICIES: '{}' is not a built-in policy; give workload, sentinel, both \
                             (workload,sentinel) or none",
                            other.escape_debug()
                        ),
                    ))
                }
            }
        }
        Ok(b)
    }

    fn file_policies(&self) -> Result<Vec<Arc<Policy>>, CliError> {
        let Some(path) = self.policy_file.as_deref().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Ok(Vec::new());
        };
        let path = &path;
        let shown = path.display();
        let bad = |why: String| CliError::new(CONFIG, format!("AEGIS_POLICY_FILE {shown}: {why}"));
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        if meta.len() > MAX_POLICY_FILE_BYTES {
            return Err(bad(format!("is larger than {MAX_POLICY_FILE_BYTES} bytes")));
        }
        let text = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let docs = match serde_json::from_slice::<PolicyFile>(&text) {
            Ok(PolicyFile::List(d) | PolicyFile::Wrapped { policies: d }) => d,
            Err(_) => {
                // Say what is wrong with the first document that does not parse.
                let e =
                    serde_json::from_slice::<Vec<PolicyDoc>>(&text).err().map_or_else(String::new, |e| e.to_string());
                return Err(bad(format!("is not a JSON list of policies (or {{\"policies\": [...]}}): {e}")));
            }
        };
        if docs.len() > MAX_POLICIES {
            return Err(bad(format!("holds {} policies; the limit is {MAX_POLICIES}", docs.len())));
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let p =
                Policy::from_doc(d).map_err(|e| bad(format!("policy {} (#{}): {e}", d.name.escape_debug(), i + 1)))?;
            if !seen.insert(p.name.clone()) {
                return Err(bad(format!("names policy '{}' twice", p.name)));
            }
            out.push(Arc::new(p));
        }
        Ok(out)
    }

    /// The global per-identity rate, if one is set.
    pub fn rate(&self) -> Result<Option<Rate>, CliError> {
        if self.rate_per_identity == 0.0 {
            return Ok(None);
        }
        Rate { per_second: self.rate_per_identity, burst: self.rate_burst }
            .check("AEGIS_RATE_PER_IDENTITY / AEGIS_RATE_BURST")
            .map(Some)
            .map_err(|e| CliError::new(CONFIG, e.to_string()))
    }

    /// The Safe's policy settings; a bad file or value stops the start, naming it.
    pub fn settings(&self) -> Result<PolicySettings, CliError> {
        Ok(PolicySettings { builtins: self.builtins()?, from_file: self.file_policies()?, rate: self.rate()? })
    }
}
