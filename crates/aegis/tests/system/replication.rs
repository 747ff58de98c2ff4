//! Secrets across clusters, part 2 (issue 24): replication from a Safe in one
//! trust domain to a Safe in another. Two real SPIRE deployments federate
//! through their bundle endpoints; Safe A (vsecm.com) names Safe B (b.example)
//! as its replica, B names A as its source, each by its exact SPIFFE ID.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::spire as harness;
use crate::federation::{federate, wait_bundle};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fails, free_port, http_ok, ok, parse_exports, stderr, stdout, Safe};
use harness::*;

const B: &str = "b.example";

fn b_safe_id() -> String {
    format!("spiffe://{B}/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/local")
}

/// Polls `f` every 100 ms until it is true; fails the test with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The two deployments, federated, with a Safe, a Sentinel and (in B) the workload `billing` each registered.
struct World {
    a: Spire,
    b: Spire,
}

impl World {
    fn start(label: &str) -> Self {
        let port = |p: u16| p.to_string();
        let a = Spire::start(&format!("{label} vsecm.com"), &["--bundle-endpoint-port", &port(free_port())]);
        let b =
            Spire::start(&format!("{label} {B}"), &["--trust-domain", B, "--bundle-endpoint-port", &port(free_port())]);
        federate(&a, &b);
        federate(&b, &a);
        a.register("safe", "", SAFE_UID, &["-federatesWith", &format!("spiffe://{B}")]);
        a.register("sentinel", "", SENTINEL_UID, &[]);
        b.register("safe", "", SAFE_UID, &["-federatesWith", &format!("spiffe://{TRUST_DOMAIN}")]);
        b.register("sentinel", "", SENTINEL_UID, &[]);
        b.register("workload", "billing", BILLING_UID, &[]);
        wait_bundle(&a, SAFE_UID, B);
        wait_bundle(&b, SAFE_UID, TRUST_DOMAIN);
        a.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
        Self { a, b }
    }

    /// Safe A, replicating `shared-*` and `billing` to B.
    fn safe_a(&self) -> UidSafe {
        UidSafe::start_with_env(&self.a, SAFE_UID, self.a_env())
    }

    fn a_env(&self) -> HashMap<String, String> {
        HashMap::from([
            ("AEGIS_FEDERATE_WITH".to_owned(), B.to_owned()),
            ("AEGIS_REPLICATE_TO".to_owned(), b_safe_id()),
            ("AEGIS_REPLICATE_SECRETS".to_owned(), "shared-*,billing".to_owned()),
        ])
    }

    /// Safe B's settings, replicating from `source_id` at `url`.
    fn b_env(&self, source_id: &str, url: &str) -> HashMap<String, String> {
        let home = self.b.dir_for("b-policies", SAFE_UID);
        let policies = common::reveal_policy_file(&home, B);
        std::os::unix::fs::chown(&policies, Some(SAFE_UID), None).unwrap();
        HashMap::from([
            ("SPIFFE_TRUST_DOMAIN".to_owned(), B.to_owned()),
            ("AEGIS_FEDERATE_WITH".to_owned(), TRUST_DOMAIN.to_owned()),
            ("AEGIS_REPLICATE_FROM".to_owned(), format!("{source_id}={url}")),
            ("AEGIS_REPLICATION_ALERT_AFTER_MS".to_owned(), "2000".to_owned()),
            ("AEGIS_POLICY_FILE".to_owned(), policies.display().to_string()),
        ])
    }

    /// `aegis ARGS` as A's Sentinel against `safe`.
    fn on_a(&self, safe: &UidSafe, args: &[&str]) -> std::process::Output {
        self.a.run_as(SENTINEL_UID, "aegis", &safe.client_env(&self.a), args)
    }

    /// `aegis ARGS` as B's Sentinel against `safe`.
    fn on_b(&self, safe: &UidSafe, args: &[&str]) -> std::process::Output {
        let mut env = safe.client_env(&self.b);
        env.insert("SPIFFE_TRUST_DOMAIN".to_owned(), B.to_owned());
        self.b.run_as(SENTINEL_UID, "aegis", &env, args)
    }
}

/// `name` → (current version, deleted) of every secret, from `aegis list --deleted -o json`.
fn listing(out: std::process::Output) -> BTreeMap<String, (u64, bool, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let from = s.get("replicated_from").and_then(|f| f.as_str()).map(str::to_owned);
            (s["name"].as_str().unwrap().to_owned(), (s["version"].as_u64().unwrap(), s.get("deleted").is_some(), from))
        })
        .collect()
}

/// The `replicate-apply` lines of B's audit trail, as (secret, version).
fn applied_lines(b: &Spire) -> Vec<(String, u64)> {
    let file = b.dir.path().join(format!("safe-{SAFE_UID}")).join("data/audit/audit.log");
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == "replicate-apply")
        .map(|v| (v["secrets"][0].as_str().unwrap_or_default().to_owned(), v["version"].as_u64().unwrap_or(0)))
        .collect()
}

fn status_json(out: std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn secrets_written_on_a_reach_b_read_only_and_survive_cuts_and_crashes() {
    let w = World::start("replication");
    let a_id = spiffe_id("safe", "");

    // A replica whose trust domain A does not federate with stops A at start.
    let mut bad = UidSafe::spawn_with_env(
        &w.a,
        SAFE_UID,
        HashMap::from([
            ("AEGIS_REPLICATE_TO".to_owned(), "spiffe://c.example/aegis/safe".to_owned()),
            ("AEGIS_REPLICATE_SECRETS".to_owned(), "shared-*".to_owned()),
        ]),
    );
    assert_eq!(bad.wait_exit(Duration::from_secs(60)), Some(64), "{}", bad.log_text());
    assert!(bad.log_text().contains("c.example is not federated"), "{}", bad.log_text());
    drop(bad);

    let safe_a = w.safe_a();
    let put_a = |safe: &UidSafe, name: &str, value: &str| ok(w.on_a(safe, &["put", name, "--value", value]));
    put_a(&safe_a, "shared-db", "v1");
    put_a(&safe_a, "shared-db", "v2");
    put_a(&safe_a, "internal", "stays-in-a");

    // B told the wrong SPIFFE ID for its source: the link says who answered instead.
    let wrong = "spiffe://vsecm.com/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/other";
    let safe_b = UidSafe::start_with_env(&w.b, SAFE_UID, w.b_env(wrong, &safe_a.url));
    wait_until(Duration::from_secs(20), "the link to a wrong source ID reports the ID presented", || {
        let s = status_json(w.on_b(&safe_b, &["replication", "status", "-o", "json"]));
        s["sources"][0]["error"].as_str().is_some_and(|e| e.contains(&format!("presented the SPIFFE ID {a_id}")))
    });
    assert!(listing(w.on_b(&safe_b, &["list", "--deleted", "-o", "json"])).is_empty(), "nothing came from it");
    drop(safe_b);

    // The right one: a snapshot brings every replicated secret, with A's versions and times.
    let safe_b = UidSafe::start_with_env(&w.b, SAFE_UID, w.b_env(&a_id, &safe_a.url));
    wait_until(Duration::from_secs(20), "shared-db reaches B", || {
        w.on_b(&safe_b, &["get", "shared-db"]).status.success()
    });
    assert_eq!(ok(w.on_b(&safe_b, &["get", "shared-db"])).trim(), "v2");
    let history =
        |out| -> serde_json::Value { serde_json::from_str::<serde_json::Value>(&ok(out)).unwrap()["versions"].clone() };
    assert_eq!(
        history(w.on_b(&safe_b, &["history", "shared-db", "-o", "json"])),
        history(w.on_a(&safe_a, &["history", "shared-db", "-o", "json"])),
        "the source's version numbers and times"
    );
    let on_b = listing(w.on_b(&safe_b, &["list", "--deleted", "-o", "json"]));
    assert_eq!(on_b.get("shared-db"), Some(&(2, false, Some(a_id.clone()))), "{on_b:?}");
    assert!(!on_b.contains_key("internal"), "only what A replicates: {on_b:?}");
    let text = ok(w.on_b(&safe_b, &["list"]));
    assert!(text.contains(&format!("replicated from {a_id} (read-only)")), "{text}");

    // Read-only on B, whatever the route; the message names the source.
    let out = w.on_b(&safe_b, &["put", "shared-db", "--value", "from-b"]);
    fails(out, 6, "read-only here");
    let out = w.on_b(&safe_b, &["delete", "shared-db"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains(&a_id), "{}", stderr(&out));
    let mut b_env = safe_b.client_env(&w.b);
    b_env.insert("SPIFFE_TRUST_DOMAIN".to_owned(), B.to_owned());
    let out = w.b.run_as(SENTINEL_UID, "safe", &b_env, &["-w", "shared-db", "-s", "x"]);
    assert!(!out.status.success(), "VSecM's upsert is refused too: {}", stdout(&out));
    assert_eq!(ok(w.on_b(&safe_b, &["get", "shared-db"])).trim(), "v2", "nothing changed");

    // Deletes, undeletes and rollbacks arrive.
    ok(w.on_a(&safe_a, &["delete", "shared-db"]));
    wait_until(Duration::from_secs(10), "the delete reaches B", || {
        listing(w.on_b(&safe_b, &["list", "--deleted", "-o", "json"])).get("shared-db").is_some_and(|s| s.1)
    });
    ok(w.on_a(&safe_a, &["undelete", "shared-db"]));
    ok(w.on_a(&safe_a, &["rollback", "shared-db", "1"]));
    wait_until(Duration::from_secs(10), "the rollback reaches B", || {
        listing(w.on_b(&safe_b, &["list", "--deleted", "-o", "json"]))
            .get("shared-db")
            .is_some_and(|s| s.0 == 3 && !s.1)
    });
    assert_eq!(ok(w.on_b(&safe_b, &["get", "shared-db"])).trim(), "v1");

    // A sidecar of b.example's workload follows a change made in A.
    put_a(&safe_a, "billing", r#"{"db":"one"}"#);
    let file = w.b.dir_for("billing-sidecar", BILLING_UID).join("secrets.json");
    let mut sidecar_env = safe_b.client_env(&w.b);
    sidecar_env.insert("SPIFFE_TRUST_DOMAIN".to_owned(), B.to_owned());
    sidecar_env.insert("VSECM_SIDECAR_SECRETS_PATH".to_owned(), file.display().to_string());
    let mut sidecar = w.b.command_as(BILLING_UID, "aegis", &sidecar_env, &["sidecar"]).spawn().unwrap();
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    wait_until(Duration::from_secs(20), "the sidecar in B writes A's value", || read().contains("one"));
    let t = Instant::now();
    put_a(&safe_a, "billing", r#"{"db":"two"}"#);
    wait_until(Duration::from_secs(10), "the sidecar in B follows A's change", || read().contains("two"));
    eprintln!("a change on A reached the sidecar's file on B in {} ms", t.elapsed().as_millis());
    let _ = sidecar.kill();
    let _ = sidecar.wait();

    // Both sides say where the link stands.
    let s = status_json(w.on_a(&safe_a, &["replication", "status", "-o", "json"]));
    assert_eq!(s["replicas"][0]["spiffe_id"], b_safe_id(), "{s}");
    assert_eq!(s["replicas"][0]["state"], "up", "{s}");
    assert!(s["replicas"][0]["sent"].as_u64().unwrap() >= 5, "{s}");
    let s = status_json(w.on_b(&safe_b, &["replication", "status", "-o", "json"]));
    assert_eq!(
        (s["sources"][0]["state"].as_str(), s["sources"][0]["alert"].as_bool()),
        (Some("up"), Some(false)),
        "{s}"
    );
    assert_eq!(s["sources"][0]["lag_seconds"].as_f64(), Some(0.0), "{s}");
    let text = ok(w.on_b(&safe_b, &["status"]));
    assert!(text.contains(&format!("source {a_id}")) && text.contains("federated trust domains: vsecm.com"), "{text}");
    let metrics = http_ok(safe_b.health, "/metrics").unwrap();
    assert!(metrics.contains("aegis_replication_lag_seconds{peer=\""), "{metrics}");

    // Writes go on while B is killed (-9) and started again: every acknowledged write arrives, none twice.
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stopped) = (acked.clone(), stop.clone());
        let env = safe_a.client_env(&w.a);
        let a = &w.a;
        std::thread::scope(|scope| {
            let h = scope.spawn(move || {
                let mut i = 0u64;
                while !stopped.load(Ordering::SeqCst) {
                    let name = format!("shared-n{}", i % 7);
                    let out = a.run_as(SENTINEL_UID, "aegis", &env, &["put", &name, "--value", &format!("w{i}")]);
                    if out.status.success() {
                        *acked.lock().unwrap().entry(name).or_insert(0) += 1;
                    }
                    i += 1;
                }
            });
            std::thread::sleep(Duration::from_secs(2));
            let mut safe_b = safe_b;
            safe_b.child.as_mut().unwrap().kill().unwrap(); // SIGKILL
            safe_b.child.as_mut().unwrap().wait().unwrap();
            safe_b.child = None;
            std::thread::sleep(Duration::from_secs(3));
            let safe_b = UidSafe::start_with_env(&w.b, SAFE_UID, w.b_env(&a_id, &safe_a.url));
            std::thread::sleep(Duration::from_secs(2));
            stop.store(true, Ordering::SeqCst);
            h.join().unwrap();
            safe_b
        })
    };
    let safe_b = writer;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.values().sum::<u64>() >= 10, "the writer made progress: {acked:?}");
    let on_a = listing(w.on_a(&safe_a, &["list", "-o", "json"]));
    for (name, versions) in &acked {
        assert_eq!(on_a[name].0, *versions, "A acknowledged {versions} writes of {name}");
    }
    wait_until(Duration::from_secs(20), "B catches up with every acknowledged write", || {
        let on_b = listing(w.on_b(&safe_b, &["list", "-o", "json"]));
        acked.iter().all(|(n, v)| on_b.get(n).is_some_and(|s| s.0 == *v))
    });
    for (name, versions) in &acked {
        assert_eq!(
            ok(w.on_b(&safe_b, &["get", name])).trim(),
            ok(w.on_a(&safe_a, &["get", name])).trim(),
            "{name} at version {versions}"
        );
        assert_eq!(
            history(w.on_b(&safe_b, &["history", name, "-o", "json"])),
            history(w.on_a(&safe_a, &["history", name, "-o", "json"])),
            "every version of {name}, including those written while B was down"
        );
    }
    // Each of these changes is a new version: a (secret, version) applied twice is a change delivered twice.
    assert_applied_once(&w.b, "shared-n");

    // A is killed (-9) after acknowledging a write: it is on A after the restart and reaches B.
    ok(w.on_a(&safe_a, &["put", "shared-last", "--value", "before-the-crash"]));
    let mut safe_a = safe_a;
    safe_a.child.as_mut().unwrap().kill().unwrap();
    safe_a.child.as_mut().unwrap().wait().unwrap();
    safe_a.child = None;
    // Down past the alert threshold: B's status, /readyz and metrics say so; B still serves.
    wait_until(Duration::from_secs(20), "B raises the alert", || {
        http_ok(safe_b.health, "/readyz").is_some_and(|body| body.contains("replication from"))
    });
    let s = status_json(w.on_b(&safe_b, &["replication", "status", "-o", "json"]));
    assert_eq!(
        (s["sources"][0]["state"].as_str(), s["sources"][0]["alert"].as_bool()),
        (Some("down"), Some(true)),
        "{s}"
    );
    assert!(s["sources"][0]["lag_seconds"].as_f64().unwrap() >= 2.0, "{s}");
    assert_eq!(ok(w.on_b(&safe_b, &["get", "shared-db"])).trim(), "v1", "B serves while A is down");
    let metrics = http_ok(safe_b.health, "/metrics").unwrap();
    assert!(metrics.contains(&format!("aegis_replication_link_alert{{peer=\"{a_id}\"}} 1")), "{metrics}");

    // A starts again where B expects it.
    let _safe_a = UidSafe::start_on(&w.a, SAFE_UID, w.a_env(), safe_a.port);
    wait_until(Duration::from_secs(20), "the write acknowledged before A's crash reaches B", || {
        w.on_b(&safe_b, &["get", "shared-last"]).status.success()
    });
    assert_eq!(ok(w.on_b(&safe_b, &["get", "shared-last"])).trim(), "before-the-crash");
    wait_until(Duration::from_secs(20), "the alert clears", || {
        http_ok(safe_b.health, "/readyz").is_some_and(|body| !body.contains("replication from"))
    });
    assert_applied_once(&w.b, "shared-n");
    assert_applied_once(&w.b, "shared-last");
    drop(_safe_a);

    // A source that does not name B: B's link says so, and B keeps what it holds.
    let mut env = w.a_env();
    env.insert(
        "AEGIS_REPLICATE_TO".to_owned(),
        format!("spiffe://{B}/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/other"),
    );
    let not_named = UidSafe::start_on(&w.a, SAFE_UID, env, safe_a.port);
    wait_until(Duration::from_secs(20), "B's link reports that A does not name it", || {
        let s = status_json(w.on_b(&safe_b, &["replication", "status", "-o", "json"]));
        s["sources"][0]["error"].as_str().is_some_and(|e| e.contains("is not a replica of this Safe"))
    });
    assert_eq!(ok(w.on_b(&safe_b, &["get", "billing"])).trim(), r#"{"db":"two"}"#);
    drop(not_named);

    // A source that replicates less: its snapshot makes B delete what it no longer sends.
    let mut env = w.a_env();
    env.insert("AEGIS_REPLICATE_SECRETS".to_owned(), "shared-*".to_owned());
    let _narrower = UidSafe::start_on(&w.a, SAFE_UID, env, safe_a.port);
    wait_until(Duration::from_secs(20), "B deletes the secret A no longer replicates", || {
        listing(w.on_b(&safe_b, &["list", "--deleted", "-o", "json"])).get("billing").is_some_and(|s| s.1)
    });
    let on_b = listing(w.on_b(&safe_b, &["list", "--deleted", "-o", "json"]));
    assert_eq!(on_b.get("shared-last").map(|s| s.1), Some(false), "what A still replicates stays: {on_b:?}");
    let deleted =
        std::fs::read_to_string(w.b.dir.path().join(format!("safe-{SAFE_UID}")).join("data/audit/audit.log")).unwrap();
    assert!(deleted.lines().any(|l| l.contains("\"replicate-delete\"") && l.contains("billing")), "audited");
    let sent =
        std::fs::read_to_string(w.a.dir.path().join(format!("safe-{SAFE_UID}")).join("data/audit/audit.log")).unwrap();
    assert!(
        sent.lines().any(|l| l.contains("\"replicate-send\"") && l.contains("shared-last") && l.contains(&b_safe_id())),
        "A's trail records what it sent, and to whom"
    );
}

/// No `replicate-apply` line of B's trail for a secret starting with `prefix` repeats a (secret, version).
fn assert_applied_once(b: &Spire, prefix: &str) {
    let lines: Vec<(String, u64)> = applied_lines(b).into_iter().filter(|(n, _)| n.starts_with(prefix)).collect();
    assert!(!lines.is_empty(), "B's audit trail records the changes it applied");
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        assert!(seen.insert(l.clone()), "{l:?} applied twice: {lines:?}");
    }
}

/// The change feed's contract, on a dev Safe (no SPIRE): only a named replica gets
/// it, a bad query is a 400 saying what is wrong, and a page holds the secrets the
/// patterns select, values included, with the source's change numbers.
#[tokio::test]
async fn the_change_feed_answers_only_its_replicas_and_refuses_bad_queries() {
    use aegis_sdk::Method;
    let replica = "spiffe://vsecm.com/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/replica-b";
    let safe = Safe::dev_with(&["--replicate-to", replica, "--replicate", "shared-*"], None);
    let admin = safe.client(&safe.admin_env()).await;
    for (name, value) in [("shared-a", "one"), ("internal", "two"), ("shared-b", "three")] {
        let (s, text) = admin
            .raw(Method::PUT, &format!("/v1/secrets/{name}"), format!(r#"{{"value":"{value}"}}"#).into_bytes())
            .await
            .unwrap();
        assert_eq!(s, 200, "{text}");
    }
    let out = common::cmd(common::AEGIS, &HashMap::new())
        .args(["dev", "svid", "--workload", "replica-b", "--spiffe-id", replica, "--data-dir"])
        .arg(safe.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = safe.client(&parse_exports(&stdout(&out))).await;

    // The first request: a snapshot of what the patterns select, in change order.
    let (s, text) = r.raw(Method::GET, "/v1/replication/changes?wait_ms=0", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["snapshot"], true, "{page}");
    assert_eq!(page["source"], "spiffe://vsecm.com/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/vsecm-safe-0");
    let changes = page["changes"].as_array().unwrap();
    let names: Vec<&str> = changes.iter().map(|c| c["doc"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["shared-a", "shared-b"], "only shared-*: {page}");
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs[0] >= 1 && seqs[0] < seqs[1] && seqs[1] <= page["head"].as_u64().unwrap(), "{seqs:?} {page}");
    assert!(text.contains("\"three\""), "the values travel inside mTLS: {text}");
    // Going on from the page: nothing new, no snapshot.
    let next = format!(
        "/v1/replication/changes?after={}&after_name={}&selection={}&wait_ms=0",
        page["next_seq"],
        page["next_name"].as_str().unwrap(),
        page["selection"]
    );
    let (s, text) = r.raw(Method::GET, &next, Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    let again: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (again["snapshot"].as_bool(), again["changes"].as_array().map(Vec::len)),
        (Some(false), Some(0)),
        "{again}"
    );
    // A position past the source's last change (its data was replaced): a snapshot again.
    let past =
        format!("/v1/replication/changes?after=999999&after_name=shared-a&selection={}&wait_ms=0", page["selection"]);
    let (s, text) = r.raw(Method::GET, &past, Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("\"snapshot\":true"), "{text}");

    // Bad queries: 400, saying what is wrong.
    for (q, want) in [
        ("after=3", "after needs after_name"),
        ("after=x", "bad replication query"),
        ("wait=1", "bad replication query"),
        ("after=1&after_name=a%2Fb", "after_name"),
    ] {
        let (s, text) = r.raw(Method::GET, &format!("/v1/replication/changes?{q}"), Vec::new()).await.unwrap();
        assert_eq!(s, 400, "{q}: {text}");
        assert!(text.contains(want), "{q}: {text}");
    }
    // Anyone else, even the Sentinel: 403, naming the flag that names replicas.
    let (s, text) = admin.raw(Method::GET, "/v1/replication/changes", Vec::new()).await.unwrap();
    assert_eq!(s, 403, "{text}");
    assert!(text.contains("is not a replica of this Safe") && text.contains("--replicate-to"), "{text}");

    // The source's view of its replica.
    let (s, text) = admin.raw(Method::GET, "/v1/replication", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["replicas"][0]["spiffe_id"], replica, "{status}");
    assert_eq!(status["replicas"][0]["state"], "up", "{status}");
    assert!(status["replicas"][0]["sent"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(status["replicas"][0]["patterns"], serde_json::json!(["shared-*"]), "{status}");
}
