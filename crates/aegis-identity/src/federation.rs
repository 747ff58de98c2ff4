//! The foreign trust domains a Safe federates with.
//!
//! A Safe accepts a client of another trust domain only when that domain is
//! named here, and verifies the client's chain against that domain's own
//! bundle: the one the SPIRE agent delivers to the Safe's entry (SPIRE
//! federation, `federatesWith`), or else a bundle file named here, reloaded
//! when it changes. A client of any other domain is refused at the handshake.
//! What a federated client may do is decided by policies alone: no built-in
//! role covers an identity of another trust domain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use tokio::time::MissedTickBehavior;
use tracing::{error, info};

use crate::file_source::{read, stamp, Stamp};
use crate::material::parse_bundle;
use crate::{IdentityError, SvidMaterial};

type Bundle = Arc<[CertificateDer<'static>]>;

/// Which foreign trust domains are accepted, and their bundle files.
#[derive(Debug, Default)]
pub struct Federation {
    domains: BTreeSet<String>,
    files: Option<Arc<BundleFiles>>,
}

impl Federation {
    /// No foreign trust domain: only the own one is accepted.
    pub fn none() -> Self {
        Self::default()
    }

    /// Accepts clients of `domains`, with bundles from the SPIRE agent or
    /// from `files` (trust domain, PEM file), polled every `interval`. Every
    /// file must belong to a named domain and load now.
    pub async fn start(
        domains: Vec<String>,
        files: Vec<(String, PathBuf)>,
        interval: Duration,
    ) -> Result<Self, IdentityError> {
        let mut accepted = BTreeSet::new();
        for td in domains {
            accepted.insert(check_domain(&td)?);
        }
        let mut paths = BTreeMap::new();
        for (td, path) in files {
            let td = check_domain(&td)?;
            if !accepted.contains(&td) {
                return Err(IdentityError::Config(format!(
                    "a bundle file is given for trust domain '{td}', which is not federated with; \
                     add it to the federated trust domains (--federate-with {td}) or drop the file"
                )));
            }
            if paths.insert(td.clone(), path).is_some() {
                return Err(IdentityError::Config(format!("two bundle files are given for trust domain '{td}'")));
            }
        }
        let files = if paths.is_empty() { None } else { Some(BundleFiles::start(paths, interval).await?) };
        Ok(Self { domains: accepted, files })
    }

    /// Whether clients of `td` are accepted.
    pub fn accepts(&self, td: &str) -> bool {
        self.domains.contains(td)
    }

    /// The accepted foreign trust domains.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(String::as_str)
    }

    /// The bundle to verify a client of the accepted domain `td` with: the
    /// agent's first, else the file's; `None` if neither has one (yet).
    pub fn bundle(&self, td: &str, own: &SvidMaterial) -> Option<Arc<[CertificateDer<'static>]>> {
        if !self.accepts(td) {
            return None;
        }
        own.federated_bundle(td).cloned().or_else(|| self.files.as_ref()?.bundles.load().get(td).cloned())
    }
}

/// A trust domain name as SPIFFE allows it (the rule of [`aegis_core::SpiffeId`]:
/// lower-case letters, digits, `.`, `-` and `_`), at most 255 bytes.
fn check_domain(td: &str) -> Result<String, IdentityError> {
    let td = td.strip_prefix("spiffe://").unwrap_or(td);
    let id = aegis_core::SpiffeId::parse(&format!("spiffe://{td}")).ok();
    if let Some(id) = id.filter(|id| id.path().is_empty() && td.len() <= 255) {
        Ok(id.trust_domain().to_owned())
    } else {
        Err(IdentityError::Config(format!(
            "'{}' is not a trust domain name: use lower-case letters, digits, '.', '-' and '_' (e.g. 'b.example.org')",
            td.escape_debug()
        )))
    }
}

/// Bundle files of federated domains, reloaded when they change; a file that
/// cannot be read or parsed keeps its previous bundle and is logged.
#[derive(Debug)]
struct BundleFiles {
    paths: BTreeMap<String, PathBuf>,
    bundles: ArcSwap<BTreeMap<String, Bundle>>,
}

impl BundleFiles {
    async fn start(paths: BTreeMap<String, PathBuf>, interval: Duration) -> Result<Arc<Self>, IdentityError> {
        let mut stamps = BTreeMap::new();
        let mut bundles = BTreeMap::new();
        for (td, path) in &paths {
            stamps.insert(td.clone(), stamp(path).await);
            bundles.insert(td.clone(), load(path).await?);
            info!(trust_domain = %td, file = %path.display(), "loaded a federated trust domain's bundle");
        }
        let files = Arc::new(Self { paths, bundles: ArcSwap::from_pointee(bundles) });
        tokio::spawn(watch(Arc::downgrade(&files), stamps, interval));
        Ok(files)
    }

    async fn reload(&self, td: &str, path: &Path) {
        match load(path).await {
            Ok(bundle) => {
                let mut next = (**self.bundles.load()).clone();
                next.insert(td.to_owned(), bundle);
                self.bundles.store(Arc::new(next));
                info!(trust_domain = %td, file = %path.display(), "reloaded a federated trust domain's bundle");
            }
            Err(e) => error!(
                trust_domain = %td, file = %path.display(), error = %e,
                "a federated trust domain's bundle file changed but cannot be used; the previous bundle is kept"
            ),
        }
    }
}

async fn watch(files: Weak<BundleFiles>, mut stamps: BTreeMap<String, Option<Stamp>>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(files) = files.upgrade() else { return };
        for (td, path) in &files.paths {
            let now = stamp(path).await;
            if stamps.get(td) != Some(&now) {
                stamps.insert(td.clone(), now);
                files.reload(td, path).await;
            }
        }
    }
}

async fn load(path: &Path) -> Result<Bundle, IdentityError> {
    Ok(parse_bundle(&read(path).await?).map_err(|e| e.in_file(path))?.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::devca::DevCa;

    #[tokio::test]
    async fn only_named_domains_are_accepted_and_their_files_follow_changes() {
        let dir = tempfile::tempdir().unwrap();
        let b = DevCa::load_or_create(&dir.path().join("b"), "b.example").unwrap();
        let c = DevCa::load_or_create(&dir.path().join("c"), "b.example").unwrap();
        let file = dir.path().join("b.pem");
        std::fs::write(&file, b.bundle_pem()).unwrap();
        let own = DevCa::load_or_create(&dir.path().join("own"), "example.org").unwrap();
        let safe = aegis_core::SpiffeId::parse("spiffe://example.org/workload/safe").unwrap();
        let material = own.issue(&safe, Duration::from_secs(3600)).unwrap().to_material().unwrap();

        let fed = Federation::start(
            vec!["spiffe://b.example".to_owned()],
            vec![("b.example".to_owned(), file.clone())],
            Duration::from_millis(20),
        )
        .await
        .unwrap();
        assert!(fed.accepts("b.example"), "the spiffe:// form names the domain too");
        assert!(!fed.accepts("c.example"));
        let first = fed.bundle("b.example", &material).expect("the file's bundle");
        assert!(fed.bundle("c.example", &material).is_none(), "no bundle is used for a domain not named");

        // Another CA's bundle replaces the file: it is picked up.
        std::fs::write(&file, c.bundle_pem()).unwrap();
        let t = std::time::Instant::now();
        while fed.bundle("b.example", &material).unwrap() == first {
            assert!(t.elapsed() < Duration::from_secs(5), "the changed bundle file was not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A broken file keeps the bundle in use.
        let now = fed.bundle("b.example", &material).unwrap();
        std::fs::write(&file, b"not a certificate").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fed.bundle("b.example", &material).unwrap(), now);
    }

    #[tokio::test]
    async fn bad_settings_are_refused_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let err = |r: Result<Federation, IdentityError>| r.unwrap_err().to_string();
        let no_domain = Federation::start(vec![], vec![("b.example".into(), dir.path().join("x"))], Duration::ZERO);
        assert!(err(no_domain.await).contains("not federated with"));
        let bad = Federation::start(vec!["B Example".into()], vec![], Duration::ZERO);
        assert!(err(bad.await).contains("not a trust domain name"));
        let missing = Federation::start(
            vec!["b.example".into()],
            vec![("b.example".into(), dir.path().join("x"))],
            Duration::ZERO,
        );
        assert!(err(missing.await).contains(&dir.path().join("x").display().to_string()));
    }
}
