//! `aegis-bench scale`: the scale curve (issue 20, section 3).
//!
//! For each secret count it builds a data set of that many secrets
//! (`startup::populate`), starts a Safe on it and measures the time to ready,
//! its resident memory once ready, then kept-alive fetches and durable writes
//! against it. For each watcher count it starts a Safe on one data set, opens
//! that many idle watchers and measures the memory they cost and fetches and
//! writes with them attached. The writes overwrite existing secrets, so a data
//! set keeps its count; it is kept for the next run, which notes that it was
//! written to. Every row is printed as a JSON line as it is
//! measured, and the whole table is written again as CSV after each row, so an
//! interrupted run keeps what it measured. `scripts/bench-scale.sh` runs it and
//! `scripts/plot-scale.py` draws the CSV.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis::exit::CliError;
use aegis_core::roles::RoleRules;
use aegis_identity::IdentityConfig;
use aegis_sdk::Settings;
use clap::Args;
use serde::Serialize;

use crate::startup::{issue_svid, mark_written, populate, was_written, Safe};
use crate::write::{write_with, WriteApi};
use crate::{fetch, watchers, Report};

/// Arguments of `aegis-bench scale`.
#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Secret counts of the data sets, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000,1000000")]
    secrets: Vec<usize>,
    /// Idle watcher counts, comma-separated (empty: no watcher runs).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    watchers: Vec<usize>,
    /// Secrets in the one data set every watcher run uses.
    #[arg(long, default_value_t = 10_000)]
    watcher_secrets: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Seconds of each fetch and each write load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Kept-alive fetch connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent writers (native `PUT`, each over 64 existing secrets).
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Seconds the watchers stay idle while the Safe's CPU time is read.
    #[arg(long, default_value_t = 3)]
    idle_seconds: u64,
    /// Scratch directory for the data sets (kept between runs; a data set a
    /// load wrote to is built again next time).
    #[arg(long)]
    work_dir: PathBuf,
    /// CSV file the rows are written to.
    #[arg(long)]
    out: PathBuf,
}

/// One point of the curve; figures a run does not measure are empty.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Row {
    /// `secrets` (a secret count's run) or `watchers` (a watcher count's run).
    pub kind: &'static str,
    /// Secrets in the data set.
    pub secrets: usize,
    /// Idle watchers attached.
    pub watchers: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Plaintext of all values, MB (MiB).
    pub plaintext_mb: f64,
    /// The memory target: 1.5 × plaintext + 30 MB.
    pub target_rss_mb: f64,
    /// From process start to `/readyz` answering 200, ms.
    pub ready_ms: Option<u128>,
    /// Resident memory once ready and idle (before any watcher), MB.
    pub rss_mb: Option<f64>,
    /// Resident memory with every watcher waiting, MB.
    pub rss_with_watchers_mb: Option<f64>,
    /// Extra memory per watcher, KB.
    pub per_watcher_kb: Option<f64>,
    /// Safe CPU while the watchers idle, percent of one core.
    pub idle_cpu_percent: Option<f64>,
    /// Kept-alive fetches per second.
    pub fetch_per_s: Option<f64>,
    /// Their 99th percentile, ms.
    pub fetch_p99_ms: Option<f64>,
    /// Durable writes per second.
    pub write_per_s: Option<f64>,
    /// Their 99th percentile, ms.
    pub write_p99_ms: Option<f64>,
    /// Failed fetches and writes.
    pub errors: Option<u64>,
    /// Watchers told of a change of their secret.
    pub notified: Option<usize>,
    /// From that write to the last watcher told, ms.
    pub all_notified_ms: Option<f64>,
    /// Why a figure is missing, or what else to know.
    pub note: String,
}

/// The CSV columns, in order.
pub const COLUMNS: &[&str] = &[
    "kind",
    "secrets",
    "watchers",
    "value_bytes",
    "plaintext_mb",
    "target_rss_mb",
    "ready_ms",
    "rss_mb",
    "rss_with_watchers_mb",
    "per_watcher_kb",
    "idle_cpu_percent",
    "fetch_per_s",
    "fetch_p99_ms",
    "write_per_s",
    "write_p99_ms",
    "errors",
    "notified",
    "all_notified_ms",
    "note",
];

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn num(v: Option<f64>) -> String {
    opt(v.map(|v| format!("{v:.3}")))
}

/// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Row {
    fn new(kind: &'static str, secrets: usize, watchers: usize, size: usize) -> Row {
        let plaintext_mb = (secrets * size) as f64 / 1_048_576.0;
        Row {
            kind,
            secrets,
            watchers,
            value_bytes: size,
            plaintext_mb,
            target_rss_mb: target_rss_mb(plaintext_mb),
            ..Row::default()
        }
    }

    /// The row as one CSV line (no line break), in the order of [`COLUMNS`].
    pub fn csv(&self) -> String {
        [
            self.kind.to_owned(),
            self.secrets.to_string(),
            self.watchers.to_string(),
            self.value_bytes.to_string(),
            format!("{:.3}", self.plaintext_mb),
            format!("{:.3}", self.target_rss_mb),
            opt(self.ready_ms),
            num(self.rss_mb),
            num(self.rss_with_watchers_mb),
            num(self.per_watcher_kb),
            num(self.idle_cpu_percent),
            num(self.fetch_per_s),
            num(self.fetch_p99_ms),
            num(self.write_per_s),
            num(self.write_p99_ms),
            opt(self.errors),
            opt(self.notified),
            num(self.all_notified_ms),
            field(&self.note),
        ]
        .join(",")
    }

    fn loads(&mut self, f: &Report, w: &Report) {
        self.fetch_per_s = Some(f.per_second);
        self.fetch_p99_ms = Some(f.p99_ms);
        self.write_per_s = Some(w.per_second);
        self.write_p99_ms = Some(w.p99_ms);
        self.errors = Some(f.errors + w.errors);
    }
}

/// The whole table: a header line and one line per row.
pub fn csv(rows: &[Row]) -> String {
    let mut s = COLUMNS.join(",");
    s.push('\n');
    for r in rows {
        s.push_str(&r.csv());
        s.push('\n');
    }
    s
}

/// Issue 20's memory target for a data set of `plaintext_mb`: 1.5 × plaintext + 30 MB.
pub fn target_rss_mb(plaintext_mb: f64) -> f64 {
    1.5 * plaintext_mb + 30.0
}

/// The secret writer `w`'s `i`-th write overwrites: one of 64 per writer, among
/// `secret-000001` … of a data set of `n`, never `secret-000000`, which the
/// fetches read and the watchers wait on.
pub fn overwritten(n: usize, w: usize, i: u64) -> String {
    let slot = w * 64 + (i % 64) as usize;
    format!("secret-{:06}", 1 + slot % n.saturating_sub(1).max(1))
}

/// Descriptors a watcher run needs in the Safe and in this client: one per
/// watcher, plus the fetch connections and a margin for everything else.
pub fn descriptors_needed(watchers: usize, connections: usize) -> u64 {
    (watchers + connections + 1024) as u64
}

/// Client settings for the SPIFFE ID of `workload` in `namespace` against the Safe on `port`.
fn settings(work: &Path, port: u16, workload: &str, namespace: &str) -> Result<Settings, CliError> {
    Ok(Settings {
        url: format!("https://127.0.0.1:{port}"),
        identity: IdentityConfig::Files(issue_svid(work, workload, namespace)?),
        roles: RoleRules::vsecm_defaults(),
        timeout: Duration::from_secs(60),
        new_connection_per_request: false,
    })
}

/// The workload whose secret is `secret-000000` (fetched and watched).
fn reader(work: &Path, port: u16) -> Result<Settings, CliError> {
    settings(work, port, "secret-000000", "default")
}

async fn admin(work: &Path, port: u16) -> Result<aegis_sdk::Client, CliError> {
    Ok(aegis_sdk::Client::connect(&settings(work, port, "vsecm-sentinel", "vsecm-system")?).await?)
}

fn progress(what: impl std::fmt::Display) {
    eprintln!("aegis-bench scale: {what}");
}

/// Builds the data set of `n` secrets (or finds it built) in the work directory.
fn data_set(a: &ScaleArgs, n: usize) -> Result<PathBuf, CliError> {
    let dir = a.work_dir.join(format!("set-{n}"));
    let t0 = Instant::now();
    populate(&dir, n, a.size)?;
    progress(format_args!("data set of {n} secrets ready in {:.1} s", t0.elapsed().as_secs_f64()));
    Ok(dir)
}

/// Fetches, then writes, against the Safe; the data set is marked written first.
async fn loads(a: &ScaleArgs, safe: &Safe, dir: &Path, n: usize) -> Result<(Report, Report), CliError> {
    mark_written(dir)?;
    let dur = Duration::from_secs(a.seconds);
    let f = fetch::fetch(&reader(&a.work_dir, safe.port)?, a.connections, dur, false).await?;
    let admin = admin(&a.work_dir, safe.port).await?;
    let w = write_with(&admin, a.writers, dur, a.size, WriteApi::Native, move |w, i| overwritten(n, w, i)).await?;
    // The store checkpoints its journal after a second without writes; `aegis
    // server` does not on SIGTERM, and the next start would replay it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((f, w))
}

async fn secrets_row(a: &ScaleArgs, n: usize) -> Result<Row, CliError> {
    let mut row = Row::new("secrets", n, 0, a.size);
    let dir = data_set(a, n)?;
    if n > 0 && was_written(&dir) {
        row.note = format!(
            "data set reused after an earlier run's write load: up to {} of its secrets hold several versions",
            (a.writers * 64).min(n)
        );
    }
    let safe = Safe::start(&a.work_dir, &dir, &[], &[]).await?;
    row.ready_ms = Some(safe.ready_ms);
    tokio::time::sleep(Duration::from_millis(500)).await;
    row.rss_mb = Some(safe.rss_mb());
    if n == 0 {
        row.note = "baseline: an empty Safe, no loads".to_owned();
    } else {
        let (f, w) = loads(a, &safe, &dir, n).await?;
        row.loads(&f, &w);
    }
    safe.stop().await;
    Ok(row)
}

/// The soft and hard descriptor limits of this process, after raising the soft one to the hard one.
fn raise_fd_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return (0, 0) };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return (hard, hard);
    }
    (soft, hard)
}

async fn watchers_row(a: &ScaleArgs, count: usize) -> Result<Row, CliError> {
    let n = a.watcher_secrets.max(1);
    let mut row = Row::new("watchers", n, count, a.size);
    let need = descriptors_needed(count, a.connections);
    let (soft, hard) = raise_fd_limit();
    if soft < need {
        row.note = format!(
            "not run: {count} watchers need {need} file descriptors in the Safe and in this client (one per \
             connection on each side), and the descriptor limit (RLIMIT_NOFILE) here is {soft} (hard limit {hard}); \
             raising the hard limit needs CAP_SYS_RESOURCE (ulimit -Hn)"
        );
        return Ok(row);
    }
    let dir = data_set(a, n)?;
    let room = (count + a.connections + 256).to_string();
    let args: Vec<String> = [
        ("--max-connections", (count + a.connections + 2048).to_string()),
        ("--max-connections-per-identity", room.clone()),
        ("--max-watches", room.clone()),
        ("--max-watches-per-identity", room),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();
    // A watch is answered unchanged one second before the request deadline:
    // the deadline is set far beyond the run, so every watcher stays parked.
    let env = [("AEGIS_REQUEST_TIMEOUT_MS", "1800000".to_owned())];
    let safe = Safe::start(&a.work_dir, &dir, &args, &env).await?;
    row.ready_ms = Some(safe.ready_ms);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = safe.rss_mb();
    row.rss_mb = Some(before);
    let reader = reader(&a.work_dir, safe.port)?;
    let revision =
        aegis_sdk::Client::connect(&reader).await?.watch_once(u64::MAX, Duration::from_secs(5)).await?.revision;
    let target = fetch::target(&reader, false).await?;
    let t0 = Instant::now();
    let handles = watchers::open_all(&target, revision, count).await?;
    progress(format_args!("{count} watchers open in {:.1} s", t0.elapsed().as_secs_f64()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = safe.rss_mb();
    row.rss_with_watchers_mb = Some(with);
    row.per_watcher_kb = Some((with - before) * 1024.0 / count.max(1) as f64);
    let cpu0 = watchers::proc_cpu_ticks(safe.pid);
    tokio::time::sleep(Duration::from_secs(a.idle_seconds.max(1))).await;
    row.idle_cpu_percent =
        Some(watchers::proc_cpu_ticks(safe.pid).saturating_sub(cpu0) as f64 / a.idle_seconds.max(1) as f64);
    let (f, w) = loads(a, &safe, &dir, n).await?;
    row.loads(&f, &w);
    let admin = admin(&a.work_dir, safe.port).await?;
    let (notified, _, all_ms) = watchers::notify_all(&admin, "secret-000000", handles).await?;
    row.notified = Some(notified);
    row.all_notified_ms = Some(all_ms);
    safe.stop().await;
    Ok(row)
}

fn record(out: &Path, rows: &mut Vec<Row>, row: Row) -> Result<(), CliError> {
    crate::print_line(&row)?;
    rows.push(row);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(CliError::failure)?;
    }
    std::fs::write(out, csv(rows)).map_err(CliError::failure)
}

/// Runs the whole curve; returns the rows (also written to `--out`).
pub async fn run(a: ScaleArgs) -> Result<Vec<Row>, CliError> {
    std::fs::create_dir_all(&a.work_dir).map_err(CliError::failure)?;
    let mut rows = Vec::new();
    let mut counts = vec![0];
    counts.extend(a.secrets.iter().copied().filter(|&n| n > 0));
    for n in counts {
        progress(format_args!("{n} secrets of {} bytes", a.size));
        let row = secrets_row(&a, n).await?;
        record(&a.out, &mut rows, row)?;
    }
    for &count in a.watchers.iter().filter(|&&c| c > 0) {
        progress(format_args!("{count} idle watchers on {} secrets", a.watcher_secrets));
        let row = watchers_row(&a, count).await?;
        record(&a.out, &mut rows, row)?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_one_line_per_row_with_empty_missing_figures() {
        let mut r = Row::new("secrets", 1000, 0, 1024);
        r.ready_ms = Some(42);
        r.fetch_p99_ms = Some(1.23456);
        let text = csv(&[r]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].split(',').count(), COLUMNS.len());
        let cells: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(cells.len(), COLUMNS.len());
        let at = |name: &str| cells[COLUMNS.iter().position(|c| *c == name).unwrap()];
        assert_eq!(at("kind"), "secrets");
        assert_eq!(at("secrets"), "1000");
        assert_eq!(at("plaintext_mb"), "0.977");
        assert_eq!(at("target_rss_mb"), "31.465");
        assert_eq!(at("ready_ms"), "42");
        assert_eq!(at("fetch_p99_ms"), "1.235");
        assert_eq!(at("rss_mb"), "");
        assert_eq!(at("note"), "");
    }

    #[test]
    fn a_note_with_commas_or_quotes_stays_one_field() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a, b"), "\"a, b\"");
        assert_eq!(field("say \"x\""), "\"say \"\"x\"\"\"");
        let mut r = Row::new("watchers", 10, 100_000, 1024);
        r.note = "not run: limit 20000, hard \"20000\"".to_owned();
        let line = r.csv();
        assert!(line.ends_with(",\"not run: limit 20000, hard \"\"20000\"\"\""), "{line}");
    }

    #[test]
    fn the_memory_target_is_one_and_a_half_plaintext_plus_30_mb() {
        assert_eq!(target_rss_mb(0.0), 30.0);
        let row = Row::new("secrets", 1_000_000, 0, 1024);
        assert!((row.plaintext_mb - 976.5625).abs() < 1e-9);
        assert!((row.target_rss_mb - 1494.84375).abs() < 1e-9);
    }

    #[test]
    fn writes_overwrite_existing_secrets_but_never_the_watched_one() {
        for n in [2, 3, 1000, 1_000_000] {
            for w in 0..32 {
                for i in 0..130 {
                    let name = overwritten(n, w, i);
                    let k: usize = name.trim_start_matches("secret-").parse().unwrap();
                    assert!((1..n).contains(&k), "{name} for n={n}");
                }
            }
        }
        // 32 writers over 64 secrets each: 2048 distinct secrets in a large data set.
        let names: std::collections::HashSet<_> =
            (0..32).flat_map(|w| (0..64).map(move |i| overwritten(100_000, w, i))).collect();
        assert_eq!(names.len(), 2048);
        assert_eq!(overwritten(1, 0, 0), "secret-000001");
    }

    #[test]
    fn descriptors_cover_every_watcher_and_fetch_connection() {
        assert_eq!(descriptors_needed(100_000, 64), 101_088);
        assert!(descriptors_needed(10_000, 64) < 20_000);
    }
}
