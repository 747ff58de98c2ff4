//! Atomic file writes: readers see the old file or the new one, never half.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::IdentityError;

/// Who may read a written file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Owner only (0600): private keys.
    Private,
    /// World-readable (0644): certificates.
    Public,
}

/// Creates `dir` (and parents) if missing; new directories are owner-only
/// because they may hold keys.
pub(crate) fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| IdentityError::write(dir, e))
}

/// Writes `data` to `path` via a temporary file in the same directory,
/// fsync, and rename, so a crash or a concurrent reader never sees a partial
/// file. The temporary file gets its final permissions at creation.
pub(crate) fn write_atomic(path: &Path, data: &[u8], access: Access) -> Result<(), IdentityError> {
    let tmp = temp_path(path);
    let result = write_new(&tmp, data, access).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
        return Err(IdentityError::write(path, e));
    }
    sync_parent(path).map_err(|e| IdentityError::write(path, e))
}

fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|s| s.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

fn write_new(tmp: &Path, data: &[u8], access: Access) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if access == Access::Private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = access;
    let mut file = options.open(tmp)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Makes the rename itself durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_atomic(&path, b"one", Access::Private).unwrap();
        write_atomic(&path, b"two", Access::Private).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
    }
}
