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
//! - `scale`: the scale curve: start-up, memory, fetch and write p99 for each
//!   secret count, memory and p99s for each idle watcher count (starts its own
//!   Safes; `scripts/bench-scale.sh`).
//! - `policy`: what one policy decision costs with N policies, or a file of N
//!   policies for a Safe (`scripts/bench-policies.sh`).

use std::path::PathBuf;
use std::time::Duration;

use aegis::exit::{CliError, FAILURE};
use clap::{Parser, Subcommand};
use serde::Serialize;

mod fetch;
mod policy;
mod scale;
mod startup;
mod watchers;
mod write;

/// Load generator: measure fetches, writes and start-up.
#[derive(Parser, Debug)]
#[command(
    name = "aegis-bench",
    version,
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 forbidden, 5 sealed, 6 conflict, 7 unreachable, 64 bad configuration."
)]
struct BenchArgs {
    /// Logging flags (`-v`, `--log`, `--log-format`); `warn` by default.
    #[command(flatten)]
    log: aegis::LogArgs,
    #[command(subcommand)]
    cmd: BenchCmd,
}

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    args.log.init("warn");
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
    /// The cost of one policy decision with N policies (in process), or `--write-file` to
    /// write N policies as a policy file for a Safe.
    Policy(policy::PolicyArgs),
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
        /// The API the writes go through.
        #[arg(long, value_enum, default_value = "native")]
        api: write::WriteApi,
        /// Names are PREFIX-<writer>-<n>: give each load generator its own when
        /// several write to Safes sharing one database.
        #[arg(long, default_value = "bench")]
        prefix: String,
    },
    /// Fill an empty Safe: N distinct secrets written once each by concurrent
    /// writers through the native API (run with the admin identity).
    Fill {
        /// Secrets to write (named `fill-0` … `fill-{N-1}`).
        #[arg(long, default_value_t = 10_000)]
        secrets: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 1024)]
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
        /// Time from the start of the write request instead of its acknowledgement
        /// (a replica's sidecar may hold the value before the source's answer arrives).
        #[arg(long)]
        from_start: bool,
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
    /// The scale curve: for each secret count start-up time, memory, fetch and
    /// write p99; for each idle watcher count memory and p99s (starts its own
    /// Safes; one JSON line per point, and a CSV file).
    Scale(scale::ScaleArgs),
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

/// Waits for every load task and pools their latencies (µs) and error counts.
async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, u64)>>) -> Result<(Vec<u32>, u64), CliError> {
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.map_err(CliError::failure)?;
        all.extend(l);
        errors += e;
    }
    Ok((all, errors))
}

/// A latency in whole microseconds, as the reports keep them.
fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
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

/// Prints a report as one line of JSON (a row of a longer run).
fn print_line(r: &impl Serialize) -> Result<(), CliError> {
    println!("{}", serde_json::to_string(r).map_err(CliError::failure)?);
    Ok(())
}

/// Runs a benchmark and prints its report as JSON.
async fn run(a: BenchArgs) -> Result<(), CliError> {
    match a.cmd {
        BenchCmd::Fetch { connections, seconds, new_connection } => print(
            &fetch::fetch(&aegis::connect::settings()?, connections, Duration::from_secs(seconds), new_connection)
                .await?,
        ),
        BenchCmd::Write { writers, seconds, size, api, prefix } => {
            print(&write::write(writers, Duration::from_secs(seconds), size, api, &prefix).await?)
        }
        BenchCmd::Fill { secrets, writers, size } => print(&write::fill(secrets, writers, size).await?),
        BenchCmd::Propagation { updates, file, secret, from_start } => {
            print(&write::propagation(updates, &file, &secret, from_start).await?)
        }
        BenchCmd::Watchers(a) => print(&watchers::run(a).await?),
        BenchCmd::Startup { secrets, size, work_dir } => print(&startup::run(secrets, size, &work_dir).await?),
        BenchCmd::Scale(a) => scale::run(a).await.map(|_| ()),
        BenchCmd::Policy(a) => policy::run(a),
    }
}
