//! `aegis sentinel init`: applies VSecM's Sentinel init-command file once.
//!
//! The whole file is parsed before anything is sent, so a syntax error
//! (reported with its line) changes nothing. Blocks run in order; the first
//! block the Safe refuses stops the run with its line number, and the keystone
//! is written only after every block succeeded, so a failed run is retried at
//! the next start.

use std::path::PathBuf;
use std::time::Duration;

use aegis_core::initcmd::{self, Step};
use aegis_core::secret::SecretValue;
use aegis_core::{SentinelAction, KEYSTONE};
use aegis_sdk::Client;
use clap::{Args, Subcommand};

use crate::admin::safe::execute;
use crate::connect::client;
use crate::exit::{CliError, CONFIG};

/// `aegis sentinel` arguments.
#[derive(Args, Debug)]
pub struct SentinelArgs {
    #[command(subcommand)]
    cmd: SentinelCmd,
}

#[derive(Subcommand, Debug)]
enum SentinelCmd {
    /// Apply the init-command file unless the keystone secret says it was done.
    Init {
        /// The init-command file.
        #[arg(long, env = "VSECM_SENTINEL_INIT_COMMAND_PATH", default_value = "/opt/vsecm-sentinel/init/data")]
        file: PathBuf,
        /// Apply even if the keystone is ready.
        #[arg(long)]
        force: bool,
        /// A missing init-command file means there is nothing to apply (the
        /// Kubernetes Secret holding it is optional), not an error.
        #[arg(long)]
        missing_ok: bool,
        /// Once done, keep running until SIGTERM or SIGINT, so that the container
        /// stays up for `kubectl exec` (the Helm chart's Sentinel).
        #[arg(long)]
        keep_running: bool,
    },
}

async fn apply(client: &Client, steps: Vec<Step>) -> Result<usize, CliError> {
    let mut applied = 0;
    for step in steps {
        match step {
            Step::Sleep { ms, line } => {
                tracing::info!(line, ms, "init commands: sleeping");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Step::Policy { policy, line } => {
                client.put_policy(&policy.to_doc()).await.map_err(|e| {
                    let e = CliError::from(e);
                    CliError::new(e.code, format!("init commands, policy at line {line}: {}", e.message))
                })?;
                tracing::info!(line, policy = %policy.name, "init commands: policy written");
                applied += 1;
            }
            Step::Apply(cmd) => {
                let line = cmd.line;
                execute(client, cmd.action).await.map_err(|e| {
                    CliError::new(e.code, format!("init commands, block at line {line}: {}", e.message))
                })?;
                tracing::info!(line, "init commands: block applied");
                applied += 1;
            }
        }
    }
    Ok(applied)
}

/// Runs `aegis sentinel …`.
pub async fn run(a: SentinelArgs) -> Result<(), CliError> {
    let SentinelCmd::Init { file, force, missing_ok, keep_running } = a.cmd;
    init(&file, force, missing_ok).await?;
    if keep_running {
        eprintln!("keeping the Sentinel running for `kubectl exec` (stop with SIGTERM)");
        crate::stop_requested().await;
    }
    Ok(())
}

async fn init(file: &std::path::Path, force: bool, missing_ok: bool) -> Result<(), CliError> {
    let absent = matches!(std::fs::metadata(file), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if missing_ok && absent {
        eprintln!(
            "no init-command file at {}: nothing to apply",
            crate::output::printable(&file.display().to_string())
        );
        return Ok(());
    }
    let c = client().await?;
    if !force && c.keystone().await?.status == aegis_core::api::KeystoneStatus::Ready {
        eprintln!("the keystone secret exists: init commands were already applied; nothing to do (--force re-applies)");
        return Ok(());
    }
    let text = std::fs::read_to_string(file).map_err(|e| {
        CliError::new(
            CONFIG,
            format!("cannot read the init-command file {}: {e} (set VSECM_SENTINEL_INIT_COMMAND_PATH)", file.display()),
        )
    })?;
    let steps = initcmd::parse(&text).map_err(|e| CliError::new(CONFIG, format!("{}: {e}", file.display())))?;
    let applied = apply(&c, steps).await?;
    let keystone = SentinelAction::write(vec![KEYSTONE.to_owned()], SecretValue::new("initialized"));
    execute(&c, keystone).await?;
    eprintln!("init commands applied: {applied} blocks; keystone written");
    Ok(())
}
