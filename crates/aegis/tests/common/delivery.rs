//! Helpers for the delivery tests: long-running processes with their logs,
//! waiting for a condition, values sent through standard input.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cmd, ok, Safe, AEGIS};

/// A process running in the background, killed when dropped; its stdout and stderr go to a file.
pub struct Bg {
    pub child: Child,
    pub log: PathBuf,
}

impl Bg {
    /// `aegis ARGS…` with `env`.
    pub fn spawn(env: &HashMap<String, String>, args: &[&str], log: &Path) -> Self {
        let mut c = cmd(AEGIS, env);
        c.args(args);
        Self::start(c, log)
    }

    /// `sh -c SCRIPT`.
    pub fn shell(script: &str, log: &Path) -> Self {
        // A shell cannot trap a signal that was ignored when it started (POSIX), and under
        // `nohup` SIGHUP is: reset it (env execs the shell, so the pid stays the shell's).
        let mut c = cmd("env", &HashMap::new());
        c.args(["--default-signal=HUP", "sh", "-c", script]);
        Self::start(c, log)
    }

    fn start(mut c: std::process::Command, log: &Path) -> Self {
        let out = fs::File::create(log).unwrap();
        let child = c.stdout(out.try_clone().unwrap()).stderr(out).spawn().unwrap();
        Self { child, log: log.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal with kill(1), e.g. `TERM`.
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(t.elapsed() < timeout, "still running after {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bg {
    /// SIGTERM first (so `aegis run` stops its command too), SIGKILL if that is not enough.
    fn drop(&mut self) {
        if self.running() {
            let _ = std::process::Command::new("kill").arg(self.pid().to_string()).status();
            let t = Instant::now();
            while self.running() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Polls `f` until it gives a value; panics with `what` and `context()` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, context: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `aegis put NAME` with the value on standard input (values larger than one argument may be).
pub fn put(admin: &HashMap<String, String>, name: &str, value: &str) {
    let mut child = cmd(AEGIS, admin)
        .args(["put", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    ok(child.wait_with_output().unwrap());
}

/// `aegis ARGS…` as the admin.
pub fn admin(safe: &Safe, args: &[&str]) -> String {
    ok(safe.aegis(&safe.admin_env(), args))
}

pub fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

pub fn lines(path: &Path) -> Vec<String> {
    read(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// A workload's environment with the most verbose logs.
pub fn workload(safe: &Safe, name: &str) -> HashMap<String, String> {
    let mut env = safe.workload_env(name);
    env.insert("AEGIS_LOG".into(), "trace".into());
    env
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
