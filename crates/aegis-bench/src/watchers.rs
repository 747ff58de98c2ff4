//! `aegis-bench watchers`: many idle watch connections against one Safe.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

/// Watch connections opened from one loopback source address: a client address
/// has about 28,000 ephemeral ports (Linux's default 32768–60999) towards one
/// listening port, so more watchers than that need more source addresses.
const PER_SOURCE_ADDRESS: usize = 16_384;

/// The source address of the `i`-th watcher towards `target`: spread over
/// 127.0.0.1, 127.0.0.2, … when the Safe listens on 127.0.0.1 (every 127/8
/// address is local on Linux), the system's choice otherwise.
pub(crate) fn source_address(target: SocketAddr, i: usize) -> Option<SocketAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST => {
            let n = u8::try_from(1 + i / PER_SOURCE_ADDRESS).ok()?;
            Some(SocketAddr::from(([127, 0, 0, n], 0)))
        }
        _ => None,
    }
}

/// User plus system CPU time of a process, in clock ticks (1/100 s on Linux).
pub(crate) fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// A watcher waiting for a change: its task yields the time it was notified
/// (`None`: the wait ended without a change, or the connection failed).
pub(crate) type Watcher = tokio::task::JoinHandle<Option<Instant>>;

async fn open_watch(t: &Target, revision: u64, i: usize) -> Result<Watcher, String> {
    let tcp = match source_address(t.addr, i) {
        Some(from) => {
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket.bind(from).map_err(|e| format!("bind {from}: {e}"))?;
            socket.connect(t.addr).await
        }
        None => tokio::net::TcpStream::connect(t.addr).await,
    }
    .map_err(|e| e.to_string())?;
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

/// Opens `count` watchers of the secret at `revision`, 256 handshakes at a time.
pub(crate) async fn open_all(t: &Target, revision: u64, count: usize) -> Result<Vec<Watcher>, CliError> {
    let mut handles = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(256) {
        let opened = futures::future::join_all(chunk.iter().map(|&i| open_watch(t, revision, i))).await;
        for h in opened {
            handles.push(h.map_err(|e| CliError::failure(format!("could not open watcher {}: {e}", handles.len())))?);
        }
    }
    Ok(handles)
}

/// Writes `secret` as `admin` and waits for every watcher: how many were
/// notified, and the time from the write to the first and to the last, ms.
pub(crate) async fn notify_all(
    admin: &aegis_sdk::Client,
    secret: &str,
    handles: Vec<Watcher>,
) -> Result<(usize, f64, f64), CliError> {
    let value = format!("watchers-{}", Instant::now().elapsed().as_nanos());
    let t0 = Instant::now();
    admin.put(secret, &aegis_core::api::PutSecret::new(aegis_core::secret::SecretValue::new(value))).await?;
    let mut times = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(Some(at)) = h.await {
            times.push(at.duration_since(t0));
        }
    }
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    times.sort();
    Ok((times.len(), ms(times.first()), ms(times.last())))
}

/// Runs the benchmark.
pub async fn run(a: WatchersArgs) -> Result<WatchersReport, CliError> {
    let settings = aegis::connect::settings()?;
    let t = Arc::new(target(&settings, false).await?);
    let work = aegis_sdk::Client::connect(&settings).await?;
    let revision = work.watch_once(u64::MAX, Duration::from_secs(5)).await?.revision;
    let mut admin_settings = aegis::connect::settings()?;
    admin_settings.identity = aegis_identity::IdentityConfig::Files(aegis_identity::SvidPaths {
        cert: a.admin_cert,
        key: a.admin_key,
        bundle: a.admin_bundle,
    });
    let admin = aegis_sdk::Client::connect(&admin_settings).await?;
    let rss_before = crate::startup::rss_mb(a.safe_pid);
    let handles = open_all(&t, revision, a.count).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_with = crate::startup::rss_mb(a.safe_pid);
    let cpu0 = proc_cpu_ticks(a.safe_pid);
    tokio::time::sleep(Duration::from_secs(a.idle_seconds)).await;
    let idle_cpu = (proc_cpu_ticks(a.safe_pid) - cpu0) as f64 / a.idle_seconds as f64;
    let (notified, first_notified_ms, all_notified_ms) = notify_all(&admin, &a.secret, handles).await?;
    Ok(WatchersReport {
        watchers: a.count,
        rss_before_mb: rss_before,
        rss_with_watchers_mb: rss_with,
        per_watcher_kb: (rss_with - rss_before) * 1024.0 / a.count.max(1) as f64,
        idle_cpu_percent: idle_cpu,
        notified,
        first_notified_ms,
        all_notified_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_of_a_loopback_safe_spread_over_source_addresses() {
        let safe: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(source_address(safe, 0), Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(source_address(safe, PER_SOURCE_ADDRESS - 1), Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(source_address(safe, PER_SOURCE_ADDRESS), Some("127.0.0.2:0".parse().unwrap()));
        assert_eq!(source_address(safe, 100_000), Some("127.0.0.7:0".parse().unwrap()));
        // Out of 127.0.0.x addresses, and any other Safe: the system chooses.
        assert_eq!(source_address(safe, 255 * PER_SOURCE_ADDRESS), None);
        assert_eq!(source_address("10.0.0.1:8443".parse().unwrap(), 0), None);
        assert_eq!(source_address("127.0.0.2:8443".parse().unwrap(), 0), None);
    }
}
