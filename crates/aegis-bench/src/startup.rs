//! `aegis-bench startup`: time to ready and memory with many stored secrets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue, DEFAULT_MAX_VERSIONS};
use aegis_core::{SecretName, SpiffeId};
use aegis_crypto::{Keyring, RootKey};
use aegis_identity::SvidPaths;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use aegis::exit::CliError;

/// Start-up figures.
#[derive(Debug, Serialize)]
pub struct StartupReport {
    /// Secrets stored.
    pub secrets: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Plaintext total in MB.
    pub plaintext_mb: f64,
    /// From process start to `/readyz` answering 200.
    pub ready_ms: u128,
    /// Resident memory once ready, MB.
    pub rss_mb: f64,
    /// Resident memory of an idle Safe with no secrets, MB.
    pub idle_rss_mb: f64,
}

/// Builds a data set of `n` secrets `secret-000000` … of `size` bytes in `dir`
/// (`root.key` and `data/`), unless `dir` holds that data set already.
pub(crate) fn populate(dir: &Path, n: usize, size: usize) -> Result<(), CliError> {
    let marker = marker(dir, n, size);
    if marker.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    let key = Arc::new(RootKey::generate());
    aegis_store::rootkey::write(&dir.join("root.key"), &key).map_err(CliError::failure)?;
    let ring = Keyring::new(key);
    let backend = aegis::serve::adapters::backend(&dir.join("data"))?;
    let now = OffsetDateTime::now_utc();
    let value: String = "v".repeat(size);
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let mut records = Vec::with_capacity(chunk.len());
        for i in chunk {
            let name = SecretName::parse(&format!("secret-{i:06}")).map_err(CliError::failure)?;
            let mut doc = SecretDoc::empty(name.clone(), now);
            doc.put(SecretValue::new(value.clone()), SecretMeta::defaults(now), None, now, DEFAULT_MAX_VERSIONS)
                .map_err(CliError::failure)?;
            let plain = serde_json::to_vec(&doc).map_err(CliError::failure)?;
            let sealed = ring.seal(name.as_str(), doc.revision, &plain).map_err(CliError::failure)?;
            records.push((name, sealed));
        }
        if let Some(e) = backend.write_batch(&records).into_iter().find_map(Result::err) {
            return Err(CliError::failure(e));
        }
    }
    // Checkpointed, so the start-up measured never replays a journal.
    backend.flush().map_err(CliError::failure)?;
    std::fs::write(marker, b"").map_err(CliError::failure)
}

fn marker(dir: &Path, n: usize, size: usize) -> PathBuf {
    dir.join(format!("populated-{n}-{size}"))
}

const WRITTEN: &str = "written-by-a-load";

/// Records that a load wrote to the data set in `dir`. It is not built again
/// (deleting a million files takes most of an hour on a file system mounted
/// with `discard`), but the next run says so.
pub(crate) fn mark_written(dir: &Path) -> Result<(), CliError> {
    std::fs::write(dir.join(WRITTEN), b"").map_err(CliError::failure)
}

/// Whether a load wrote to the data set in `dir` since it was built.
pub(crate) fn was_written(dir: &Path) -> bool {
    dir.join(WRITTEN).exists()
}

fn free_port() -> Result<u16, CliError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(CliError::failure)?
        .local_addr()
        .map_err(CliError::failure)?
        .port())
}

async fn ready(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

/// Resident memory of a process in MB, from /proc (0 if unreadable).
pub(crate) fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `aegis` binary that runs the Safe: the one next to this program (both
/// are built into the same directory), else `aegis` on `PATH`.
fn aegis_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|dir| dir.join("aegis")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("aegis"))
}

/// An SVID for `workload` in `namespace`, issued by the benchmark's own dev CA
/// (kept in `work/ca`) into `work/svid/<workload>`.
pub(crate) fn issue_svid(work: &Path, workload: &str, namespace: &str) -> Result<SvidPaths, CliError> {
    let ca = aegis_identity::devca::DevCa::load_or_create(&work.join("ca"), "vsecm.com").map_err(CliError::failure)?;
    let id = SpiffeId::parse(&aegis_core::roles::RoleRules::dev_spiffe_id("vsecm.com", workload, namespace))
        .map_err(CliError::failure)?;
    ca.issue(&id, Duration::from_secs(24 * 3600))
        .map_err(CliError::failure)?
        .write_files(&work.join("svid").join(workload))
        .map_err(CliError::failure)
}

/// A Safe (`aegis server`) started by the benchmark on a data set; killed when dropped.
pub(crate) struct Safe {
    child: tokio::process::Child,
    /// Its process id, for /proc.
    pub(crate) pid: u32,
    /// The mTLS API's port on 127.0.0.1.
    pub(crate) port: u16,
    /// From process start to `/readyz` answering 200.
    pub(crate) ready_ms: u128,
}

impl Safe {
    /// Starts `aegis server` on the data set `data` (its `data/` and `root.key`)
    /// with the extra `args` and `env`, and waits until it is ready (120 s at most).
    pub(crate) async fn start(
        work: &Path,
        data: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<Safe, CliError> {
        let paths = issue_svid(work, "vsecm-safe", "vsecm-system")?;
        let (port, health) = (free_port()?, free_port()?);
        let started = Instant::now();
        let mut child = tokio::process::Command::new(aegis_exe())
            .arg("server")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--health-listen", &format!("127.0.0.1:{health}")])
            .arg("--data-dir")
            .arg(data.join("data"))
            .arg("--root-key-file")
            .arg(data.join("root.key"))
            .args([
                &"--svid-cert".into(),
                &paths.cert,
                &"--svid-key".into(),
                &paths.key,
                &"--svid-bundle".into(),
                &paths.bundle,
            ])
            .args(args)
            .env("AEGIS_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(CliError::failure)?;
        let pid = child.id().unwrap_or(0);
        while !ready(health).await {
            if started.elapsed() > Duration::from_secs(120) || child.try_wait().map_err(CliError::failure)?.is_some() {
                return Err(CliError::failure(
                    "the Safe did not become ready within 120 s (or exited); see its log above",
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Safe { child, pid, port, ready_ms: started.elapsed().as_millis() })
    }

    /// Resident memory now, MB.
    pub(crate) fn rss_mb(&self) -> f64 {
        rss_mb(self.pid)
    }

    /// Stops the Safe as an orchestrator would (SIGTERM, so it checkpoints its
    /// journal and the next start replays nothing), killing it after 60 s.
    pub(crate) async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

async fn start_and_measure(work: &Path, data: &Path) -> Result<(u128, f64), CliError> {
    let safe = Safe::start(work, data, &[], &[]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = safe.rss_mb();
    let ready_ms = safe.ready_ms;
    safe.stop().await;
    Ok((ready_ms, rss))
}

/// Runs the start-up benchmark.
pub async fn run(n: usize, size: usize, work: &Path) -> Result<StartupReport, CliError> {
    std::fs::create_dir_all(work).map_err(CliError::failure)?;
    let full = work.join("full");
    let empty = work.join("empty");
    populate(&full, n, size)?;
    populate(&empty, 0, size)?;
    let (ready_ms, rss_mb) = start_and_measure(work, &full).await?;
    let (_, idle_rss_mb) = start_and_measure(work, &empty).await?;
    Ok(StartupReport {
        secrets: n,
        value_bytes: size,
        plaintext_mb: (n * size) as f64 / 1_048_576.0,
        ready_ms,
        rss_mb,
        idle_rss_mb,
    })
}
