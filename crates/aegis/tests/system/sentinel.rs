//! The Sentinel init-command runner and the watch API against a real `aegis dev`.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const INIT: &str = r#"
w:k8s:db-credentials
n:payments,billing
s:gen:{"username":"admin-[a-z0-9]{6}","password":"[a-zA-Z0-9]{12}"}
t:{"DB_USER":"{{.username}}","DB_PASS":"{{.password}}"}
--
sleep:100
--
w:billing
s:initial
--
exit
w:never
s:applied
--
"#;

#[test]
fn init_commands_apply_once_and_write_the_keystone() {
    let safe = Safe::dev_offline_kube();
    let admin = safe.admin_env();
    let file = safe.dir.path().join("init");
    std::fs::write(&file, INIT).unwrap();
    let out = safe.aegis(&admin, &["sentinel", "init", "--file", file.to_str().unwrap()]);
    assert!(stderr(&out).contains("2 blocks"), "{}", stderr(&out));
    ok(out);
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "initial");
    let raw: Value = serde_json::from_str(ok(safe.aegis(&admin, &["get", "k8s:db-credentials"])).trim()).unwrap();
    let user = raw["username"].as_str().unwrap().to_owned();
    assert!(user.starts_with("admin-") && user.len() == 12, "{user}");
    assert_eq!(raw["password"].as_str().unwrap().len(), 12);
    let read: Value =
        serde_json::from_str(&ok(safe.aegis(&admin, &["get", "k8s:db-credentials", "-o", "json"]))).unwrap();
    let data: Value = serde_json::from_str(read["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["DB_USER"], user.as_str());
    assert_eq!(read["namespaces"], serde_json::json!(["payments", "billing"]));
    fails(safe.aegis(&admin, &["get", "never"]), 3, "does not exist");
    assert!(ok(safe.aegis(&admin, &["get", "vsecm-keystone"])).contains("initialized"));

    // A second start does nothing: the generated password is not regenerated.
    let again = safe.aegis(&admin, &["sentinel", "init", "--file", file.to_str().unwrap()]);
    assert!(stderr(&again).contains("already applied"), "{}", stderr(&again));
    ok(again);
    let raw2: Value = serde_json::from_str(ok(safe.aegis(&admin, &["get", "k8s:db-credentials"])).trim()).unwrap();
    assert_eq!(raw2["username"], user.as_str());
}

#[test]
fn init_command_errors_name_the_line_and_apply_nothing() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    let file = safe.dir.path().join("bad");
    std::fs::write(&file, "w:billing\ns:SECRET-IN-FILE\n--\nw:x\nq:oops\n--\n").unwrap();
    let out = safe.aegis(&admin, &["sentinel", "init", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 5"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("SECRET-IN-FILE"));
    fails(safe.aegis(&admin, &["get", "billing"]), 3, "does not exist");

    // A block the Safe refuses stops the run at its line, before the keystone.
    std::fs::write(&file, "w:first\ns:ok\n--\nw:second\ns:{\"a\":1}\nt:{{.a\n--\n").unwrap();
    let out = safe.aegis(&admin, &["sentinel", "init", "--file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("block at line 4") && stderr(&out).contains("template"), "{}", stderr(&out));
    assert_eq!(ok(safe.aegis(&admin, &["get", "first"])).trim(), "ok");
    fails(safe.aegis(&admin, &["get", "vsecm-keystone"]), 3, "does not exist");
    fails(
        safe.aegis(&admin, &["sentinel", "init", "--file", "/nonexistent/init"]),
        64,
        "VSECM_SENTINEL_INIT_COMMAND_PATH",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_answers_on_own_changes_only() {
    let safe = Safe::dev();
    let admin = safe.client(&safe.admin_env()).await;
    let work = safe.client(&safe.workload_env("billing")).await;
    let first = work.watch_once(u64::MAX, Duration::from_secs(5)).await.unwrap();
    assert_eq!((first.revision, first.secret.is_none()), (0, true));

    let w = work.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        (w.watch_once(0, Duration::from_secs(20)).await.unwrap(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let put = |v: &str| aegis_core::api::PutSecret::new(aegis_core::secret::SecretValue::new(v));
    admin.put("payroll", &put("not yours")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "another workload's change must not answer the watch");
    admin.put("billing", &put("yours")).await.unwrap();
    let (ev, took) = waiter.await.unwrap();
    assert_eq!(ev.secret.unwrap().data.expose(), "yours");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // An unchanged secret: the watch ends after the wait with the same revision.
    let t = Instant::now();
    let same = work.watch_once(ev.revision, Duration::from_millis(400)).await.unwrap();
    assert_eq!(same.revision, ev.revision);
    assert!(t.elapsed() >= Duration::from_millis(350));
    // On the same kept-alive connection, other requests still work after watches.
    assert_eq!(work.fetch().await.unwrap().unwrap().data.expose(), "yours");
    assert_eq!(work.vsecm_fetch().await.unwrap().unwrap().data.expose(), "yours");
    let again = work.watch_once(0, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.revision, ev.revision);
    // Delete: the watch reports no secret.
    admin.delete("billing").await.unwrap();
    let gone = work.watch_once(ev.revision, Duration::from_secs(5)).await.unwrap();
    assert!(gone.secret.is_none() && gone.revision > ev.revision);
    // Admins are not workloads.
    assert_eq!(admin.watch_once(0, Duration::from_millis(10)).await.unwrap_err().status(), Some(403));
}

/// The Helm chart's Sentinel: `--missing-ok` with no file applies nothing (and
/// needs no Safe), `--keep-running` stays up after applying until SIGTERM.
#[test]
fn missing_ok_and_keep_running_as_the_chart_runs_the_sentinel() {
    let safe = Safe::dev();
    let admin = safe.admin_env();
    let out = safe.aegis(&admin, &["sentinel", "init", "--file", "/nonexistent/init", "--missing-ok"]);
    assert!(stderr(&out).contains("nothing to apply"), "{}", stderr(&out));
    ok(out);
    fails(safe.aegis(&admin, &["get", "vsecm-keystone"]), 3, "does not exist");

    let file = safe.dir.path().join("init");
    std::fs::write(&file, "w:billing\ns:initial\n--\n").unwrap();
    let mut child = cmd(AEGIS, &admin)
        .args(["sentinel", "init", "--missing-ok", "--keep-running", "--file", file.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !safe.aegis(&admin, &["get", "vsecm-keystone"]).status.success() {
        assert!(Instant::now() < deadline, "the keystone was not written within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(safe.aegis(&admin, &["get", "billing"])).trim(), "initial");
    // Still running after the commands were applied, until SIGTERM ends it cleanly.
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "--keep-running exited after applying");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}
