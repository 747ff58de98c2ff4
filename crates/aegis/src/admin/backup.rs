//! `aegis backup`, `aegis backup verify` and `aegis restore` (docs/BACKUP.md).
//!
//! A backup is streamed from the Safe into `FILE.partial` and renamed to
//! `FILE` only once it is whole and on disk, so a cut-off transfer never
//! leaves a file that looks like a backup. A file is streamed to the Safe to
//! be checked or restored; with `--identity` the file's key is unwrapped here
//! and only that key goes to the Safe, never the identity.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_crypto::backup::{decrypt_backup_buffered, parse_identities, parse_recipient, BackupKey, Unlock};
use aegis_store::backup::BackupReader;
use tokio::io::AsyncReadExt;

use crate::connect::client;
use crate::exit::{CliError, CONFIG, FAILURE};
use crate::output::{print_json, Out, Output};

/// Default longest time a backup, a restore or a check may take.
const DEFAULT_TIMEOUT_SECS: u64 = 1800;
/// How often progress is printed on standard error.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// The pieces a file is sent in.
const PIECE: usize = 64 * 1024;

/// Arguments of `aegis backup`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    cmd: Option<BackupCmd>,
    /// The file to write (`-` for standard output); it must not exist yet.
    #[arg(long, value_name = "FILE", conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Write `aegis-<UTC time>.backup` into this directory instead (for scheduled backups).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// With --out-dir: keep only the newest N backups there (older `aegis-*.backup` files are removed).
    #[arg(long, value_name = "N", requires = "out_dir", value_parser = clap::value_parser!(u32).range(1..))]
    keep: Option<u32>,
    /// Also encrypt the backup to this age recipient (`age1…`, repeatable), so
    /// that it can be restored without the Safe's root key.
    #[arg(long = "recipient", value_name = "AGE_RECIPIENT")]
    recipients: Vec<String>,
    /// Longest the whole transfer may take, in seconds.
    #[arg(long, env = "AEGIS_TRANSFER_TIMEOUT_SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout_secs: u64,
    #[command(flatten)]
    out_format: Out,
}

#[derive(clap::Subcommand, Debug)]
enum BackupCmd {
    /// Check a backup file without restoring it (all of it: every chunk, every secret).
    Verify(VerifyArgs),
}

/// Arguments of `aegis backup verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The backup file.
    file: PathBuf,
    /// Check it here with this age identity file (of a recipient given at
    /// backup time), without a Safe; else the Safe checks it with its root key.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Longest the check may take, in seconds.
    #[arg(long, env = "AEGIS_TRANSFER_TIMEOUT_SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout_secs: u64,
    #[command(flatten)]
    out: Out,
}

/// Arguments of `aegis restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Open the backup with this age identity file (of a recipient given at
    /// backup time) instead of the Safe's root key; only the file's key is sent.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Restore into a Safe that holds secrets: each secret of the backup
    /// replaces the one of its name; the others are kept.
    #[arg(long)]
    replace: bool,
    /// Longest the whole transfer may take, in seconds.
    #[arg(long, env = "AEGIS_TRANSFER_TIMEOUT_SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout_secs: u64,
    #[command(flatten)]
    out: Out,
}

/// `aegis backup [--out FILE] | aegis backup verify FILE`.
pub async fn backup(a: BackupArgs) -> Result<(), CliError> {
    if let Some(BackupCmd::Verify(v)) = a.cmd {
        return verify(v).await;
    }
    let out =
        match (&a.out, &a.out_dir) {
            (Some(f), _) => f.clone(),
            (None, Some(dir)) => dir.join(scheduled_name(time::OffsetDateTime::now_utc())),
            (None, None) => return Err(CliError::new(
                CONFIG,
                "say where to write the backup: aegis backup --out FILE (--out - for standard output) or --out-dir DIR",
            )),
        };
    for r in &a.recipients {
        parse_recipient(r).map_err(|e| CliError::new(CONFIG, e.to_string()))?;
    }
    let mut sink = Sink::create(&out)?;
    let c = client().await?;
    let started = Instant::now();
    let mut stream = match c.backup(a.recipients.clone(), Duration::from_secs(a.timeout_secs)).await {
        Ok(s) => s,
        Err(e) => {
            sink.discard();
            return Err(e.into());
        }
    };
    let mut progress = Progress::new("backup", Some(format!("{} secrets", stream.secrets)));
    loop {
        match stream.next().await {
            Ok(Some(piece)) => {
                if let Err(e) = sink.write(&piece) {
                    sink.discard();
                    return Err(e);
                }
                progress.add(piece.len() as u64, None);
            }
            Ok(None) => break,
            Err(e) => {
                sink.discard();
                return Err(CliError::new(FAILURE, format!("{e}; no backup was written")));
            }
        }
    }
    let bytes = progress.bytes;
    sink.finish()?;
    let removed = match (&a.out_dir, a.keep) {
        (Some(dir), Some(keep)) => prune(dir, keep as usize)?,
        _ => Vec::new(),
    };
    let secs = started.elapsed().as_secs_f64();
    if a.out_format.output == Output::Json {
        return print_json(&serde_json::json!({
            "file": out.display().to_string(), "secrets": stream.secrets, "commit": stream.commit,
            "bytes": bytes, "seconds": secs, "recipients": a.recipients.len(),
            "removed": removed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        }));
    }
    let to =
        if a.recipients.is_empty() { String::new() } else { format!(" and {} age recipient(s)", a.recipients.len()) };
    eprintln!(
        "backup: {} secrets up to commit {}, {} in {:.1} s, encrypted to the root key{to}; written to {}",
        stream.secrets,
        stream.commit,
        human(bytes),
        secs,
        out.display()
    );
    for p in &removed {
        eprintln!("backup: removed {} (keeping the newest {})", p.display(), a.keep.unwrap_or_default());
    }
    Ok(())
}

/// The name of a backup taken at `t` in an --out-dir: sorts by time.
fn scheduled_name(t: time::OffsetDateTime) -> String {
    format!(
        "{SCHEDULED_PREFIX}{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z{SCHEDULED_SUFFIX}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

const SCHEDULED_PREFIX: &str = "aegis-";
const SCHEDULED_SUFFIX: &str = ".backup";

/// Removes all but the newest `keep` scheduled backups of `dir`; returns what it removed.
fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, CliError> {
    let read = std::fs::read_dir(dir).map_err(|e| cannot_read(dir, &e))?;
    let mut names: Vec<String> = read
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(SCHEDULED_PREFIX) && n.ends_with(SCHEDULED_SUFFIX))
        .collect();
    names.sort();
    let old = names.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for n in names.into_iter().take(old) {
        let p = dir.join(n);
        std::fs::remove_file(&p).map_err(|e| {
            CliError::new(FAILURE, format!("the backup is written, but {} could not be removed: {e}", p.display()))
        })?;
        removed.push(p);
    }
    Ok(removed)
}

/// `aegis backup verify FILE`.
async fn verify(a: VerifyArgs) -> Result<(), CliError> {
    let checked = match &a.identity {
        Some(id) => {
            let ids = identities(id)?;
            let path = a.file.clone();
            tokio::task::spawn_blocking(move || verify_here(&path, &ids))
                .await
                .map_err(|_| CliError::failure("the checking thread failed"))??
        }
        None => {
            let (stream, progress) = file_stream(&a.file, "check").await?;
            let r = client().await?.verify_backup(stream, None, Duration::from_secs(a.timeout_secs)).await;
            progress.done();
            r.map_err(refused_file)?
        }
    };
    if a.out.output == Output::Json {
        return print_json(&checked);
    }
    println!(
        "backup OK: {} secrets, {} versions, taken {} (up to commit {}), {}",
        checked.secrets,
        checked.versions,
        checked.taken_at,
        checked.commit,
        human(checked.bytes)
    );
    Ok(())
}

/// Checks the whole file here, with age identities.
fn verify_here(path: &Path, ids: &[age::x25519::Identity]) -> Result<aegis_core::api::BackupChecked, CliError> {
    let file = std::fs::File::open(path).map_err(|e| cannot_read(path, &e))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let (plain, _) =
        decrypt_backup_buffered(file, Unlock::Identities(ids)).map_err(|e| refused_here(&e.to_string()))?;
    let mut r = BackupReader::open(std::io::BufReader::new(plain)).map_err(|e| refused_here(&e.0))?;
    let mut progress = Progress::new("check", Some(format!("{} secrets", r.header().secrets)));
    while r.next_secret().map_err(|e| refused_here(&e.0))?.is_some() {
        progress.add(0, Some(r.secrets_read()));
    }
    progress.done();
    Ok(r.header().summary(bytes))
}

/// `aegis restore --in FILE`.
pub async fn restore(a: RestoreArgs) -> Result<(), CliError> {
    let key = match &a.identity {
        Some(id) => {
            let ids = identities(id)?;
            let path = a.input.clone();
            Some(
                tokio::task::spawn_blocking(move || key_of(&path, &ids))
                    .await
                    .map_err(|_| CliError::failure("the key thread failed"))??,
            )
        }
        None => None,
    };
    let c = client().await?;
    if !a.replace {
        // The Safe refuses too; asking first saves sending the file for nothing.
        let held = c.status().await?.secrets;
        if held > 0 {
            return Err(CliError::new(
                crate::exit::CONFLICT,
                format!(
                    "the Safe already holds {held} secrets; restore into an empty Safe, or add --replace to replace \
                     the secrets the backup holds (the others are kept)"
                ),
            ));
        }
    }
    let (stream, progress) = file_stream(&a.input, "restore").await?;
    let key_text = key.as_ref().map(BackupKey::to_base64);
    let r = c
        .restore(stream, key_text.as_deref().map(String::as_str), a.replace, Duration::from_secs(a.timeout_secs))
        .await;
    progress.done();
    let done = r.map_err(refused_file)?;
    if a.out.output == Output::Json {
        return print_json(&done);
    }
    println!(
        "restored {} secrets ({} versions) from a backup taken {} (up to commit {}); {} replaced, {} kept",
        done.restored, done.backup.versions, done.backup.taken_at, done.backup.commit, done.replaced, done.kept
    );
    Ok(())
}

fn refused_file(e: aegis_sdk::ClientError) -> CliError {
    CliError::from(e)
}

fn refused_here(why: &str) -> CliError {
    CliError::new(FAILURE, format!("the backup is refused: {why}"))
}

fn cannot_read(path: &Path, e: &std::io::Error) -> CliError {
    CliError::new(CONFIG, format!("cannot read {}: {e}", path.display()))
}

fn identities(path: &Path) -> Result<Vec<age::x25519::Identity>, CliError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| cannot_read(path, &e))?);
    parse_identities(&text).map_err(|e| CliError::new(CONFIG, format!("{}: {e}", path.display())))
}

/// The file's key, unwrapped with `ids` (reads only the file's header).
fn key_of(path: &Path, ids: &[age::x25519::Identity]) -> Result<BackupKey, CliError> {
    let file = std::fs::File::open(path).map_err(|e| cannot_read(path, &e))?;
    let (_, key) = decrypt_backup_buffered(file, Unlock::Identities(ids)).map_err(|e| refused_here(&e.to_string()))?;
    key.ok_or_else(|| refused_here("no identity gave the file's key"))
}

/// The file as a stream of pieces, with progress on standard error.
async fn file_stream(path: &Path, what: &'static str) -> Result<(impl aegis_sdk::FileStream, Progress), CliError> {
    let file = tokio::fs::File::open(path).await.map_err(|e| cannot_read(path, &e))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let progress = Progress::new(what, Some(format!("of {}", human(size))));
    let sent = progress.shared.clone();
    let stream = futures::stream::unfold(Some(file), move |file| {
        let sent = sent.clone();
        async move {
            let mut file = file?;
            let mut buf = vec![0u8; PIECE];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok(buf), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    Ok((stream, progress))
}

/// Where a backup goes: `FILE.partial`, renamed to `FILE` once whole; or standard output.
enum Sink {
    File { tmp: PathBuf, dst: PathBuf, file: std::fs::File },
    Stdout(std::io::Stdout),
}

impl Sink {
    fn create(out: &Path) -> Result<Self, CliError> {
        if out == Path::new("-") {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        if out.exists() {
            return Err(CliError::new(
                CONFIG,
                format!("{} exists: choose another file, or remove it first", out.display()),
            ));
        }
        let mut tmp = out.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| {
            CliError::new(
                CONFIG,
                format!("cannot create {}: {e} (a backup left over from a cut-off run? remove it)", tmp.display()),
            )
        })?;
        Ok(Sink::File { tmp, dst: out.to_owned(), file })
    }

    fn write(&mut self, piece: &[u8]) -> Result<(), CliError> {
        let r = match self {
            Sink::File { file, .. } => file.write_all(piece),
            Sink::Stdout(s) => s.write_all(piece),
        };
        r.map_err(|e| CliError::new(FAILURE, format!("cannot write the backup: {e}; no backup was written")))
    }

    fn finish(self) -> Result<(), CliError> {
        match self {
            Sink::Stdout(mut s) => {
                s.flush().map_err(|e| CliError::new(FAILURE, format!("cannot write the backup: {e}")))
            }
            Sink::File { tmp, dst, file } => {
                let done = file
                    .sync_all()
                    .and_then(|()| std::fs::rename(&tmp, &dst))
                    .and_then(|()| aegis_fs::sync_dir(aegis_fs::parent_dir(&dst)));
                done.map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    CliError::new(FAILURE, format!("cannot put the backup in place at {}: {e}", dst.display()))
                })
            }
        }
    }

    fn discard(self) {
        if let Sink::File { tmp, .. } = self {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Progress on standard error, every [`PROGRESS_EVERY`], for runs that last that long.
struct Progress {
    what: &'static str,
    of: Option<String>,
    started: Instant,
    last: Instant,
    bytes: u64,
    shared: Arc<AtomicU64>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn new(what: &'static str, of: Option<String>) -> Self {
        let shared = Arc::new(AtomicU64::new(0));
        let now = Instant::now();
        // A file being sent counts its bytes in `shared`; a ticker prints them.
        let ticker = tokio::runtime::Handle::try_current().ok().map(|h| {
            let (sent, of) = (shared.clone(), of.clone());
            h.spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    let n = sent.load(Ordering::Relaxed);
                    if n > 0 {
                        print_progress(what, n, None, of.as_deref(), now);
                    }
                }
            })
        });
        Self { what, of, started: now, last: now, bytes: 0, shared, ticker }
    }

    /// Counts `bytes` more (and `records` so far), printing now and then.
    fn add(&mut self, bytes: u64, records: Option<u64>) {
        self.bytes += bytes;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            print_progress(self.what, self.bytes, records, self.of.as_deref(), self.started);
        }
    }

    fn done(&self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

fn print_progress(what: &str, bytes: u64, records: Option<u64>, of: Option<&str>, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let records = records.map(|r| format!("{r} secrets, ")).unwrap_or_default();
    let of = of.map(|o| format!(" ({o})")).unwrap_or_default();
    eprintln!("{what}: {records}{}{of}, {}/s, {secs:.0} s", human(bytes), human((bytes as f64 / secs) as u64));
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
