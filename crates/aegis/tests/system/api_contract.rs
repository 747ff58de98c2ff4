//! Status codes of `crates/aegis-server/openapi.yaml` that requests generated
//! from the document cannot reach (scripts/schemathesis.sh): each response
//! that names one of these tests in `x-reached-by` is provoked here, and its
//! body has the documented shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use aegis_sdk::Method;
use common::*;

/// The documented error body: `{"error": "..."}` and nothing else.
fn error_body(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {text}"));
    assert_eq!(obj.len(), 1, "{text}");
    obj["error"].as_str().unwrap_or_else(|| panic!("no error string: {text}")).to_owned()
}

#[tokio::test]
async fn rotating_a_root_key_given_by_hand_is_refused() {
    let mut safe = Safe::server_manual();
    let admin_env = safe.admin_env();
    let key = aegis_crypto::RootKey::generate();
    assert_eq!(ok(safe.safe(&admin_env, &["-i", &key.to_text()])).trim(), "OK");
    safe.wait_ready();
    let admin = safe.client(&admin_env).await;
    let (s, text) = admin.raw(Method::POST, "/v1/admin/rotate-root-key", Vec::new()).await.unwrap();
    assert_eq!(s, 400, "{text}");
    assert!(error_body(&text).contains("--root-key-file"), "{text}");
}

#[tokio::test]
async fn a_workload_without_a_live_secret_gets_404_on_both_routes() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let work = safe.client(&safe.workload_env("orphan")).await;
    let check = |when: &'static str| {
        let work = &work;
        async move {
            let (s, text) = work.raw(Method::GET, "/v1/workload/secret", Vec::new()).await.unwrap();
            assert_eq!(s, 404, "{when}: {text}");
            assert!(error_body(&text).contains("orphan"), "{when}: {text}");
            let (s, text) = work.raw(Method::GET, "/workload/v1/secrets", Vec::new()).await.unwrap();
            assert_eq!((s, text.as_str()), (404, ""), "{when}: VSecM's 404 has an empty body");
        }
    };
    check("never written").await;
    let (s, text) = admin.raw(Method::PUT, "/v1/secrets/orphan", br#"{"value":"v"}"#.to_vec()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    let (s, text) = admin.raw(Method::DELETE, "/v1/secrets/orphan", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    check("deleted").await;
}

#[tokio::test]
async fn destroyed_and_missing_versions_get_410_and_404() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    for v in ["one", "two"] {
        let body = format!(r#"{{"value":"{v}"}}"#).into_bytes();
        let (s, text) = admin.raw(Method::PUT, "/v1/secrets/kept", body).await.unwrap();
        assert_eq!(s, 200, "{text}");
    }
    let (s, text) = admin.raw(Method::DELETE, "/v1/secrets/kept/versions/1", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/kept?version=1", Vec::new()).await.unwrap();
    assert_eq!(s, 410, "{text}");
    assert!(error_body(&text).contains("destroyed"), "{text}");
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/missing/versions", Vec::new()).await.unwrap();
    assert_eq!(s, 404, "{text}");
    assert!(error_body(&text).contains("does not exist"), "{text}");
}

#[tokio::test]
async fn unsealing_an_unsealed_safe_with_another_key_is_a_conflict() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let other = aegis_crypto::RootKey::generate().to_text();
    let body = serde_json::json!({ "root_key": other.as_str() }).to_string().into_bytes();
    let (s, text) = admin.raw(Method::POST, "/v1/unseal", body).await.unwrap();
    assert_eq!(s, 409, "{text}");
    assert!(error_body(&text).contains("already unsealed"), "{text}");
    let parts: Vec<&str> = other.lines().collect();
    let body = serde_json::json!({ "ageSecretKey": parts[0], "agePublicKey": parts[1], "aesCipherKey": parts[2] });
    let (s, text) = admin.raw(Method::POST, "/sentinel/v1/keys", body.to_string().into_bytes()).await.unwrap();
    assert_eq!(s, 409, "{text}");
    assert!(error_body(&text).contains("already unsealed"), "{text}");
    // The Safe still serves with its own key.
    let (s, text) = admin.raw(Method::GET, "/v1/status", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
}

#[tokio::test]
async fn a_stored_template_over_the_budget_is_a_500_on_every_workload_route() {
    let mut safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let items = (0..2_000).map(|i| (i % 10).to_string()).collect::<Vec<_>>().join(",");
    let body = serde_json::json!({ "value": format!(r#"{{"a":[{items}]}}"#), "template": "{{range .a}}{{.}}{{end}}" });
    let (s, text) = admin.raw(Method::PUT, "/v1/secrets/heavy", body.to_string().into_bytes()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    drop(admin);
    // The budget is lowered below what the stored template needs.
    safe.extra_env.insert("AEGIS_TEMPLATE_MAX_STEPS".into(), "100".into());
    safe.restart();
    safe.wait_ready();
    let work = safe.client(&safe.workload_env("heavy")).await;
    for path in ["/v1/workload/secret", "/v1/workload/watch?revision=0&wait_ms=0"] {
        let (s, text) = work.raw(Method::GET, path, Vec::new()).await.unwrap();
        assert_eq!(s, 500, "{path}: {text}");
        assert!(error_body(&text).contains("cannot be rendered"), "{path}: {text}");
    }
    let (s, text) = work.raw(Method::GET, "/workload/v1/secrets", Vec::new()).await.unwrap();
    assert_eq!(s, 500, "{text}");
    assert!(text.contains("cannot be rendered") && serde_json::from_str::<serde_json::Value>(&text).is_err(), "{text}");
}

#[tokio::test]
async fn a_query_parameter_a_route_does_not_take_is_refused_by_name() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let work = safe.client(&safe.workload_env("billing")).await;
    let (s, text) = admin.raw(Method::PUT, "/v1/secrets/billing", br#"{"value":"v1"}"#.to_vec()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    let (s, text) = admin.raw(Method::PUT, "/v1/secrets/billing", br#"{"value":"v2"}"#.to_vec()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    // A typo is not ignored: it would have answered the current version, not version 1.
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/billing?versoin=1", Vec::new()).await.unwrap();
    assert_eq!(s, 400, "{text}");
    let why = error_body(&text);
    assert!(why.contains("'versoin'") && why.contains("takes only the query parameter version"), "{why}");
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/billing?version=1", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("\"value\":\"v1\""), "{text}");
    // A write with a query writes nothing.
    let (s, text) =
        admin.raw(Method::PUT, "/v1/secrets/billing?version=9", br#"{"value":"v3"}"#.to_vec()).await.unwrap();
    assert_eq!(s, 400, "{text}");
    assert!(error_body(&text).contains("takes no query parameters"), "{text}");
    let cases = [
        (&admin, Method::GET, "/v1/secrets?deleted=true&x=1"),
        (&admin, Method::DELETE, "/v1/secrets/billing?force"),
        (&admin, Method::POST, "/v1/secrets/billing/undelete?x"),
        (&admin, Method::POST, "/v1/secrets/billing/rollback?version=1"),
        (&admin, Method::GET, "/v1/secrets/billing/versions?all=1"),
        (&admin, Method::DELETE, "/v1/secrets/billing/versions/1?x=y"),
        (&admin, Method::POST, "/v1/encrypt?armor=1"),
        (&admin, Method::GET, "/v1/status?verbose"),
        (&admin, Method::GET, "/v1/replication?verbose"),
        (&admin, Method::GET, "/v1/openapi.yaml?v=2"),
        (&work, Method::GET, "/v1/workload/secret?name=other"),
        (&work, Method::GET, "/v1/workload/watch?revison=1"),
    ];
    for (client, method, path) in cases {
        let (s, text) = client.raw(method.clone(), path, Vec::new()).await.unwrap();
        assert_eq!(s, 400, "{method} {path}: {text}");
        error_body(&text);
    }
    let (s, text) = admin.raw(Method::GET, "/v1/secrets/billing", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("\"value\":\"v2\"") && !text.contains("deleted_at"), "nothing changed: {text}");
    // A method the route does not serve is still a 405, query or not.
    let (s, text) = admin.raw(Method::PATCH, "/v1/secrets?deleted=true", Vec::new()).await.unwrap();
    assert_eq!(s, 405, "{text}");
    // VSecM's routes keep VSecM's leniency.
    let (s, text) = work.raw(Method::GET, "/workload/v1/secrets?x=1", Vec::new()).await.unwrap();
    assert_eq!(s, 200, "{text}");
}
