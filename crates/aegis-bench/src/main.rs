//! `aegis-bench`: a load generator anyone can run against a Safe.
//!
//! It connects as `aegis` does (the same environment variables, see
//! docs/CONFIGURATION.md) and prints each report as JSON. Exit codes are those
//! of docs/CLI.md.
//!
//! - `fetch`: workload fetches (`GET /workload/v1/secrets`) over kept-alive
//!   mTLS connections, or a new connection per fetch (as VSecM's SDK does).
//! - `write`: durable writes by concurrent admin writers.
//! - `startup`: builds a data directory of N secrets, starts `aegis server`
//!   on it (the `aegis` binary next to this one, else the one on `PATH`), and
//!   reports the time to ready and resident memory.
//! - `propagation`: time from a write to a sidecar's file holding it.
//! - `watchers`: many idle watch connections against one Safe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis::connect::settings;
use aegis::exit::{CliError, FAILURE};
use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod startup;
mod watchers;

/// Load generator: measure fetches, writes and start-up.
#[derive(Parser, Debug)]
#[command(
    name = "aegis-bench",
    version,
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 forbidden, 5 sealed, 6 conflict, 7 unreachable, 64 bad configuration."
)]
struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    aegis::init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(FAILURE);
        }
    };
    aegis::exit::finish(rt.block_on(run(args)))
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Fetch the caller's secret as fast as possible (run with a workload identity).
    Fetch {
        /// Concurrent connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Open a new mTLS connection for every fetch.
        #[arg(long)]
        new_connection: bool,
    },
    /// Write secrets from concurrent writers (run with the admin identity).
    Write {
        /// Concurrent writers.
        #[arg(long, default_value_t = 32)]
        writers: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Value size in bytes.
        #[arg(long, default_value_t = 256)]
        size: usize,
    },
    /// Time from an acknowledged write to a sidecar's file holding it (run as the admin,
    /// with `aegis sidecar --path FILE` running as the workload that owns SECRET).
    Propagation {
        /// Updates to time.
        #[arg(long, default_value_t = 1000)]
        updates: usize,
        /// The sidecar's file.
        #[arg(long)]
        file: PathBuf,
        /// The secret the sidecar's workload reads.
        #[arg(long, default_value = "billing")]
        secret: String,
    },
    /// Many idle watchers: memory and CPU of the Safe, and time to notify all of
    /// them of one change (run as the workload; the admin identity comes from files).
    Watchers(watchers::WatchersArgs),
    /// Start-up time and memory with N stored secrets (starts its own Safe).
    Startup {
        /// Secrets to store.
        #[arg(long, default_value_t = 100_000)]
        secrets: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Scratch directory (created; reused if it already holds the same data set).
        #[arg(long)]
        work_dir: PathBuf,
    },
}

/// One benchmark's figures.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What ran.
    pub name: String,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations.
    pub errors: u64,
    /// Operations per second.
    pub per_second: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

fn report(name: String, mut lat_us: Vec<u32>, errors: u64, elapsed: Duration) -> Report {
    lat_us.sort_unstable();
    let pct = |p: f64| {
        if lat_us.is_empty() {
            0.0
        } else {
            let i = ((lat_us.len() as f64 * p) as usize).min(lat_us.len() - 1);
            f64::from(lat_us[i]) / 1000.0
        }
    };
    Report {
        name,
        ok: lat_us.len() as u64,
        errors,
        per_second: lat_us.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat_us.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
    }
}

fn print(r: &impl Serialize) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(r).map_err(CliError::failure)?);
    Ok(())
}

/// Runs a benchmark and prints its report as JSON.
async fn run(a: BenchArgs) -> Result<(), CliError> {
    match a.cmd {
        BenchCmd::Fetch { connections, seconds, new_connection } => {
            print(&fetch(connections, Duration::from_secs(seconds), new_connection).await?)
        }
        BenchCmd::Write { writers, seconds, size } => print(&write(writers, Duration::from_secs(seconds), size).await?),
        BenchCmd::Propagation { updates, file, secret } => print(&propagation(updates, &file, &secret).await?),
        BenchCmd::Watchers(a) => print(&watchers::run(a).await?),
        BenchCmd::Startup { secrets, size, work_dir } => print(&startup::run(secrets, size, &work_dir).await?),
    }
}

pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) tls: TlsConnector,
}

pub(crate) async fn target(full_handshakes: bool) -> Result<Target, CliError> {
    let s = settings()?;
    let source = aegis_identity::start_source(&s.identity).await.map_err(CliError::failure)?;
    let roles = s.roles.clone();
    let mut cfg =
        aegis_identity::client_config(source, Arc::new(move |id| roles.is_safe(id))).map_err(CliError::failure)?;
    if full_handshakes {
        // Every connection pays a full handshake with both certificate chains verified.
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    let hostport = s.url.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let addr = tokio::net::lookup_host(&hostport)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::new(FAILURE, format!("cannot resolve {hostport}")))?;
    let host = hostport.rsplit_once(':').map_or(hostport.clone(), |(h, _)| h.to_owned());
    Ok(Target { addr, host, tls: TlsConnector::from(Arc::new(cfg)) })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(t: &Target) -> Result<Sender, String> {
    let tcp = TcpStream::connect(t.addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
    let tls = t.tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one_fetch(sender: &mut Sender, host: &str) -> Result<(), String> {
    let req = hyper::Request::get("/workload/v1/secrets")
        .header(hyper::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

async fn fetch(connections: usize, dur: Duration, new_conn: bool) -> Result<Report, CliError> {
    let t = Arc::new(target(new_conn).await?);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut sender: Option<Sender> = None;
                while start.elapsed() < dur {
                    let t0 = Instant::now();
                    if new_conn || sender.is_none() {
                        sender = connect(&t).await.ok();
                    }
                    let r = match sender.as_mut() {
                        Some(s) => one_fetch(s, &t.host).await,
                        None => Err("connect failed".to_owned()),
                    };
                    match r {
                        Ok(()) => lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        Err(_) => {
                            errors += 1;
                            sender = None;
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.map_err(CliError::failure)?;
        all.extend(l);
        errors += e;
    }
    let mode = if new_conn { "new connection per fetch" } else { "kept-alive connections" };
    Ok(report(format!("fetch, {connections} connections, {mode}"), all, errors, start.elapsed()))
}

async fn write(writers: usize, dur: Duration, size: usize) -> Result<Report, CliError> {
    let client = aegis::connect::client().await?;
    let value = "x".repeat(size.max(1));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers.max(1))
        .map(|w| {
            let (c, v) = (client.clone(), value.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = 0u64;
                while start.elapsed() < dur {
                    let req = put_req(v.clone());
                    let t0 = Instant::now();
                    match c.put(&format!("bench-{w}-{}", i % 64), &req).await {
                        Ok(_) => lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        Err(_) => errors += 1,
                    }
                    i += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.map_err(CliError::failure)?;
        all.extend(l);
        errors += e;
    }
    Ok(report(format!("durable writes, {writers} writers, {size}-byte values"), all, errors, start.elapsed()))
}

fn put_req(value: String) -> PutSecret {
    PutSecret::new(SecretValue::new(value))
}

/// Polls the file until it holds `want` (a 100 µs poll: finer than the figures measured).
fn wait_for_file(file: &std::path::Path, want: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read(file).is_ok_and(|b| b == want.as_bytes()) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

async fn propagation(updates: usize, file: &std::path::Path, secret: &str) -> Result<Report, CliError> {
    let client = aegis::connect::client().await?;
    let mut lat = Vec::with_capacity(updates);
    let mut errors = 0;
    let started = Instant::now();
    for i in 0..updates {
        let value = format!("propagation-{i}-{}", started.elapsed().as_nanos());
        client.put(secret, &put_req(value.clone())).await?;
        let f = file.to_owned();
        let seen = tokio::task::spawn_blocking(move || wait_for_file(&f, &value, Duration::from_secs(10)))
            .await
            .map_err(CliError::failure)?;
        match seen {
            Some(d) => lat.push(d.as_micros().min(u128::from(u32::MAX)) as u32),
            None => errors += 1,
        }
    }
    Ok(report(format!("propagation to a sidecar file, {updates} updates"), lat, errors, started.elapsed()))
}
