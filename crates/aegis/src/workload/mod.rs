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

/// `aegis fetch`: prints the caller's secret as the workload sees it.
pub async fn fetch(output: Output) -> Result<(), CliError> {
    let c = client().await?;
    match c.fetch().await? {
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
