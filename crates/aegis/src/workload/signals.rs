//! Signals: parsing their names, sending them, and catching the ones the exec
//! wrapper forwards to its command.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

/// Parses `SIGHUP`, `HUP`, `hup` or a number such as `1` (for clap).
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    let parsed = match t.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let upper = t.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
            name.parse::<Signal>().ok()
        }
    };
    parsed.ok_or_else(|| format!("'{s}' is not a signal; give a name such as SIGHUP, SIGUSR1 or TERM"))
}

/// Parses a process id for signalling: only positive ids (0 and negative
/// values would reach whole process groups).
pub fn parse_pid(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!("'{}' is not a process id (a positive whole number)", s.trim())),
    }
}

/// Reads a process id from a pid file.
pub fn read_pid_file(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
    parse_pid(&text).map_err(|e| format!("pid file {}: {e}", path.display()))
}

/// Sends `sig` to the process `pid` (which must be positive).
pub fn send(pid: i32, sig: Signal) -> Result<(), String> {
    if pid <= 0 {
        return Err(format!("refusing to signal process id {pid}"));
    }
    kill(Pid::from_raw(pid), sig).map_err(|e| format!("cannot send {sig} to process {pid}: {e}"))
}

/// Sends `sig` to a child by its id, if it has not been reaped yet.
pub fn send_to_child(id: Option<u32>, sig: Signal) -> Result<(), String> {
    match id.and_then(|id| i32::try_from(id).ok()) {
        Some(pid) => send(pid, sig),
        None => Ok(()),
    }
}

/// The signals the exec wrapper forwards to its command.
pub struct Forwarded {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Forwarded {
    /// Catches SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 from now on
    /// (their default action, ending this process, no longer applies).
    pub fn install() -> std::io::Result<Self> {
        let kinds = [
            (Signal::SIGTERM, SignalKind::terminate()),
            (Signal::SIGINT, SignalKind::interrupt()),
            (Signal::SIGHUP, SignalKind::hangup()),
            (Signal::SIGQUIT, SignalKind::quit()),
            (Signal::SIGUSR1, SignalKind::user_defined1()),
            (Signal::SIGUSR2, SignalKind::user_defined2()),
        ];
        let mut streams = Vec::with_capacity(kinds.len());
        for (sig, kind) in kinds {
            streams.push((sig, signal(kind)?));
        }
        Ok(Self { streams })
    }

    /// The next caught signal.
    pub async fn recv(&mut self) -> Signal {
        let waits = self.streams.iter_mut().map(|(sig, stream)| {
            let sig = *sig;
            Box::pin(async move {
                stream.recv().await;
                sig
            })
        });
        futures::future::select_all(waits).await.0
    }
}

/// Whether `sig` asks the process to stop.
pub fn is_stop(sig: Signal) -> bool {
    matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_numbers_and_pids() {
        for s in ["SIGHUP", "HUP", "hup", "1", " sighup "] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGHUP, "{s}");
        }
        assert_eq!(parse_signal("usr1").unwrap(), Signal::SIGUSR1);
        for bad in ["", "SIGNOPE", "0", "99", "-1"] {
            assert!(parse_signal(bad).unwrap_err().contains("not a signal"), "{bad}");
        }
        assert_eq!(parse_pid(" 42\n").unwrap(), 42);
        for bad in ["0", "-1", "x", ""] {
            assert!(parse_pid(bad).is_err(), "{bad}");
        }
        assert!(send(0, Signal::SIGHUP).is_err());
    }
}
