//! `aegis audit verify` and `aegis audit tail`: read the Safe's audit trail,
//! a local file (see docs/AUDIT.md). Neither talks to the Safe.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aegis_audit::line::Parsed;
use clap::{Args, Subcommand};

use crate::admin::import::{load_root_key, KeySource};
use crate::exit::{CliError, CONFIG, FAILURE};

/// `aegis audit` arguments.
#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the hash chain and the anchors' MACs; name the first line that was changed,
    /// removed, reordered or truncated (exit code 1).
    Verify(VerifyArgs),
    /// Print the last audit lines, optionally following the file (-f) and filtering.
    Tail(TailArgs),
}

/// Where the trail is.
#[derive(Args, Debug)]
struct Trail {
    /// The Safe's audit file (default: DATA_DIR/audit/audit.log); rotated files are FILE.000001, FILE.000002…
    #[arg(long, env = "AEGIS_AUDIT_FILE", value_parser = crate::values::path_or_empty())]
    audit_file: Option<PathBuf>,
    /// The Safe's data directory (for the default audit file).
    #[arg(long, env = "AEGIS_DATA_DIR", default_value = "/var/local/aegis/data")]
    data_dir: PathBuf,
}

impl Trail {
    fn current(&self) -> PathBuf {
        match &self.audit_file {
            Some(p) if !p.as_os_str().is_empty() && p.as_os_str() != "off" => p.clone(),
            _ => crate::serve::server::default_audit_file(&self.data_dir),
        }
    }
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Files to check, oldest first (default: every file of the trail, rotated ones first).
    files: Vec<PathBuf>,
    #[command(flatten)]
    trail: Trail,
    /// A root key file (VSecM's three lines) to check the anchors' MACs with; repeat it for
    /// the keys of earlier root key rotations. Without one only the hash chain is checked.
    #[arg(long = "root-key-file", env = "AEGIS_ROOT_KEY_FILE", value_name = "FILE")]
    root_key_files: Vec<PathBuf>,
    /// The trail must end with an anchor, as it does after the Safe stopped cleanly (catches
    /// whole lines cut off at the end).
    #[arg(long)]
    complete: bool,
    /// The Safe's sealed audit head (default: DATA_DIR/audit.head): the trail must reach the
    /// anchor it records, which proves that no newest lines or files were removed.
    #[arg(long, value_name = "FILE", conflicts_with = "no_head")]
    head: Option<PathBuf>,
    /// Check without the head: whether the newest lines or files were removed is then NOT proven.
    #[arg(long)]
    no_head: bool,
}

#[derive(Args, Debug)]
struct TailArgs {
    #[command(flatten)]
    trail: Trail,
    /// Keep printing lines as they are written (across rotations) until interrupted.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only lines of this caller (exact SPIFFE ID).
    #[arg(long, value_name = "SPIFFE_ID")]
    caller: Option<String>,
    /// Only lines naming this secret.
    #[arg(long, value_name = "NAME")]
    secret: Option<String>,
    /// How many matching lines to print from the end first.
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: usize,
    /// Ask the Safe over mTLS (GET /v1/audit; a policy must allow `audit`) instead of reading the file.
    #[arg(long, conflicts_with = "follow")]
    from_safe: bool,
}

/// `aegis audit …`.
pub async fn run(a: AuditArgs) -> Result<(), CliError> {
    match a.cmd {
        AuditCmd::Verify(v) => verify(v).await,
        AuditCmd::Tail(t) => tail(t).await,
    }
}

async fn verify(a: VerifyArgs) -> Result<(), CliError> {
    let files = if a.files.is_empty() {
        let current = a.trail.current();
        aegis_audit::files::trail_files(&current)
            .map_err(|e| CliError::new(CONFIG, format!("cannot list the audit trail {}: {e}", current.display())))?
    } else {
        a.files.clone()
    };
    if files.is_empty() {
        return Err(CliError::new(
            CONFIG,
            format!("no audit file at {}; give the files or --audit-file", a.trail.current().display()),
        ));
    }
    let mut keys = Vec::with_capacity(a.root_key_files.len());
    for p in &a.root_key_files {
        keys.push(load_root_key(&KeySource::File(p.clone())).await?.audit_key());
    }
    let head = read_head(&a, !keys.is_empty())?;
    let s = aegis_audit::verify_with_head(&files, &keys, head.as_ref())
        .map_err(|f| CliError::new(FAILURE, format!("audit trail broken: {f}")))?;
    if a.complete && s.head.is_none() {
        return Err(CliError::new(
            FAILURE,
            "audit trail not proven complete: no audit head was checked, so whether the newest lines or files were \
             removed is unknown (--complete needs the head: give --head FILE)",
        ));
    }
    if a.complete && s.after_last_anchor > 0 {
        let last = files.last().map(|p| p.display().to_string()).unwrap_or_default();
        return Err(CliError::new(
            FAILURE,
            format!(
                "audit trail incomplete: {last} ends {} line(s) after its last anchor (lines cut off at the end, or \
                 the Safe did not stop cleanly)",
                s.after_last_anchor
            ),
        ));
    }
    println!("{}", report(&files, &s));
    Ok(())
}

/// The sealed head to check the trail's end against. With a root key it is
/// required (unless --no-head): without it a trail cut back to any anchor verifies.
fn read_head(a: &VerifyArgs, required: bool) -> Result<Option<aegis_audit::Head>, CliError> {
    if a.no_head {
        return Ok(None);
    }
    let path = a.head.clone().unwrap_or_else(|| aegis_audit::head::default_path(&a.trail.data_dir));
    match aegis_audit::Head::read(&path) {
        Ok(Some(h)) => Ok(Some(h)),
        Ok(None) if !required => Ok(None),
        Ok(None) => Err(CliError::new(
            FAILURE,
            format!(
                "no audit head at {}: without it, a trail whose newest lines or files were removed cannot be told \
                 from a whole one. Give the Safe's head with --head FILE (it is DATA_DIR/audit.head), or --no-head \
                 to check the rest anyway",
                path.display()
            ),
        )),
        Err(e) => Err(CliError::new(FAILURE, format!("cannot read the audit head {}: {e}", path.display()))),
    }
}

fn report(files: &[PathBuf], s: &aegis_audit::Summary) -> String {
    let mut out = format!(
        "ok: {} lines in {} file(s), chain intact (events {} to {}); {} anchor(s) checked",
        s.lines,
        files.len(),
        s.first_seq,
        s.last_seq.map_or("none".to_owned(), |n| n.to_string()),
        s.anchors_checked
    );
    match &s.head {
        Some((h, true)) => out.push_str(&format!(
            "\nproven: the trail reaches the Safe's sealed head (anchor at event {}, written {}): no newer anchored \
             lines or files were removed before then (a head file replaced by an older copy of itself is not \
             detected: see docs/AUDIT.md)",
            h.seq, h.time
        )),
        Some((h, false)) => out.push_str(&format!(
            "\nthe trail reaches the head file's event {}, but its MAC is NOT checked (no root key for key id {})",
            h.seq, h.key_id
        )),
        None => {
            out.push_str("\nNOT proven: that the newest lines or files were not removed (no audit head was checked)")
        }
    }
    if let Some(kept) = s.retained_from.filter(|_| s.first_seq > 0) {
        out.push_str(&format!(
            "\nevents before {} were deleted by the Safe's retention (its newest retention line says the trail \
             starts at event {kept}); they cannot be checked",
            s.first_seq
        ));
    }
    if s.anchors_unchecked > 0 {
        out.push_str(&format!(
            "\nMACs NOT checked for {} anchor(s) (root key ids {}): give --root-key-file for them. The hash chain \
             alone does not stop someone who rewrites the whole file",
            s.anchors_unchecked,
            s.missing_keys.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if s.after_last_anchor > 0 {
        out.push_str(&format!(
            "\nNOT proven: the last {} line(s) follow the last anchor and are covered by the chain only: they could \
             have been cut off or rewritten (normal while the Safe runs; --complete refuses it)",
            s.after_last_anchor
        ));
    }
    out
}

/// How often `tail -f` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

async fn tail(a: TailArgs) -> Result<(), CliError> {
    if a.from_safe {
        let got =
            crate::connect::client().await?.audit_lines(a.lines, a.caller.as_deref(), a.secret.as_deref()).await?;
        let mut out = std::io::stdout().lock();
        for l in &got.lines {
            print_line(&mut out, l.to_string().as_bytes())?;
        }
        return Ok(());
    }
    let path = a.trail.current();
    let keep = |line: &[u8]| Parsed::parse(line).is_some_and(|p| p.matches(a.caller.as_deref(), a.secret.as_deref()));
    let (matching, complete) = aegis_audit::files::last_matching(&path, a.lines, &keep)
        .map_err(|e| CliError::new(CONFIG, format!("cannot read {}: {e}", path.display())))?;
    let mut out = std::io::stdout().lock();
    for l in &matching {
        print_line(&mut out, l)?;
    }
    drop(out);
    if !a.follow {
        return Ok(());
    }
    let mut pos = (identity(&path), complete);
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        pos = follow(&path, pos, &keep)?;
    }
}

/// The inode of `path`, to notice a rotation.
fn identity(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

/// Prints the complete lines written since `(inode, offset)`; returns the new position.
fn follow(path: &Path, (ino, offset): (u64, u64), keep: &impl Fn(&[u8]) -> bool) -> Result<(u64, u64), CliError> {
    let now = identity(path);
    let start = if now == ino { offset } else { 0 };
    let Ok(mut f) = std::fs::File::open(path) else { return Ok((ino, offset)) };
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(start)).and_then(|_| f.read_to_end(&mut buf)).map_err(CliError::failure)?;
    let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out = std::io::stdout().lock();
    for l in buf[..complete].split(|&b| b == b'\n').filter(|l| !l.is_empty() && keep(l)) {
        print_line(&mut out, l)?;
    }
    Ok((now, start + complete as u64))
}

/// Prints one JSON line with terminal controls escaped (JSON escapes: same meaning).
fn print_line(out: &mut impl Write, line: &[u8]) -> Result<(), CliError> {
    let text = String::from_utf8_lossy(line);
    out.write_all(crate::output::json_printable(&text).as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(CliError::failure)
}
