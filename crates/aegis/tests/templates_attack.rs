//! Templates that try to exhaust the Safe (security findings F2 and F4):
//! every one is refused with a 400 naming the bound, nothing is stored, the
//! Safe keeps serving, and a stored record over the budget never stops a
//! start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use aegis_sdk::{Client, Method};
use common::*;

fn items(n: usize) -> String {
    (0..n).map(|i| (i % 10).to_string()).collect::<Vec<_>>().join(",")
}

/// A VSecM upsert body (`safe -w NAME -s VALUE -t TEMPLATE -f json`).
fn upsert(workload: &str, value: &str, template: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "workloads": [workload], "namespaces": null, "value": value, "template": template,
        "format": "json", "encrypt": false, "notBefore": "now", "expires": "never"
    }))
    .unwrap()
}

/// A native put body.
fn put(value: &str, template: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "value": value, "template": template, "format": "raw" })).unwrap()
}

/// Peak resident memory of the Safe process, in KiB.
fn peak_rss_kib(safe: &Safe) -> u64 {
    let pid = safe.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn admin_get(admin: &Client, name: &str) -> (u16, String) {
    admin.raw(Method::GET, &format!("/v1/secrets/{name}"), Vec::new()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_range_output_is_refused_before_anything_is_stored() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let (s, _) = admin.raw(Method::PUT, "/v1/secrets/billing", put("before", "")).await.unwrap();
    assert_eq!(s, 200);
    let rss_before = peak_rss_kib(&safe);

    // The finding: 160 KB, {{range .a}} + 100,000 characters + {{end}} over 20,000 items (2 GB of output).
    let value = format!(r#"{{"a":[{}]}}"#, items(20_000));
    let template = format!("{{{{range .a}}}}{}{{{{end}}}}", "x".repeat(100_000));
    let started = Instant::now();
    let (s, body) =
        admin.raw(Method::POST, "/sentinel/v1/secrets", upsert("billing", &value, &template)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("output is larger than the limit of 1048576 bytes"), "{body}");
    assert!(body.contains("AEGIS_TEMPLATE_MAX_OUTPUT_BYTES"), "{body}");
    let rss_after = peak_rss_kib(&safe);
    eprintln!(
        "F2 160 KB range upsert: answered 400 in {} ms; Safe peak RSS {} KiB before, {} KiB after",
        took.as_millis(),
        rss_before,
        rss_after
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(rss_after < 512 * 1024, "peak RSS {rss_after} KiB");

    // The same through the native API and the VSecM CLI.
    let (s, body) = admin.raw(Method::PUT, "/v1/secrets/billing", put(&value, &template)).await.unwrap();
    assert_eq!(s, 400, "{body}");
    let out = safe.safe(&safe.admin_env(), &["-w", "billing", "-s", &value, "-t", &template, "-f", "json"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("output is larger than the limit"), "{}", stderr(&out));

    // Nothing was stored; the Safe keeps serving, and a restart loads fine.
    let (s, body) = admin_get(&admin, "billing").await;
    assert_eq!(s, 200);
    assert!(body.contains(r#""value":"before""#) && body.contains(r#""version":1"#), "{body}");
    let wl = safe.client(&safe.workload_env("billing")).await;
    assert_eq!(wl.fetch().await.unwrap().unwrap().data.expose(), "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_range_is_refused_quickly_and_never_blocks_other_writes() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let value = format!(r#"{{"a":[{}]}}"#, items(20_000));
    let template = "{{range .a}}{{range $.a}}{{range $.a}}x{{end}}{{end}}{{end}}";
    let started = Instant::now();
    let attack = {
        let admin = safe.client(&safe.admin_env()).await;
        let body = upsert("billing", &value, template);
        tokio::spawn(async move { admin.raw(Method::POST, "/sentinel/v1/secrets", body).await.unwrap() })
    };
    // Other writes go on meanwhile, each quickly.
    for i in 0..20 {
        let t = Instant::now();
        let (s, body) = admin.raw(Method::PUT, &format!("/v1/secrets/other-{i}"), put("v", "")).await.unwrap();
        assert_eq!(s, 200, "{body}");
        assert!(t.elapsed() < Duration::from_secs(3), "write {i} took {:?}", t.elapsed());
    }
    let (s, body) = attack.await.unwrap();
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("more than 100000 steps") && body.contains("AEGIS_TEMPLATE_MAX_STEPS"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let (s, _) = admin_get(&admin, "billing").await;
    assert_eq!(s, 404, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printf_star_widths_get_the_same_limit_as_literal_ones() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let value = r#"{"w":65535,"n":1}"#;
    for template in [
        r#"{{printf "%*d" 65535 1}}"#,
        r#"{{printf "%.*f" 65535 1.5}}"#,
        r#"{{printf "%*d" .w .n}}"#,
        r#"{{printf "%65535d" 1}}"#,
    ] {
        let (s, body) =
            admin.raw(Method::POST, "/sentinel/v1/secrets", upsert("billing", value, template)).await.unwrap();
        assert_eq!(s, 400, "{template}: {body}");
        assert!(body.contains("printf width or precision 65535 is larger than the limit of 9999"), "{body}");
    }
    let (s, _) = admin_get(&admin, "billing").await;
    assert_eq!(s, 404, "nothing stored");
    // Ordinary widths keep working.
    let (s, body) =
        admin.raw(Method::PUT, "/v1/secrets/billing", put(value, r#"{{printf "%*d" 4 .n}}"#)).await.unwrap();
    assert_eq!(s, 200, "{body}");
    let wl = safe.client(&safe.workload_env("billing")).await;
    assert_eq!(wl.fetch().await.unwrap().unwrap().data.expose(), "   1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_refused_and_the_safe_stays_alive() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let deep = |open: &str, close: &str, n: usize| format!("{}{}", open.repeat(n), close.repeat(n));
    let cases = [
        format!("{{{{{}.a{}}}}}", "(".repeat(900), ")".repeat(900)),
        deep("{{if .a}}", "{{end}}", 700),
        deep("{{with .a}}", "{{end}}", 900),
        deep("{{range .a}}", "{{end}}", 900),
        format!("{{{{if .a}}}}{}{{{{end}}}}", "{{else if .a}}".repeat(20_000)),
    ];
    for template in &cases {
        for (method, path, body) in [
            (Method::POST, "/sentinel/v1/secrets", upsert("billing", r#"{"a":[1]}"#, template)),
            (Method::PUT, "/v1/secrets/billing", put(r#"{"a":[1]}"#, template)),
        ] {
            let (s, body) = admin.raw(method, path, body).await.unwrap();
            assert_eq!(s, 400, "{body}");
            assert!(body.contains("deeper than the limit of 48 (template nesting depth)"), "{body}");
        }
        assert!(http_ok(safe.health, "/healthz").is_some(), "the Safe is alive");
    }
    let (s, _) = admin_get(&admin, "billing").await;
    assert_eq!(s, 404, "nothing stored");
    let (s, body) = admin.raw(Method::PUT, "/v1/secrets/billing", put("still-writable", "")).await.unwrap();
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_record_over_the_budget_never_stops_start_up() {
    let mut safe = Safe::dev();
    let admin_env = safe.admin_env();
    let admin = safe.client(&admin_env).await;
    // 5,000 range iterations: about 10,000 steps, well within the default budget.
    let value = format!(r#"{{"a":[{}]}}"#, items(5_000));
    let (s, body) =
        admin.raw(Method::PUT, "/v1/secrets/billing", put(&value, "{{range .a}}{{.}}{{end}}")).await.unwrap();
    assert_eq!(s, 200, "{body}");
    let (s, _) = admin.raw(Method::PUT, "/v1/secrets/payroll", put("payroll-secret", "")).await.unwrap();
    assert_eq!(s, 200);
    drop(admin);

    // The budget is lowered: the stored template is now over it, as one
    // stored by an older version would be.
    safe.extra_env.insert("AEGIS_TEMPLATE_MAX_STEPS".into(), "1000".into());
    let started = Instant::now();
    safe.restart();
    safe.wait_ready();
    assert!(started.elapsed() < Duration::from_secs(30), "start-up took {:?}", started.elapsed());

    // That one secret is an error for its workload, on every route; the raw value is never served.
    let billing = safe.client(&safe.workload_env("billing")).await;
    for path in ["/workload/v1/secrets", "/v1/workload/secret"] {
        let (s, body) = billing.raw(Method::GET, path, Vec::new()).await.unwrap();
        assert_eq!(s, 500, "{path}: {body}");
        assert!(body.contains("stored template of secret 'billing' cannot be rendered"), "{body}");
        assert!(body.contains("more than 1000 steps") && !body.contains("1,2,3"), "{body}");
    }
    // The others load and are served as usual.
    let payroll = safe.client(&safe.workload_env("payroll")).await;
    assert_eq!(payroll.fetch().await.unwrap().unwrap().data.expose(), "payroll-secret");
    // Counted and logged.
    let metrics = http_ok(safe.health, "/metrics").unwrap();
    assert!(metrics.contains("aegis_transform_failures 1"), "{metrics}");
    assert!(safe.log_text().contains("the stored template cannot be rendered within the template budget"));

    // Writing it again within the budget repairs it.
    let admin = safe.client(&admin_env).await;
    let (s, body) = admin.raw(Method::PUT, "/v1/secrets/billing", put(&value, "{{index .a 1}}")).await.unwrap();
    assert_eq!(s, 200, "{body}");
    assert_eq!(billing.fetch().await.unwrap().unwrap().data.expose(), "1");
    // Over the lowered budget, a new write is refused.
    let (s, body) =
        admin.raw(Method::PUT, "/v1/secrets/billing", put(&value, "{{range .a}}{{.}}{{end}}")).await.unwrap();
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("more than 1000 steps"), "{body}");
}
