//! Every `aegis` process keeps what it holds out of core files, and locks its
//! memory when asked and allowed (crates/aegis/src/harden.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, AEGIS};

/// Starts `program args` in `dir` with unlimited core files (and `wrap` before it),
/// every signal at its default action: a test run from a shell's background job or
/// under `nohup` inherits SIGQUIT, SIGINT or SIGHUP ignored, and would wait forever.
fn start(dir: &Path, wrap: &[&str], program: &str, args: &[&str]) -> Child {
    let log = fs::File::create(dir.join("out.log")).unwrap();
    Command::new("prlimit")
        .arg("--core=unlimited")
        .arg("--")
        .args(["env", "--default-signal"])
        .args(wrap)
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prlimit (util-linux) runs")
}

/// `aegis dev` in `dir` on free ports.
fn start_dev(dir: &Path, wrap: &[&str], global: &[&str]) -> Child {
    let data = dir.join("data");
    let (listen, health) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut args: Vec<&str> = global.to_vec();
    args.extend(["dev", "--data-dir", data.to_str().unwrap(), "--listen", &listen, "--health-listen", &health]);
    let child = start(dir, wrap, AEGIS, &args);
    let up = Instant::now();
    while !fs::read_to_string(dir.join("out.log")).unwrap().contains("Safe listening") {
        assert!(up.elapsed() < Duration::from_secs(30), "aegis dev did not start:\n{}", log(dir));
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn log(dir: &Path) -> String {
    fs::read_to_string(dir.join("out.log")).unwrap_or_default()
}

/// A line of `/proc/<pid>/status`, e.g. `VmLck`.
fn status_field(child: &Child, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap().trim().to_owned()
}

/// Kills `child` with `signal` (one that dumps core) and lists the core files left in `dir`.
fn crash(mut child: Child, signal: &str, dir: &Path) -> Vec<String> {
    let ok = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let ignored = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            let ignored = ignored.lines().find(|l| l.starts_with("SigIgn")).unwrap_or_default().to_owned();
            let _ = child.kill();
            panic!("the process survived SIG{signal} for 30 s ({ignored})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the process survived SIG{signal}");
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("core"))
        .collect()
}

/// This machine must write core files at all, else the test cannot show anything.
fn assert_machine_writes_cores() {
    let dir = tempfile::tempdir().unwrap();
    let sleeper = start(dir.path(), &[], "sleep", &["60"]);
    std::thread::sleep(Duration::from_millis(200));
    let cores = crash(sleeper, "SEGV", dir.path());
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    assert!(
        !cores.is_empty(),
        "a crashing `sleep` left no core file in its directory (core_pattern: {}), so this machine cannot show \
         that aegis leaves none; set /proc/sys/kernel/core_pattern to `core`",
        pattern.trim()
    );
}

#[test]
fn a_crashing_safe_leaves_no_core_file() {
    assert_machine_writes_cores();
    // Not SIGSEGV or SIGBUS: Rust's runtime catches those (to report stack overflows),
    // so one sent with kill does not end the process.
    for signal in ["ABRT", "QUIT", "TRAP"] {
        let dir = tempfile::tempdir().unwrap();
        let safe = start_dev(dir.path(), &[], &[]);
        let limits = fs::read_to_string(format!("/proc/{}/limits", safe.id())).unwrap();
        let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
        assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
        let cores = crash(safe, signal, dir.path());
        assert!(cores.is_empty(), "SIG{signal} left {cores:?}");
    }
}

#[test]
fn memory_is_locked_when_asked_and_allowed() {
    // As root (CAP_IPC_LOCK): locked.
    let dir = tempfile::tempdir().unwrap();
    let mut safe = start_dev(dir.path(), &[], &["--lock-memory"]);
    let locked = status_field(&safe, "VmLck");
    let kb: u64 = locked.trim_end_matches(" kB").parse().unwrap();
    assert!(kb > 1024, "VmLck is {locked}:\n{}", log(dir.path()));
    assert!(log(dir.path()).contains("memory locked"), "{}", log(dir.path()));
    safe.kill().unwrap();
    safe.wait().unwrap();

    // As nobody with a small RLIMIT_MEMLOCK: a warning saying what to do, and the Safe serves unlocked.
    let dir = tempfile::tempdir().unwrap();
    Command::new("chmod").args(["777", dir.path().to_str().unwrap()]).status().unwrap();
    let nobody =
        ["prlimit", "--memlock=65536", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
    let mut safe = start_dev(dir.path(), &nobody, &["--lock-memory"]);
    assert_eq!(status_field(&safe, "VmLck"), "0 kB");
    let text = log(dir.path());
    assert!(text.contains("memory not locked") && text.contains("ulimit -l unlimited"), "{text}");
    safe.kill().unwrap();
    safe.wait().unwrap();
}
