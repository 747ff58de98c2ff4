//! Admin commands on the Safe itself: `unseal`, `status` and
//! `rotate-root-key`.

use std::path::PathBuf;

use aegis_core::secret::SecretValue;

use crate::connect::{client, read_stdin};
use crate::exit::{CliError, CONFIG};
use crate::output::{print_json, Out, Output};

/// Arguments of `aegis unseal`.
#[derive(clap::Args, Debug)]
pub struct UnsealArgs {
    /// File with the root key (else standard input).
    #[arg(long)]
    root_key_file: Option<PathBuf>,
}

/// `aegis unseal`: gives a sealed Safe its root key.
pub async fn unseal(a: UnsealArgs) -> Result<(), CliError> {
    let c = client().await?;
    let key = match a.root_key_file {
        Some(p) => SecretValue::new(
            std::fs::read_to_string(&p)
                .map_err(|e| CliError::new(CONFIG, format!("cannot read root key file {}: {e}", p.display())))?,
        ),
        None => read_stdin("root key")?,
    };
    let s = c.unseal(key).await?;
    let line = format!("unsealed: {} secrets, root key {}", s.secrets, s.key_id.unwrap_or_default());
    println!("{}", crate::output::printable(&line));
    Ok(())
}

/// `aegis status`: whether the Safe is sealed, how many secrets it holds, its root key id.
pub async fn status(out: Out) -> Result<(), CliError> {
    let s = client().await?.status().await?;
    if out.output == Output::Json {
        return print_json(&s);
    }
    let state = if s.sealed { "sealed" } else { "unsealed" };
    let line = format!(
        "{state}; {} secrets; root key {}; aegis {}",
        s.secrets,
        s.key_id.unwrap_or_else(|| "-".into()),
        s.version
    );
    // The Safe's answer: printed with terminal controls escaped, like every answer.
    println!("{}", crate::output::printable(&line));
    if let Some(k) = &s.kubernetes {
        println!(
            "kubernetes secrets: {} synced, {} pending, {} errors, {} conflicts; oldest change waiting {} ms",
            k.synced, k.pending, k.errors, k.conflicts, k.oldest_pending_ms
        );
    }
    if !s.federated_domains.is_empty() {
        println!(
            "{}",
            crate::output::printable(&format!("federated trust domains: {}", s.federated_domains.join(", ")))
        );
    }
    if let Some(r) = &s.replication {
        print_replication(r);
    }
    Ok(())
}

/// Arguments of `aegis replication`.
#[derive(clap::Args, Debug)]
pub struct ReplicationArgs {
    #[command(subcommand)]
    cmd: ReplicationCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ReplicationCommand {
    /// Where each link stands: on a source, its replicas; on a replica, its sources and their lag.
    Status(Out),
}

/// `aegis replication status`.
pub async fn replication(a: ReplicationArgs) -> Result<(), CliError> {
    let ReplicationCommand::Status(out) = a.cmd;
    let r = client().await?.replication().await?;
    if out.output == Output::Json {
        return print_json(&r);
    }
    if r.replicas.is_empty() && r.sources.is_empty() {
        println!("no replication links (see --replicate-to and --replicate-from); change number {}", r.head);
        return Ok(());
    }
    print_replication(&r);
    Ok(())
}

fn print_replication(r: &aegis_core::api::ReplicationStatus) {
    let mut lines = vec![format!("replication: this Safe's last change number {}", r.head)];
    for l in &r.replicas {
        let seen = l.last_seen.as_deref().map(|t| format!(", last asked {t}")).unwrap_or_default();
        lines.push(format!(
            "  replica {}: {}; confirmed change {}; {} changes sent{seen}; secrets {}",
            l.spiffe_id,
            l.state,
            l.confirmed,
            l.sent,
            l.patterns.join(" ")
        ));
    }
    for l in &r.sources {
        let alert = if l.alert { " ALERT" } else { "" };
        let error = l.error.as_deref().map(|e| format!("; error: {e}")).unwrap_or_default();
        let conflicts = if l.conflicts.is_empty() {
            String::new()
        } else {
            format!("; not applied (a secret of this Safe's in the way): {}", l.conflicts.join(", "))
        };
        lines.push(format!(
            "  source {} at {}: {}{alert}; applied change {} of {}; lag {:.3} s; {} changes applied{error}{conflicts}",
            l.spiffe_id, l.url, l.state, l.applied, l.source_head, l.lag_seconds, l.changes_applied
        ));
    }
    for line in lines {
        println!("{}", crate::output::printable(&line));
    }
}

/// `aegis rotate-root-key`: a new root key, every record re-encrypted with it.
pub async fn rotate_root_key(out: Out) -> Result<(), CliError> {
    let r = client().await?.rotate_root_key().await?;
    if out.output == Output::Json {
        return print_json(&r);
    }
    let line = format!("root key rotated: new key {}, {} records re-encrypted", r.key_id, r.records);
    println!("{}", crate::output::printable(&line));
    Ok(())
}
