//! Secrets across clusters, part 1 (issue 24): SPIFFE federation. Two real SPIRE
//! deployments of different trust domains federate through their bundle endpoints
//! (`spire-server federation create`, profile `https_spiffe`); the Safe of one
//! accepts workloads of the other only when told to federate with it, and then
//! grants them only what a policy grants. A third domain is refused at the handshake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::spire as harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{fails, free_port, ok, stderr, stdout};
use harness::*;

const B: &str = "b.example";
const C: &str = "c.example";

/// `from` federates with `to`: it takes `to`'s bundle now and follows its bundle endpoint.
pub(crate) fn federate(from: &Spire, to: &Spire) {
    let td = &to.env["SPIFFE_TRUST_DOMAIN"];
    let port = &to.env["SPIRE_BUNDLE_ENDPOINT_PORT"];
    let bundle = from.dir.path().join(format!("{td}.bundle.pem"));
    std::fs::write(&bundle, to.server_ok(&["bundle", "show"])).unwrap();
    from.server_ok(&[
        "federation",
        "create",
        "-trustDomain",
        td,
        "-bundleEndpointURL",
        &format!("https://127.0.0.1:{port}"),
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        &format!("spiffe://{td}/spire/server"),
        "-trustDomainBundlePath",
        bundle.to_str().unwrap(),
        "-trustDomainBundleFormat",
        "pem",
    ]);
}

/// `aegis fetch --secret NAME` as the client `env` describes.
fn fetch_with(env: &HashMap<String, String>, name: &str) -> std::process::Output {
    common::cmd(common::AEGIS, env).args(["fetch", "--secret", name]).output().unwrap()
}

/// Waits until the agent of `spire` hands `uid` the bundle of `td` with its SVID.
pub(crate) fn wait_bundle(spire: &Spire, uid: u32, td: &str) {
    let t = Instant::now();
    loop {
        let out = spire.fetch_svid_as(uid);
        if out.status.success() && stdout(&out).contains(&format!("[spiffe://{td}]")) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "uid {uid} got no bundle of {td} within 90s:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_federated_workload_gets_what_a_policy_grants_and_other_domains_are_refused() {
    let port = |p: u16| p.to_string();
    let a = Spire::start("federation vsecm.com", &["--bundle-endpoint-port", &port(free_port())]);
    let b = Spire::start("federation b.example", &["--trust-domain", B, "--bundle-endpoint-port", &port(free_port())]);
    let c = Spire::start("federation c.example", &["--trust-domain", C, "--no-agent"]);
    federate(&a, &b);
    federate(&b, &a);
    a.register("safe", "", SAFE_UID, &["-federatesWith", &format!("spiffe://{B}")]);
    a.register("sentinel", "", SENTINEL_UID, &[]);
    b.register("workload", "billing", BILLING_UID, &["-federatesWith", "spiffe://vsecm.com"]);
    a.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    wait_bundle(&a, SAFE_UID, B);
    wait_bundle(&b, BILLING_UID, TRUST_DOMAIN);
    let b_billing = format!("spiffe://{B}/workload/billing/ns/default/sa/billing/n/local");

    let federated = HashMap::from([("AEGIS_FEDERATE_WITH".to_owned(), B.to_owned())]);
    let safe = UidSafe::start_with_env(&a, SAFE_UID, federated.clone());
    let log = safe.log_text();
    assert!(log.contains("federated trust domains are accepted") && log.contains(B), "{log}");
    assert!(!log.contains("delivers no bundle"), "the agent delivered b.example's bundle:\n{log}");

    let sentinel = safe.client_env(&a);
    let admin = |args: &[&str]| ok(a.run_as(SENTINEL_UID, "aegis", &sentinel, args));
    admin(&["put", "shared-billing", "--value", "for-b"]);
    admin(&["put", "internal", "--value", "only-a"]);
    admin(&["put", "billing", "--value", "a-billing"]);

    // A workload of b.example reaches the Safe of vsecm.com: its agent gives it
    // vsecm.com's bundle, and SPIFFE_TRUST_DOMAIN names the Safe's domain.
    let remote = HashMap::from([
        ("SPIFFE_ENDPOINT_SOCKET".to_owned(), b.socket()),
        ("AEGIS_SAFE_URL".to_owned(), safe.url.clone()),
        ("SPIFFE_TRUST_DOMAIN".to_owned(), TRUST_DOMAIN.to_owned()),
    ]);
    let fetch = |name: &str| b.run_as(BILLING_UID, "aegis", &remote, &["fetch", "--secret", name]);
    // Denied by default: no built-in role covers another trust domain, not even
    // the secret named like its workload.
    fails(fetch("shared-billing"), 4, "");
    fails(fetch("billing"), 4, "");
    admin(&["policy", "put", "b-billing", "--spiffe-id", &b_billing, "--secret", "shared-billing", "--allow", "read"]);
    assert_eq!(ok(fetch("shared-billing")).trim(), "for-b");
    let refused = fetch("internal");
    fails(refused, 4, "");
    fails(fetch("billing"), 4, "");
    fails(b.run_as(BILLING_UID, "aegis", &remote, &["put", "shared-billing", "--value", "from-b"]), 4, "");
    let explain = admin(&["policy", "explain", "--spiffe-id", &b_billing, "--secret", "internal", "--action", "read"]);
    assert!(explain.contains("denied"), "{explain}");
    assert_eq!(ok(a.run_as(SENTINEL_UID, "aegis", &sentinel, &["get", "shared-billing"])).trim(), "for-b");

    // c.example is not federated: an SVID its own server minted is refused at the
    // handshake, and the Safe's log names the domain.
    let c_billing = format!("spiffe://{C}/workload/billing/ns/default/sa/billing/n/local");
    let c_env = a.minted_client_env(&c, &c_billing, "c-svid", &safe.url);
    let out = fetch_with(&c_env, "shared-billing");
    assert_eq!(out.status.code(), Some(7), "refused at the TLS handshake: {}", stderr(&out));
    // The refusal is logged at most once a second: wait for its line.
    let t = Instant::now();
    while !safe.log_text().contains(&c_billing) {
        assert!(t.elapsed() < Duration::from_secs(10), "no log line names {C}:\n{}", safe.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(safe);

    // The same SPIRE federation, but a Safe not told to federate with b.example:
    // b.example's workload is refused at the handshake, whatever the policies say.
    let closed = UidSafe::start(&a, SAFE_UID);
    let closed_env = HashMap::from([
        ("SPIFFE_ENDPOINT_SOCKET".to_owned(), b.socket()),
        ("AEGIS_SAFE_URL".to_owned(), closed.url.clone()),
        ("SPIFFE_TRUST_DOMAIN".to_owned(), TRUST_DOMAIN.to_owned()),
    ]);
    let out = b.run_as(BILLING_UID, "aegis", &closed_env, &["fetch", "--secret", "shared-billing"]);
    assert_eq!(out.status.code(), Some(7), "refused at the TLS handshake: {}", stderr(&out));
    let t = Instant::now();
    while !closed.log_text().contains("not one this Safe federates with") {
        assert!(t.elapsed() < Duration::from_secs(10), "no refusal logged:\n{}", closed.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bad federation settings stop the Safe at start with exit 64 and the cause.
#[test]
fn bad_federation_settings_are_refused_at_start() {
    let a = Spire::start("federation settings", &[]);
    a.register("safe", "", SAFE_UID, &[]);
    a.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
    let cases = [
        (HashMap::from([("AEGIS_FEDERATE_WITH".to_owned(), "Not A Domain".to_owned())]), "not a trust domain name"),
        (
            HashMap::from([("AEGIS_FEDERATED_BUNDLES".to_owned(), format!("{B}=/nonexistent/b.pem"))]),
            "not federated with",
        ),
        (
            HashMap::from([
                ("AEGIS_FEDERATE_WITH".to_owned(), B.to_owned()),
                ("AEGIS_FEDERATED_BUNDLES".to_owned(), format!("{B}=/nonexistent/b.pem")),
            ]),
            "/nonexistent/b.pem",
        ),
        (HashMap::from([("AEGIS_FEDERATED_BUNDLES".to_owned(), "no-equals-sign".to_owned())]), "TRUST_DOMAIN=PATH"),
    ];
    for (env, want) in cases {
        let mut safe = UidSafe::spawn_with_env(&a, SAFE_UID, env.clone());
        assert_eq!(safe.wait_exit(Duration::from_secs(60)), Some(64), "{env:?}; log:\n{}", safe.log_text());
        assert!(safe.log_text().contains(want), "{env:?}: the log should say '{want}':\n{}", safe.log_text());
    }
}

/// Without SPIRE federation, a bundle file stands in for the agent: the Safe is
/// given b.example's bundle with --federated-bundle (as `AEGIS_FEDERATED_BUNDLES`),
/// and a b.example SVID from files is then accepted, and granted only by policy.
#[test]
fn a_bundle_file_stands_in_for_the_agent() {
    let a = Spire::start("federation by file", &[]);
    let b = Spire::start("federation by file b.example", &["--trust-domain", B, "--no-agent"]);
    a.register("safe", "", SAFE_UID, &[]);
    a.register("sentinel", "", SENTINEL_UID, &[]);
    a.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
    a.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    let home = a.dir_for("b-bundle", SAFE_UID);
    let bundle = home.join("b.pem");
    std::fs::write(&bundle, b.server_ok(&["bundle", "show"])).unwrap();
    let env = HashMap::from([
        ("AEGIS_FEDERATE_WITH".to_owned(), B.to_owned()),
        ("AEGIS_FEDERATED_BUNDLES".to_owned(), format!("{B}={}", bundle.display())),
    ]);
    let safe = UidSafe::start_with_env(&a, SAFE_UID, env);
    let log = safe.log_text();
    assert!(log.contains("loaded a federated trust domain's bundle"), "{log}");
    assert!(!log.contains("delivers no bundle"), "the file gives the bundle:\n{log}");
    let sentinel = safe.client_env(&a);
    ok(a.run_as(SENTINEL_UID, "aegis", &sentinel, &["put", "shared-billing", "--value", "by-file"]));

    // A b.example SVID as files, with vsecm.com's bundle to check the Safe.
    let b_billing = format!("spiffe://{B}/workload/billing/ns/default/sa/billing/n/local");
    let files = a.minted_client_env(&b, &b_billing, "b-svid", &safe.url);
    let fetch = || fetch_with(&files, "shared-billing");
    fails(fetch(), 4, "");
    let grant =
        ["policy", "put", "b-billing", "--spiffe-id", &b_billing, "--secret", "shared-billing", "--allow", "read"];
    ok(a.run_as(SENTINEL_UID, "aegis", &sentinel, &grant));
    assert_eq!(ok(fetch()).trim(), "by-file");

    // Another CA claiming b.example is refused: the chain is checked against the file's bundle.
    let rogue = Spire::start("federation by file rogue b.example", &["--trust-domain", B, "--no-agent"]);
    let rogue_files = a.minted_client_env(&rogue, &b_billing, "rogue-svid", &safe.url);
    let out = fetch_with(&rogue_files, "shared-billing");
    assert_eq!(out.status.code(), Some(7), "refused at the TLS handshake: {}", stderr(&out));
}
