//! `aegis-bench policy`: what a decision costs with N policies, in process
//! (the index the Safe uses, on the request's path), and `--write-file` for a
//! Safe started with N policies (the side-by-side fetch run of
//! `scripts/bench-policies.sh`).
//!
//! The N policies look like an installation's: one per workload (its ID below
//! its workload path, a few secrets by name and by prefix), one in a thousand
//! domain-wide over a team's prefix, one in ten a deny; the decisions asked are those of
//! workloads reading, which walk every bucket their ID falls in.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aegis::exit::{CliError, FAILURE};
use aegis_core::policy::{Action, Builtins, Effect, Policy, PolicyDoc, PolicySet, Subject, Target};
use aegis_core::roles::{Role, RoleRules};
use aegis_core::{SecretName, SpiffeId};
use serde::Serialize;

/// `aegis-bench policy`.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Number of policies.
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    /// Decisions to time.
    #[arg(long, default_value_t = 2_000_000)]
    decisions: usize,
    /// Write the policies as a policy file here (for `aegis dev --policy-file`) instead of timing.
    #[arg(long)]
    write_file: Option<PathBuf>,
}

/// The report.
#[derive(Serialize)]
pub struct PolicyReport {
    policies: usize,
    decisions: usize,
    allowed: usize,
    ns_per_decision: f64,
    build_ms: f64,
}

fn doc(i: usize) -> PolicyDoc {
    let team = i % 100;
    let (spiffe_ids, secrets, effect) = if i % 1000 == 0 {
        // A domain-wide policy: every workload reads its team's prefix.
        (vec!["spiffe://vsecm.com/workload/*".to_owned()], vec![format!("team-{team}-*")], Effect::Allow)
    } else if i % 10 == 9 {
        // A deny on one secret.
        (vec![format!("spiffe://vsecm.com/workload/w{i}/*")], vec![format!("w{i}-root")], Effect::Deny)
    } else {
        (
            vec![format!("spiffe://vsecm.com/workload/w{i}/*")],
            vec![format!("w{i}"), format!("shared-{team}-*"), format!("k8s:w{i}")],
            Effect::Allow,
        )
    };
    PolicyDoc {
        name: format!("p{i:06}"),
        effect,
        spiffe_ids,
        secrets,
        actions: vec!["read".to_owned(), "list".to_owned()],
        rate: None,
        description: String::new(),
    }
}

fn docs(n: usize) -> Vec<PolicyDoc> {
    (0..n).map(doc).collect()
}

/// Runs the benchmark (or writes the file).
pub fn run(a: PolicyArgs) -> Result<(), CliError> {
    let docs = docs(a.policies);
    if let Some(path) = &a.write_file {
        let text = serde_json::to_vec(&docs).map_err(CliError::failure)?;
        return std::fs::write(path, text)
            .map_err(|e| CliError::new(FAILURE, format!("cannot write {}: {e}", path.display())));
    }
    let t = Instant::now();
    let policies = docs
        .iter()
        .map(|d| Policy::from_doc(d).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::failure)?;
    let set = PolicySet::new(policies, Builtins::default());
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let rules = RoleRules::vsecm_defaults();
    // The callers: workloads across the policies, each reading its own secret, a shared one, another's.
    let callers: Vec<(SpiffeId, Role, Vec<SecretName>)> = (0..1000usize)
        .map(|k| {
            let i = (k * 7919) % a.policies.max(1);
            let id = SpiffeId::parse(&format!("spiffe://vsecm.com/workload/w{i}/ns/team-{}/sa/w{i}/n/w{i}-0", i % 100))
                .map_err(CliError::failure)?;
            let role = rules.classify(&id);
            let names = [format!("w{i}"), format!("shared-{}-db", i % 100), format!("w{}", i + 1)]
                .iter()
                .map(|n| SecretName::parse(n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(CliError::failure)?;
            Ok((id, role, names))
        })
        .collect::<Result<_, CliError>>()?;
    let mut allowed = 0;
    let t = Instant::now();
    for k in 0..a.decisions {
        let (id, role, names) = &callers[k % callers.len()];
        let name = &names[k % names.len()];
        let d = set.decide(Subject { id, role }, black_box(Action::Read), Target::Secret(name));
        allowed += usize::from(d.allowed);
    }
    let elapsed = t.elapsed();
    let report = PolicyReport {
        policies: a.policies,
        decisions: a.decisions,
        allowed,
        ns_per_decision: elapsed.as_nanos() as f64 / a.decisions.max(1) as f64,
        build_ms,
    };
    println!("{}", serde_json::to_string_pretty(&report).map_err(CliError::failure)?);
    Ok(())
}
