//! Writes of the files workloads read.
//!
//! A reader must see the old content or the new one, never part of either:
//! [`write_atomic`] creates the directory if needed and hands the write to
//! [`aegis_fs::write_atomic`] (temporary file in the same directory with the
//! exact mode, fsync, rename, fsync of the directory). A file that already
//! holds the content and mode is left alone ([`sync`]).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

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

/// Replaces `path` with `content` atomically (temporary file, fsync, rename,
/// fsync of the directory), creating the directory (owner-only) if needed.
/// Temporary files start with a dot, so they never take a key's file name.
pub fn write_atomic(path: &Path, content: &[u8], mode: FileMode) -> Result<(), FileError> {
    ensure_dir(aegis_fs::parent_dir(path))?;
    aegis_fs::write_atomic(path, content, mode.bits()).map_err(|e| FileError {
        action: e.action,
        path: e.path,
        source: e.source,
    })
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
    fn an_open_mode_is_kept_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config");
        assert!(sync(&f, b"x", "0664".parse().unwrap()).unwrap());
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o664, "not cut by the umask");
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
