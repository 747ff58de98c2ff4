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
    Ok(())
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
