//! Aegis against a real SPIRE server and agent (issue 4): identities from the
//! Workload API, the identity edge cases, and SVID and CA rotation under load.
//!
//! SPIRE comes from `scripts/build-spire.sh` (cached; `AEGIS_SPIRE_BIN_DIR` overrides)
//! and runs through `scripts/spire.sh`. These tests never skip: without SPIRE or
//! without root they fail, saying why. Workloads are separate processes under
//! distinct uids, registered as `unix:uid:N`; the test process itself (uid 0) is
//! registered where a test uses the Rust SDK in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::spire as harness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_identity::IdentitySource;
use common::{fails, http_ok, metric, ok, stderr, stdout};
use futures::StreamExt;
use harness::*;

/// Client settings for `url`, identity from the Workload API at `socket`.
fn sdk_settings(url: &str, socket: &str) -> aegis_sdk::Settings {
    let env = HashMap::from([
        ("AEGIS_SAFE_URL".to_owned(), url.to_owned()),
        ("SPIFFE_ENDPOINT_SOCKET".to_owned(), socket.to_owned()),
    ]);
    aegis_sdk::Settings::from_lookup(|k| env.get(k).cloned()).unwrap()
}

/// (a) The Safe, the Sentinel CLIs and workload CLIs all get their identities from
/// the SPIRE agent, and authorization follows the SPIFFE IDs SPIRE issued.
#[test]
fn everything_on_the_workload_api() {
    let spire = Spire::start("workload-api", &[]);
    spire.register("safe", "", SAFE_UID, &[]);
    spire.register("sentinel", "", SENTINEL_UID, &[]);
    spire.register("workload", "billing", BILLING_UID, &[]);
    spire.register("workload", "payroll", PAYROLL_UID, &[]);
    spire.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
    spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    spire.wait_svid(BILLING_UID, &spiffe_id("workload", "billing"));
    spire.wait_svid(PAYROLL_UID, &spiffe_id("workload", "payroll"));

    let safe = UidSafe::start(&spire, SAFE_UID);
    let log = safe.log_text();
    assert!(
        log.contains("got SVID from the Workload API") && log.contains(&spiffe_id("safe", "")),
        "the Safe should say it runs as its SPIRE identity:\n{log}"
    );
    let env = safe.client_env(&spire);

    // The Sentinel writes with VSecM's command and with the native CLI.
    assert_eq!(ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "billing", "-s", "from-spire"])).trim(), "OK");
    ok(spire.run_as(SENTINEL_UID, "aegis", &env, &["put", "payroll", "--value", "payroll-v1"]));
    let list = ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-l"]));
    assert!(list.contains("billing") && list.contains("payroll"), "{list}");

    // Each workload reads its own secret, by the name in its SPIFFE ID.
    assert_eq!(ok(spire.run_as(BILLING_UID, "aegis", &env, &["fetch"])).trim(), "from-spire");
    assert_eq!(ok(spire.run_as(PAYROLL_UID, "aegis", &env, &["fetch"])).trim(), "payroll-v1");
    ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-d", "-w", "payroll"]));
    fails(spire.run_as(PAYROLL_UID, "aegis", &env, &["fetch"]), 3, "no secret");

    // Workloads may not write, list or read other secrets.
    fails(spire.run_as(BILLING_UID, "aegis", &env, &["put", "billing", "--value", "mine"]), 4, "");
    fails(spire.run_as(BILLING_UID, "safe", &env, &["-w", "billing", "-s", "x"]), 4, "not the Sentinel");
    fails(spire.run_as(PAYROLL_UID, "aegis", &env, &["get", "billing"]), 4, "");
    fails(spire.run_as(PAYROLL_UID, "safe", &env, &["-l"]), 4, "");
    assert_eq!(ok(spire.run_as(BILLING_UID, "aegis", &env, &["fetch"])).trim(), "from-spire");
}

/// (b) The Safe refuses to start when the SVID SPIRE gives it is not the Safe's.
#[test]
fn the_safe_refuses_to_start_with_another_roles_svid() {
    let spire = Spire::start("safe-role", &[]);
    spire.register("workload", "billing", BILLING_UID, &[]);
    spire.register("sentinel", "", SENTINEL_UID, &[]);
    spire.wait_svid(BILLING_UID, &spiffe_id("workload", "billing"));
    spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    for (uid, id) in [(BILLING_UID, spiffe_id("workload", "billing")), (SENTINEL_UID, spiffe_id("sentinel", ""))] {
        let mut safe = UidSafe::spawn(&spire, uid);
        let code = safe.wait_exit(Duration::from_secs(90));
        let log = safe.log_text();
        assert_eq!(code, Some(64), "the Safe as {id} must exit 64 (bad configuration); log:\n{log}");
        assert!(
            log.contains("VSECM_SPIFFEID_PREFIX_SAFE") && log.contains(&id),
            "the message must name the rule and the SPIFFE ID; log:\n{log}"
        );
    }
}

/// (b) Another trust domain is refused: SPIRE will not issue it, and an SVID of
/// `other.com` is refused by the Safe even when the Safe's agent hands it
/// `other.com`'s bundle as a federated bundle. A rogue CA for `vsecm.com` is
/// refused too. A SVID minted by the real server is the control.
#[test]
fn another_trust_domain_and_a_rogue_ca_are_refused() {
    let spire = Spire::start("main", &[]);
    let other = Spire::start("other.com", &["--trust-domain", "other.com", "--no-agent"]);
    let rogue = Spire::start("rogue vsecm.com", &["--no-agent"]);

    // The Safe federates with other.com: its agent delivers other.com's bundle to it.
    let other_bundle = spire.dir.path().join("other-bundle.pem");
    std::fs::write(&other_bundle, other.server_ok(&["bundle", "show"])).unwrap();
    spire.server_ok(&["bundle", "set", "-id", "spiffe://other.com", "-path", other_bundle.to_str().unwrap()]);
    spire.register("safe", "", SAFE_UID, &["-federatesWith", "spiffe://other.com"]);
    spire.register("sentinel", "", SENTINEL_UID, &[]);
    spire.register("workload", "billing", BILLING_UID, &[]);
    spire.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
    spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    let federated = stdout(&spire.fetch_svid_as(SAFE_UID));
    assert!(federated.contains("other.com"), "the Safe's agent should deliver other.com's bundle:\n{federated}");

    // A SPIRE server issues only its own trust domain.
    let out = spire.server(&[
        "entry",
        "create",
        "-parentID",
        &spire.env["SPIRE_AGENT_ID"],
        "-spiffeID",
        "spiffe://other.com/workload/billing/ns/default/sa/billing/n/local",
        "-selector",
        "unix:uid:41009",
    ]);
    assert!(!out.status.success(), "SPIRE must refuse an entry of another trust domain: {}", stdout(&out));
    let msg = format!("{}{}", stdout(&out), stderr(&out));
    assert!(msg.contains("trust domain"), "{msg}");

    let safe = UidSafe::start(&spire, SAFE_UID);
    let env = safe.client_env(&spire);
    assert_eq!(ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "billing", "-s", "genuine"])).trim(), "OK");

    // An SVID as SVID files: minted by `server`, presented with vsecm.com's bundle
    // (so the client itself trusts the Safe).
    let mint = |server: &Spire, id: &str, dir: &str| spire.minted_client_env(server, id, dir, &safe.url);
    let aegis =
        |env: &HashMap<String, String>, args: &[&str]| common::cmd(common::AEGIS, env).args(args).output().unwrap();
    let safe_cli =
        |env: &HashMap<String, String>, args: &[&str]| common::cmd(common::SAFE, env).args(args).output().unwrap();

    // Control: the same kind of files, minted by the real vsecm.com server, work.
    let genuine = mint(&spire, &spiffe_id("workload", "billing"), "genuine");
    assert_eq!(ok(aegis(&genuine, &["fetch"])).trim(), "genuine");

    let foreign = mint(&other, "spiffe://other.com/workload/billing/ns/default/sa/billing/n/local", "other");
    let out = aegis(&foreign, &["fetch"]);
    assert!(!out.status.success(), "an other.com SVID must be refused: {}", stdout(&out));
    assert_eq!(out.status.code(), Some(7), "refused at the TLS handshake: {}", stderr(&out));
    let foreign_sentinel = mint(
        &other,
        "spiffe://other.com/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/local",
        "other-sentinel",
    );
    let out = safe_cli(&foreign_sentinel, &["-w", "billing", "-s", "from-other.com"]);
    assert!(!out.status.success(), "an other.com Sentinel must be refused: {}", stdout(&out));

    // A rogue SPIRE server for vsecm.com (another CA) cannot mint a Sentinel.
    let rogue_sentinel = mint(&rogue, &spiffe_id("sentinel", ""), "rogue-sentinel");
    let out = safe_cli(&rogue_sentinel, &["-w", "billing", "-s", "from-rogue"]);
    assert!(!out.status.success(), "a rogue CA's Sentinel must be refused: {}", stdout(&out));
    assert_eq!(out.status.code(), Some(7), "refused at the TLS handshake: {}", stderr(&out));
    let rogue_billing = mint(&rogue, &spiffe_id("workload", "billing"), "rogue-billing");
    assert!(!aegis(&rogue_billing, &["fetch"]).status.success(), "a rogue CA's workload must be refused");

    assert_eq!(ok(aegis(&genuine, &["fetch"])).trim(), "genuine", "nothing was overwritten");
    // Refusals are counted one by one and logged at most once a second.
    let log = safe.log_text();
    assert!(log.contains("TLS handshake refused"), "the Safe should log refusals:\n{log}");
    let m = http_ok(safe.health, "/metrics").expect("metrics");
    assert!(metric(&m, "aegis_tls_handshake_failures_total") >= 4.0, "each refusal is counted:\n{m}");
}

/// A world for the expiry tests: the Safe, the Sentinel, and two workloads whose
/// entries have a 60s SVID TTL: `payroll` is this test process (uid 0, using the
/// Rust SDK) and `billing` is uid BILLING_UID (using the CLI). Both have a secret.
struct ExpiryWorld {
    // Fields drop in this order: the Safe (and its log) before SPIRE's temp dir.
    safe: Arc<UidSafe>,
    spire: Arc<Spire>,
    env: HashMap<String, String>,
    source: Arc<aegis_identity::WorkloadApiSource>,
    entries: [String; 2],
}

impl ExpiryWorld {
    async fn start(label: &str) -> Self {
        let spire = Spire::start(label, &[]);
        spire.register("safe", "", SAFE_UID, &[]);
        spire.register("sentinel", "", SENTINEL_UID, &[]);
        let me = spire.register("workload", "payroll", 0, &["-x509SVIDTTL", "60"]);
        let billing = spire.register("workload", "billing", BILLING_UID, &["-x509SVIDTTL", "60"]);
        spire.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
        spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
        spire.wait_svid(0, &spiffe_id("workload", "payroll"));
        spire.wait_svid(BILLING_UID, &spiffe_id("workload", "billing"));
        let safe = UidSafe::start(&spire, SAFE_UID);
        let env = safe.client_env(&spire);
        ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "payroll", "-s", "pay"]));
        ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "billing", "-s", "bill"]));
        assert_eq!(ok(spire.run_as(BILLING_UID, "aegis", &env, &["fetch"])).trim(), "bill");
        let source = aegis_identity::WorkloadApiSource::start(&spire.socket(), Duration::from_secs(60)).await.unwrap();
        assert_eq!(source.current().spiffe_id().to_string(), spiffe_id("workload", "payroll"));
        Self { safe: Arc::new(safe), spire: Arc::new(spire), env, source, entries: [me, billing] }
    }

    /// A new SDK client over the in-process identity (so its first request is a full
    /// TLS handshake); `fresh`: a new connection for every request, which may resume
    /// the client's earlier TLS sessions.
    fn client(&self, fresh: bool) -> aegis_sdk::Client {
        let mut settings = sdk_settings(&self.safe.url, &self.spire.socket());
        settings.new_connection_per_request = fresh;
        aegis_sdk::Client::with_source(self.source.clone(), &settings).unwrap()
    }

    /// Deletes both entries, waits until the agent has dropped them, and returns
    /// when the in-process SVID expires (it can no longer rotate).
    async fn delete_entries(&self) -> time::OffsetDateTime {
        for e in &self.entries {
            self.spire.server_ok(&["entry", "delete", "-entryID", e]);
        }
        let t = Instant::now();
        let spire = self.spire.clone();
        tokio::task::spawn_blocking(move || {
            spire.wait_no_svid(0);
            spire.wait_no_svid(BILLING_UID);
        })
        .await
        .unwrap();
        eprintln!("the agent dropped the deleted entries after {:.1}s", t.elapsed().as_secs_f64());
        let not_after = self.source.current().not_after();
        let expires_in = not_after - time::OffsetDateTime::now_utc();
        eprintln!("the deleted workload's SVID expires in {expires_in}");
        assert!(expires_in < time::Duration::seconds(65), "SVID TTL should be 60s, expires in {expires_in}");
        not_after
    }
}

async fn sleep_until(t: time::OffsetDateTime) {
    while time::OffsetDateTime::now_utc() < t {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (b) A workload whose registration entry is deleted keeps its SVID until it
/// expires (SPIRE does not revoke issued SVIDs) and loses access once it has:
/// every new TLS handshake with the expired SVID is refused, and a new process of
/// the deleted uid gets no identity at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_entry_loses_access_when_its_svid_expires() {
    let w = ExpiryWorld::start("deleted-entry").await;
    assert_eq!(w.client(true).fetch().await.unwrap().unwrap().data.expose(), "pay");
    let not_after = w.delete_entries().await;

    // A new process of the deleted workload gets no SVID (it waits for one, then gives up).
    let fresh_process = {
        let (spire, env) = (w.spire.clone(), w.env.clone());
        tokio::task::spawn_blocking(move || spire.run_as(BILLING_UID, "aegis", &env, &["fetch"]))
    };

    // Until it expires, the SVID held in memory is valid and served.
    let mut served = 0;
    while time::OffsetDateTime::now_utc() < not_after - time::Duration::seconds(3) {
        match w.client(true).fetch().await {
            Ok(Some(s)) if s.data.expose() == "pay" => served += 1,
            other => panic!("before its SVID expired the client should still be served: {other:?}"),
        }
        assert_eq!(w.source.current().not_after(), not_after, "no new SVID may arrive after the entry is deleted");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(served > 0);

    // Once it has expired, every new handshake is refused.
    sleep_until(not_after + time::Duration::seconds(2)).await;
    for _ in 0..3 {
        match w.client(true).fetch().await {
            Err(aegis_sdk::ClientError::Connect { reason, .. }) => eprintln!("refused after expiry: {reason}"),
            other => panic!("an expired SVID must be refused at the handshake: {other:?}"),
        }
    }
    let log = w.safe.log_text();
    assert!(log.contains("TLS handshake refused"), "the Safe should log the refusal:\n{log}");

    let out = fresh_process.await.unwrap();
    assert_eq!(out.status.code(), Some(64), "no identity for a deleted entry: {}", stderr(&out));
    assert!(!stdout(&out).contains("bill"));
    // Registered workloads are unaffected.
    assert!(ok(w.spire.run_as(SENTINEL_UID, "safe", &w.env, &["-l"])).contains("payroll"));
}

/// (b) The same, for a client that keeps talking to the Safe across the expiry of
/// its SVID: neither a resumed TLS session (a new connection that presents a
/// session ticket instead of the SVID) nor a connection kept alive from before may
/// carry requests once the SVID has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_svid_is_refused_on_resumed_sessions_and_kept_alive_connections() {
    let w = ExpiryWorld::start("resumption").await;
    let resuming = w.client(true); // new connection per request, but one session cache
    let pooled = w.client(false); // one connection, kept alive
    let not_after = w.delete_entries().await;
    while time::OffsetDateTime::now_utc() < not_after - time::Duration::seconds(1) {
        for (name, c) in [("resuming", &resuming), ("pooled", &pooled)] {
            match c.fetch().await {
                Ok(Some(s)) if s.data.expose() == "pay" => {}
                other => panic!("{name}: before its SVID expired the client should be served: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    sleep_until(not_after + time::Duration::seconds(2)).await;
    // Control: a client without a session cache is refused (see the test above).
    assert!(w.client(true).fetch().await.is_err(), "a new handshake with an expired SVID must be refused");
    let mut served = Vec::new();
    for (name, c, why) in [
        (
            "resumed TLS session",
            &resuming,
            "the Safe resumes TLS sessions (rustls' default session cache and TLS 1.3 tickets, 24h) \
             without checking the client SVID again; disable resumption in the server config \
             (session_storage = NoServerSessionStorage, send_tls13_tickets = 0) or check expiry on resume",
        ),
        (
            "kept-alive connection",
            &pooled,
            "the Safe keeps serving a connection after the client SVID it was authenticated with \
             expired; close connections when the peer certificate's not_after passes",
        ),
    ] {
        if let Ok(r) = c.fetch().await {
            served.push(format!("{name}: served {r:?} after the SVID expired at {not_after}: {why}"));
        }
    }
    assert!(served.is_empty(), "an expired SVID still has access:\n{}", served.join("\n"));
}

/// What the load in the rotation test saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        eprintln!("FAILURE: {what}");
        self.failures.lock().unwrap().push(what);
    }
}

/// (c) SVID rotation (TTL 60s, so the agent rotates every ~30s) and a CA rotation
/// (prepare, activate, taint and revoke the old X.509 authority) under continuous
/// fetches, watches and Sentinel writes: no request fails, no watcher loses its
/// connection, and nothing is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_and_svid_rotation_interrupts_nothing() {
    let spire = Arc::new(Spire::start("rotation", &["--svid-ttl", "60s"]));
    spire.register("safe", "", SAFE_UID, &[]);
    spire.register("sentinel", "", SENTINEL_UID, &[]);
    spire.register("workload", "billing", 0, &[]);
    spire.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
    spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    spire.wait_svid(0, &spiffe_id("workload", "billing"));
    let safe = UidSafe::start(&spire, SAFE_UID);
    let env = safe.client_env(&spire);
    ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "billing", "-s", "v0"]));

    let source = aegis_identity::WorkloadApiSource::start(&spire.socket(), Duration::from_secs(60)).await.unwrap();
    let settings = sdk_settings(&safe.url, &spire.socket());
    let pooled = aegis_sdk::Client::with_source(source.clone(), &settings).unwrap();

    let run_for = Duration::from_secs(115);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let last_written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Fetchers: one over a kept-alive connection, one with a new client for every
    // request (a full TLS handshake with the current SVID and bundle on both sides:
    // no connection reuse, no session resumption).
    for name in ["pooled", "new client"] {
        let (stop, tally, pooled, source, settings) =
            (stop.clone(), tally.clone(), pooled.clone(), source.clone(), settings.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let client = if name == "pooled" {
                    pooled.clone()
                } else {
                    aegis_sdk::Client::with_source(source.clone(), &settings).unwrap()
                };
                match client.fetch().await {
                    Ok(Some(s)) if s.data.expose().starts_with('v') => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => tally.fail(format!("{name} fetch at {:?}: {other:?}", start.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    // A watcher: must see every write and never lose the Safe.
    let seen = Arc::new(AtomicU64::new(0));
    {
        let (stop, tally, seen) = (stop.clone(), tally.clone(), seen.clone());
        let opts = aegis_sdk::WatchOptions { wait: Duration::from_secs(5), ..Default::default() };
        let mut updates = Box::pin(pooled.watch(opts));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(next) = tokio::time::timeout(Duration::from_secs(1), updates.next()).await else { continue };
                match next {
                    Some(aegis_sdk::WatchUpdate::Changed(Some(s))) => {
                        let n = s.data.expose().trim_start_matches('v').parse().unwrap_or(0);
                        seen.store(n, Ordering::Relaxed);
                    }
                    Some(aegis_sdk::WatchUpdate::Changed(None)) => tally.fail("watch: secret vanished".into()),
                    Some(aegis_sdk::WatchUpdate::Unreachable { error, .. }) => {
                        tally.fail(format!("watch dropped at {:?}: {error}", start.elapsed()))
                    }
                    None => tally.fail("watch stream ended".into()),
                }
            }
        }));
    }

    // The Sentinel writes a new version every 3s, each `safe` a new process with
    // an SVID fresh from the agent.
    {
        let (stop, tally, last, spire, env) =
            (stop.clone(), tally.clone(), last_written.clone(), spire.clone(), env.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let out = spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "billing", "-s", &format!("v{i}")]);
                if out.status.success() {
                    last.store(i, Ordering::Relaxed);
                } else {
                    tally.fail(format!("safe -w billing at {:?}: {}", start.elapsed(), stderr(&out)));
                }
                std::thread::sleep(Duration::from_secs(3));
            }
        }));
    }

    // Meanwhile: rotate the CA. Prepare and activate a new X.509 authority, then
    // taint the old one (agents replace SVIDs it signed) and revoke it (it leaves
    // every bundle).
    let mut not_afters = vec![source.current().not_after()];
    let bundle_sizes = |s: &aegis_identity::WorkloadApiSource| s.current().bundle().len();
    let mut max_bundle = bundle_sizes(&source);
    let authority_id = |text: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Authority ID:").map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no authority ID in:\n{text}"))
    };
    let (mut old_authority, mut new_authority) = (String::new(), String::new());
    let mut step = 0;
    while start.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cur = source.current();
        if cur.not_after() != *not_afters.last().unwrap() {
            not_afters.push(cur.not_after());
        }
        max_bundle = max_bundle.max(bundle_sizes(&source));
        let s = start.elapsed().as_secs();
        if step == 0 && s >= 20 {
            let shown = spire.server_ok(&["localauthority", "x509", "show"]);
            old_authority = authority_id(shown.split("Prepared").next().unwrap());
            let prepared = spire.server_ok(&["localauthority", "x509", "prepare"]);
            new_authority = authority_id(&prepared);
            eprintln!("t={s}s prepared {new_authority} (old: {old_authority})");
            step = 1;
        } else if step == 1 && s >= 35 {
            spire.server_ok(&["localauthority", "x509", "activate", "-authorityID", &new_authority]);
            eprintln!("t={s}s activated {new_authority}");
            step = 2;
        } else if step == 2 && s >= 55 {
            spire.server_ok(&["localauthority", "x509", "taint", "-authorityID", &old_authority]);
            eprintln!("t={s}s tainted {old_authority}");
            step = 3;
        } else if step == 3 && s >= 75 {
            spire.server_ok(&["localauthority", "x509", "revoke", "-authorityID", &old_authority]);
            eprintln!("t={s}s revoked {old_authority}");
            step = 4;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let failures = tally.failures.lock().unwrap().clone();
    let oks = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "{oks} fetches ok, {} failures; client SVIDs seen: {}; bundle size max {max_bundle}, now {}",
        failures.len(),
        not_afters.len(),
        bundle_sizes(&source)
    );
    assert!(failures.is_empty(), "{} requests failed during rotation:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(step, 4, "the CA rotation did not run to the end");
    assert!(oks > 300, "too few fetches ({oks}) to say anything");
    assert!(not_afters.len() >= 3, "the client's SVID should have rotated at least twice: {not_afters:?}");
    assert!(max_bundle >= 2, "the new CA should have reached the client's bundle");
    assert_eq!(bundle_sizes(&source), 1, "the revoked CA should have left the client's bundle");
    let log = safe.log_text();
    let rotations = log.matches("Workload API rotated the SVID or bundle").count();
    assert!(rotations >= 2, "the Safe's SVID should have rotated at least twice, saw {rotations}:\n{log}");
    let last = last_written.load(Ordering::Relaxed);
    assert!(last >= 20, "too few writes: {last}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pooled.fetch().await.unwrap().unwrap().data.expose(), format!("v{last}"));
    assert!(
        seen.load(Ordering::Relaxed) + 1 >= last,
        "the watcher fell behind: saw v{}, wrote v{last}",
        seen.load(Ordering::Relaxed)
    );
}

/// Waits until `path` holds exactly `want`.
fn wait_file(path: &std::path::Path, want: &str, limit: Duration) {
    let start = Instant::now();
    while std::fs::read_to_string(path).ok().as_deref() != Some(want) {
        assert!(
            start.elapsed() < limit,
            "{} never held {want:?} (now {:?})",
            path.display(),
            std::fs::read_to_string(path).ok()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sidecar_init_and_exec_wrapper_on_the_workload_api() {
    let spire = Spire::start("delivery", &[]);
    spire.register("safe", "", SAFE_UID, &[]);
    spire.register("sentinel", "", SENTINEL_UID, &[]);
    spire.register("workload", "billing", BILLING_UID, &[]);
    spire.register("workload", "payroll", PAYROLL_UID, &[]);
    for (uid, id) in [
        (SAFE_UID, spiffe_id("safe", "")),
        (SENTINEL_UID, spiffe_id("sentinel", "")),
        (BILLING_UID, spiffe_id("workload", "billing")),
        (PAYROLL_UID, spiffe_id("workload", "payroll")),
    ] {
        spire.wait_svid(uid, &id);
    }
    let safe = UidSafe::start(&spire, SAFE_UID);
    let env = safe.client_env(&spire);

    // The sidecar (billing) and the init container (payroll) start before any secret exists.
    let billing_dir = spire.dir_for("billing-files", BILLING_UID);
    let file = billing_dir.join("secret.json");
    let mut sidecar = spire
        .command_as(BILLING_UID, "aegis", &env, &["sidecar", "--path", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let payroll_dir = spire.dir_for("payroll-files", PAYROLL_UID);
    let pfile = payroll_dir.join("secret.txt");
    let mut init = spire
        .command_as(PAYROLL_UID, "aegis", &env, &["init", "--path", pfile.to_str().unwrap(), "--timeout-ms", "60000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(init.try_wait().unwrap().is_none(), "the init container must wait for its secret");

    let v1 = r#"{"DB_USER":"u1"}"#;
    assert_eq!(ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "billing", "-s", v1])).trim(), "OK");
    wait_file(&file, v1, Duration::from_secs(20));
    assert!(init.try_wait().unwrap().is_none(), "another workload's secret must not release the init container");
    ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "payroll", "-s", "p1"]));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = init.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "init container did not exit after registration");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read_to_string(&pfile).unwrap(), "p1");

    // The exec wrapper, as billing, gets the keys as environment variables.
    let out = ok(spire.run_as(BILLING_UID, "aegis", &env, &["run", "--", "sh", "-c", "printf %s \"$DB_USER\""]));
    assert_eq!(out, "u1");

    // An update reaches the running sidecar without a restart.
    let v2 = r#"{"DB_USER":"u2"}"#;
    ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-w", "billing", "-s", v2]));
    wait_file(&file, v2, Duration::from_secs(20));
    ok(spire.run_as(SENTINEL_UID, "safe", &env, &["-d", "-w", "billing"]));
    wait_file(&file, "", Duration::from_secs(20));
    let _ = sidecar.kill();
    let _ = sidecar.wait();
}
