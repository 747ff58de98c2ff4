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

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(key.to_text().as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
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
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Moves an unreadable `<file>.next` aside to `<file>.next.unreadable-<unix time>`; returns the new path.
pub fn move_aside(next: &Path) -> Result<PathBuf, KeyFileError> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut p = next.as_os_str().to_owned();
    p.push(format!(".unreadable-{stamp}"));
    let dst = PathBuf::from(p);
    fs::rename(next, &dst).map_err(io(next))?;
    let dir = next.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(dst)
}
