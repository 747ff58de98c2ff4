//! `aegis sidecar`: keeps a file (or a directory of files) up to date with the
//! workload's secret, as VSecM's sidecar does, but pushed instead of polled.
//!
//! The file holds exactly the secret's `data` string, written atomically with
//! the configured mode, rewritten only when the content changes, and emptied
//! when the secret is deleted or absent (VSecM behaviour). While the Safe is
//! unreachable the files keep their last content and the watch retries with
//! backoff; logs carry versions, revisions and sizes, never values.
//!
//! With `--secret NAME[=PATH]` (repeatable) it also keeps secrets other than
//! the workload's own, one file each (`PATH`, or `--secrets-dir`/NAME), each
//! followed by its own push watch; a policy must allow the workload to read them.

use std::path::PathBuf;
use std::time::Duration;

use aegis_core::api::WorkloadSecret;
use aegis_sdk::WatchUpdate;
use futures::stream::BoxStream;
use futures::StreamExt;
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
    /// Also keep the secret NAME (not the workload's own; a policy must allow reading it) in the file PATH,
    /// or in --secrets-dir/NAME (repeatable). With it, the workload's own secret is written only when
    /// --path or --split-dir is given.
    #[arg(long = "secret", value_name = "NAME[=PATH]", value_parser = parse_named)]
    secrets: Vec<(String, Option<PathBuf>)>,
    /// Directory of the --secret files given without a PATH (one file per secret, named after it).
    #[arg(long)]
    secrets_dir: Option<PathBuf>,
}

/// `NAME` or `NAME=PATH`.
fn parse_named(text: &str) -> Result<(String, Option<PathBuf>), String> {
    let (name, path) = match text.split_once('=') {
        Some((n, p)) if !p.is_empty() => (n, Some(PathBuf::from(p))),
        Some(_) => return Err(format!("'{text}' has an empty PATH after '='; give NAME or NAME=PATH")),
        None => (text, None),
    };
    aegis_core::SecretName::parse(name).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), path))
}

/// Runs the sidecar until it is stopped (or once, with `--once`).
pub async fn run(a: SidecarArgs) -> Result<(), CliError> {
    let mut targets = Targets::all(&a)?;
    let hook = Hook::new(&a);
    let client = client().await?;
    if a.once {
        let mut changed = false;
        for t in &mut targets {
            let secret = match &t.secret {
                None => client.fetch().await?,
                Some(name) => client.fetch_secret(name).await?,
            };
            changed |= t.apply(secret.as_ref()).map_err(CliError::failure)?;
        }
        if changed {
            hook.fire().await;
        }
        return Ok(());
    }
    for t in &targets {
        info!(
            spiffe_id = %client.spiffe_id(),
            secret = t.secret.as_deref().unwrap_or("(the workload's own)"),
            path = ?t.file,
            split_dir = ?t.split.as_ref().map(SplitDir::dir),
            poll_interval_ms = a.poll_interval_ms,
            "sidecar watching the secret"
        );
    }
    let feeds = targets
        .iter()
        .map(|t| client.watch_named(watch_options(a.poll_interval_ms), t.secret.clone()).boxed())
        .collect();
    keep_in_step(feeds, &mut targets, &hook, a.poll_interval_ms).await;
    Ok(())
}

/// Applies every change of every feed (one per target) until SIGTERM or
/// SIGINT; a failed write is retried (with the latest state) every
/// `poll_interval_ms`, at most every 5 s. The hook fires once per round of changes.
async fn keep_in_step(
    feeds: Vec<BoxStream<'static, WatchUpdate>>,
    targets: &mut [Targets],
    hook: &Hook,
    poll_interval_ms: u64,
) {
    let mut stop = Stop::install();
    let mut updates = futures::stream::select_all(feeds.into_iter().enumerate().map(|(i, f)| f.map(move |u| (i, u))));
    let retry = Duration::from_millis(poll_interval_ms).clamp(Duration::from_millis(100), Duration::from_secs(5));
    // The latest state of each target that is not written yet.
    let mut pending: Vec<Option<Option<WorkloadSecret>>> = targets.iter().map(|_| None).collect();
    loop {
        tokio::select! {
            update = updates.next() => match update {
                Some((i, WatchUpdate::Changed(secret))) => pending[i] = Some(secret),
                Some((i, WatchUpdate::Unreachable { error, retry_in })) => {
                    let retry_in_ms = retry_in.as_millis() as u64;
                    let secret = targets[i].secret.as_deref().unwrap_or("(the workload's own)");
                    warn!(error = %error, secret, retry_in_ms, "cannot reach the Safe; files keep their last content");
                }
                None => return,
            },
            () = tokio::time::sleep(retry), if pending.iter().any(Option::is_some) => {}
            () = stop.recv() => {
                info!("sidecar stopping");
                return;
            }
        }
        let mut changed = false;
        for (slot, t) in pending.iter_mut().zip(targets.iter_mut()) {
            let Some(secret) = slot.take() else { continue };
            match t.apply(secret.as_ref()) {
                Ok(c) => changed |= c,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "cannot write the secret; retrying");
                    *slot = Some(secret);
                }
            }
        }
        if changed {
            hook.fire().await;
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

/// Where one secret goes.
struct Targets {
    /// The secret by name (`None`: the workload's own).
    secret: Option<String>,
    file: Option<PathBuf>,
    split: Option<SplitDir>,
    mode: FileMode,
}

impl Targets {
    /// The workload's own secret's targets (unless only named secrets are
    /// asked for), then one per `--secret`.
    fn all(a: &SidecarArgs) -> Result<Vec<Self>, CliError> {
        let split = a.split_dir.clone().map(|d| SplitDir::new(d, a.mode));
        let own_file = match (&a.path, &a.split_dir, a.secrets.is_empty()) {
            (Some(p), _, _) => Some(p.clone()),
            (None, None, true) => Some(PathBuf::from(DEFAULT_PATH)),
            _ => None,
        };
        let mut all = Vec::new();
        if own_file.is_some() || split.is_some() {
            all.push(Self { secret: None, file: own_file, split, mode: a.mode });
        }
        for (name, path) in &a.secrets {
            let file = match (path, &a.secrets_dir) {
                (Some(p), _) => p.clone(),
                (None, Some(dir)) => dir.join(name),
                (None, None) => {
                    return Err(CliError::new(
                        crate::exit::USAGE,
                        format!("--secret {name} needs a file: give --secret {name}=PATH, or --secrets-dir DIR"),
                    ))
                }
            };
            all.push(Self { secret: Some(name.clone()), file: Some(file), split: None, mode: a.mode });
        }
        Ok(all)
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
