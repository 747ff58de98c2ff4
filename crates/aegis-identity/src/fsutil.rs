//! Atomic file writes (on `aegis-fs`): readers see the old file or the new
//! one, never half.

use std::fs;
use std::path::Path;

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
    let mode = if access == Access::Private { 0o600 } else { 0o644 };
    aegis_fs::write_atomic(path, data, mode).map_err(|e| IdentityError::write(path, e.source))
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
