//! Atomic writes of the files workloads read.
//!
//! A reader must see the old content or the new one, never part of either: the
//! new content goes to a temporary file in the same directory (same file
//! system, so `rename` is atomic), is flushed to disk and given its mode, then
//! replaces the target by `rename`; the directory is flushed last so the rename
//! survives a crash. A file that already holds the content is left alone.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::Rng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Name prefix of temporary files (never a key file name: those cannot start with a dot).
pub const TEMP_PREFIX: &str = ".aegis-tmp-";

/// Permission bits for a file, parsed from octal text such as `0600`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(u32);

impl FileMode {
    /// Owner read and write only (the default for secret files).
    pub const PRIVATE: Self = Self(0o600);

    /// The permission bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl FromStr for FileMode {
    type Err = String;

    /// Accepts `0600`, `600` or `0o600`; set-id and sticky bits are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(bits) if !digits.is_empty() && bits <= 0o777 => Ok(Self(bits)),
            _ => Err(format!("'{s}' is not a file mode; give octal permission bits such as 0600 or 0640")),
        }
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// A file could not be written; names the file and the step, never the content.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done.
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

fn fail<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError { action, path: path.to_owned(), source }
}

/// Makes `path` hold exactly `content` with `mode`; returns whether it had to write.
pub fn sync(path: &Path, content: &[u8], mode: FileMode) -> Result<bool, FileError> {
    if holds(path, content, mode) {
        return Ok(false);
    }
    write_atomic(path, content, mode)?;
    Ok(true)
}

/// Whether `path` is a regular file with `mode` and exactly `content`.
fn holds(path: &Path, content: &[u8], mode: FileMode) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != content.len() as u64 || meta.permissions().mode() & 0o7777 != mode.bits() {
        return false;
    }
    // The current content is a secret too: read it into memory that is wiped on drop.
    let mut current = Zeroizing::new(Vec::with_capacity(content.len()));
    match File::open(path).and_then(|mut f| f.read_to_end(&mut current)) {
        Ok(_) => current.as_slice().ct_eq(content).into(),
        Err(_) => false,
    }
}

/// Replaces `path` with `content` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, content: &[u8], mode: FileMode) -> Result<(), FileError> {
    let dir = parent(path);
    ensure_dir(dir)?;
    let (tmp, mut file) = create_temp(dir, mode)?;
    let written = file
        .write_all(content)
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode.bits())))
        .and_then(|()| file.sync_all())
        .map_err(fail("write", &tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(fail("rename a temporary file onto", path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail("flush the directory", dir))
}

/// Removes `path`; a file that is already gone is not an error.
pub fn remove(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(fail("remove", path)(e)),
    }
}

/// Creates `dir` (owner-only) if it does not exist yet.
pub fn ensure_dir(dir: &Path) -> Result<(), FileError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail("create the directory", dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new, exclusively created temporary file in `dir`.
fn create_temp(dir: &Path, mode: FileMode) -> Result<(PathBuf, File), FileError> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::thread_rng().gen::<u64>()));
        match OpenOptions::new().write(true).create_new(true).mode(mode.bits()).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(fail("create a temporary file in", dir)(e)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no free temporary name"));
    Err(fail("create a temporary file in", dir)(e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!("0600".parse::<FileMode>().unwrap().bits(), 0o600);
        assert_eq!("640".parse::<FileMode>().unwrap().bits(), 0o640);
        assert_eq!("0o444".parse::<FileMode>().unwrap().to_string(), "0444");
        for bad in ["", "0o", "8", "rw", "4755", "-1"] {
            assert!(bad.parse::<FileMode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_atomically_with_mode_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub").join("secrets.json");
        assert!(sync(&f, b"one", FileMode::PRIVATE).unwrap());
        assert_eq!(fs::read(&f).unwrap(), b"one");
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!sync(&f, b"one", FileMode::PRIVATE).unwrap());
        assert!(sync(&f, b"one", "0640".parse().unwrap()).unwrap(), "a mode change rewrites");
        assert!(sync(&f, b"", FileMode::PRIVATE).unwrap());
        assert_eq!(fs::read(&f).unwrap(), b"");
        let names: Vec<_> = fs::read_dir(f.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secrets.json")], "no temporary file is left");
        assert!(remove(&f).unwrap());
        assert!(!remove(&f).unwrap());
    }
}
