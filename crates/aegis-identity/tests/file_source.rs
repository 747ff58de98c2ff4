//! FileSource reloads rewritten SVID files and survives broken ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aegis_identity::devca::DevCa;
use aegis_identity::{start_source, FileSource, IdentityConfig, IdentityError, IdentitySource, SpiffeId};

const TICK: Duration = Duration::from_millis(20);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn dev_ca(dir: &std::path::Path) -> DevCa {
    DevCa::load_or_create(&dir.join("ca"), "example.org").unwrap()
}

/// Waits until `cond` holds on the source's current material, up to 5 s.
async fn eventually(source: &dyn IdentitySource, cond: impl Fn(&SpiffeId) -> bool) -> bool {
    for _ in 0..250 {
        if cond(source.current().spiffe_id()) {
            return true;
        }
        tokio::time::sleep(TICK).await;
    }
    false
}

#[tokio::test]
async fn picks_up_rewritten_files_and_keeps_old_material_on_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path());
    let svid_dir = dir.path().join("svid");
    let first = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(600)).unwrap();
    let paths = first.write_files(&svid_dir).unwrap();

    let source = FileSource::start(paths.clone(), TICK).await.unwrap();
    assert_eq!(source.current().spiffe_id().as_str(), "spiffe://example.org/a");

    let second = ca.issue(&id("spiffe://example.org/rotated/b"), Duration::from_secs(600)).unwrap();
    second.write_files(&svid_dir).unwrap();
    let rotated = |i: &SpiffeId| i.as_str() == "spiffe://example.org/rotated/b";
    assert!(eventually(source.as_ref(), rotated).await, "rotation not seen");

    std::fs::write(&paths.cert, b"this is not a certificate").unwrap();
    tokio::time::sleep(TICK * 10).await;
    assert!(rotated(source.current().spiffe_id()), "garbage replaced the SVID");

    // A later good write is picked up again.
    first.write_files(&svid_dir).unwrap();
    let back = |i: &SpiffeId| i.as_str() == "spiffe://example.org/a";
    assert!(eventually(source.as_ref(), back).await, "recovery not seen");
}

#[tokio::test]
async fn start_fails_on_broken_files_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path());
    let svid = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(600)).unwrap();
    let paths = svid.write_files(&dir.path().join("svid")).unwrap();
    std::fs::write(&paths.key, b"garbage").unwrap();

    let err = FileSource::start(paths.clone(), TICK).await.unwrap_err();
    assert!(matches!(err, IdentityError::InFile { .. }), "{err}");
    assert!(err.to_string().contains(&paths.key.display().to_string()), "{err}");

    std::fs::remove_file(&paths.bundle).unwrap();
    let err = FileSource::start(paths.clone(), TICK).await.unwrap_err();
    assert!(matches!(err, IdentityError::Read { .. }), "{err}");
    assert!(err.to_string().contains("bundle.pem"), "{err}");
}

#[tokio::test]
async fn key_from_another_rotation_is_blamed_on_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path());
    let a = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(600)).unwrap();
    let b = ca.issue(&id("spiffe://example.org/b"), Duration::from_secs(600)).unwrap();
    let paths = a.write_files(&dir.path().join("svid")).unwrap();
    std::fs::write(&paths.key, b.key_pem()).unwrap();
    let err = FileSource::start(paths.clone(), TICK).await.unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("svid.key") && shown.contains("does not belong"), "{shown}");
}

#[tokio::test]
async fn start_source_uses_files_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path());
    let svid = ca.issue(&id("spiffe://example.org/a"), Duration::from_secs(600)).unwrap();
    let paths = svid.write_files(&dir.path().join("svid")).unwrap();
    let source: Arc<dyn IdentitySource> = start_source(&IdentityConfig::Files(paths)).await.unwrap();
    assert_eq!(source.current().spiffe_id().as_str(), "spiffe://example.org/a");
}

#[tokio::test]
async fn workload_api_without_agent_fails_with_endpoint_in_message() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("no-agent.sock").display());
    let err = aegis_identity::WorkloadApiSource::start(&endpoint, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, IdentityError::WorkloadApi { .. }), "{err}");
    assert!(err.to_string().contains(&endpoint), "{err}");
}
