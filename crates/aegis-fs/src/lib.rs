//! Atomic file writes, shared by every Aegis crate that writes files.
//!
//! A reader sees the old file or the new one, never part of either: the new
//! content goes to a temporary file in the same directory (same file system,
//! so the rename is atomic), created with `create_new` and its final mode,
//! written and fsynced; it then replaces the target by `rename`, and the
//! directory is fsynced so the rename survives a crash.
//!
//! [`write_atomic`] does all of it for one file. A writer that replaces many
//! files at once (the store's batches) uses the pieces: [`write_new`] for each
//! temporary file, its own renames, and one [`sync_dir`] for the batch.
//!
//! This crate only does I/O on paths it is given; it depends on nothing else
//! in the workspace, so any crate may use it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One step of an atomic write failed.
#[derive(Debug)]
pub struct WriteError {
    /// The step, as a verb phrase that reads "cannot {action} {path}":
    /// `create and write`, `rename a temporary file onto` or `flush the directory`.
    pub action: &'static str,
    /// The file the step was about: the temporary file (creating, writing,
    /// fsyncing it), the target (the rename) or the directory (its fsync).
    pub path: PathBuf,
    /// The operating system's reason.
    pub source: io::Error,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes `bytes` to `path` with permission bits `mode` (on Unix) via a
/// temporary file in the same directory: create it (`create_new`, `mode`),
/// write, fsync, rename it over `path`, fsync the directory. On failure the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let tmp = write_temp(path, bytes, mode)?;
    if let Err(source) = fs::rename(&tmp, path) {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
        return Err(WriteError { action: "rename a temporary file onto", path: path.to_owned(), source });
    }
    let dir = parent_dir(path);
    sync_dir(dir).map_err(|source| WriteError { action: "flush the directory", path: dir.to_owned(), source })
}

/// Most temporary names tried for one write: a name can be taken by a file
/// left behind by a crashed process that had the same process ID (in a
/// container, the same command often runs as the same PID after a restart).
const TEMP_ATTEMPTS: usize = 16;

/// Writes `bytes` to a new temporary file next to `path`; returns its name.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf, WriteError> {
    let mut attempt = 0;
    loop {
        let tmp = temp_path(path);
        match write_new(&tmp, &[bytes], mode) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < TEMP_ATTEMPTS => attempt += 1,
            Err(source) => return Err(WriteError { action: "create and write", path: tmp, source }),
        }
    }
}

/// Creates `tmp`, which must not exist yet, with permission bits `mode` (on
/// Unix: exactly `mode`, whatever the process's umask), writes `parts` one
/// after the other and fsyncs it. On failure a file it created is removed.
pub fn write_new(tmp: &Path, parts: &[&[u8]], mode: u32) -> io::Result<()> {
    create_new(tmp, parts, mode, true)
}

/// As [`write_new`], without the fsync: for a caller that has made the bytes
/// durable elsewhere first (a journal) and syncs the file later.
pub fn write_new_unsynced(tmp: &Path, parts: &[&[u8]], mode: u32) -> io::Result<()> {
    create_new(tmp, parts, mode, false)
}

fn create_new(tmp: &Path, parts: &[&[u8]], mode: u32, sync: bool) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    // An existing file is not ours to remove.
    let mut file = options.open(tmp)?;
    let result = (|| {
        // The umask may have cleared bits `mode` asks for (0640 under umask 077).
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        #[cfg(not(unix))]
        let _ = mode;
        for part in parts {
            file.write_all(part)?;
        }
        if sync {
            file.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort, as above.
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Fsyncs the directory `dir`, which makes the renames done in it durable.
/// Does nothing where directories cannot be opened (not Unix).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The directory that holds `path`: its parent, or `.` for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Most bytes of the target's name kept in a temporary name, so that the
/// temporary name stays within the 255 bytes a file name may have.
const TEMP_NAME_KEEP: usize = 200;

/// A temporary file name next to `path`, unique within this process and
/// hidden: `.<name>.<pid>.<n>.tmp`, `<name>` cut to [`TEMP_NAME_KEEP`] bytes.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|s| s.to_string_lossy()).unwrap_or_default();
    let mut keep = name.len().min(TEMP_NAME_KEEP);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    path.with_file_name(format!(".{}.{}.{n}.tmp", &name[..keep], std::process::id()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use nix::sys::stat::{umask, Mode};

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_and_replaces_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);
        let public = dir.path().join("cert");
        write_atomic(&public, b"c", 0o644).unwrap();
        #[cfg(unix)]
        assert_eq!(mode_of(&public), 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_failed_rename_keeps_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the file should be makes the rename fail.
        let path = dir.path().join("k");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), b"").unwrap();
        let err = write_atomic(&path, b"new", 0o600).unwrap_err();
        assert_eq!(err.path, path);
        assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_new_refuses_an_existing_file_and_writes_all_parts() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(".t");
        write_new(&tmp, &[b"head", b"body"], 0o600).unwrap();
        assert_eq!(fs::read(&tmp).unwrap(), b"headbody");
        let err = write_new(&tmp, &[b"x"], 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        sync_dir(dir.path()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_mode_is_exact_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        // The umask is process-wide; every write here sets its mode exactly,
        // so the other tests of this crate do not mind it meanwhile.
        let old = umask(Mode::from_bits_truncate(0o077));
        let written = write_atomic(&path, b"x", 0o640);
        umask(old);
        written.unwrap();
        assert_eq!(mode_of(&path), 0o640);
    }

    #[test]
    fn a_long_name_gets_a_temporary_name_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k".repeat(255));
        write_atomic(&path, b"long", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"long");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_leftover_temporary_file_is_stepped_over_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        // The names this process would try next, as a crashed twin would leave them.
        let next = temp_path(&path);
        let n: u64 = next.to_string_lossy().rsplit('.').nth(1).unwrap().parse().unwrap();
        let pid = std::process::id();
        // Other tests running meanwhile take a few numbers too: cover ten.
        for i in 1..=10 {
            fs::write(dir.path().join(format!(".k.{pid}.{}.tmp", n + i)), b"stale").unwrap();
        }
        write_atomic(&path, b"fresh", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"fresh");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 11, "the stale files are not ours to remove");
    }

    #[test]
    fn parent_of_a_bare_name_is_the_current_directory() {
        assert_eq!(parent_dir(Path::new("root.key")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/root.key")), Path::new("/a"));
    }
}
