//! `aegis sidecar`: keeps a file (or a directory of files) up to date with the
//! workload's secret, as VSecM's sidecar does, but pushed instead of polled.
//!
//! The file holds exactly the secret's `data` string, written atomically with
//! the configured mode, rewritten only when the content changes, and emptied
//! when the secret is deleted or absent (VSecM behaviour). While the Safe is
//! unreachable the files keep their last content and the watch retries with
//! backoff; logs carry versions, revisions and sizes, never values.

use std::path::PathBuf;
use std::time::Duration;

use aegis_core::api::WorkloadSecret;
use aegis_sdk::WatchUpdate;
use futures::{Stream, StreamExt};
use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use crate::connect::client;
use crate::exit::CliError;
use crate::workload::delivery::{object_entries, watch_options};
use crate::workload::filewrite::{self, FileError, FileMode};
use crate::workload::signals::{parse_pid, parse_signal, read_pid_file};
use crate::workload::split::SplitDir;

/// VSecM's default secrets file.
pub const DEFAULT_PATH: &str = "/opt/vsecm/secrets.json";

/// Arguments of `aegis sidecar`.
#[derive(clap::Args, Debug)]
pub struct SidecarArgs {
    /// File that holds the secret's data [default: /opt/vsecm/secrets.json, or none when only --split-dir is given].
    #[arg(long, env = "VSECM_SIDECAR_SECRETS_PATH")]
    path: Option<PathBuf>,
    /// Longest time between two checks with the Safe (ms): changes are pushed at once; this bounds how long one
    /// watch request stays open and the longest retry delay while the Safe is unreachable.
    #[arg(long = "poll-interval-ms", env = "VSECM_SIDECAR_POLL_INTERVAL", default_value_t = 20_000)]
    poll_interval_ms: u64,
    /// Permission bits of the written files, in octal.
    #[arg(long, default_value = "0600")]
    mode: FileMode,
    /// Also write one file per key of a JSON object secret into this directory (keys that are not safe
    /// file names are skipped and logged; files of removed keys are deleted).
    #[arg(long)]
    split_dir: Option<PathBuf>,
    /// Signal to send after the files changed (e.g. SIGHUP); needs --pid or --pid-file.
    #[arg(long, value_parser = parse_signal, requires = "target")]
    on_change_signal: Option<Signal>,
    /// Process to signal.
    #[arg(long, value_parser = parse_pid, group = "target", requires = "on_change_signal")]
    pid: Option<i32>,
    /// File holding the process id to signal (read at each change).
    #[arg(long, group = "target", requires = "on_change_signal")]
    pid_file: Option<PathBuf>,
    /// Command to run with `sh -c` after the files changed (its exit status is logged).
    #[arg(long)]
    on_change_command: Option<String>,
    /// Write once and exit.
    #[arg(long)]
    once: bool,
}

/// Runs the sidecar until it is stopped (or once, with `--once`).
pub async fn run(a: SidecarArgs) -> Result<(), CliError> {
    let mut targets = Targets::new(&a);
    let hook = Hook::new(&a);
    let client = client().await?;
    if a.once {
        let secret = client.fetch().await?;
        if targets.apply(secret.as_ref()).map_err(CliError::failure)? {
            hook.fire().await;
        }
        return Ok(());
    }
    info!(
        spiffe_id = %client.spiffe_id(),
        path = ?targets.file,
        split_dir = ?targets.split.as_ref().map(SplitDir::dir),
        poll_interval_ms = a.poll_interval_ms,
        "sidecar watching the secret"
    );
    let updates = client.watch(watch_options(a.poll_interval_ms));
    keep_in_step(updates, &mut targets, &hook, a.poll_interval_ms).await;
    Ok(())
}

/// Applies every change until SIGTERM or SIGINT; a failed write is retried
/// (with the latest state) every `poll_interval_ms`, at most every 5 s.
async fn keep_in_step(
    updates: impl Stream<Item = WatchUpdate>,
    targets: &mut Targets,
    hook: &Hook,
    poll_interval_ms: u64,
) {
    let mut stop = Stop::install();
    let mut updates = Box::pin(updates);
    let retry = Duration::from_millis(poll_interval_ms).clamp(Duration::from_millis(100), Duration::from_secs(5));
    // The latest state that is not written yet.
    let mut pending: Option<Option<WorkloadSecret>> = None;
    loop {
        tokio::select! {
            update = updates.next() => match update {
                Some(WatchUpdate::Changed(secret)) => pending = Some(secret),
                Some(WatchUpdate::Unreachable { error, retry_in }) => {
                    let retry_in_ms = retry_in.as_millis() as u64;
                    warn!(error = %error, retry_in_ms, "cannot reach the Safe; files keep their last content");
                }
                None => return,
            },
            () = tokio::time::sleep(retry), if pending.is_some() => {}
            () = stop.recv() => {
                info!("sidecar stopping");
                return;
            }
        }
        let Some(secret) = pending.take() else { continue };
        match targets.apply(secret.as_ref()) {
            Ok(true) => hook.fire().await,
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "cannot write the secret; retrying");
                pending = Some(secret);
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from start-up on so a stop never interrupts a write.
struct Stop(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Stop {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            // Without handlers the default action (exit) applies; writes are still atomic.
            _ => Self(None),
        }
    }

    async fn recv(&mut self) {
        match &mut self.0 {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Where the secret goes.
struct Targets {
    file: Option<PathBuf>,
    split: Option<SplitDir>,
    mode: FileMode,
}

impl Targets {
    fn new(a: &SidecarArgs) -> Self {
        let file = match (&a.path, &a.split_dir) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(PathBuf::from(DEFAULT_PATH)),
        };
        Self { file, split: a.split_dir.clone().map(|d| SplitDir::new(d, a.mode)), mode: a.mode }
    }

    /// Writes `secret` (or empties the files when there is none); returns whether anything changed.
    fn apply(&mut self, secret: Option<&WorkloadSecret>) -> Result<bool, FileError> {
        let (version, revision) = secret.map_or((0, 0), |s| (s.version, s.revision));
        let mut changed = false;
        if let Some(path) = &self.file {
            let data = secret.map_or(&b""[..], |s| s.data.expose().as_bytes());
            if filewrite::sync(path, data, self.mode)? {
                changed = true;
                info!(path = %path.display(), version, revision, bytes = data.len(), "secrets file written");
            } else {
                debug!(path = %path.display(), version, revision, "secrets file already up to date");
            }
        }
        if let Some(split) = &self.split {
            changed |= apply_split(split, secret)?;
        }
        Ok(changed)
    }
}

fn apply_split(split: &SplitDir, secret: Option<&WorkloadSecret>) -> Result<bool, FileError> {
    let entries = match secret.map(object_entries) {
        None => Vec::new(),
        Some(Ok(entries)) => entries,
        Some(Err(e)) => {
            warn!(dir = %split.dir().display(), "{e}; the split directory is left as it is");
            return Ok(false);
        }
    };
    let out = split.apply(&entries)?;
    for key in &out.refused {
        warn!(dir = %split.dir().display(), key = ?key,
            "key skipped: not a safe file name (use ASCII letters, digits, '.', '_' and '-', not starting with '.')");
    }
    if out.changed() {
        let (version, revision) = secret.map_or((0, 0), |s| (s.version, s.revision));
        info!(dir = %split.dir().display(), version, revision, written = out.written, removed = out.removed,
            "split directory updated");
    }
    Ok(out.changed())
}

/// What to do after the files changed.
struct Hook {
    signal: Option<(Signal, PidSource)>,
    command: Option<String>,
}

enum PidSource {
    Pid(i32),
    File(PathBuf),
}

impl Hook {
    fn new(a: &SidecarArgs) -> Self {
        let source = match (a.pid, &a.pid_file) {
            (Some(pid), _) => Some(PidSource::Pid(pid)),
            (None, Some(f)) => Some(PidSource::File(f.clone())),
            (None, None) => None,
        };
        Self { signal: a.on_change_signal.zip(source), command: a.on_change_command.clone() }
    }

    /// Sends the signal and runs the command; failures are logged, the sidecar goes on.
    async fn fire(&self) {
        if let Some((sig, source)) = &self.signal {
            let sent = match source {
                PidSource::Pid(pid) => Ok(*pid),
                PidSource::File(f) => read_pid_file(f),
            }
            .and_then(|pid| crate::workload::signals::send(pid, *sig).map(|()| pid));
            match sent {
                Ok(pid) => info!(signal = %sig, pid, "reload signal sent"),
                Err(e) => warn!(error = %e, "cannot send the reload signal"),
            }
        }
        if let Some(cmd) = &self.command {
            match tokio::process::Command::new("sh").arg("-c").arg(cmd).kill_on_drop(true).status().await {
                Ok(status) if status.success() => info!(%status, "on-change command finished"),
                Ok(status) => warn!(%status, "on-change command failed"),
                Err(e) => warn!(error = %e, "cannot run the on-change command with sh -c"),
            }
        }
    }
}
