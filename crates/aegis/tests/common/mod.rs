//! Shared harness: starts the real `aegis` binary and talks to it over real mTLS.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod delivery;
pub mod kube;
pub mod postgres;
pub mod spire;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const AEGIS: &str = env!("CARGO_BIN_EXE_aegis");
pub const SAFE: &str = env!("CARGO_BIN_EXE_safe");

/// A free port below the kernel's ephemeral range (32768 and up), so that no
/// outgoing connection of a parallel test can take it between this check and
/// the Safe's bind. Each call hands out a new port. The count starts at a place
/// picked by the process id (so parallel test processes seldom meet) and wraps
/// from 32000 back to 20000: one test binary runs every system test, and a start
/// near the top of the range must not run out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, (std::process::id() % 500) * 20, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {} on 127.0.0.1", FIRST + SPAN)
}

/// Writes a policy file that lets the Sentinel of trust domain `td` `reveal`
/// values, and returns its path. The tests' Safes start with it unless they set
/// `AEGIS_POLICY_FILE` themselves (empty: none, a Safe's default), so that they
/// can read back what they stored with `aegis get`; a Safe's default does not
/// allow that (tests in `policies.rs` check the default).
pub fn reveal_policy_file(dir: &Path, td: &str) -> PathBuf {
    let file = dir.join("test-policies.json");
    let doc = format!(
        r#"[{{"name":"test-sentinel-reveal","spiffe_ids":["spiffe://{td}/workload/vsecm-sentinel/*"],"secrets":["*"],"actions":["reveal"]}}]"#
    );
    fs::write(&file, doc).unwrap();
    file
}

/// A command with a clean environment plus `env`.
pub fn cmd(bin: &str, env: &HashMap<String, String>) -> Command {
    let mut c = Command::new(bin);
    c.env_clear();
    for k in ["PATH", "HOME", "TMPDIR"] {
        if let Ok(v) = std::env::var(k) {
            c.env(k, v);
        }
    }
    c.envs(env);
    c.stdin(Stdio::null());
    c
}

/// The environment of a Safe whose Kubernetes API cannot be reached just now:
/// `KUBECONFIG` names a kubeconfig of a closed local port. The `k8s:` sync is
/// then on (a Safe with no Kubernetes API at all refuses `k8s:` writes), a
/// `k8s:` write is stored (the sync accepts what it cannot check) and its
/// Kubernetes Secret stays pending. For tests that store `k8s:` secrets but are
/// not about Kubernetes. The file is world-readable: Safes of other uids read it.
pub fn offline_kube_env() -> HashMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("aegis-test-offline-kubeconfig-{}", std::process::id()));
    if !path.exists() {
        let text =
            "apiVersion: v1\nkind: Config\nclusters:\n- name: offline\n  cluster:\n    server: http://127.0.0.1:1\n\
                    contexts:\n- name: offline\n  context:\n    cluster: offline\n    user: offline\n\
                    current-context: offline\nusers:\n- name: offline\n  user: {}\n";
        let tmp = path.with_extension(format!("tmp-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&tmp, &path).unwrap();
    }
    HashMap::from([("KUBECONFIG".to_owned(), path.display().to_string())])
}

/// Parses `export K='V'` lines.
pub fn parse_exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

pub fn http_ok(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.starts_with("HTTP/1.0 200").then_some(buf)
}

/// A running `aegis dev` (or `aegis server`) process with its data directory.
pub struct Safe {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub health: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub extra_env: HashMap<String, String>,
    pub args: Vec<String>,
    /// Soft and hard file descriptor limit of the Safe process (set with prlimit).
    pub fd_limit: Option<u64>,
    /// A command the Safe runs under (e.g. strace and its flags); empty: none.
    pub wrap: Vec<String>,
    starts: usize,
}

impl Safe {
    /// `aegis dev` on free ports with the most verbose logs.
    pub fn dev() -> Self {
        Self::dev_with(&[], None)
    }

    /// `aegis dev` with extra flags and, if given, a file descriptor limit.
    pub fn dev_with(extra: &[&str], fd_limit: Option<u64>) -> Self {
        Self::dev_with_env(extra, fd_limit, HashMap::new())
    }

    /// `aegis dev` with extra flags, a file descriptor limit if given, and
    /// extra environment variables (kept for restarts).
    pub fn dev_with_env(extra: &[&str], fd_limit: Option<u64>, env: HashMap<String, String>) -> Self {
        Self::dev_built(extra, fd_limit, env, Vec::new())
    }

    /// `aegis dev` run under `wrap` (a command and its flags, such as strace's).
    pub fn dev_under(wrap: &[&str]) -> Self {
        Self::dev_built(&[], None, HashMap::new(), wrap.iter().map(|a| a.to_string()).collect())
    }

    /// `aegis dev` with extra flags and the root key of another dev Safe
    /// (replicas sharing one store share its root key).
    pub fn dev_with_root_key(extra: &[&str], root_key: &Path) -> Self {
        Self::dev_prepared(extra, None, HashMap::new(), Vec::new(), |data| {
            fs::create_dir_all(data).unwrap();
            fs::copy(root_key, data.join("root.key")).unwrap();
        })
    }

    /// `aegis dev` with extra flags, the root key and the development CA of
    /// `other`: a replica whose clients and SVIDs both Safes accept.
    pub fn dev_replica_of(extra: &[&str], other: &Safe) -> Self {
        Self::dev_replica_with_env(extra, other, HashMap::new())
    }

    /// [`Safe::dev_replica_of`] with extra environment variables.
    pub fn dev_replica_with_env(extra: &[&str], other: &Safe, env: HashMap<String, String>) -> Self {
        let from = other.data_dir();
        Self::dev_prepared(extra, None, env, Vec::new(), |data| {
            fs::create_dir_all(data.join("ca")).unwrap();
            // Not there when the Safes share a key file elsewhere (--root-key-file).
            if from.join("root.key").exists() {
                fs::copy(from.join("root.key"), data.join("root.key")).unwrap();
            }
            for f in fs::read_dir(from.join("ca")).unwrap() {
                let f = f.unwrap();
                fs::copy(f.path(), data.join("ca").join(f.file_name())).unwrap();
            }
        })
    }

    fn dev_built(extra: &[&str], fd_limit: Option<u64>, env: HashMap<String, String>, wrap: Vec<String>) -> Self {
        Self::dev_prepared(extra, fd_limit, env, wrap, |_| {})
    }

    fn dev_prepared(
        extra: &[&str],
        fd_limit: Option<u64>,
        env: HashMap<String, String>,
        wrap: Vec<String>,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self {
            log: dir.path().join("safe.log"),
            dir,
            port: free_port(),
            health: free_port(),
            child: None,
            extra_env: env,
            args: Vec::new(),
            fd_limit,
            wrap,
            starts: 0,
        };
        let (p, h) = (s.port, s.health);
        s.args = vec![
            "dev".into(),
            "--data-dir".into(),
            s.data_dir().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{p}"),
            "--health-listen".into(),
            format!("127.0.0.1:{h}"),
        ];
        s.args.extend(extra.iter().map(|a| a.to_string()));
        prepare(&s.data_dir());
        s.start();
        s.wait_ready();
        s
    }

    /// `aegis dev` with a Kubernetes API that cannot be reached ([`offline_kube_env`]):
    /// `k8s:` secrets are stored, for tests of names, import or the Sentinel.
    pub fn dev_offline_kube() -> Self {
        Self::dev_with_env(&[], None, offline_kube_env())
    }

    /// `aegis server --manual-root-key` with dev-CA SVID files: starts sealed.
    pub fn server_manual() -> Self {
        let mut s = Self::server_unstarted(&["--manual-root-key"]);
        s.start();
        s.wait_up();
        s
    }

    /// `aegis server` with dev-CA SVID files, free ports and `root_key` (the
    /// flags choosing the root key store), not started yet. The admin
    /// environment is in `admin_env()` as with `aegis dev`.
    pub fn server_unstarted(root_key: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, health) = (free_port(), free_port());
        let data = dir.path().join("dev");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("safe-url"), format!("https://127.0.0.1:{port}")).unwrap();
        let issue = |w: &str| {
            let out = cmd(AEGIS, &HashMap::new())
                .args(["dev", "svid", "--workload", w, "--namespace", "vsecm-system", "--data-dir"])
                .arg(&data)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let safe_env = parse_exports(&issue("vsecm-safe"));
        fs::write(data.join("env"), issue("vsecm-sentinel")).unwrap();
        let mut args: Vec<String> = vec!["server".into()];
        args.extend(root_key.iter().map(|a| a.to_string()));
        args.extend([
            "--data-dir".into(),
            data.join("data").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--health-listen".into(),
            format!("127.0.0.1:{health}"),
            "--svid-cert".into(),
            safe_env["AEGIS_SVID_CERT"].clone(),
            "--svid-key".into(),
            safe_env["AEGIS_SVID_KEY"].clone(),
            "--svid-bundle".into(),
            safe_env["AEGIS_SVID_BUNDLE"].clone(),
            "--handshake-timeout-ms".into(),
            "1000".into(),
        ]);
        Self {
            log: dir.path().join("safe.log"),
            dir,
            port,
            health,
            child: None,
            extra_env: HashMap::new(),
            args,
            fd_limit: None,
            wrap: Vec::new(),
            starts: 0,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    pub fn start(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut env = HashMap::from([("AEGIS_LOG".to_owned(), "trace".to_owned())]);
        env.extend(self.extra_env.clone());
        if !env.contains_key("AEGIS_POLICY_FILE") {
            let td = env.get("SPIFFE_TRUST_DOMAIN").cloned().unwrap_or_else(|| "vsecm.com".to_owned());
            let file = reveal_policy_file(self.dir.path(), &td);
            env.insert("AEGIS_POLICY_FILE".to_owned(), file.display().to_string());
        }
        let mut command = match (self.fd_limit, self.wrap.split_first()) {
            (Some(n), _) => {
                let mut c = cmd("prlimit", &env);
                c.arg(format!("--nofile={n}:{n}")).arg("--").args(&self.wrap).arg(AEGIS);
                c
            }
            (None, Some((first, rest))) => {
                let mut c = cmd(first, &env);
                c.args(rest).arg(AEGIS);
                c
            }
            (None, None) => cmd(AEGIS, &env),
        };
        let child = command.args(&self.args).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        self.starts += 1;
    }

    /// Waits until /healthz answers (the process is up).
    pub fn wait_up(&mut self) {
        let t = Instant::now();
        while http_ok(self.health, "/healthz").is_none() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the Safe exited ({status}); log:\n{}", self.log_text());
            }
            assert!(t.elapsed() < Duration::from_secs(60), "Safe not up; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until /readyz answers 200 (unsealed).
    pub fn wait_ready(&mut self) {
        self.wait_up();
        let t = Instant::now();
        while http_ok(self.health, "/readyz").is_none() {
            assert!(t.elapsed() < Duration::from_secs(60), "Safe not ready; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the Safe with SIGTERM and waits (at most 15 s) for it to exit.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("the Safe runs");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(15), "the Safe did not stop; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.start();
        self.wait_up();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log without the terminal colour codes it is written with.
    pub fn plain_log_text(&self) -> String {
        let mut out = String::new();
        let mut esc = false;
        for c in self.log_text().chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    }

    /// The admin environment `aegis dev` wrote.
    pub fn admin_env(&self) -> HashMap<String, String> {
        parse_exports(&fs::read_to_string(self.data_dir().join("env")).unwrap())
    }

    /// Issues a workload SVID with `aegis dev svid` and returns its environment.
    pub fn workload_env(&self, workload: &str) -> HashMap<String, String> {
        let out = cmd(AEGIS, &HashMap::new())
            .args(["dev", "svid", "--workload", workload, "--data-dir"])
            .arg(self.data_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        parse_exports(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn aegis(&self, env: &HashMap<String, String>, args: &[&str]) -> Output {
        cmd(AEGIS, env).args(args).output().unwrap()
    }

    pub fn safe(&self, env: &HashMap<String, String>, args: &[&str]) -> Output {
        cmd(SAFE, env).args(args).output().unwrap()
    }

    pub async fn client(&self, env: &HashMap<String, String>) -> aegis_sdk::Client {
        let settings = aegis_sdk::Settings::from_lookup(|k| env.get(k).cloned()).unwrap();
        aegis_sdk::Client::connect(&settings).await.unwrap()
    }
}

impl Drop for Safe {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The Safe's Prometheus metrics.
pub fn metrics(safe: &Safe) -> String {
    http_ok(safe.health, "/metrics").expect("metrics answer")
}

/// The value of one metric line that starts with `prefix`, or 0.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// A raw mTLS connection to the Safe as the identity in `env` (SVID files).
pub async fn tls_connect(
    env: &HashMap<String, String>,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use std::sync::Arc;
    let read = |k: &str| fs::read(&env[k]).unwrap();
    let material = aegis_identity::SvidMaterial::from_pem(
        &read("AEGIS_SVID_CERT"),
        &read("AEGIS_SVID_KEY"),
        &read("AEGIS_SVID_BUNDLE"),
    )
    .unwrap();
    let source = Arc::new(aegis_identity::StaticSource(Arc::new(material)));
    let roles = aegis_core::roles::RoleRules::vsecm_defaults();
    let cfg = aegis_identity::client_config(source, Arc::new(move |id| roles.is_safe(id))).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "command failed ({:?}):\nstdout: {}\nstderr: {}", o.status, stdout(&o), stderr(&o));
    stdout(&o)
}

/// Asserts failure with `code` and that stderr contains `msg`.
pub fn fails(o: Output, code: i32, msg: &str) {
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(msg), "expected {msg:?} in stderr: {}", stderr(&o));
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The path in `var`, or else the last line printed by the repo's build `script`
/// (which builds once and caches). Panics with `hint` if the script fails.
pub fn env_or_build(var: &str, script: &str, hint: &str) -> PathBuf {
    if let Ok(v) = std::env::var(var) {
        if !v.trim().is_empty() {
            return PathBuf::from(v);
        }
    }
    let script = repo_root().join(script);
    eprintln!("running {} (builds once, then cached)", script.display());
    let t = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{hint} ({} failed: {})", script.display(), out.status);
    eprintln!("{} done after {:.1}s", script.display(), t.elapsed().as_secs_f64());
    PathBuf::from(stdout(&out).lines().last().unwrap_or_default().trim())
}

/// `tail -n` of a file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
