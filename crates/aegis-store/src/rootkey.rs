//! A port: where the root key lives. The [`RootKeyStore`] trait, and its file
//! adapter ([`FileStore`]). Another adapter (a Kubernetes Secret) lives in
//! the `aegis-kube` crate, so this crate builds without a Kubernetes client.
//!
//! Every store keeps two slots: the root key and, during a rotation, the next
//! key. A rotation writes the next key before re-sealing any record and
//! promotes it (one atomic step) once every record is re-sealed, so a crash at
//! any point leaves every record openable with the keys in the store.
//!
//! While a next key exists a rotation is unfinished: the Safe starts on the
//! old key (with the next key loaded too, so records already re-sealed under it
//! open), retries finishing it, and a new rotation reuses that key instead of
//! generating another one.
//!
//! For a file `<file>`, the next key is `<file>.next`, and promoting it is a
//! rename over `<file>`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aegis_crypto::RootKey;
use futures::future::BoxFuture;

/// Errors of a root key store. Messages name the store and say what to do;
/// they never hold key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Reading or writing a file failed.
    #[error("root key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The stored text is not a root key.
    #[error("{location}: {source}; restore it from your backup (without it the secrets cannot be decrypted)")]
    Invalid {
        /// Where the text was read, e.g. `root key file /x/root.key`.
        location: String,
        /// What is wrong (never the text itself).
        #[source]
        source: aegis_crypto::CryptoError,
    },
    /// The store could not be used; the message names it and says what to do.
    #[error("{0}")]
    Unavailable(String),
    /// The store holds no key although sealed records exist: the key was lost.
    #[error(
        "{what}, but the data directory holds {records} sealed record(s) that only the lost root key opens: the \
         root key was deleted or emptied. Restore it from your backup into {place}; the Safe wrote nothing (a new \
         key would not open the records)"
    )]
    Missing {
        /// What was found, e.g. `root key file /x/root.key does not exist`.
        what: String,
        /// Where the key must be restored to.
        place: String,
        /// Records in the data directory.
        records: usize,
    },
}

/// What a store does when it holds no root key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfAbsent {
    /// First start (no record exists): generate and store a key.
    Generate,
    /// This many sealed records exist: a new key could not open them, so refuse and write nothing.
    Refuse {
        /// Records in the data directory.
        records: usize,
    },
}

impl IfAbsent {
    /// Generate only while the data directory holds no record.
    pub fn for_records(records: usize) -> Self {
        if records == 0 {
            Self::Generate
        } else {
            Self::Refuse { records }
        }
    }
}

/// The result of a root key store operation.
pub type KeyStoreResult<T> = Result<T, KeyStoreError>;

/// Where the root key lives. Implementations keep the root key and, during a
/// rotation, one next key, and make every change atomic (see the module docs).
///
/// Methods return boxed futures so the Safe can hold any store as
/// `Arc<dyn RootKeyStore>`.
pub trait RootKeyStore: Send + Sync + fmt::Debug {
    /// Where the key lives, for logs and errors (e.g. `root key file /x/root.key`).
    fn describe(&self) -> String;

    /// Loads the root key; when the store holds none, generates and stores one if `if_absent`
    /// allows it (else [`KeyStoreError::Missing`]). `true` if it was generated.
    fn load_or_create(&self, if_absent: IfAbsent) -> BoxFuture<'_, KeyStoreResult<(Arc<RootKey>, bool)>>;

    /// The next key of an unfinished rotation, if there is one.
    fn read_next(&self) -> BoxFuture<'_, KeyStoreResult<Option<Arc<RootKey>>>>;

    /// Stores `key` as the next key (before any record is sealed under it).
    fn write_next(&self, key: Arc<RootKey>) -> BoxFuture<'_, KeyStoreResult<()>>;

    /// Makes the next key the root key, in one atomic step.
    fn promote_next(&self) -> BoxFuture<'_, KeyStoreResult<()>>;

    /// Drops the next key (only when no record can be sealed under it).
    fn discard_next(&self) -> BoxFuture<'_, KeyStoreResult<()>>;

    /// Moves an unreadable next key aside (kept for the operator); returns where it went.
    fn move_next_aside(&self) -> BoxFuture<'_, KeyStoreResult<String>>;
}

/// The root key in a file, generated on first start (mode 0600).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store over `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RootKeyStore for FileStore {
    fn describe(&self) -> String {
        format!("root key file {}", self.path.display())
    }

    fn load_or_create(&self, if_absent: IfAbsent) -> BoxFuture<'_, KeyStoreResult<(Arc<RootKey>, bool)>> {
        Box::pin(async move { load_or_create_if(&self.path, if_absent) })
    }

    fn read_next(&self) -> BoxFuture<'_, KeyStoreResult<Option<Arc<RootKey>>>> {
        Box::pin(async move { read(&next_path(&self.path)) })
    }

    fn write_next(&self, key: Arc<RootKey>) -> BoxFuture<'_, KeyStoreResult<()>> {
        Box::pin(async move { write(&next_path(&self.path), &key) })
    }

    fn promote_next(&self) -> BoxFuture<'_, KeyStoreResult<()>> {
        Box::pin(async move { promote_next(&self.path) })
    }

    fn discard_next(&self) -> BoxFuture<'_, KeyStoreResult<()>> {
        Box::pin(async move {
            let next = next_path(&self.path);
            match fs::remove_file(&next) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&next)(e)),
            }
        })
    }

    fn move_next_aside(&self) -> BoxFuture<'_, KeyStoreResult<String>> {
        Box::pin(async move { move_aside(&next_path(&self.path)).map(|p| p.display().to_string()) })
    }
}

/// The path of the key being rotated in.
pub fn next_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io { path: path.display().to_string(), source }
}

/// Reads a root key file, if it exists.
pub fn read(path: &Path) -> KeyStoreResult<Option<Arc<RootKey>>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            RootKey::parse(&text).map(|k| Some(Arc::new(k))).map_err(|source| KeyStoreError::Invalid {
                location: format!("root key file {}", path.display()),
                source,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes a root key file atomically with mode 0600.
pub fn write(path: &Path, key: &RootKey) -> KeyStoreResult<()> {
    let dir = aegis_fs::parent_dir(path);
    fs::create_dir_all(dir).map_err(io(dir))?;
    aegis_fs::write_atomic(path, key.to_text().as_bytes(), 0o600).map_err(|e| io(&e.path)(e.source))
}

/// Loads the key, creating one on first start.
pub fn load_or_create(path: &Path) -> KeyStoreResult<(Arc<RootKey>, bool)> {
    load_or_create_if(path, IfAbsent::Generate)
}

/// Loads the key; when the file is missing, creates one only if `if_absent` allows it.
pub fn load_or_create_if(path: &Path, if_absent: IfAbsent) -> KeyStoreResult<(Arc<RootKey>, bool)> {
    if let Some(k) = read(path)? {
        return Ok((k, false));
    }
    if let IfAbsent::Refuse { records } = if_absent {
        return Err(KeyStoreError::Missing {
            what: format!("root key file {} does not exist", path.display()),
            place: path.display().to_string(),
            records,
        });
    }
    let key = Arc::new(RootKey::generate());
    write(path, &key)?;
    Ok((key, true))
}

/// Makes the rotated-in key the only key on disk.
pub fn promote_next(path: &Path) -> KeyStoreResult<()> {
    let next = next_path(path);
    fs::rename(&next, path).map_err(io(&next))?;
    let dir = aegis_fs::parent_dir(path);
    aegis_fs::sync_dir(dir).map_err(io(dir))
}

/// Moves an unreadable `<file>.next` aside to `<file>.next.unreadable-<unix time>`; returns the new path.
pub fn move_aside(next: &Path) -> KeyStoreResult<PathBuf> {
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

    #[tokio::test]
    async fn the_file_store_keeps_a_next_key_until_it_is_promoted_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("root.key"));
        let (key, created) = store.load_or_create(IfAbsent::Generate).await.unwrap();
        assert!(created);
        assert!(store.read_next().await.unwrap().is_none());
        let next = Arc::new(RootKey::generate());
        store.write_next(next.clone()).await.unwrap();
        assert_eq!(store.read_next().await.unwrap().unwrap().id(), next.id());
        store.discard_next().await.unwrap();
        store.discard_next().await.unwrap();
        assert!(store.read_next().await.unwrap().is_none());
        assert_eq!(store.load_or_create(IfAbsent::Generate).await.unwrap().0.id(), key.id());
        store.write_next(next.clone()).await.unwrap();
        store.promote_next().await.unwrap();
        let (loaded, created) = store.load_or_create(IfAbsent::Refuse { records: 1 }).await.unwrap();
        assert!(!created);
        assert_eq!(loaded.id(), next.id());
        fs::write(next_path(store.path()), "not a key").unwrap();
        let e = store.read_next().await.err().unwrap();
        assert!(matches!(e, KeyStoreError::Invalid { .. }), "{e}");
        assert!(!e.to_string().contains("not a key"), "{e}");
        let moved = store.move_next_aside().await.unwrap();
        assert!(moved.contains("root.key.next.unreadable-"), "{moved}");
        assert!(store.read_next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_missing_key_file_is_not_replaced_while_records_exist() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("root.key"));
        let e = store.load_or_create(IfAbsent::for_records(3)).await.err().unwrap();
        assert!(matches!(e, KeyStoreError::Missing { records: 3, .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("does not exist") && m.contains("3 sealed record(s)") && m.contains("backup"), "{m}");
        assert!(!store.path().exists(), "nothing was written");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let (_, created) = store.load_or_create(IfAbsent::for_records(0)).await.unwrap();
        assert!(created, "a first start (no record) still generates the key");
    }
}
