//! SVID files on disk, reloaded when they change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::time::MissedTickBehavior;
use tracing::{error, info};
use zeroize::Zeroizing;

use crate::material::{parse_bundle, parse_certs, parse_key};
use crate::{IdentityError, IdentitySource, SvidMaterial};

/// Where the three SVID files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidPaths {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key of the leaf (PEM).
    pub key: PathBuf,
    /// CA certificates of the trust domain (PEM).
    pub bundle: PathBuf,
}

/// SVID files (as written by spiffe-helper, cert-manager's csi-driver-spiffe
/// or `aegis dev svid`), reloaded when they change.
///
/// A task polls the files' modification times and sizes every `interval`.
/// A file that changed but cannot be loaded (for example a half-finished
/// rotation) keeps the previous material in use and is logged with its path;
/// the next change is tried again. The task stops when the source is dropped.
#[derive(Debug)]
pub struct FileSource {
    paths: SvidPaths,
    material: ArcSwap<SvidMaterial>,
}

/// Polling faster than this gains nothing and only burns CPU.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

impl FileSource {
    /// Loads the files (failing if they are unusable now) and starts watching them.
    pub async fn start(paths: SvidPaths, interval: Duration) -> Result<Arc<Self>, IdentityError> {
        // Stamps before reading, so a write racing with this load is seen as a change.
        let stamps = Stamps::of(&paths).await;
        let material = load(&paths).await?;
        info!(spiffe_id = %material.spiffe_id(), not_after = %material.not_after(),
              cert = %paths.cert.display(), "loaded SVID files");
        let source = Arc::new(Self { paths, material: ArcSwap::from_pointee(material) });
        tokio::spawn(watch(Arc::downgrade(&source), stamps, interval.max(MIN_INTERVAL)));
        Ok(source)
    }

    /// The files being watched.
    pub fn paths(&self) -> &SvidPaths {
        &self.paths
    }

    async fn reload(&self) {
        match load(&self.paths).await {
            Ok(material) => {
                info!(spiffe_id = %material.spiffe_id(), not_after = %material.not_after(),
                      cert = %self.paths.cert.display(), "reloaded SVID files");
                self.material.store(Arc::new(material));
            }
            Err(err) => error!(error = %err, cert = %self.paths.cert.display(),
                               "SVID files changed but cannot be loaded; keeping the previous SVID"),
        }
    }
}

impl IdentitySource for FileSource {
    fn current(&self) -> Arc<SvidMaterial> {
        self.material.load_full()
    }
}

async fn watch(source: Weak<FileSource>, mut stamps: Stamps, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    loop {
        ticker.tick().await;
        let Some(source) = source.upgrade() else {
            return;
        };
        let now = Stamps::of(&source.paths).await;
        if now != stamps {
            stamps = now;
            source.reload().await;
        }
    }
}

/// Identity of each file's current content; `None` while a file is missing.
#[derive(PartialEq, Eq)]
struct Stamps([Option<Stamp>; 3]);

/// Modification time, size and (on Unix) inode: a writer that renames a new
/// file into place within the clock's resolution still changes the inode.
/// What tells a file changed (also for federated bundle files).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: SystemTime,
    len: u64,
    inode: u64,
}

impl Stamps {
    async fn of(paths: &SvidPaths) -> Self {
        Self([stamp(&paths.cert).await, stamp(&paths.key).await, stamp(&paths.bundle).await])
    }
}

pub(crate) async fn stamp(path: &Path) -> Option<Stamp> {
    // metadata() follows symlinks, so Kubernetes' `..data` swaps are seen too.
    let meta = tokio::fs::metadata(path).await.ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp { modified: meta.modified().ok()?, len: meta.len(), inode })
}

/// Reads and parses the three files, naming the offending file in errors.
async fn load(paths: &SvidPaths) -> Result<SvidMaterial, IdentityError> {
    let cert = read(&paths.cert).await?;
    let key = Zeroizing::new(read(&paths.key).await?);
    let bundle = read(&paths.bundle).await?;
    let chain = parse_certs(&cert, "certificate chain").map_err(|e| e.in_file(&paths.cert))?;
    let bundle = parse_bundle(&bundle).map_err(|e| e.in_file(&paths.bundle))?;
    // Parsed last: from_der zeroizes it, and nothing may fail in between.
    let key = parse_key(&key).map_err(|e| e.in_file(&paths.key))?;
    SvidMaterial::from_der(chain, key, bundle).map_err(|e| match e {
        IdentityError::KeyMismatch { .. } => e.in_file(&paths.key),
        _ => e.in_file(&paths.cert),
    })
}

pub(crate) async fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    tokio::fs::read(path).await.map_err(|e| IdentityError::read(path, e))
}
