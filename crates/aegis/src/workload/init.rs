//! `aegis init`: the init container. Blocks until the workload's secret exists
//! and is not empty (VSecM's rule), optionally writes it to a file first, waits
//! `VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT` ms, and exits 0.
//!
//! It watches (push), so it ends within milliseconds of the secret being
//! registered. With `--timeout-ms` it gives up with exit code 3 (the Safe
//! answered but has no usable secret) or 7 (the Safe could not be reached), and a
//! message naming the workload's SPIFFE ID and what to do.

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use crate::connect::client;
use crate::exit::{CliError, FAILURE, NOT_FOUND, UNREACHABLE};
use crate::workload::delivery::{first_nonempty, watch_options, LastSeen};
use crate::workload::filewrite::{self, FileMode};

/// Arguments of `aegis init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Write the secret's data to this file (atomically, as the sidecar does) before exiting.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Permission bits of the file, in octal.
    #[arg(long, default_value = "0600")]
    mode: FileMode,
    /// Wait for a secret other than the workload's own, by name (a policy must allow this SPIFFE ID to read it).
    #[arg(long)]
    secret: Option<String>,
    /// Longest time between two checks with the Safe (ms): bounds each watch request and the retry delay.
    #[arg(long = "poll-interval-ms", env = "VSECM_INIT_CONTAINER_POLL_INTERVAL", default_value_t = 5_000)]
    poll_interval_ms: u64,
    /// Time to wait after the secret is there, before exiting 0 (ms).
    #[arg(long = "wait-before-exit-ms", env = "VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT", default_value_t = 0)]
    wait_before_exit_ms: u64,
    /// Give up after this long (ms) with exit code 3 (no secret) or 7 (Safe unreachable) [default: wait forever].
    #[arg(long = "timeout-ms", env = "AEGIS_INIT_TIMEOUT_MS")]
    timeout_ms: Option<u64>,
}

/// Runs the init container.
pub async fn run(a: InitArgs) -> Result<(), CliError> {
    // The timeout covers everything, obtaining the identity included.
    let deadline = a.timeout_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let client = match deadline {
        None => client().await?,
        Some(d) => tokio::time::timeout_at(d, client())
            .await
            .map_err(|_| gave_up("(its identity was not obtained in time)", a.timeout_ms, &LastSeen::Nothing))??,
    };
    let spiffe_id = client.spiffe_id();
    info!(spiffe_id = %spiffe_id, poll_interval_ms = a.poll_interval_ms, "waiting for the workload's secret");
    let mut updates = Box::pin(client.watch_named(watch_options(a.poll_interval_ms), a.secret.clone()));
    let mut last = LastSeen::default();
    let waiting = first_nonempty(&mut updates, &mut last);
    let found = match deadline {
        None => waiting.await,
        Some(d) => match tokio::time::timeout_at(d, waiting).await {
            Ok(found) => found,
            Err(_) => return Err(gave_up(&spiffe_id, a.timeout_ms, &last)),
        },
    };
    let Some(secret) = found else {
        return Err(CliError::new(FAILURE, "the watch on the Safe ended unexpectedly; start the init container again"));
    };
    info!(version = secret.version, revision = secret.revision, bytes = secret.data.len(), "the secret is there");
    if let Some(path) = &a.path {
        filewrite::sync(path, secret.data.expose().as_bytes(), a.mode).map_err(CliError::failure)?;
        info!(path = %path.display(), bytes = secret.data.len(), "secrets file written");
    }
    drop(secret);
    if a.wait_before_exit_ms > 0 {
        info!(wait_before_exit_ms = a.wait_before_exit_ms, "waiting before exit");
        tokio::time::sleep(Duration::from_millis(a.wait_before_exit_ms)).await;
    }
    Ok(())
}

/// The message and code for a timeout.
fn gave_up(spiffe_id: &str, timeout_ms: Option<u64>, last: &LastSeen) -> CliError {
    let ms = timeout_ms.unwrap_or_default();
    let code = if matches!(last, LastSeen::Failed(_) | LastSeen::Nothing) { UNREACHABLE } else { NOT_FOUND };
    CliError::new(
        code,
        format!(
            "no non-empty secret for workload {spiffe_id} after {ms} ms ({}); register one for this workload \
             (`aegis put NAME` or `safe -w NAME -s VALUE`, NAME being the workload name in the SPIFFE ID), \
             check that the Safe is reachable, or raise --timeout-ms",
            last.describe()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_message_names_the_workload_and_the_way_out() {
        let id = "spiffe://vsecm.com/workload/billing/ns/default/sa/billing/n/x";
        let e = gave_up(id, Some(500), &LastSeen::Absent);
        assert_eq!(e.code, NOT_FOUND);
        assert!(e.message.contains(id) && e.message.contains("aegis put") && e.message.contains("has no secret"));
        assert_eq!(gave_up(id, Some(500), &LastSeen::Failed("refused".into())).code, UNREACHABLE);
        assert_eq!(gave_up(id, Some(500), &LastSeen::Empty).code, NOT_FOUND);
    }
}
