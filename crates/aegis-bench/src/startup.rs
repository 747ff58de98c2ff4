//! `aegis-bench startup`: time to ready and memory with many stored secrets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue, DEFAULT_MAX_VERSIONS};
use aegis_core::{SecretName, SpiffeId};
use aegis_crypto::{Keyring, RootKey};
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

fn populate(dir: &Path, n: usize, size: usize) -> Result<(), CliError> {
    let marker = dir.join(format!("populated-{n}-{size}"));
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

async fn start_and_measure(work: &Path, data: &Path) -> Result<(u128, f64), CliError> {
    let svid = work.join("svid");
    let ca = aegis_identity::devca::DevCa::load_or_create(&work.join("ca"), "vsecm.com").map_err(CliError::failure)?;
    let id = SpiffeId::parse(&aegis_core::roles::RoleRules::dev_spiffe_id("vsecm.com", "vsecm-safe", "vsecm-system"))
        .map_err(CliError::failure)?;
    let paths = ca
        .issue(&id, Duration::from_secs(3600))
        .map_err(CliError::failure)?
        .write_files(&svid)
        .map_err(CliError::failure)?;
    let (port, health) = (free_port()?, free_port()?);
    let exe = aegis_exe();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
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
        .env("AEGIS_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(CliError::failure)?;
    let pid = child.id().unwrap_or(0);
    while !ready(health).await {
        if started.elapsed() > Duration::from_secs(120) || child.try_wait().map_err(CliError::failure)?.is_some() {
            return Err(CliError::failure("the Safe did not become ready within 120 s (or exited); see its log above"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_ms = started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_mb(pid);
    let _ = child.kill().await;
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
