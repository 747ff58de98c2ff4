//! `aegis run -- command args…`: the exec wrapper.
//!
//! Starts the command with the keys of the workload's JSON object secret as
//! environment variables (on top of its own environment), forwards SIGTERM,
//! SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, and exits with its exit
//! status (128 + the signal number when a signal ended it). When the secret
//! changes it restarts the command gracefully (SIGTERM, then SIGKILL after the
//! grace period), sends it a signal, or does nothing, as configured.
//!
//! Exit codes of its own: those of docs/CLI.md, and 126/127 (as shells use them)
//! when the command cannot be started or is not found.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Duration;

use aegis_core::api::WorkloadSecret;
use aegis_sdk::WatchUpdate;
use futures::{Stream, StreamExt};
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::connect::client;
use crate::exit::{CliError, FAILURE, NOT_FOUND};
use crate::workload::delivery::{first_nonempty, watch_options, LastSeen};
use crate::workload::signals::{is_stop, parse_signal, send_to_child, Forwarded};

mod vars;

use vars::{Environment, Naming};

/// What to do when the secret changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnChange {
    /// Stop the command (SIGTERM, SIGKILL after --grace-ms) and start it again with the new environment.
    Restart,
    /// Send --signal to the command (it keeps its environment; useful when it re-reads files).
    Signal,
    /// Ignore changes.
    None,
}

/// Arguments of `aegis run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Prefix for every variable name (not for --rename targets).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Give key KEY the variable name NAME (repeatable), e.g. --rename db-password=DB_PASSWORD.
    #[arg(long = "rename", value_name = "KEY=NAME", value_parser = vars::parse_rename)]
    renames: Vec<(String, String)>,
    /// What to do when the secret changes.
    #[arg(long, value_enum, default_value_t = OnChange::Restart)]
    on_change: OnChange,
    /// Signal sent with --on-change signal.
    #[arg(long, value_parser = parse_signal, default_value = "SIGHUP")]
    signal: Signal,
    /// How long a restart waits after SIGTERM before SIGKILL (ms).
    #[arg(long = "grace-ms", default_value_t = 10_000)]
    grace_ms: u64,
    /// Wait until the secret exists (and is not empty) instead of failing at once.
    #[arg(long)]
    wait: bool,
    /// A secret other than the workload's own, by name (a policy must allow this SPIFFE ID to read it).
    #[arg(long)]
    secret: Option<String>,
    /// Longest time between two checks with the Safe (ms): bounds each watch request and the retry delay.
    #[arg(long = "poll-interval-ms", env = "AEGIS_RUN_POLL_INTERVAL", default_value_t = 20_000)]
    poll_interval_ms: u64,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Runs the command; on its exit, exits this process with the command's status.
pub async fn run(a: RunArgs) -> Result<(), CliError> {
    let naming = Naming::new(&a.prefix, &a.renames)?;
    let client = client().await?;
    let mut updates = Box::pin(client.watch_named(watch_options(a.poll_interval_ms), a.secret.clone()));
    let first = initial(&mut updates, &client.spiffe_id(), a.wait).await?;
    let current = naming.environment(&first)?;
    let signals = Forwarded::install().map_err(|e| CliError::new(FAILURE, format!("cannot catch signals: {e}")))?;
    let child = spawn(&a.command, &current)?;
    info!(version = first.version, revision = first.revision, variables = current.len(), "command started");
    let mut sup = Supervisor {
        revision: first.revision,
        naming,
        current,
        child,
        signals,
        command: a.command,
        on_change: a.on_change,
        signal: a.signal,
        grace: Duration::from_millis(a.grace_ms),
    };
    drop(first);
    loop {
        tokio::select! {
            status = sup.child.wait() => return exit_like(status),
            sig = sup.signals.recv() => forward(&sup.child, sig),
            update = updates.next() => match update {
                Some(WatchUpdate::Changed(Some(s))) => {
                    if let Some(status) = sup.on_secret(s).await? {
                        return exit_like(Ok(status));
                    }
                }
                other => note(other),
            },
        }
    }
}

/// The running command and what it was started with.
struct Supervisor {
    naming: Naming,
    /// Revision of the secret last acted on.
    revision: u64,
    current: Environment,
    child: Child,
    signals: Forwarded,
    command: Vec<OsString>,
    on_change: OnChange,
    signal: Signal,
    grace: Duration,
}

impl Supervisor {
    /// Acts on a new secret; returns the command's status if this process must exit.
    async fn on_secret(&mut self, s: WorkloadSecret) -> Result<Option<ExitStatus>, CliError> {
        if s.revision == self.revision {
            return Ok(None);
        }
        let (version, revision) = (s.version, s.revision);
        self.revision = revision;
        let env = match self.naming.environment(&s) {
            Ok(env) => env,
            Err(e) => {
                warn!(version, revision, "{}; the command keeps its current environment", e.message);
                return Ok(None);
            }
        };
        drop(s);
        if env == self.current {
            info!(version, revision, "secret changed but the environment is the same; nothing to do");
            return Ok(None);
        }
        self.current = env;
        match self.on_change {
            OnChange::Restart => {
                info!(version, revision, "secret changed; restarting the command");
                self.restart().await
            }
            OnChange::Signal => {
                info!(version, revision, signal = %self.signal, "secret changed; signalling the command");
                forward_quiet(&self.child, self.signal);
                Ok(None)
            }
            OnChange::None => {
                info!(version, revision, "secret changed; the command keeps its environment");
                Ok(None)
            }
        }
    }

    async fn restart(&mut self) -> Result<Option<ExitStatus>, CliError> {
        if let Some(status) = stop(&mut self.child, self.grace, &mut self.signals).await {
            return Ok(Some(status));
        }
        self.child = spawn(&self.command, &self.current)?;
        info!(revision = self.revision, variables = self.current.len(), "command started");
        Ok(None)
    }
}

/// The secret to start with: the watch's first answer, or (with `--wait`) the first non-empty one.
async fn initial<S>(updates: &mut S, spiffe_id: &str, wait: bool) -> Result<WorkloadSecret, CliError>
where
    S: Stream<Item = WatchUpdate> + Unpin,
{
    if wait {
        info!(spiffe_id, "waiting for the workload's secret");
        let mut last = LastSeen::default();
        return first_nonempty(updates, &mut last)
            .await
            .ok_or_else(|| CliError::new(FAILURE, format!("stopped waiting: {}", last.describe())));
    }
    match updates.next().await {
        Some(WatchUpdate::Changed(Some(s))) => Ok(s),
        Some(WatchUpdate::Changed(None)) => Err(CliError::new(
            NOT_FOUND,
            format!(
                "no secret is registered for {spiffe_id}; an admin registers one with `aegis put NAME`, \
                 or pass --wait to wait for it"
            ),
        )),
        Some(WatchUpdate::Unreachable { error, .. }) => Err(error.into()),
        None => Err(CliError::new(FAILURE, "the watch on the Safe ended unexpectedly")),
    }
}

/// Logs watch items other than a new secret.
fn note(update: Option<WatchUpdate>) {
    match update {
        Some(WatchUpdate::Changed(None)) => warn!("the secret was deleted; the command keeps its environment"),
        Some(WatchUpdate::Unreachable { error, retry_in }) => {
            warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, "cannot reach the Safe; retrying");
        }
        Some(WatchUpdate::Changed(Some(_))) | None => {}
    }
}

fn spawn(command: &[OsString], env: &Environment) -> Result<Child, CliError> {
    let Some((program, args)) = command.split_first() else {
        return Err(CliError::new(2, "give the command to run after `--`"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (name, value) in env.iter() {
        cmd.env(name, value.as_str());
    }
    cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => 127,
            std::io::ErrorKind::PermissionDenied => 126,
            _ => FAILURE,
        };
        CliError::new(code, format!("cannot start {}: {e}; check the command and PATH", program.to_string_lossy()))
    })
}

fn forward(child: &Child, sig: Signal) {
    info!(signal = %sig, "forwarding signal to the command");
    if let Err(e) = send_to_child(child.id(), sig) {
        warn!(error = %e, "cannot forward the signal");
    }
}

/// Stops the command for a restart: SIGTERM, then SIGKILL after `grace`.
///
/// Returns the command's status if a stop signal (SIGTERM, SIGINT, SIGQUIT)
/// reached this process meanwhile: then it must not be started again.
async fn stop(child: &mut Child, grace: Duration, signals: &mut Forwarded) -> Option<ExitStatus> {
    forward_quiet(child, Signal::SIGTERM);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    let mut stopping = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.recv() => {
                stopping |= is_stop(sig);
                forward(child, sig);
            }
            () = &mut deadline => {
                warn!(grace_ms = grace.as_millis() as u64, "the command did not stop in time; killing it");
                forward_quiet(child, Signal::SIGKILL);
            }
        }
    };
    match status {
        Ok(s) if stopping => Some(s),
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "cannot wait for the command");
            None
        }
    }
}

fn forward_quiet(child: &Child, sig: Signal) {
    if let Err(e) = send_to_child(child.id(), sig) {
        warn!(error = %e, "cannot signal the command");
    }
}

/// Ends this process the way the command ended.
fn exit_like(status: std::io::Result<ExitStatus>) -> Result<(), CliError> {
    let status = status.map_err(|e| CliError::new(FAILURE, format!("cannot wait for the command: {e}")))?;
    let code = exit_code(status);
    info!(%status, code, "command exited");
    if code == 0 {
        return Ok(());
    }
    // Exit directly: the command's status passes through without an "error:" line
    // added to its standard error. Nothing is left to flush (logs go to unbuffered stderr).
    std::process::exit(code)
}

/// The shell convention: the exit code, or 128 + the signal number.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(FAILURE.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
    }
}
