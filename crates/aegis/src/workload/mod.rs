//! The workload agents: `aegis fetch`, `sidecar`, `init` and `run`, and what
//! they share (delivery of the secret, atomic file writes, signals).

pub mod delivery;
pub mod filewrite;
pub mod init;
pub mod run;
pub mod sidecar;
pub mod signals;
pub mod split;

use crate::connect::client;
use crate::exit::{CliError, NOT_FOUND};
use crate::output::Output;

/// Arguments of `aegis fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// A secret other than the workload's own, by name (a policy must allow this SPIFFE ID to read it).
    #[arg(long)]
    pub secret: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub out: crate::output::Out,
}

/// `aegis fetch`: prints the caller's secret (or the one named) as the workload sees it.
pub async fn fetch(a: FetchArgs) -> Result<(), CliError> {
    let output = a.out.output;
    let c = client().await?;
    let got = match &a.secret {
        Some(name) => c.fetch_secret(name).await?,
        None => c.fetch().await?,
    };
    if got.is_none() {
        if let Some(name) = &a.secret {
            return Err(CliError::new(
                NOT_FOUND,
                format!(
                    "secret '{}' does not exist, is deleted or is outside its validity window",
                    crate::output::printable(name)
                ),
            ));
        }
    }
    match got {
        Some(s) if output == Output::Json => {
            let v = serde_json::to_string_pretty(&s).map_err(|e| CliError::new(1, e.to_string()))?;
            println!("{v}");
            Ok(())
        }
        Some(s) => {
            // Text that already ends a line (YAML does) gets no second line break.
            let data = s.data.expose();
            let end = if data.ends_with('\n') { "" } else { "\n" };
            print!("{data}{end}");
            Ok(())
        }
        None => Err(CliError::new(
            NOT_FOUND,
            format!("no secret is registered for {}; an admin registers one with `aegis put NAME`", c.spiffe_id()),
        )),
    }
}
