//! VSecM's `VSECM_*` variables at the start of the real `aegis server`
//! (issue 21 §6): the ones that matter are honoured, harmless ones set for other
//! components pass, and one set and not honoured stops the start with exit 64
//! naming it.

use crate::common;

use std::collections::HashMap;

use common::{cmd, fails, http_ok, stderr, Safe, AEGIS};

fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Drops `flag` and its value from the Safe's arguments.
fn without(safe: &mut Safe, flag: &str) {
    let i = safe.args.iter().position(|a| a == flag).unwrap();
    safe.args.drain(i..i + 2);
}

#[test]
fn a_vsecm_variable_set_and_not_honoured_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    let data = dir.path().join("data");
    for (var, value, says) in [
        ("VSECM_SAFE_FIPS_COMPLIANT", "true", "not FIPS 140 validated"),
        ("VSECM_SAFE_BACKING_STORE", "postgres", "set it to file"),
        ("VSECM_SAFE_RAW_SECRET_PREFIX", "plain:", "fixed to 'raw:'"),
        ("VSECM_SAFE_TSL_PORT", ":8443", "check its spelling"),
        ("VSECM_PROBE_READINESS_PORT", ":8082", "one port"),
    ] {
        let out = cmd(AEGIS, &env(&[(var, value), ("VSECM_PROBE_LIVENESS_PORT", ":8081")]))
            .args(["server", "--root-key-file", key.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{var}={value}: {}", stderr(&out));
        assert!(stderr(&out).contains(var) && stderr(&out).contains(says), "{var}: {}", stderr(&out));
        assert!(!data.exists(), "{var}: the Safe started far enough to create its data directory");
    }
}

/// VSecM's chart: the root key store `k8s` with manual input gives a sealed Safe
/// waiting for the key (no Kubernetes API is needed, none is given), its data where
/// VSECM_SAFE_DATA_PATH says, its health port from VSECM_PROBE_LIVENESS_PORT, and the
/// variables a VSecM deployment sets for other parts are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsecms_manual_root_key_data_path_and_probe_port_are_honoured() {
    let mut safe = Safe::server_unstarted(&[]);
    without(&mut safe, "--data-dir");
    without(&mut safe, "--health-listen");
    let data = safe.dir.path().join("vsecm-data");
    let probe = format!(":{}", safe.health);
    safe.extra_env = env(&[
        ("VSECM_SAFE_ROOT_KEY_STORE", "k8s"),
        ("VSECM_ROOT_KEY_INPUT_MODE_MANUAL", "true"),
        ("VSECM_SAFE_DATA_PATH", data.to_str().unwrap()),
        ("VSECM_PROBE_LIVENESS_PORT", &probe),
        ("VSECM_PROBE_READINESS_PORT", &probe),
        ("VSECM_LOG_LEVEL", "7"),
        ("VSECM_ROOT_KEY_PATH", "/key/key.txt"),
        ("VSECM_SAFE_SYNC_SECRETS_INTERVAL", "20s"),
        ("VSECM_SAFE_BACKING_STORE", "file"),
        ("VSECM_SAFE_FIPS_COMPLIANT", "false"),
        ("VSECM_SIDECAR_POLL_INTERVAL", "20000"),
        ("VSECM_SENTINEL_OIDC_ENABLE_RESOURCE_SERVER", "false"),
        ("AEGIS_LOG", ""),
    ]);
    safe.start();
    safe.wait_up();
    assert!(http_ok(safe.health, "/readyz").is_none(), "a manual root key: sealed until it is typed in");
    let admin = safe.admin_env();
    let status = safe.client(&admin).await.status().await.unwrap();
    assert!(status.sealed, "sealed");
    fails(tokio::task::block_in_place(|| safe.aegis(&admin, &["list"])), 5, "the Safe is sealed");
    assert!(data.join("audit").is_dir(), "the data directory is VSECM_SAFE_DATA_PATH");
    let log = safe.log_text();
    assert!(log.contains("VSecM variable ignored") && log.contains("VSECM_SAFE_SYNC_SECRETS_INTERVAL"), "{log}");
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "VSECM_LOG_LEVEL=7 logs at trace:\n{log}");
}
