//! Where the root key lives when the operator keeps it in a file.
//!
//! A rotation writes the new key to `<file>.next` before re-sealing any record
//! and renames it over `<file>` once every record is re-sealed, so a crash at
//! any point leaves every record openable with the keys on disk.
//!
//! While `<file>.next` exists a rotation is unfinished: the Safe starts on the
//! old key (with the next key loaded too, so records already re-sealed under it
//! open), retries finishing it, and a new rotation reuses that key instead of
//! generating another one.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aegis_crypto::RootKey;

/// Errors about the root key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("root key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a root key.
    #[error(
        "root key file {path}: {source}; restore it from your backup (without it the secrets cannot be decrypted)"
    )]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: aegis_crypto::CryptoError,
    },
}

/// The path of the key being rotated in.
pub fn next_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io { path: path.display().to_string(), source }
}

/// Reads a root key file, if it exists.
pub fn read(path: &Path) -> Result<Option<Arc<RootKey>>, KeyFileError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            RootKey::parse(&text)
                .map(|k| Some(Arc::new(k)))
                .map_err(|source| KeyFileError::Invalid { path: path.display().to_string(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes a root key file atomically with mode 0600.
pub fn write(path: &Path, key: &RootKey) -> Result<(), KeyFileError> {
    let dir = aegis_fs::parent_dir(path);
    fs::create_dir_all(dir).map_err(io(dir))?;
    aegis_fs::write_atomic(path, key.to_text().as_bytes(), 0o600).map_err(|e| io(&e.path)(e.source))
}

/// Loads the key, creating one on first start.
pub fn load_or_create(path: &Path) -> Result<(Arc<RootKey>, bool), KeyFileError> {
    if let Some(k) = read(path)? {
        return Ok((k, false));
    }
    let key = Arc::new(RootKey::generate());
    write(path, &key)?;
    Ok((key, true))
}

/// Makes the rotated-in key the only key on disk.
pub fn promote_next(path: &Path) -> Result<(), KeyFileError> {
    let next = next_path(path);
    fs::rename(&next, path).map_err(io(&next))?;
    let dir = aegis_fs::parent_dir(path);
    aegis_fs::sync_dir(dir).map_err(io(dir))
}

/// Moves an unreadable `<file>.next` aside to `<file>.next.unreadable-<unix time>`; returns the new path.
pub fn move_aside(next: &Path) -> Result<PathBuf, KeyFileError> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut p = next.as_os_str().to_owned();
    p.push(format!(".unreadable-{stamp}"));
    let dst = PathBuf::from(p);
    fs::rename(next, &dst).map_err(io(next))?;
    let dir = aegis_fs::parent_dir(next);
    aegis_fs::sync_dir(dir).map_err(io(dir))?;
    Ok(dst)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn key_files_are_written_atomically_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("root.key");
        let (key, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let next = RootKey::generate();
        write(&next_path(&path), &next).unwrap();
        assert_eq!(fs::metadata(next_path(&path)).unwrap().permissions().mode() & 0o777, 0o600);
        promote_next(&path).unwrap();
        let (loaded, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(loaded.to_text().as_bytes(), next.to_text().as_bytes());
        assert_ne!(loaded.to_text().as_bytes(), key.to_text().as_bytes());
        // Only the key is left: no temporary files.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
