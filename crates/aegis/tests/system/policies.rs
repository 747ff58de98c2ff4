//! Policies (issue 23): who may do what by SPIFFE ID and secret name, the
//! built-in VSecM rules, a Sentinel that cannot read plaintext by default,
//! explain, and per-identity request rates. Real SPIRE identities for the
//! workload and team-admin cases; dev-CA identities (real mTLS, real processes)
//! for the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::spire as harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aegis_sdk::Method;
use common::{fails, ok, stderr, Safe};
use harness::*;

const TEAM_A_UID: u32 = 41010;
const TEAM_A: &str = "spiffe://vsecm.com/ns/team-a/sa/admin";
/// `aegis policy put` arguments of a policy that lets the workload billing read the `shared-*` secrets.
const BILLING_READS_SHARED: [&str; 7] = [
    "billing-reads-shared",
    "--spiffe-id",
    "spiffe://vsecm.com/workload/billing/*",
    "--secret",
    "shared-*",
    "--allow",
    "read",
];
/// `aegis policy put` arguments of a policy that lets the Sentinel reveal values.
const SENTINEL_REVEAL: [&str; 7] =
    ["ops-reveal", "--spiffe-id", "spiffe://vsecm.com/workload/vsecm-sentinel/*", "--secret", "*", "--allow", "reveal"];

/// A dev Safe started with a Safe's defaults (no test policy file).
fn default_safe() -> Safe {
    Safe::dev_with_env(&[], None, HashMap::from([("AEGIS_POLICY_FILE".to_owned(), String::new())]))
}

fn put_policy(safe: &Safe, admin: &HashMap<String, String>, args: &[&str]) -> String {
    let mut all = vec!["policy", "put"];
    all.extend_from_slice(args);
    ok(safe.aegis(admin, &all))
}

/// Real SPIRE: a workload reads a second, shared secret and is refused a
/// third; a team admin writes `team-a-*` and is refused `team-b-*`; both
/// take effect without a restart, and the refusals name the policy.
#[test]
fn spire_identities_under_policies() {
    let spire = Spire::start("policies", &[]);
    spire.register("safe", "", SAFE_UID, &[]);
    spire.register("sentinel", "", SENTINEL_UID, &[]);
    spire.register("workload", "billing", BILLING_UID, &[]);
    spire.server_ok(&[
        "entry",
        "create",
        "-parentID",
        &spire.env["SPIRE_AGENT_ID"],
        "-spiffeID",
        TEAM_A,
        "-selector",
        &format!("unix:uid:{TEAM_A_UID}"),
    ]);
    spire.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
    spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
    spire.wait_svid(BILLING_UID, &spiffe_id("workload", "billing"));
    spire.wait_svid(TEAM_A_UID, TEAM_A);
    // A Safe's defaults: no test policy file.
    let safe =
        UidSafe::start_with_env(&spire, SAFE_UID, HashMap::from([("AEGIS_POLICY_FILE".to_owned(), String::new())]));
    let env = safe.client_env(&spire);
    let sentinel = |args: &[&str]| ok(spire.run_as(SENTINEL_UID, "aegis", &env, args));

    for (name, value) in [("billing", "own"), ("shared-db", "shared"), ("payroll", "other"), ("team-b-x", "b")] {
        sentinel(&["put", name, "--value", value]);
    }
    // The workload reads its own secret (built-in) but not the shared one yet.
    assert_eq!(ok(spire.run_as(BILLING_UID, "aegis", &env, &["fetch"])).trim(), "own");
    fails(
        spire.run_as(BILLING_UID, "aegis", &env, &["fetch", "--secret", "shared-db"]),
        4,
        "no policy (deny by default)",
    );
    sentinel(&[&["policy", "put"][..], &BILLING_READS_SHARED].concat());
    assert_eq!(ok(spire.run_as(BILLING_UID, "aegis", &env, &["fetch", "--secret", "shared-db"])).trim(), "shared");
    fails(
        spire.run_as(BILLING_UID, "aegis", &env, &["fetch", "--secret", "payroll"]),
        4,
        "no policy (deny by default)",
    );
    fails(spire.run_as(BILLING_UID, "aegis", &env, &["fetch", "--secret", "shared-none"]), 3, "does not exist");

    // The team admin: nothing before its policy, then team-a-* only.
    fails(
        spire.run_as(TEAM_A_UID, "aegis", &env, &["put", "team-a-db", "--value", "a1"]),
        4,
        "no policy allows it to write",
    );
    sentinel(&[
        "policy",
        "put",
        "team-a-admins",
        "--spiffe-id",
        "spiffe://vsecm.com/ns/team-a/*",
        "--secret",
        "team-a-*",
        "--allow",
        "write,list,reveal",
    ]);
    ok(spire.run_as(TEAM_A_UID, "aegis", &env, &["put", "team-a-db", "--value", "a1"]));
    assert_eq!(ok(spire.run_as(TEAM_A_UID, "aegis", &env, &["get", "team-a-db"])).trim(), "a1");
    let listed = ok(spire.run_as(TEAM_A_UID, "aegis", &env, &["list"]));
    assert!(listed.contains("team-a-db") && !listed.contains("team-b-x") && !listed.contains("payroll"), "{listed}");
    fails(
        spire.run_as(TEAM_A_UID, "aegis", &env, &["put", "team-b-x", "--value", "taken"]),
        4,
        "no policy (deny by default)",
    );
    fails(spire.run_as(TEAM_A_UID, "safe", &env, &["-w", "team-b-x", "-s", "taken"]), 4, "");
    // VSecM's upsert route follows the same policies.
    assert_eq!(ok(spire.run_as(TEAM_A_UID, "safe", &env, &["-w", "team-a-web", "-s", "w1"])).trim(), "OK");
    assert_eq!(ok(spire.run_as(SENTINEL_UID, "aegis", &env, &["list"])).matches("team-").count(), 3);
    // Nothing the team admin was refused was stored.
    sentinel(&[
        "policy",
        "put",
        "sentinel-reveal",
        "--spiffe-id",
        &spiffe_id("sentinel", ""),
        "--secret",
        "*",
        "--allow",
        "reveal",
    ]);
    assert_eq!(sentinel(&["get", "team-b-x"]).trim(), "b");
    let log = safe.log_text();
    assert!(log.contains("denied by no policy (deny by default)"), "the refusal is logged with its reason:\n{log}");
}

/// The Sentinel reads no plaintext by default (VSecM's model) and may with a
/// `reveal` policy; a policy change reaches a kept-alive connection on its next
/// request; an explicit deny wins over an allow and over the built-ins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_needs_a_policy_and_changes_reach_kept_alive_connections() {
    let safe = default_safe();
    let admin_env = safe.admin_env();
    let admin = safe.client(&admin_env).await;
    ok(safe.aegis(&admin_env, &["put", "billing", "--value", "s3cret"]));
    let refused = admin.get("billing", None).await.unwrap_err().to_string();
    assert!(refused.contains("may not reveal") || refused.contains("reveal"), "{refused}");
    fails(safe.aegis(&admin_env, &["get", "billing"]), 4, "reveal");
    // The same client (a kept-alive connection) after the policy is written.
    put_policy(&safe, &admin_env, &SENTINEL_REVEAL);
    assert_eq!(admin.get("billing", None).await.unwrap().value.expose(), "s3cret");
    // An explicit deny wins: on one secret, then on writes everywhere (over the built-in).
    put_policy(
        &safe,
        &admin_env,
        &[
            "no-billing",
            "--spiffe-id",
            "spiffe://vsecm.com/workload/vsecm-sentinel/*",
            "--secret",
            "billing",
            "--deny",
            "reveal",
        ],
    );
    let e = admin.get("billing", None).await.unwrap_err().to_string();
    assert!(e.contains("policy 'no-billing'"), "{e}");
    put_policy(
        &safe,
        &admin_env,
        &["freeze", "--spiffe-id", "spiffe://vsecm.com/workload/vsecm-sentinel/*", "--secret", "*", "--deny", "write"],
    );
    fails(safe.aegis(&admin_env, &["put", "other", "--value", "x"]), 4, "may not write");
    ok(safe.aegis(&admin_env, &["policy", "delete", "freeze"]));
    ok(safe.aegis(&admin_env, &["put", "other", "--value", "x"]));
    // Explain says which policy decides, as `kubectl auth can-i` does.
    let sentinel = "spiffe://vsecm.com/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/vsecm-sentinel-0";
    let why = ok(safe.aegis(
        &admin_env,
        &["policy", "explain", "--spiffe-id", sentinel, "--secret", "billing", "--action", "reveal"],
    ));
    assert_eq!(why.trim(), "denied: policy 'no-billing'");
    let why = ok(safe
        .aegis(&admin_env, &["policy", "explain", "--spiffe-id", sentinel, "--secret", "other", "--action", "reveal"]));
    assert_eq!(why.trim(), "allowed: policy 'ops-reveal'");
    let why = ok(safe
        .aegis(&admin_env, &["policy", "explain", "--spiffe-id", sentinel, "--secret", "other", "--action", "write"]));
    assert_eq!(why.trim(), "allowed: built-in policy 'builtin:sentinel'");
    // Policies are never secrets: not listed, not addressable by name.
    let list = ok(safe.aegis(&admin_env, &["list"]));
    assert!(!list.contains("policy:"), "{list}");
    let (status, _) = admin.raw(Method::GET, "/v1/secrets/policy:ops-reveal", Vec::new()).await.unwrap();
    assert_eq!(status, 400);
    // The audit trail names the policy that decided each request.
    let trail = std::fs::read_to_string(safe.data_dir().join("data/audit/audit.log")).unwrap();
    assert!(trail.contains(r#""policy":"no-billing""#) && trail.contains(r#""status":403"#), "{trail}");
    assert!(trail.contains(r#""policy":"builtin:sentinel""#), "{trail}");
    // Reading the trail over the API is the `audit` action: the Sentinel's by default, no one else's.
    let tail = ok(safe.aegis(&admin_env, &["audit", "tail", "--from-safe", "-n", "50", "--secret", "billing"]));
    assert!(tail.lines().count() >= 3 && tail.contains(r#""policy":"no-billing""#), "{tail}");
    fails(
        safe.aegis(&safe.workload_env("billing"), &["audit", "tail", "--from-safe"]),
        4,
        "no policy allows it to audit",
    );
    let (status, body) = admin.raw(Method::GET, "/v1/audit?lines=0", Vec::new()).await.unwrap();
    assert_eq!(status, 400, "{body}");
    let off = Safe::dev_with(&["--audit-file", "off"], None);
    fails(off.aegis(&off.admin_env(), &["audit", "tail", "--from-safe"]), 6, "the audit trail is off");
}

/// Stored policies survive a restart and a root key rotation; a policy file
/// loads at start and cannot be changed over the API; the built-ins can be
/// turned off; bad documents are refused naming the problem.
#[test]
fn policies_survive_restart_and_rotation_and_load_from_a_file() {
    let mut safe = default_safe();
    let admin = safe.admin_env();
    put_policy(&safe, &admin, &SENTINEL_REVEAL);
    ok(safe.aegis(&admin, &["put", "kept", "--value", "v1"]));
    safe.restart();
    assert_eq!(ok(safe.aegis(&admin, &["get", "kept"])).trim(), "v1");
    ok(safe.aegis(&admin, &["rotate-root-key"]));
    assert_eq!(ok(safe.aegis(&admin, &["get", "kept"])).trim(), "v1");
    safe.restart();
    assert_eq!(ok(safe.aegis(&admin, &["get", "kept"])).trim(), "v1");
    let listed = ok(safe.aegis(&admin, &["policy", "list"]));
    assert!(listed.contains("ops-reveal") && listed.contains("builtin:sentinel"), "{listed}");
    let shown = ok(safe.aegis(&admin, &["policy", "get", "ops-reveal", "-o", "json"]));
    assert!(shown.contains(r#""source": "stored""#) && shown.contains(r#""version": 1"#), "{shown}");

    // Bad input is refused, naming the problem; nothing is stored.
    fails(
        safe.aegis(
            &admin,
            &["policy", "put", "bad", "--spiffe-id", "spiffe://x/*/y", "--secret", "*", "--allow", "read"],
        ),
        2,
        "whole last segment",
    );
    fails(
        safe.aegis(
            &admin,
            &["policy", "put", "bad", "--spiffe-id", "spiffe://x/*", "--secret", "*", "--allow", "raed"],
        ),
        2,
        "'raed' is not an action",
    );
    let client = tokio::runtime::Runtime::new().unwrap();
    let c = client.block_on(safe.client(&admin));
    let (status, body) = client
        .block_on(c.raw(
            Method::PUT,
            "/v1/policies/bad",
            br#"{"name":"bad","spiffe_ids":["spiffe://x/a*"],"secrets":["*"],"actions":["read"]}"#.to_vec(),
        ))
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("whole last segment"), "{body}");
    fails(safe.aegis(&admin, &["policy", "get", "bad"]), 3, "does not exist");

    // The Sentinel's init-command file writes policies too (a bad one names its line).
    let dir0 = tempfile::tempdir().unwrap();
    let init = dir0.path().join("init");
    std::fs::write(
        &init,
        "policy:{\"name\":\"from-init\",\"spiffe_ids\":[\"spiffe://vsecm.com/workload/billing/*\"],\"secrets\":[\"shared-*\"],\"actions\":[\"read\"]}\n--\nw:shared-x\ns:sx\n",
    )
    .unwrap();
    let init_s = init.display().to_string();
    ok(safe.aegis(&admin, &["sentinel", "init", "--file", &init_s]));
    assert_eq!(ok(safe.aegis(&safe.workload_env("billing"), &["fetch", "--secret", "shared-x"])).trim(), "sx");
    std::fs::write(&init, "w:a\ns:b\n--\npolicy:{\"name\":\"x\"}\n").unwrap();
    fails(safe.aegis(&admin, &["sentinel", "init", "--force", "--file", &init_s]), 64, "line 4:");

    // A policy file, with the built-in Sentinel policy off.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.json");
    std::fs::write(
        &file,
        r#"{"policies":[{"name":"ops","spiffe_ids":["spiffe://vsecm.com/workload/vsecm-sentinel/*"],"secrets":["*"],"actions":["list","admin"]}]}"#,
    )
    .unwrap();
    let env = HashMap::from([
        ("AEGIS_POLICY_FILE".to_owned(), file.display().to_string()),
        ("AEGIS_BUILTIN_POLICIES".to_owned(), "workload".to_owned()),
    ]);
    let filed = Safe::dev_with_env(&[], None, env);
    let admin = filed.admin_env();
    ok(filed.aegis(&admin, &["list"]));
    fails(filed.aegis(&admin, &["put", "x", "--value", "y"]), 4, "may not write");
    fails(filed.aegis(&admin, &["policy", "delete", "ops"]), 6, "policy file");
    fails(
        filed.aegis(
            &admin,
            &["policy", "put", "ops", "--spiffe-id", "spiffe://x/*", "--secret", "*", "--allow", "read"],
        ),
        6,
        "policy file",
    );
    let shown = ok(filed.aegis(&admin, &["policy", "get", "ops", "-o", "json"]));
    assert!(shown.contains(r#""source": "file""#) && shown.contains(r#""admin""#), "{shown}");
    let listed = ok(filed.aegis(&admin, &["policy", "list"]));
    assert!(listed.contains("ops") && listed.contains("(file)") && !listed.contains("builtin:sentinel"), "{listed}");

    // A bad file stops the start, naming it.
    std::fs::write(&file, r#"[{"name":"a","spiffe_ids":[],"secrets":["*"],"actions":["read"]}]"#).unwrap();
    let out =
        common::cmd(common::AEGIS, &HashMap::from([("AEGIS_POLICY_FILE".to_owned(), file.display().to_string())]))
            .args(["dev", "--data-dir"])
            .arg(dir.path().join("dev"))
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("AEGIS_POLICY_FILE") && stderr(&out).contains("names none"), "{}", stderr(&out));
}

/// A flood from one identity is answered 429 with Retry-After past its rate,
/// counted in the metrics, while another identity's fetches keep their latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_identity_gets_429_and_others_keep_their_latency() {
    let safe = default_safe();
    let admin_env = safe.admin_env();
    for w in ["noisy", "quiet"] {
        ok(safe.aegis(&admin_env, &["put", w, "--value", w]));
    }
    put_policy(
        &safe,
        &admin_env,
        &[
            "noisy-rate",
            "--spiffe-id",
            "spiffe://vsecm.com/workload/noisy/*",
            "--secret",
            "noisy",
            "--allow",
            "read",
            "--rate",
            "20",
            "--burst",
            "20",
        ],
    );
    let noisy = safe.client(&safe.workload_env("noisy")).await;
    let quiet = safe.client(&safe.workload_env("quiet")).await;
    let timed = |c: &aegis_sdk::Client| {
        let c = c.clone();
        async move {
            let t = Instant::now();
            assert_eq!(c.fetch().await.unwrap().unwrap().data.expose(), "quiet");
            t.elapsed()
        }
    };
    let mut before = Vec::new();
    for _ in 0..50 {
        before.push(timed(&quiet).await);
    }
    let flood = tokio::spawn(async move {
        let (mut ok, mut limited) = (0, 0);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let (status, _) = noisy.raw(Method::GET, "/v1/workload/secret", Vec::new()).await.unwrap();
            match status {
                200 => ok += 1,
                429 => limited += 1,
                s => panic!("unexpected status {s}"),
            }
        }
        (ok, limited)
    });
    let mut during = Vec::new();
    while !flood.is_finished() {
        during.push(timed(&quiet).await);
    }
    let (served, limited) = flood.await.unwrap();
    // 20 at once, then 20 a second for 3 s: at most 20 + 3 × 20, plus what half a
    // second of answers still on the way could add on a loaded machine.
    assert!((20..=90).contains(&served), "served {served}");
    assert!(limited > 100, "limited {limited}");
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * q) as usize]
    };
    let (b, d) = (p(&mut before, 0.5), p(&mut during, 0.5));
    assert!(during.len() > 50, "the quiet workload was served {} times in 3 s", during.len());
    assert!(d < b * 5 + Duration::from_millis(20), "the quiet workload's median fetch went from {b:?} to {d:?}");
    let m = common::metrics(&safe);
    assert!(common::metric(&m, "aegis_rate_limited_requests_total") >= limited as f64, "{m}");
    // The answer says when to retry.
    let noisy = safe.client(&safe.workload_env("noisy")).await;
    let mut seen = None;
    for _ in 0..100 {
        let r = noisy.raw(Method::GET, "/v1/workload/secret", Vec::new()).await.unwrap();
        if r.0 == 429 {
            seen = Some(r.1);
            break;
        }
    }
    let body = seen.expect("a 429 within 100 requests at burst 20");
    assert!(body.contains("over its request rate of 20/s") && body.contains("retry in"), "{body}");
    // ... and in its Retry-After header (raw HTTP/1.1 over mTLS). The connections are
    // made first and their 40 requests sent together, so that however slow handshakes
    // are on a loaded machine, more requests arrive at once than the burst of 20 allows.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = safe.workload_env("noisy");
    let connecting = (0..40).map(|_| common::tls_connect(&env, safe.port));
    let mut conns: Vec<_> = futures::future::join_all(connecting).await.into_iter().map(Result::unwrap).collect();
    for tls in &mut conns {
        tls.write_all(b"GET /v1/workload/secret HTTP/1.1\r\nhost: safe\r\nconnection: close\r\n\r\n").await.unwrap();
    }
    let mut heads = Vec::new();
    for mut tls in conns {
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
        heads.push(String::from_utf8_lossy(&buf).to_ascii_lowercase());
    }
    let head = heads.iter().find(|h| h.starts_with("http/1.1 429")).unwrap_or_else(|| panic!("no 429 in {heads:?}"));
    assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
}

/// A workload's sidecar keeps secrets other than its own, one file each, pushed
/// on change; `aegis run` and `aegis init` take a named secret too; a secret
/// the workload may not read is refused, not written.
#[test]
fn the_sidecar_run_and_init_deliver_named_secrets_a_policy_allows() {
    use common::delivery::{put, read, wait_for, Bg};
    let safe = default_safe();
    let admin = safe.admin_env();
    put(&admin, "billing", "own-v1");
    put(&admin, "shared-db", r#"{"user":"app","password":"p1"}"#);
    put(&admin, "shared-cache", "cache-v1");
    put_policy(&safe, &admin, &BILLING_READS_SHARED);
    let env = safe.workload_env("billing");
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("own.json");
    let cache = dir.path().join("cache.txt");
    let named = dir.path().join("named");
    std::fs::create_dir(&named).unwrap();
    let own_s = own.display().to_string();
    let cache_arg = format!("shared-cache={}", cache.display());
    let named_s = named.display().to_string();
    let mut sidecar = Bg::spawn(
        &env,
        &["sidecar", "--path", &own_s, "--secret", "shared-db", "--secret", &cache_arg, "--secrets-dir", &named_s],
        &dir.path().join("sidecar.log"),
    );
    let db = named.join("shared-db");
    let log = || sidecar_log(&dir);
    wait_for("the three files", Duration::from_secs(10), log, || {
        (read(&own)? == "own-v1" && read(&cache)? == "cache-v1" && read(&db)?.contains("p1")).then_some(())
    });
    // A change to a shared secret is pushed to its file.
    put(&admin, "shared-db", r#"{"user":"app","password":"p2"}"#);
    wait_for("the pushed change", Duration::from_secs(5), log, || read(&db)?.contains("p2").then_some(()));
    assert_eq!(read(&own).unwrap(), "own-v1");
    assert!(sidecar.running(), "{}", log());
    sidecar.signal("TERM");
    sidecar.wait_exit(Duration::from_secs(10));

    // A secret the policy does not name: refused, nothing written.
    put(&admin, "payroll", "not-yours");
    let out = dir.path().join("payroll");
    let out_arg = format!("payroll={}", out.display());
    fails(safe.aegis(&env, &["sidecar", "--once", "--secret", &out_arg]), 4, "no policy (deny by default)");
    assert!(read(&out).is_none_or(|t| t.is_empty()), "a refused secret was written");
    fails(safe.aegis(&env, &["sidecar", "--once", "--secret", "shared-db"]), 2, "--secrets-dir");

    // `aegis run` with a named secret's keys as variables.
    let printed = ok(safe.aegis(
        &env,
        &["run", "--secret", "shared-db", "--prefix", "DB_", "--", "sh", "-c", "echo $DB_user:$DB_password"],
    ));
    assert_eq!(printed.trim(), "app:p2");
    // `aegis init` waits for a named secret that does not exist yet.
    let init_file = dir.path().join("init.txt");
    let init_s = init_file.display().to_string();
    let mut init = Bg::spawn(
        &env,
        &["init", "--secret", "shared-later", "--path", &init_s, "--timeout-ms", "20000"],
        &dir.path().join("init.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(init.running(), "init must wait for the secret");
    put(&admin, "shared-later", "late");
    assert!(init.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(read(&init_file).unwrap(), "late");
}

fn sidecar_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap_or_default()
}
