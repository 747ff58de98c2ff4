//! Workload-side commands.

use crate::cli::{client, Output};
use crate::exit::{CliError, NOT_FOUND};

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
            println!("{}", s.data.expose());
            Ok(())
        }
        None => Err(CliError::new(
            NOT_FOUND,
            format!("no secret is registered for {}; an admin registers one with `aegis put NAME`", c.spiffe_id()),
        )),
    }
}
