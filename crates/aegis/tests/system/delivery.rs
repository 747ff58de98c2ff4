//! End to end: the sidecar, the init container and the exec wrapper as real
//! processes against a real `aegis dev` Safe, including a kill -9 of the Safe.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::delivery as helpers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cmd, fails, ok, stderr, Safe, AEGIS};
use helpers::*;

const LONG: Duration = Duration::from_secs(30);
/// Far above any push delay and far below the 60 s poll interval the tests use,
/// so a change seen within it was pushed.
const PUSHED: Duration = Duration::from_secs(10);

fn content_is(path: &std::path::Path, want: &str) -> Option<()> {
    (read(path)? == want).then_some(())
}

/// Asserts that no log line holds any of `values`.
fn no_values_in(log: &str, values: &[&str]) {
    assert!(log.contains("TRACE"), "logs must be captured at trace level:\n{log}");
    for v in values {
        assert!(!log.contains(v), "the log holds the secret value {v:?}:\n{log}");
    }
}

#[test]
fn sidecar_keeps_the_file_in_step_with_put_update_delete() {
    let safe = Safe::dev();
    let admin_env = safe.admin_env();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = dir.path().join("secrets.json");
    let (v1, v2) =
        (r#"{"DB_USER":"alice","DB_PASS":"pw-alpha-93f1"}"#, r#"{"DB_USER":"bob","DB_PASS":"pw-beta-77c2"}"#);
    put(&admin_env, "billing", v1);
    let env = workload(&safe, "billing");
    let mut sidecar = Bg::spawn(
        &env,
        &["sidecar", "--path", path_str(&file), "--poll-interval-ms", "60000"],
        &logs.path().join("sidecar.log"),
    );
    let log = || sidecar_log(&logs);
    wait_for("the first write", LONG, log, || content_is(&file, v1));
    assert_eq!(mode(&file), 0o600);

    let t = Instant::now();
    put(&admin_env, "billing", v2);
    wait_for("the update", LONG, log, || content_is(&file, v2));
    assert!(t.elapsed() < PUSHED, "the change took {:?}: it was polled, not pushed", t.elapsed());
    assert!(sidecar.running(), "the sidecar must not restart");

    admin(&safe, &["delete", "billing"]);
    wait_for("the file to be emptied", LONG, log, || content_is(&file, ""));
    assert_eq!(mode(&file), 0o600);
    admin(&safe, &["undelete", "billing"]);
    wait_for("the undeleted value", LONG, log, || content_is(&file, v2));
    assert!(sidecar.running());
    assert_eq!(names(dir.path()), vec!["secrets.json"], "no temporary file is left");

    // --once, the VSecM variable for the path, and another mode.
    let once = dir.path().join("once.json");
    let mut env_once = env.clone();
    env_once.insert("VSECM_SIDECAR_SECRETS_PATH".into(), path_str(&once).into());
    ok(cmd(AEGIS, &env_once).args(["sidecar", "--once", "--mode", "0640"]).output().unwrap());
    assert_eq!(read(&once).unwrap(), v2);
    assert_eq!(mode(&once), 0o640);

    sidecar.signal("TERM");
    assert!(sidecar.wait_exit(LONG).success(), "SIGTERM stops the sidecar cleanly");
    let text = sidecar.log_text();
    assert!(text.contains("secrets file written") && text.contains("sidecar stopping"), "{text}");
    no_values_in(&text, &["pw-alpha-93f1", "pw-beta-77c2"]);
}

fn sidecar_log(logs: &tempfile::TempDir) -> String {
    read(&logs.path().join("sidecar.log")).unwrap_or_default()
}

#[test]
fn sidecar_split_dir_writes_one_file_per_key_and_runs_reload_hooks() {
    let safe = Safe::dev();
    let admin_env = safe.admin_env();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keys = dir.path().join("keys");
    let (hups, ran, ready) = (dir.path().join("hups"), dir.path().join("ran"), dir.path().join("ready"));
    put(
        &admin_env,
        "billing",
        r#"{"DB_USER":"alice","DB_PASS":"pw-split-1","port":5432,"../escape":"esc-val-1",".hidden":"hid-val-1"}"#,
    );
    // The process to reload: counts SIGHUPs.
    let script = format!(
        "trap 'echo hup >> {}' HUP; echo up > {}; while :; do sleep 0.05; done",
        path_str(&hups),
        path_str(&ready)
    );
    let reloaded = Bg::shell(&script, &logs.path().join("reloaded.log"));
    wait_for("the reloaded process", LONG, String::new, || read(&ready));
    let hook = format!("echo changed >> {}", path_str(&ran));
    let pid = reloaded.pid().to_string();
    let sidecar = Bg::spawn(
        &workload(&safe, "billing"),
        &[
            "sidecar",
            "--split-dir",
            path_str(&keys),
            "--on-change-signal",
            "SIGHUP",
            "--pid",
            &pid,
            "--on-change-command",
            &hook,
            "--poll-interval-ms",
            "60000",
        ],
        &logs.path().join("sidecar.log"),
    );
    let log = || sidecar_log(&logs);
    wait_for("the key files", LONG, log, || content_is(&keys.join("port"), "5432"));
    assert_eq!(read(&keys.join("DB_USER")).unwrap(), "alice");
    assert_eq!(read(&keys.join("DB_PASS")).unwrap(), "pw-split-1");
    assert_eq!(mode(&keys.join("DB_PASS")), 0o600);
    assert_eq!(names(&keys), vec![".aegis-keys", "DB_PASS", "DB_USER", "port"], "unsafe keys are refused");
    assert!(!dir.path().join("escape").exists());
    wait_for("the refused key to be logged", LONG, log, || {
        let l = log();
        (l.contains("\"../escape\"") && l.contains("not a safe file name")).then_some(())
    });
    wait_for("the hooks after the first write", LONG, log, || {
        (lines(&ran).len() == 1 && lines(&hups).len() == 1).then_some(())
    });

    put(&admin_env, "billing", r#"{"DB_USER":"bob"}"#);
    wait_for("removed keys to go", LONG, log, || (names(&keys) == [".aegis-keys", "DB_USER"]).then_some(()));
    assert_eq!(read(&keys.join("DB_USER")).unwrap(), "bob");
    wait_for("the hooks after the change", LONG, log, || {
        (lines(&ran).len() == 2 && lines(&hups).len() == 2).then_some(())
    });
    wait_for("the hook's status in the log", LONG, log, || log().contains("on-change command finished").then_some(()));

    admin(&safe, &["delete", "billing"]);
    wait_for("every key file to go", LONG, log, || (names(&keys) == [".aegis-keys"]).then_some(()));
    assert!(!dir.path().join("secrets.json").exists());
    drop(reloaded);
    no_values_in(&sidecar.log_text(), &["pw-split-1", "esc-val-1", "hid-val-1"]);
}

#[test]
fn init_container_exits_only_after_the_secret_is_registered() {
    let safe = Safe::dev();
    let admin_env = safe.admin_env();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = dir.path().join("init.json");
    let env = workload(&safe, "billing");
    let mut init = Bg::spawn(
        &env,
        &["init", "--path", path_str(&file), "--poll-interval-ms", "60000"],
        &logs.path().join("init.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(init.running(), "init exited before the secret existed:\n{}", init.log_text());
    assert!(!file.exists());

    let t = Instant::now();
    put(&safe.admin_env(), "billing", "init-value-5e1d");
    let status = init.wait_exit(LONG);
    assert!(status.success(), "{status:?}\n{}", init.log_text());
    assert!(t.elapsed() < PUSHED, "init noticed the secret after {:?}", t.elapsed());
    assert_eq!(read(&file).unwrap(), "init-value-5e1d");
    assert_eq!(mode(&file), 0o600);
    no_values_in(&init.log_text(), &["init-value-5e1d"]);

    // VSecM's wait before exit.
    let mut env_wait = env.clone();
    env_wait.insert("VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT".into(), "1500".into());
    let t = Instant::now();
    ok(cmd(AEGIS, &env_wait).arg("init").output().unwrap());
    assert!(t.elapsed() >= Duration::from_millis(1500), "exited after {:?}", t.elapsed());

    // A timeout names the workload and what to do.
    let t = Instant::now();
    let out = cmd(AEGIS, &workload(&safe, "payroll")).args(["init", "--timeout-ms", "500"]).output().unwrap();
    assert!(t.elapsed() < LONG);
    assert!(stderr(&out).contains("aegis put") && stderr(&out).contains("has no secret"), "{}", stderr(&out));
    fails(out, 3, "spiffe://vsecm.com/workload/payroll/");
    drop(admin_env);
}

#[test]
fn run_gives_the_keys_as_environment_and_restarts_on_change() {
    let safe = Safe::dev();
    let admin_env = safe.admin_env();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let starts = dir.path().join("starts");
    put(&admin_env, "billing", r#"{"DB_USER":"alice","DB_PASS":"pw-run-1","PORT":5432}"#);
    let script = format!(
        r#"printf '%s %s %s\n' "$USERNAME" "$APP_DB_PASS" "$APP_PORT" >> {}; exec sleep 600"#,
        path_str(&starts)
    );
    let mut run = Bg::spawn(
        &workload(&safe, "billing"),
        &[
            "run",
            "--prefix",
            "APP_",
            "--rename",
            "DB_USER=USERNAME",
            "--grace-ms",
            "3000",
            "--poll-interval-ms",
            "60000",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &logs.path().join("run.log"),
    );
    let log = || read(&logs.path().join("run.log")).unwrap_or_default();
    wait_for("the first start", LONG, log, || (lines(&starts) == ["alice pw-run-1 5432"]).then_some(()));

    let t = Instant::now();
    put(&admin_env, "billing", r#"{"DB_USER":"bob","DB_PASS":"pw-run-2","PORT":5432}"#);
    wait_for("the restart", LONG, log, || (lines(&starts).len() == 2).then_some(()));
    assert!(t.elapsed() < PUSHED, "the restart took {:?}", t.elapsed());
    assert_eq!(lines(&starts)[1], "bob pw-run-2 5432");
    assert!(run.running(), "the wrapper itself keeps running");

    // SIGTERM is forwarded; the command dies of it and the wrapper exits with 128 + 15.
    run.signal("TERM");
    let status = run.wait_exit(LONG);
    assert_eq!(status.code(), Some(143), "{}", run.log_text());
    no_values_in(&run.log_text(), &["pw-run-1", "pw-run-2"]);
}

#[test]
fn run_signals_on_change_and_passes_the_exit_status() {
    let safe = Safe::dev();
    let admin_env = safe.admin_env();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    put(&admin_env, "billing", r#"{"K":"v-sig-1"}"#);
    let env = workload(&safe, "billing");

    let out = cmd(AEGIS, &env).args(["run", "--", "sh", "-c", "exit 7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(!stderr(&out).contains("error:"), "{}", stderr(&out));
    ok(cmd(AEGIS, &env).args(["run", "--", "sh", "-c", r#"test "$K" = v-sig-1"#]).output().unwrap());
    fails(
        cmd(AEGIS, &env).args(["run", "--", "/no/such/program"]).output().unwrap(),
        127,
        "cannot start /no/such/program",
    );

    let (seen, usr1) = (dir.path().join("seen"), dir.path().join("usr1"));
    let script = format!(
        r#"printf %s "$K" > {}; trap 'echo usr1 >> {}' USR1; while :; do sleep 0.05; done"#,
        path_str(&seen),
        path_str(&usr1)
    );
    let mut run = Bg::spawn(
        &env,
        &[
            "run",
            "--on-change",
            "signal",
            "--signal",
            "SIGUSR1",
            "--poll-interval-ms",
            "60000",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &logs.path().join("run.log"),
    );
    let log = || read(&logs.path().join("run.log")).unwrap_or_default();
    wait_for("the command to start", LONG, log, || content_is(&seen, "v-sig-1"));
    std::thread::sleep(Duration::from_millis(300)); // let the shell install its trap
    put(&admin_env, "billing", r#"{"K":"v-sig-2"}"#);
    wait_for("the signal", LONG, log, || (lines(&usr1) == ["usr1"]).then_some(()));
    assert_eq!(read(&seen).unwrap(), "v-sig-1", "signal mode does not restart");

    // A forwarded SIGUSR1 reaches the command too.
    run.signal("USR1");
    wait_for("the forwarded signal", LONG, log, || (lines(&usr1).len() == 2).then_some(()));
    run.signal("TERM");
    assert_eq!(run.wait_exit(LONG).code(), Some(143), "{}", run.log_text());
}

#[test]
fn run_explains_bad_keys_non_objects_and_missing_secrets_and_can_wait() {
    let safe = Safe::dev();
    let admin_env = safe.admin_env();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = workload(&safe, "billing");
    put(&admin_env, "billing", r#"{"ok":"1","bad-key":"topsecret-1","9lives":"topsecret-2"}"#);
    let out = cmd(AEGIS, &env).args(["run", "--", "true"]).output().unwrap();
    let err = stderr(&out);
    assert!(err.contains(r#""9lives", "bad-key""#) && err.contains("--rename"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");
    fails(out, 1, "not valid environment variable names");
    let check = r#"test "$BAD_KEY" = topsecret-1 && test "$NINE" = topsecret-2 && test "$ok" = 1"#;
    ok(cmd(AEGIS, &env)
        .args(["run", "--rename", "bad-key=BAD_KEY", "--rename", "9lives=NINE", "--", "sh", "-c", check])
        .output()
        .unwrap());

    put(&admin_env, "billing", "plain-topsecret-3");
    let out = cmd(AEGIS, &env).args(["run", "--", "true"]).output().unwrap();
    assert!(!stderr(&out).contains("topsecret"), "{}", stderr(&out));
    fails(out, 1, "is not a JSON object");

    let payroll = workload(&safe, "payroll");
    fails(cmd(AEGIS, &payroll).args(["run", "--", "true"]).output().unwrap(), 3, "no secret is registered");
    let got = dir.path().join("got");
    let script = format!(r#"printf %s "$X" > {}"#, path_str(&got));
    let mut waiting = Bg::spawn(
        &payroll,
        &["run", "--wait", "--poll-interval-ms", "60000", "--", "sh", "-c", &script],
        &logs.path().join("run.log"),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(waiting.running(), "{}", waiting.log_text());
    put(&admin_env, "payroll", r#"{"X":"late-9"}"#);
    assert!(waiting.wait_exit(LONG).success(), "{}", waiting.log_text());
    assert_eq!(read(&got).unwrap(), "late-9");
}

/// A value large enough that a non-atomic write would be caught half-way.
fn big(tag: char) -> String {
    format!(r#"{{"tag":"{tag}","fill":"{}"}}"#, tag.to_string().repeat(64 * 1024))
}

#[test]
fn watchers_converge_after_the_safe_is_killed_and_nothing_is_written_half() {
    let mut safe = Safe::dev();
    let admin_env = safe.admin_env();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = dir.path().join("secrets.json");
    let tags = logs.path().join("tags");
    let values: Vec<String> = ['a', 'b', 'c', 'd'].into_iter().map(big).collect();
    put(&admin_env, "billing", &values[0]);
    let env = workload(&safe, "billing");
    let mut sidecar = Bg::spawn(
        &env,
        &["sidecar", "--path", path_str(&file), "--poll-interval-ms", "1000"],
        &logs.path().join("sidecar.log"),
    );
    let script = format!(r#"printf '%s\n' "$tag" >> {}; exec sleep 600"#, path_str(&tags));
    let mut run = Bg::spawn(
        &env,
        &["run", "--poll-interval-ms", "1000", "--", "sh", "-c", &script],
        &logs.path().join("run.log"),
    );
    let log = || format!("{}\n{}", sidecar_log(&logs), read(&logs.path().join("run.log")).unwrap_or_default());

    // Read the file as fast as possible for the whole test: it must always be one whole value.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, file, values) = (stop.clone(), file.clone(), values.clone());
        std::thread::spawn(move || {
            let (mut reads, mut bad) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read_to_string(&file) {
                    Ok(s) if values.contains(&s) => reads += 1,
                    Ok(s) => bad.push(format!("{} bytes starting {:?}", s.len(), s.get(..12))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (reads, bad)
        })
    };
    wait_for("the first value", LONG, log, || content_is(&file, &values[0]));
    put(&admin_env, "billing", &values[1]);
    wait_for("the second value", LONG, log, || content_is(&file, &values[1]));
    wait_for("the restarted command", LONG, log, || (lines(&tags) == ["a", "b"]).then_some(()));

    safe.kill9();
    std::thread::sleep(Duration::from_secs(2));
    assert!(sidecar.running() && run.running(), "{}", log());
    assert_eq!(read(&file).unwrap(), values[1], "the file keeps its content while the Safe is down");
    safe.start();
    safe.wait_ready();
    put(&admin_env, "billing", &values[2]);
    wait_for("convergence after the restart", LONG, log, || content_is(&file, &values[2]));
    put(&admin_env, "billing", &values[3]);
    wait_for("the next push", LONG, log, || content_is(&file, &values[3]));
    // The command is restarted for the latest value; an intermediate one may be skipped.
    wait_for("the command's convergence", LONG, log, || (lines(&tags).last()? == "d").then_some(()));
    let seen = lines(&tags);
    assert!(seen == ["a", "b", "c", "d"] || seen == ["a", "b", "d"], "{seen:?}");

    stop.store(true, Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert!(bad.is_empty(), "{} half-written or unreadable reads, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert!(reads > 100, "only {reads} reads");
    assert_eq!(names(dir.path()), vec!["secrets.json"], "no temporary file is left");
    assert!(sidecar_log(&logs).contains("cannot reach the Safe"), "the outage was noticed:\n{}", sidecar_log(&logs));
    assert!(sidecar.running() && run.running());
}
