//! `aegis policy put|get|list|delete|explain`: who may do what (see docs/POLICIES.md).

use std::path::PathBuf;

use aegis_core::api::{Explain, PolicyInfo};
use aegis_core::policy::{Effect, Policy, PolicyDoc, Rate};
use clap::{Args, Subcommand};

use crate::connect::client;
use crate::exit::{CliError, USAGE};
use crate::output::{print_json, printable, Out, Output};

/// `aegis policy`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Write a policy (a new version; in force on the Safe before the command returns).
    Put(PutArgs),
    /// Show one policy.
    Get(NameOut),
    /// List the policies in force and the built-in policies that are on.
    List(Out),
    /// Delete a policy (out of force before the command returns; its versions are kept).
    Delete(NameOut),
    /// Say whether a SPIFFE ID may do an action on a secret, and which policy decides.
    Explain(ExplainArgs),
}

/// Arguments of `aegis policy put`.
#[derive(Args, Debug)]
struct PutArgs {
    /// The policy's name (ASCII letters, digits, '.', '-' and '_'); with --file, the name in the file.
    name: Option<String>,
    /// A JSON policy document (name, effect, spiffe_ids, secrets, actions, rate, description);
    /// `-` reads standard input.
    #[arg(long, conflicts_with_all = ["spiffe_ids", "secrets", "allow", "deny"])]
    file: Option<PathBuf>,
    /// A SPIFFE ID pattern: an exact ID, or a path followed by /* (repeatable).
    #[arg(long = "spiffe-id")]
    spiffe_ids: Vec<String>,
    /// A secret name pattern: an exact name, a start followed by *, or * (repeatable).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Actions allowed, comma-separated: read, list, write, reveal, admin, audit.
    #[arg(long, value_delimiter = ',', conflicts_with = "deny")]
    allow: Vec<String>,
    /// Actions denied (an explicit deny wins over any allow), comma-separated.
    #[arg(long, value_delimiter = ',')]
    deny: Vec<String>,
    /// Requests per second each matching SPIFFE ID may make on average.
    #[arg(long, requires = "burst")]
    rate: Option<f64>,
    /// Requests a matching SPIFFE ID may make at once (with --rate).
    #[arg(long, requires = "rate")]
    burst: Option<u32>,
    /// What the policy is for.
    #[arg(long, default_value = "")]
    description: String,
    #[command(flatten)]
    out: Out,
}

/// A policy name and the output flag.
#[derive(Args, Debug)]
struct NameOut {
    /// The policy's name.
    name: String,
    #[command(flatten)]
    out: Out,
}

/// Arguments of `aegis policy explain`.
#[derive(Args, Debug)]
struct ExplainArgs {
    /// The caller's SPIFFE ID.
    #[arg(long)]
    spiffe_id: String,
    /// The secret (omit for `admin` and `audit`, which speak of the Safe as a whole).
    #[arg(long)]
    secret: Option<String>,
    /// The action: read, list, write, reveal, admin or audit.
    #[arg(long)]
    action: String,
    #[command(flatten)]
    out: Out,
}

/// Runs `aegis policy …`.
pub async fn run(a: PolicyArgs) -> Result<(), CliError> {
    match a.cmd {
        PolicyCmd::Put(p) => put(p).await,
        PolicyCmd::Get(n) => {
            let info = client().await?.policy(&n.name).await?;
            show(&info, n.out.output)
        }
        PolicyCmd::List(out) => {
            let list = client().await?.policies().await?;
            if out.output == Output::Json {
                return print_json(&list);
            }
            for p in &list.policies {
                let d = &p.policy;
                let effect = if d.effect == Effect::Deny { "deny" } else { "allow" };
                println!(
                    "{}\t{effect} {}\tids {}\tsecrets {}\t({})",
                    printable(&d.name),
                    d.actions.join(","),
                    printable(&d.spiffe_ids.join(",")),
                    printable(&d.secrets.join(",")),
                    p.source
                );
            }
            for b in &list.builtins {
                println!("{b}\t(built in)");
            }
            Ok(())
        }
        PolicyCmd::Delete(n) => {
            let info = client().await?.delete_policy(&n.name).await?;
            if n.out.output == Output::Json {
                return print_json(&info);
            }
            println!("deleted policy {} (version {} kept)", printable(&n.name), info.version.unwrap_or_default());
            Ok(())
        }
        PolicyCmd::Explain(e) => {
            let req = Explain { spiffe_id: e.spiffe_id, secret: e.secret, action: e.action };
            let d = client().await?.explain(&req).await?;
            if e.out.output == Output::Json {
                return print_json(&d);
            }
            println!("{}: {}", if d.allowed { "allowed" } else { "denied" }, d.reason);
            Ok(())
        }
    }
}

fn show(info: &PolicyInfo, output: Output) -> Result<(), CliError> {
    if output == Output::Json {
        return print_json(info);
    }
    print_json(&info.policy)?;
    if let Some(v) = info.version {
        println!("# version {v}, {}, {}", info.updated.as_deref().unwrap_or(""), info.source);
    } else {
        println!("# {}", info.source);
    }
    Ok(())
}

fn doc(p: &PutArgs) -> Result<PolicyDoc, CliError> {
    let usage = |why: String| CliError::new(USAGE, why);
    if let Some(path) = &p.file {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| usage(format!("cannot read the policy from standard input: {e}")))?;
            s
        } else {
            std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?
        };
        let d: PolicyDoc = serde_json::from_str(&text)
            .map_err(|e| usage(format!("{} is not a policy document: {e}", path.display())))?;
        if let Some(n) = p.name.as_ref().filter(|n| **n != d.name) {
            return Err(usage(format!("the file names policy '{}', not '{n}'", d.name.escape_debug())));
        }
        return Ok(d);
    }
    let name = p.name.clone().ok_or_else(|| usage("give the policy's name, or --file".to_owned()))?;
    let (effect, actions) = match (p.allow.is_empty(), p.deny.is_empty()) {
        (false, true) => (Effect::Allow, p.allow.clone()),
        (true, false) => (Effect::Deny, p.deny.clone()),
        _ => return Err(usage("give the actions with --allow or with --deny".to_owned())),
    };
    let rate = p.rate.zip(p.burst).map(|(per_second, burst)| Rate { per_second, burst });
    Ok(PolicyDoc {
        name,
        effect,
        spiffe_ids: p.spiffe_ids.clone(),
        secrets: p.secrets.clone(),
        actions,
        rate,
        description: p.description.clone(),
    })
}

async fn put(p: PutArgs) -> Result<(), CliError> {
    let d = doc(&p)?;
    // Checked here too, so a mistake is named before anything is sent.
    Policy::from_doc(&d).map_err(|e| CliError::new(USAGE, e.to_string()))?;
    let info = client().await?.put_policy(&d).await?;
    if p.out.output == Output::Json {
        return print_json(&info);
    }
    println!("policy {} is in force (version {})", printable(&d.name), info.version.unwrap_or_default());
    Ok(())
}
