//! `aegis-bench watchers`: many idle watch connections against one Safe.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use http_body_util::{BodyExt, Empty};
use serde::Serialize;

use crate::fetch::{target, Target};
use aegis::exit::CliError;

/// Arguments of `aegis-bench watchers`.
#[derive(Args, Debug)]
pub struct WatchersArgs {
    /// Watch connections to open.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// PID of the Safe, to read its memory and CPU time from /proc.
    #[arg(long)]
    safe_pid: u32,
    /// Seconds to stay idle while measuring CPU.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Admin SVID certificate (the bench writes the change as the admin).
    #[arg(long)]
    admin_cert: PathBuf,
    /// Admin SVID key.
    #[arg(long)]
    admin_key: PathBuf,
    /// Admin trust bundle.
    #[arg(long)]
    admin_bundle: PathBuf,
    /// Secret the watchers' workload reads.
    #[arg(long, default_value = "billing")]
    secret: String,
}

/// Figures of the watcher benchmark.
#[derive(Debug, Serialize)]
pub struct WatchersReport {
    /// Watch connections held open.
    pub watchers: usize,
    /// Safe resident memory before, MB.
    pub rss_before_mb: f64,
    /// Safe resident memory with every watcher waiting, MB.
    pub rss_with_watchers_mb: f64,
    /// Extra memory per watcher, KB.
    pub per_watcher_kb: f64,
    /// Safe CPU use while all watchers idle, percent of one core.
    pub idle_cpu_percent: f64,
    /// Watchers that received the change.
    pub notified: usize,
    /// From the admin's write being sent to the first watcher notified, ms.
    pub first_notified_ms: f64,
    /// From the admin's write being sent to the last watcher notified, ms.
    pub all_notified_ms: f64,
}

/// User plus system CPU time of a process, in clock ticks (1/100 s on Linux).
fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

async fn open_watch(t: &Target, revision: u64) -> Result<tokio::task::JoinHandle<Option<Instant>>, String> {
    let tcp = tokio::net::TcpStream::connect(t.addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
    let tls = t.tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<hyper::body::Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("/v1/workload/watch?revision={revision}&wait_ms=300000"))
        .header(hyper::header::HOST, t.host.as_str())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        let resp = sender.send_request(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let ev: aegis_core::api::WatchEvent = serde_json::from_slice(&body).ok()?;
        (ev.revision != revision).then(Instant::now)
    }))
}

/// Runs the benchmark.
pub async fn run(a: WatchersArgs) -> Result<WatchersReport, CliError> {
    let t = Arc::new(target(false).await?);
    let work = aegis::connect::client().await?;
    let revision = work.watch_once(u64::MAX, Duration::from_secs(5)).await?.revision;
    let mut admin_settings = aegis::connect::settings()?;
    admin_settings.identity = aegis_identity::IdentityConfig::Files(aegis_identity::SvidPaths {
        cert: a.admin_cert,
        key: a.admin_key,
        bundle: a.admin_bundle,
    });
    let admin = aegis_sdk::Client::connect(&admin_settings).await?;
    let rss_before = crate::startup::rss_mb(a.safe_pid);
    let mut handles = Vec::with_capacity(a.count);
    for chunk in (0..a.count).collect::<Vec<_>>().chunks(256) {
        let opened = futures::future::join_all(chunk.iter().map(|_| open_watch(&t, revision))).await;
        for h in opened {
            handles.push(h.map_err(|e| CliError::failure(format!("could not open watcher {}: {e}", handles.len())))?);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_with = crate::startup::rss_mb(a.safe_pid);
    let cpu0 = proc_cpu_ticks(a.safe_pid);
    tokio::time::sleep(Duration::from_secs(a.idle_seconds)).await;
    let idle_cpu = (proc_cpu_ticks(a.safe_pid) - cpu0) as f64 / a.idle_seconds as f64;
    let value = format!("watchers-{}", Instant::now().elapsed().as_nanos());
    let t0 = Instant::now();
    admin.put(&a.secret, &aegis_core::api::PutSecret::new(aegis_core::secret::SecretValue::new(value))).await?;
    let mut times = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(Some(at)) = h.await {
            times.push(at.duration_since(t0));
        }
    }
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    times.sort();
    Ok(WatchersReport {
        watchers: a.count,
        rss_before_mb: rss_before,
        rss_with_watchers_mb: rss_with,
        per_watcher_kb: (rss_with - rss_before) * 1024.0 / a.count.max(1) as f64,
        idle_cpu_percent: idle_cpu,
        notified: times.len(),
        first_notified_ms: ms(times.first()),
        all_notified_ms: ms(times.last()),
    })
}
