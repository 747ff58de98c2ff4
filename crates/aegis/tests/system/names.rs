//! Secret names: one decoding per path segment, one name rule on both APIs
//! and in the CLI, no silent trimming, and names older versions stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use aegis_core::api::{PutSecret, VsecmUpsert};
use aegis_core::secret::{SecretMeta, SecretValue};
use aegis_core::SecretName;
use aegis_sdk::{Client, ClientError, Method};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn put_req(v: &str) -> PutSecret {
    PutSecret::new(SecretValue::new(v))
}

fn upsert_req(workloads: &[&str], v: &str) -> VsecmUpsert {
    VsecmUpsert {
        workloads: Some(workloads.iter().map(|w| (*w).to_owned()).collect()),
        namespaces: Some(vec!["default".to_owned()]),
        value: SecretValue::new(v),
        template: String::new(),
        format: "json".to_owned(),
        encrypt: false,
        not_before: "now".to_owned(),
        expires: "never".to_owned(),
    }
}

/// Every secret's (version, revision, deleted?) by name.
type Snapshot = BTreeMap<String, (u64, u64, bool)>;

async fn snapshot(c: &Client) -> Snapshot {
    c.list(true)
        .await
        .unwrap()
        .secrets
        .into_iter()
        .map(|i| (i.name, (i.version, i.revision, i.deleted.is_some())))
        .collect()
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>, status: u16, msg: &str) {
    match r {
        Err(ClientError::Refused { status: s, message }) => {
            assert_eq!(s, status, "{message}");
            assert!(message.contains(msg), "expected {msg:?} in {message}");
        }
        other => panic!("expected a {status} refusal, got {other:?}"),
    }
}

/// The four examples of the review: each now reaches exactly its own secret or is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_mark_and_percent_names_never_reach_another_secret() {
    let safe = Safe::dev_offline_kube();
    let env = safe.admin_env();
    let admin = safe.client(&env).await;
    ok(safe.aegis(&env, &["put", "a", "--value", "value-a"]));
    ok(safe.aegis(&env, &["put", "x", "--value", "value-x-1"]));
    ok(safe.aegis(&env, &["put", "x", "--value", "value-x-2"]));
    ok(safe.aegis(&env, &["put", "aA", "--value", "value-aA"]));
    let before = snapshot(&admin).await;

    // Neither API creates `a?b` or `a%41` any more.
    fails(safe.safe(&env, &["-w", "a?b", "-s", "value-q"]), 1, "'?' (U+003F)");
    refused(admin.vsecm_upsert(&upsert_req(&["a%41"], "value-p")).await, 400, "'%' (U+0025)");
    refused(admin.put("a?b", &put_req("value-q")).await, 400, "'?' (U+003F)");
    // `aegis get 'a?b'` printed a's value.
    fails(safe.aegis(&env, &["get", "a?b"]), 1, "'?' (U+003F) at byte 1 of 'a?b' is not allowed");
    // `aegis delete 'a?b'` soft-deleted `a`.
    fails(safe.aegis(&env, &["delete", "a?b"]), 1, "'?' (U+003F)");
    // `aegis destroy 'x?y' 1` destroyed a version of `x`.
    fails(safe.aegis(&env, &["destroy", "x?y", "1"]), 1, "'?' (U+003F)");
    fails(safe.aegis(&env, &["history", "x?y"]), 1, "'?' (U+003F)");
    fails(safe.aegis(&env, &["rollback", "x?y", "1"]), 1, "'?' (U+003F)");
    // `aegis put 'a%41'` wrote `aA`.
    fails(safe.aegis(&env, &["put", "a%41", "--value", "value-p"]), 1, "'%' (U+0025)");
    refused(admin.put("a%41", &put_req("value-p")).await, 400, "'%' (U+0025)");

    // The raw paths the old code decoded twice or cut at %3F.
    let body = br#"{"value":"value-raw"}"#.to_vec();
    for (m, path, msg) in [
        (Method::PUT, "/v1/secrets/a%2541", "'%' (U+0025)"),
        (Method::GET, "/v1/secrets/a%3Fb", "'?' (U+003F)"),
        (Method::DELETE, "/v1/secrets/a%3Fb", "'?' (U+003F)"),
        (Method::DELETE, "/v1/secrets/x%3Fy/versions/1", "'?' (U+003F)"),
        (Method::GET, "/v1/secrets/x%3F/versions", "'?' (U+003F)"),
        (Method::PUT, "/v1/secrets/a%2Fb", "'/' (U+002F)"),
        (Method::PUT, "/v1/secrets/a%FF", "not UTF-8"),
    ] {
        let (s, text) = admin.raw(m.clone(), path, body.clone()).await.unwrap();
        assert_eq!(s, 400, "{m} {path}: {text}");
        assert!(text.contains(msg), "{m} {path}: expected {msg:?} in {text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    }

    // Nothing changed, and every secret still holds its own value.
    assert_eq!(snapshot(&admin).await, before);
    assert_eq!(ok(safe.aegis(&env, &["get", "a"])).trim(), "value-a");
    assert_eq!(ok(safe.aegis(&env, &["get", "x", "--version", "1"])).trim(), "value-x-1");
    assert_eq!(ok(safe.aegis(&env, &["get", "aA"])).trim(), "value-aA");

    // Encoded characters that are allowed still reach their secret, decoded once.
    ok(safe.aegis(&env, &["put", "k8s:db", "--value", "value-db"]));
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/k8s%3Adb", vec![]).await.unwrap();
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("value-db"), "{text}");
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/%61", vec![]).await.unwrap();
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("value-a"), "{text}");
    // VSecM's CLI lists with the query percent-encoded into the path; both forms work.
    for path in ["/sentinel/v1/secrets%3Freveal=true", "/sentinel/v1/secrets?reveal=true"] {
        let (s, text) = admin.raw(Method::GET, path, vec![]).await.unwrap();
        assert_eq!(s, 200, "{path}: {text}");
        assert!(text.contains(r#""algorithm":"age""#), "{path}: {text}");
    }
    assert!(admin.vsecm_list(true).await.unwrap().algorithm.is_some());
}

/// `" billing"` was trimmed to `billing` and overwrote billing's secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsecm_names_with_whitespace_are_refused_not_trimmed() {
    let safe = Safe::dev();
    let env = safe.admin_env();
    let admin = safe.client(&env).await;
    assert_eq!(ok(safe.safe(&env, &["-w", "billing", "-s", "billing-original"])).trim(), "OK");
    let before = snapshot(&admin).await;

    for name in [" billing", "billing ", "billing\n", "\tbilling"] {
        refused(admin.vsecm_upsert(&upsert_req(&[name], "overwritten")).await, 400, "never trimmed");
        // A list with one bad name writes none of them.
        refused(admin.vsecm_upsert(&upsert_req(&["billing", name], "overwritten")).await, 400, "never trimmed");
        refused(admin.vsecm_delete(vec![name.to_owned()]).await, 400, "never trimmed");
    }
    fails(safe.safe(&env, &["-w", " billing", "-s", "overwritten"]), 1, "never trimmed");
    fails(safe.safe(&env, &["-d", "-w", " billing"]), 1, "never trimmed");
    fails(safe.aegis(&env, &["put", " billing", "--value", "overwritten"]), 1, "never trimmed");
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/%20billing", vec![]).await.unwrap();
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("never trimmed"), "{text}");

    assert_eq!(snapshot(&admin).await, before);
    let billing = safe.workload_env("billing");
    assert_eq!(ok(safe.aegis(&billing, &["fetch"])).trim(), "billing-original");
}

/// Names an older version stored that the rule now refuses: loaded, logged,
/// readable and deletable, but given no new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_stored_by_older_versions_still_load() {
    let mut safe = Safe::dev();
    let env = safe.admin_env();
    ok(safe.aegis(&env, &["put", "a", "--value", "value-a"]));
    safe.kill9();
    {
        // Write records as an older version could have: the store takes any stored-rule name.
        let (key, _) = aegis_store::rootkey::load_or_create(&safe.data_dir().join("root.key")).unwrap();
        let backend = Arc::new(aegis_store::DirBackend::open(&safe.data_dir().join("data")).unwrap());
        let (store, _) =
            aegis_store::Store::open(backend, aegis_crypto::Keyring::new(key), aegis_store::StoreOptions::default())
                .await
                .unwrap();
        for (name, value) in [("a?b", "value-q"), ("x@y", "value-at")] {
            let meta = SecretMeta::defaults(time::OffsetDateTime::now_utc());
            let put = aegis_store::Mutation::Put {
                value: SecretValue::new(value),
                meta,
                cas: None,
                view: None,
                stamps: None,
            };
            store.apply(SecretName::parse_stored(name).unwrap(), put).await.unwrap();
        }
    }
    safe.start();
    safe.wait_ready();
    let log = safe.log_text();
    assert!(log.contains("breaks the current name rule"), "{log}");
    assert!(log.contains("a?b") && log.contains("x@y"), "{log}");

    let list = ok(safe.aegis(&env, &["list"]));
    assert!(list.contains("a?b") && list.contains("x@y"), "{list}");
    assert_eq!(ok(safe.aegis(&env, &["get", "a?b"])).trim(), "value-q");
    assert_eq!(ok(safe.aegis(&env, &["get", "a"])).trim(), "value-a");
    ok(safe.aegis(&env, &["history", "x@y"]));
    // No new value under an old name, on either API.
    fails(safe.aegis(&env, &["put", "a?b", "--value", "new"]), 1, "'?' (U+003F)");
    fails(safe.safe(&env, &["-w", "x@y", "-s", "new"]), 1, "'@' (U+0040)");
    // Deletable on both APIs, and only that secret.
    ok(safe.aegis(&env, &["delete", "a?b"]));
    assert_eq!(ok(safe.safe(&env, &["-d", "-w", "x@y"])).trim(), "OK");
    let list = ok(safe.aegis(&env, &["list"]));
    assert!(!list.contains("a?b") && !list.contains("x@y") && list.contains("a:"), "{list}");
    assert_eq!(ok(safe.aegis(&env, &["get", "a"])).trim(), "value-a");
}

/// A character for generated names: mostly allowed ones, some that are not.
fn name_char() -> impl Strategy<Value = char> {
    let allowed: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').chain(['.', '-', '_']).collect();
    let special = vec!['?', '%', '#', '/', ':', '@', '+', '=', '&', ' ', '\u{e9}', '\u{456}', '\\', '~', '"'];
    prop_oneof![8 => proptest::sample::select(allowed), 1 => proptest::sample::select(special)]
}

fn name_strategy() -> impl Strategy<Value = String> {
    let prefix = proptest::sample::select(vec!["", "", "k8s:", "raw:"]);
    (prefix, proptest::collection::vec(name_char(), 1..12)).prop_map(|(p, body)| {
        let mut s = p.to_owned();
        s.extend(body);
        s
    })
}

/// The name cut at its first character that is not a letter or digit (after
/// the prefix): the secret a wrong decoding would most likely reach.
fn decoy(name: &str) -> Option<String> {
    let start = ["k8s:", "raw:"].iter().find(|p| name.starts_with(*p)).map_or(0, |p| p.len());
    let cut = name[start..].find(|c: char| !c.is_ascii_alphanumeric()).map_or(name.len(), |i| start + i);
    let d = if cut == name.len() { format!("{name}-decoy") } else { name[..cut].to_owned() };
    (SecretName::parse(&d).is_ok() && d != name).then_some(d)
}

/// Names starting with '-' follow `--` on the command line.
fn cli<'a>(args: &[&'a str], name: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.push("--");
    v.push(name);
    v.extend_from_slice(rest);
    v
}

struct Ctx {
    safe: Safe,
    env: std::collections::HashMap<String, String>,
    admin: Client,
    rt: tokio::runtime::Runtime,
    accepted: std::cell::Cell<usize>,
    refused: std::cell::Cell<usize>,
}

fn check_name(ctx: &Ctx, case: usize, name: &str) -> Result<(), TestCaseError> {
    let Ctx { safe, env, admin, rt, .. } = ctx;
    let accepted = SecretName::parse(name).is_ok();
    let seen = if accepted { &ctx.accepted } else { &ctx.refused };
    seen.set(seen.get() + 1);
    let decoy = decoy(name);
    if let Some(d) = &decoy {
        rt.block_on(admin.put(d, &put_req(&format!("decoy-{case}")))).unwrap();
    }
    let before = rt.block_on(snapshot(admin));
    if !accepted {
        // Refused everywhere, and nothing changes.
        let out = safe.aegis(env, &cli(&["put", "--value", "v"], name, &[]));
        prop_assert_eq!(out.status.code(), Some(1), "{:?}: {}", name, stderr(&out));
        prop_assert!(stderr(&out).contains("invalid secret name"), "{:?}: {}", name, stderr(&out));
        let r = rt.block_on(admin.vsecm_upsert(&upsert_req(&[name], "v")));
        prop_assert!(
            matches!(&r, Err(ClientError::Refused { status: 400, message }) if message.contains("invalid secret name")),
            "{:?}: {:?}",
            name,
            r
        );
        // HTTP clients turn a `.` or `..` segment into a different path: no route, 404.
        let status = if matches!(name, "." | "..") { 404 } else { 400 };
        let r = rt.block_on(admin.put(name, &put_req("v")));
        prop_assert!(matches!(&r, Err(ClientError::Refused { status: s, .. }) if *s == status), "{:?}: {:?}", name, r);
        let r = rt.block_on(admin.delete(name));
        prop_assert!(matches!(&r, Err(ClientError::Refused { status: s, .. }) if *s == status), "{:?}: {:?}", name, r);
        prop_assert_eq!(rt.block_on(snapshot(admin)), before);
        return Ok(());
    }
    let (v1, v2) = (format!("sdk-{case}"), format!("cli-{case}"));
    // SDK put, CLI put: two new versions of exactly this secret.
    let i1 = rt.block_on(admin.put(name, &put_req(&v1))).unwrap();
    prop_assert_eq!(&i1.name, name);
    let out = ok(safe.aegis(env, &cli(&["put", "--value", &v2, "-o", "json"], name, &[])));
    let i2: serde_json::Value = serde_json::from_str(&out).unwrap();
    prop_assert_eq!(i2["name"].as_str(), Some(name));
    prop_assert_eq!(i2["version"].as_u64(), Some(i1.version + 1));
    // Both read the latest back.
    let got = ok(safe.aegis(env, &cli(&["get"], name, &[])));
    prop_assert_eq!(got.trim(), v2.as_str());
    let read = rt.block_on(admin.get(name, None)).unwrap();
    prop_assert_eq!(read.value.expose(), v2.as_str());
    // History through both.
    let h = rt.block_on(admin.history(name)).unwrap();
    prop_assert_eq!(&h.name, name);
    prop_assert!(h.versions.iter().any(|v| v.version == i1.version && !v.current));
    let out = ok(safe.aegis(env, &cli(&["history", "-o", "json"], name, &[])));
    let h2: serde_json::Value = serde_json::from_str(&out).unwrap();
    prop_assert_eq!(h2["name"].as_str(), Some(name));
    // Rollback through the CLI, then forward again through the SDK.
    let v = i1.version.to_string();
    ok(safe.aegis(env, &cli(&["rollback"], name, &[&v])));
    let read = rt.block_on(admin.get(name, None)).unwrap();
    prop_assert_eq!(read.value.expose(), v1.as_str());
    let back = rt.block_on(admin.rollback(name, (i1.version + 1).try_into().unwrap())).unwrap();
    prop_assert_eq!(&back.name, name);
    let got = ok(safe.aegis(env, &cli(&["get"], name, &[])));
    prop_assert_eq!(got.trim(), v2.as_str());
    // Delete through the CLI, undelete through the SDK; delete through the SDK, undelete through the CLI.
    ok(safe.aegis(env, &cli(&["delete"], name, &[])));
    refused(rt.block_on(admin.get(name, None)), 404, "is deleted");
    rt.block_on(admin.undelete(name)).unwrap();
    rt.block_on(admin.delete(name)).unwrap();
    fails(safe.aegis(env, &cli(&["get"], name, &[])), 3, "is deleted");
    ok(safe.aegis(env, &cli(&["undelete"], name, &[])));
    // Only this secret changed.
    let mut after = rt.block_on(snapshot(admin));
    let mine = after.remove(name);
    prop_assert!(mine.is_some_and(|(_, _, deleted)| !deleted), "{:?} missing or deleted", name);
    let mut expected = before;
    expected.remove(name);
    prop_assert_eq!(after, expected);
    if let Some(d) = &decoy {
        let read = rt.block_on(admin.get(d, None)).unwrap();
        prop_assert_eq!(read.value.expose(), format!("decoy-{case}"));
    }
    Ok(())
}

/// For generated names: each one the Safe accepts is reached exactly by put,
/// get, history, rollback and delete through the SDK and the CLI; each one it
/// refuses is refused by both APIs and the CLI, and nothing changes.
#[test]
fn every_accepted_name_reaches_exactly_its_secret() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let safe = Safe::dev_offline_kube();
    let env = safe.admin_env();
    let admin = rt.block_on(safe.client(&env));
    let ctx = Ctx { safe, env, admin, rt, accepted: Default::default(), refused: Default::default() };
    let cases = std::env::var("AEGIS_NAME_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let case = std::cell::Cell::new(0);
    let result = runner.run(&name_strategy(), |name| {
        case.set(case.get() + 1);
        check_name(&ctx, case.get(), &name)
    });
    if let Err(e) = result {
        panic!("{e}\nSafe log tail:\n{}", ctx.safe.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n"));
    }
    // Both sides of the rule were exercised.
    assert!(
        ctx.accepted.get() > 0 && ctx.refused.get() > 0,
        "{} accepted, {} refused",
        ctx.accepted.get(),
        ctx.refused.get()
    );
}
