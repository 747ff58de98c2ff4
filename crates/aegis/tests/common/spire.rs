//! SPIRE harness: a real spire-server and spire-agent (started by `scripts/spire.sh`)
//! on unix sockets in a temp dir, and the Aegis binaries run under distinct unix
//! uids so the agent's unix workload attestor tells them apart (`unix:uid:N`).
//!
//! The tests run as root so they can start children under other uids
//! (`CommandExt::uid`). Every file a child needs sits under the world directory
//! (mode 0755) with the Aegis binaries hard-linked (or copied) there, because the
//! cargo target dir may sit under a home directory other uids cannot enter.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{cmd, free_port, http_ok, parse_exports, stderr, stdout, AEGIS, SAFE};
pub use crate::common::{env_or_build, repo_root, tail};

/// Uid of the Safe (`aegis server`).
pub const SAFE_UID: u32 = 41001;
/// Uid of the Sentinel (`safe`, `aegis put`).
pub const SENTINEL_UID: u32 = 41002;
/// Uid of the workload `billing`.
pub const BILLING_UID: u32 = 41003;
/// Uid of the workload `payroll`.
pub const PAYROLL_UID: u32 = 41004;

pub const TRUST_DOMAIN: &str = "vsecm.com";

/// The SPIFFE ID `scripts/spire.sh register` gives: VSecM's scheme with pod name `local`.
pub fn spiffe_id(kind: &str, name: &str) -> String {
    match kind {
        "safe" => format!("spiffe://{TRUST_DOMAIN}/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/local"),
        "sentinel" => {
            format!("spiffe://{TRUST_DOMAIN}/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/local")
        }
        _ => format!("spiffe://{TRUST_DOMAIN}/workload/{name}/ns/default/sa/{name}/n/local"),
    }
}

/// The directory with `spire-server` and `spire-agent`: `AEGIS_SPIRE_BIN_DIR` if
/// set, else what `scripts/build-spire.sh` builds (once, into the cache; instant
/// when cached). Panics if there are none: these tests never skip.
pub fn spire_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = env_or_build(
            "AEGIS_SPIRE_BIN_DIR",
            "scripts/build-spire.sh",
            "SPIRE binaries are missing; the SPIRE tests need spire-server and spire-agent: run \
             scripts/build-spire.sh (needs Go and the Go module proxy) or set AEGIS_SPIRE_BIN_DIR",
        );
        for b in ["spire-server", "spire-agent"] {
            assert!(
                dir.join(b).is_file(),
                "{} is missing: the SPIRE tests need it (run scripts/build-spire.sh or fix AEGIS_SPIRE_BIN_DIR)",
                dir.join(b).display()
            );
        }
        dir
    })
}

fn mkdir(path: &Path, mode: u32, owner: Option<u32>) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    }
}

fn link_or_copy(src: &Path, dst: &Path) {
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", src.display(), dst.display()));
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).unwrap();
}

/// One SPIRE deployment (server, and an agent unless `--no-agent`) plus a world
/// directory that processes under other uids can use.
pub struct Spire {
    /// World dir (0755): `spire/` (the deployment), `bin/` (binaries), per-test files.
    pub dir: tempfile::TempDir,
    /// `DIR/spire/env` of `scripts/spire.sh start`.
    pub env: HashMap<String, String>,
    /// A label for failure reports.
    pub label: String,
}

impl Spire {
    /// `scripts/spire.sh start` with `args` (e.g. `--svid-ttl 60s`).
    pub fn start(label: &str, args: &[&str]) -> Self {
        assert!(
            fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0,
            "the SPIRE tests must run as root: they start workloads under other uids for the unix attestor"
        );
        let bin = spire_bin_dir();
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new().prefix("aegis-spire-").tempdir_in("/tmp").unwrap();
        mkdir(dir.path(), 0o755, None);
        let bins = dir.path().join("bin");
        mkdir(&bins, 0o755, None);
        link_or_copy(Path::new(AEGIS), &bins.join("aegis"));
        link_or_copy(Path::new(SAFE), &bins.join("safe"));
        link_or_copy(&bin.join("spire-agent"), &bins.join("spire-agent"));
        let spire_dir = dir.path().join("spire");
        let t = Instant::now();
        // One retry: a start can fail for reasons outside Aegis (a port taken between
        // the script's check and the server's bind). A second failure fails the test.
        for attempt in 1..=2 {
            let out = Command::new("bash")
                .arg(repo_root().join("scripts/spire.sh"))
                .arg("start")
                .arg(&spire_dir)
                .args(args)
                .env("SPIRE_BIN_DIR", bin)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            let report = format!(
                "scripts/spire.sh start failed ({}):\nstdout: {}\nstderr: {}\n---- server.log\n{}\n---- agent.log\n{}",
                out.status,
                stdout(&out),
                stderr(&out),
                tail(&spire_dir.join("server.log"), 80),
                tail(&spire_dir.join("agent.log"), 80)
            );
            assert!(attempt < 2, "{report}");
            eprintln!("spire harness [{label}]: first start failed, retrying once:\n{report}");
            let _ = Command::new("bash")
                .arg(repo_root().join("scripts/spire.sh"))
                .arg("stop")
                .arg(&spire_dir)
                .stdin(Stdio::null())
                .output();
            let _ = fs::remove_dir_all(&spire_dir);
        }
        eprintln!("spire harness [{label}]: SPIRE up in {:.1}s", t.elapsed().as_secs_f64());
        let env = parse_exports(&fs::read_to_string(spire_dir.join("env")).unwrap());
        Self { dir, env, label: label.to_owned() }
    }

    pub fn spire_dir(&self) -> PathBuf {
        self.dir.path().join("spire")
    }

    /// `unix:///…/api.sock`: the agent's Workload API.
    pub fn socket(&self) -> String {
        self.env["SPIFFE_ENDPOINT_SOCKET"].clone()
    }

    /// The trust bundle of this deployment (PEM).
    pub fn bundle_path(&self) -> PathBuf {
        PathBuf::from(&self.env["SPIRE_BUNDLE"])
    }

    /// A staged binary (`aegis`, `safe`, `spire-agent`) any uid may run.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join("bin").join(name)
    }

    /// A fresh directory under the world dir owned by `uid`.
    pub fn dir_for(&self, name: &str, uid: u32) -> PathBuf {
        let p = self.dir.path().join(name);
        mkdir(&p, 0o700, Some(uid));
        p
    }

    /// `spire-server ARGS -socketPath …`.
    pub fn server(&self, args: &[&str]) -> Output {
        Command::new(Path::new(&self.env["SPIRE_BIN_DIR"]).join("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(&self.env["SPIRE_SERVER_SOCKET"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `spire-server ARGS`, which must succeed; returns stdout.
    pub fn server_ok(&self, args: &[&str]) -> String {
        let out = self.server(args);
        assert!(
            out.status.success(),
            "spire-server {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `scripts/spire.sh register` for `kind` (safe, sentinel, workload) by uid; returns the entry ID.
    pub fn register(&self, kind: &str, name: &str, uid: u32, extra: &[&str]) -> String {
        let mut c = Command::new("bash");
        c.arg(repo_root().join("scripts/spire.sh")).arg("register").arg(self.spire_dir()).arg(kind);
        if kind == "workload" {
            c.arg(name);
        }
        c.arg(format!("uid:{uid}"));
        if !extra.is_empty() {
            c.arg("--").args(extra);
        }
        let out = c.stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "register {kind} {name} uid:{uid} failed:\n{}", stderr(&out));
        let id = stdout(&out).trim().to_owned();
        assert!(!id.is_empty(), "register printed no entry ID: {}", stderr(&out));
        id
    }

    /// Runs a staged binary as `uid` with `env` (plus PATH etc.), in the world dir.
    pub fn run_as(&self, uid: u32, bin: &str, env: &HashMap<String, String>, args: &[&str]) -> Output {
        self.command_as(uid, bin, env, args).output().unwrap()
    }

    pub fn command_as(&self, uid: u32, bin: &str, env: &HashMap<String, String>, args: &[&str]) -> Command {
        let bin = self.bin(bin);
        let mut c = cmd(bin.to_str().unwrap(), env);
        c.args(args).uid(uid).gid(uid).current_dir(self.dir.path());
        c
    }

    /// Client settings for the Safe at `url` with SVID files of `spiffe_id` that
    /// `issuer`'s server mints into `name` under this world's dir, and this
    /// deployment's bundle to check the Safe with.
    pub fn minted_client_env(&self, issuer: &Spire, spiffe_id: &str, name: &str, url: &str) -> HashMap<String, String> {
        let d = self.dir.path().join(name);
        fs::create_dir_all(&d).unwrap();
        issuer.server_ok(&["x509", "mint", "-spiffeID", spiffe_id, "-ttl", "1h", "-write", d.to_str().unwrap()]);
        HashMap::from([
            ("AEGIS_SAFE_URL".to_owned(), url.to_owned()),
            ("AEGIS_SVID_CERT".to_owned(), d.join("svid.pem").display().to_string()),
            ("AEGIS_SVID_KEY".to_owned(), d.join("key.pem").display().to_string()),
            ("AEGIS_SVID_BUNDLE".to_owned(), self.bundle_path().display().to_string()),
        ])
    }

    /// `spire-agent api fetch x509` as `uid`.
    pub fn fetch_svid_as(&self, uid: u32) -> Output {
        let sock = self.socket();
        let sock = sock.trim_start_matches("unix://");
        self.run_as(
            uid,
            "spire-agent",
            &HashMap::new(),
            &["api", "fetch", "x509", "-timeout", "5s", "-socketPath", sock],
        )
    }

    /// Waits until the agent hands `uid` an SVID with `spiffe_id` (the agent
    /// syncs new entries from the server every few seconds).
    pub fn wait_svid(&self, uid: u32, spiffe_id: &str) {
        let t = Instant::now();
        loop {
            let out = self.fetch_svid_as(uid);
            let text = stdout(&out);
            if out.status.success() && text.contains(spiffe_id) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "uid {uid} got no SVID {spiffe_id} from the agent within 90s:\nstdout: {text}\nstderr: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the agent no longer hands `uid` any SVID.
    pub fn wait_no_svid(&self, uid: u32) {
        let t = Instant::now();
        while self.fetch_svid_as(uid).status.success() {
            assert!(t.elapsed() < Duration::from_secs(90), "uid {uid} still gets an SVID after 90s");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The tails of the SPIRE logs.
    pub fn logs(&self) -> String {
        let d = self.spire_dir();
        format!(
            "---- SPIRE [{}] server.log (tail)\n{}\n---- SPIRE [{}] agent.log (tail)\n{}",
            self.label,
            tail(&d.join("server.log"), 120),
            self.label,
            tail(&d.join("agent.log"), 120)
        )
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/spire.sh"))
            .arg("stop")
            .arg(self.spire_dir())
            .stdin(Stdio::null())
            .output();
    }
}

/// `aegis server` running as `uid` with its identity from the Workload API.
pub struct UidSafe {
    pub port: u16,
    pub health: u16,
    pub url: String,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl UidSafe {
    /// Spawns `aegis server` as `uid` (data and root key under a dir owned by `uid`).
    pub fn spawn(spire: &Spire, uid: u32) -> Self {
        Self::spawn_with_env(spire, uid, HashMap::new())
    }

    /// [`UidSafe::spawn`] with extra environment variables.
    pub fn spawn_with_env(spire: &Spire, uid: u32, extra: HashMap<String, String>) -> Self {
        Self::spawn_on(spire, uid, extra, free_port())
    }

    /// [`UidSafe::spawn_with_env`] on the API port `port` (a restart where clients expect it).
    pub fn spawn_on(spire: &Spire, uid: u32, extra: HashMap<String, String>, port: u16) -> Self {
        let home = spire.dir_for(&format!("safe-{uid}"), uid);
        let health = free_port();
        let log = spire.dir.path().join(format!("safe-{uid}.log"));
        let logf = fs::File::create(&log).unwrap();
        let mut env = HashMap::from([("AEGIS_LOG".to_owned(), "debug".to_owned())]);
        env.extend(extra);
        if !env.contains_key("AEGIS_POLICY_FILE") {
            // Readable by the Safe's uid: the directory it owns.
            let file = crate::common::reveal_policy_file(&home, TRUST_DOMAIN);
            std::os::unix::fs::chown(&file, Some(uid), None).unwrap();
            env.insert("AEGIS_POLICY_FILE".to_owned(), file.display().to_string());
        }
        let child = spire
            .command_as(
                uid,
                "aegis",
                &env,
                &[
                    "server",
                    "--root-key-file",
                    home.join("root.key").to_str().unwrap(),
                    "--data-dir",
                    home.join("data").to_str().unwrap(),
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--health-listen",
                    &format!("127.0.0.1:{health}"),
                    "--spiffe-endpoint-socket",
                    &spire.socket(),
                ],
            )
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        Self { port, health, url: format!("https://127.0.0.1:{port}"), log, child: Some(child) }
    }

    /// Spawns and waits until `/readyz` answers.
    pub fn start(spire: &Spire, uid: u32) -> Self {
        Self::start_with_env(spire, uid, HashMap::new())
    }

    /// [`UidSafe::start`] with extra environment variables.
    pub fn start_with_env(spire: &Spire, uid: u32, extra: HashMap<String, String>) -> Self {
        Self::start_on(spire, uid, extra, free_port())
    }

    /// [`UidSafe::start_with_env`] on the API port `port`.
    pub fn start_on(spire: &Spire, uid: u32, extra: HashMap<String, String>, port: u16) -> Self {
        let mut s = Self::spawn_on(spire, uid, extra, port);
        let t = Instant::now();
        while http_ok(s.health, "/readyz").is_none() {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the Safe (uid {uid}) exited ({status}); log:\n{}", s.log_text());
            }
            assert!(t.elapsed() < Duration::from_secs(90), "Safe not ready after 90s; log:\n{}", s.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Waits for the process to exit by itself (at most `limit`) and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(t.elapsed() < limit, "the Safe did not exit within {limit:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Client settings for this Safe over the Workload API at `spire`.
    pub fn client_env(&self, spire: &Spire) -> HashMap<String, String> {
        HashMap::from([
            ("SPIFFE_ENDPOINT_SOCKET".to_owned(), spire.socket()),
            ("AEGIS_SAFE_URL".to_owned(), self.url.clone()),
        ])
    }
}

impl Drop for UidSafe {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- Safe log {} (tail)\n{}", self.log.display(), tail(&self.log, 150));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
