//! VMware Secrets Manager's own clients against the Aegis Safe (issue 4, item 5).
//!
//! The workload side is VSecM's Go SDK (`github.com/spiffe/vsecm-sdk-go` v0.5.1,
//! built into `tools/vsecm-client` by `scripts/build-vsecm-client.sh`): `fetch` is
//! `sentry.Fetch()`, `watch` is `sentry.Watch()` (VSecM's sidecar) and `startup` is
//! `startup.Watch()` (VSecM's init container). The Sentinel is Aegis's `safe`, driven
//! with VSecM's flags. Every process, the Safe included, gets its identity from a real
//! SPIRE agent (`scripts/spire.sh`, unix attestor by uid), and the clients are
//! configured only with VSecM's variables (`VSECM_SAFE_ENDPOINT_URL`,
//! `SPIFFE_ENDPOINT_SOCKET`; the SPIFFE ID rules are VSecM's defaults).
//!
//! The scenarios replay VSecM's acceptance tests. These tests never skip: without
//! SPIRE, without the Go client or without root they fail and say why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::spire as harness;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{stderr, stdout};
use harness::*;

/// Uid of the workload `example` (VSecM's demo workload) running the Go SDK.
const EXAMPLE_UID: u32 = 41021;
/// Uid of another workload, `other`, also running the Go SDK.
const OTHER_UID: u32 = 41022;

/// What `vsecm-client fetch` exits with when `sentry.Fetch()` returns
/// `sentry.ErrSecretNotFound` (the Safe answered 404).
const NO_SECRET_EXIT: i32 = 3;
const NO_SECRET_MARKER: &str = "vsecm-client: no secret";

const CREDS: &str = r#"{"username": "admin", "password": "VSecMRocks!"}"#;
const TEMPLATE: &str = r#"{"USR":"{{.username}}", "PWD":"{{.password}}"}"#;

/// The Go client built from VSecM's SDK: `AEGIS_VSECM_CLIENT` if set, else what
/// `scripts/build-vsecm-client.sh` builds (once, into the cache; instant when
/// cached). Panics when there is none: these tests never skip.
fn vsecm_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = env_or_build(
            "AEGIS_VSECM_CLIENT",
            "scripts/build-vsecm-client.sh",
            "the VSecM Go client is missing; these tests need it: run scripts/build-vsecm-client.sh \
             (needs Go >= 1.23 and the Go module proxy) or set AEGIS_VSECM_CLIENT to a built tools/vsecm-client binary",
        );
        assert!(
            bin.is_file(),
            "the VSecM Go client {} does not exist (run scripts/build-vsecm-client.sh or fix AEGIS_VSECM_CLIENT)",
            bin.display()
        );
        let out = Command::new(&bin).arg("version").stdin(Stdio::null()).output().unwrap();
        assert_eq!(
            stdout(&out).trim(),
            "github.com/spiffe/vsecm-sdk-go v0.5.1",
            "{} must be built from VSecM's SDK v0.5.1 (stderr: {})",
            bin.display(),
            stderr(&out)
        );
        bin
    })
}

/// A SPIRE deployment, the Aegis Safe on it, and VSecM-configured clients.
/// Field order is drop order: the Safe stops before SPIRE.
struct World {
    safe: UidSafe,
    spire: Spire,
    /// VSecM's client environment: the Safe's URL and the agent's socket, nothing else.
    env: HashMap<String, String>,
}

impl World {
    /// Starts SPIRE, registers the Safe, the Sentinel and `workloads` (name, uid) by
    /// uid, waits for their SVIDs and starts the Safe as its SPIRE identity.
    fn start(label: &str, workloads: &[(&str, u32)]) -> Self {
        let client = vsecm_client();
        let spire = Spire::start(label, &[]);
        let staged = spire.bin("vsecm-client");
        if fs::hard_link(client, &staged).is_err() {
            fs::copy(client, &staged).unwrap_or_else(|e| panic!("cannot copy {}: {e}", client.display()));
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();

        spire.register("safe", "", SAFE_UID, &[]);
        spire.register("sentinel", "", SENTINEL_UID, &[]);
        for (name, uid) in workloads {
            spire.register("workload", name, *uid, &[]);
        }
        spire.wait_svid(SAFE_UID, &spiffe_id("safe", ""));
        spire.wait_svid(SENTINEL_UID, &spiffe_id("sentinel", ""));
        for (name, uid) in workloads {
            spire.wait_svid(*uid, &spiffe_id("workload", name));
        }
        let safe = UidSafe::start(&spire, SAFE_UID);
        let env = HashMap::from([
            ("SPIFFE_ENDPOINT_SOCKET".to_owned(), spire.socket()),
            // VSecM's default has a trailing slash; the SDK joins paths onto it.
            ("VSECM_SAFE_ENDPOINT_URL".to_owned(), format!("{}/", safe.url)),
        ]);
        Self { safe, spire, env }
    }

    /// `safe ARGS` as the Sentinel; must succeed. Returns stdout, trimmed.
    fn sentinel(&self, args: &[&str]) -> String {
        let out = self.spire.run_as(SENTINEL_UID, "safe", &self.env, args);
        assert!(
            out.status.success(),
            "safe {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out).trim().to_owned()
    }

    /// `safe ARGS` as the Sentinel; must answer VSecM's `OK`.
    fn sentinel_ok(&self, args: &[&str]) {
        assert_eq!(self.sentinel(args), "OK", "safe {args:?}");
    }

    /// `vsecm-client ARGS` as `uid` with VSecM's environment plus `extra`.
    fn go(&self, uid: u32, extra: &[(&str, &str)], args: &[&str]) -> Output {
        self.go_command(uid, extra, args).output().unwrap()
    }

    fn go_command(&self, uid: u32, extra: &[(&str, &str)], args: &[&str]) -> Command {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self.spire.command_as(uid, "vsecm-client", &env, args)
    }

    /// `sentry.Fetch()` as `uid` must return exactly `want`.
    #[track_caller]
    fn expect_secret(&self, uid: u32, want: &str, what: &str) {
        let out = self.go(uid, &[], &["fetch"]);
        assert!(out.status.success(), "{what}: sentry.Fetch() as uid {uid} failed ({}): {}", out.status, stderr(&out));
        assert_eq!(stdout(&out), want, "{what}: what the workload (uid {uid}) got from sentry.Fetch()");
    }

    /// `sentry.Fetch()` as `uid` must return `sentry.ErrSecretNotFound`.
    #[track_caller]
    fn expect_no_secret(&self, uid: u32, what: &str) {
        let out = self.go(uid, &[], &["fetch"]);
        assert_eq!(
            out.status.code(),
            Some(NO_SECRET_EXIT),
            "{what}: sentry.Fetch() as uid {uid} should report no secret:\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        );
        assert!(stderr(&out).contains(NO_SECRET_MARKER), "{what}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{what}: no data expected: {}", stdout(&out));
    }
}

/// A background Go client (sidecar or init container), killed when dropped.
struct Bg {
    child: Option<Child>,
    log: PathBuf,
    what: &'static str,
}

impl Bg {
    fn spawn(world: &World, uid: u32, what: &'static str, extra: &[(&str, &str)], args: &[&str]) -> Self {
        let log = world.spire.dir.path().join(format!("{what}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = world
            .go_command(uid, extra, args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self { child: Some(child), log, what }
    }

    /// The exit code, if the process has exited.
    fn exited(&mut self) -> Option<Option<i32>> {
        self.child.as_mut().unwrap().try_wait().unwrap().map(|s| s.code())
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log {}\n{}", self.what, self.log.display(), self.log_text());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `path` holds exactly `want` (the sidecar rewrites it every poll).
#[track_caller]
fn wait_file(path: &Path, want: &str, limit: Duration, bg: &mut Bg) -> Duration {
    let t = Instant::now();
    loop {
        let got = fs::read_to_string(path).ok();
        if got.as_deref() == Some(want) {
            return t.elapsed();
        }
        assert!(bg.exited().is_none(), "the sidecar exited: {:?}\n{}", bg.exited(), bg.log_text());
        assert!(t.elapsed() < limit, "{} should hold {want:?} within {limit:?}, holds {got:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// VSecM's acceptance scenarios with `sentry.Fetch()`: register, read, delete,
/// templates and formats, encrypted values, and isolation between workloads.
#[test]
fn vsecm_sdk_fetch_replays_vsecms_acceptance_scenarios() {
    let w = World::start("vsecm-fetch", &[("example", EXAMPLE_UID), ("other", OTHER_UID)]);

    // Nothing registered yet: the SDK's ErrSecretNotFound (the Safe answers 404).
    w.expect_no_secret(EXAMPLE_UID, "before registration");

    // Register and read back.
    w.sentinel_ok(&["-w", "example", "-s", "VSecMRocks"]);
    w.expect_secret(EXAMPLE_UID, "VSecMRocks", "safe -w example -s VSecMRocks");

    // The whole response as the SDK decodes it: created/updated are strings that
    // themselves hold a quoted RFC3339 time.
    let out = w.go(EXAMPLE_UID, &[], &["fetch", "-json"]);
    assert!(out.status.success(), "fetch -json: {}", stderr(&out));
    let resp: HashMap<String, String> = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(resp["data"], "VSecMRocks");
    for k in ["created", "updated"] {
        let v = &resp[k];
        let inner = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
        let inner = inner.unwrap_or_else(|| panic!("{k} should be a quoted time, is {v:?}"));
        time::OffsetDateTime::parse(inner, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{k} {v:?} is not a quoted RFC3339 time: {e}"));
    }

    // A workload reads only its own secret.
    w.expect_no_secret(OTHER_UID, "another workload, nothing registered for it");

    // Delete: the workload sees no secret any more.
    w.sentinel_ok(&["-d", "-w", "example"]);
    w.expect_no_secret(EXAMPLE_UID, "after safe -d -w example");

    // Templates and formats: VSecM's documented outputs, as the SDK delivers them.
    let root = r#"{"username": "*root*", "password": "*CasHC0w*"}"#;
    let root_template = r#"{"USERNAME":"{{.username}}", "PASSWORD":"{{.password}}"}"#;
    let not_json = r#"username=admin password={{.password}"#;
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        (CREDS, None, "json", CREDS),
        (CREDS, None, "yaml", "password: VSecMRocks!\nusername: admin\n"),
        (CREDS, Some(TEMPLATE), "json", r#"{"USR":"admin", "PWD":"VSecMRocks!"}"#),
        (CREDS, Some(TEMPLATE), "yaml", "PWD: VSecMRocks!\nUSR: admin\n"),
        (root, Some(root_template), "yaml", "PASSWORD: '*CasHC0w*'\nUSERNAME: '*root*'\n"),
        // A key the value lacks reads `<no value>`, as VSecM delivers it.
        (CREDS, Some(r#"{"USER":"{{.user}}"}"#), "json", r#"{"USER":"<no value>"}"#),
        (not_json, Some(TEMPLATE), "json", not_json),
        (not_json, Some(TEMPLATE), "yaml", not_json),
    ];
    for (value, template, format, want) in cases {
        let mut args = vec!["-w", "example", "-s", value];
        if let Some(t) = template {
            args.extend(["-t", t]);
        }
        args.extend(["-f", format]);
        w.sentinel_ok(&args);
        w.expect_secret(EXAMPLE_UID, want, &format!("safe {args:?}"));
    }

    // Encrypted values: `safe -s … -e` (no workload) encrypts for storing in git;
    // registering that ciphertext with `-e` stores the plaintext.
    let secret = "VSecMRocks!-encrypted";
    let cipher = w.sentinel(&["-s", secret, "-e"]);
    assert!(!cipher.is_empty() && !cipher.contains(secret), "safe -s … -e should print a ciphertext: {cipher:?}");
    w.sentinel_ok(&["-w", "example", "-s", &cipher, "-e"]);
    w.expect_secret(EXAMPLE_UID, secret, "an encrypted value registered with -e");
    // An encrypted JSON value goes through the template like any other.
    let cipher = w.sentinel(&["-s", CREDS, "-e"]);
    w.sentinel_ok(&["-w", "example", "-s", &cipher, "-e", "-t", TEMPLATE, "-f", "yaml"]);
    w.expect_secret(EXAMPLE_UID, "PWD: VSecMRocks!\nUSR: admin\n", "an encrypted JSON value with a template");

    // Still isolated, and `other` gets its own once it has one.
    w.expect_no_secret(OTHER_UID, "another workload, after example's writes");
    w.sentinel_ok(&["-w", "other", "-s", "other-value"]);
    w.expect_secret(OTHER_UID, "other-value", "other's own secret");
    w.expect_secret(EXAMPLE_UID, "PWD: VSecMRocks!\nUSR: admin\n", "example unchanged by other's write");

    // The SDK checks the server's SPIFFE ID: with a Safe rule that the Aegis Safe's
    // SPIRE identity does not match, it refuses to talk to it.
    let out =
        w.go(EXAMPLE_UID, &[("VSECM_SPIFFEID_PREFIX_SAFE", "spiffe://vsecm.com/workload/not-the-safe/")], &["fetch"]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains(&spiffe_id("safe", "")), "the SDK names the Safe's ID: {}", stderr(&out));

    // And the Safe saw the workloads as SPIRE named them.
    let log = w.safe.log_text();
    assert!(log.contains(&spiffe_id("safe", "")), "the Safe runs as its SPIRE identity:\n{log}");
}

/// VSecM's sidecar (`sentry.Watch()`): writes the secret to
/// `VSECM_SIDECAR_SECRETS_PATH` every poll, follows updates, empties the file
/// when the secret is deleted, and keeps running throughout.
#[test]
fn vsecm_sidecar_writes_the_secret_file_and_follows_updates() {
    let w = World::start("vsecm-sidecar", &[("example", EXAMPLE_UID)]);
    let dir = w.spire.dir_for("example-sidecar", EXAMPLE_UID);
    let path = dir.join("secrets.json");
    let path_s = path.to_str().unwrap().to_owned();
    let mut sidecar = Bg::spawn(
        &w,
        EXAMPLE_UID,
        "sidecar",
        &[("VSECM_SIDECAR_SECRETS_PATH", &path_s), ("VSECM_SIDECAR_POLL_INTERVAL", "500")],
        &["watch"],
    );
    let limit = Duration::from_secs(20);

    // No secret yet: the sidecar writes an empty file.
    wait_file(&path, "", limit, &mut sidecar);

    w.sentinel_ok(&["-w", "example", "-s", "first"]);
    let took = wait_file(&path, "first", limit, &mut sidecar);
    eprintln!("sidecar wrote the new secret after {:.1}s", took.as_secs_f64());

    // An update (with a template and YAML) replaces the file's content.
    w.sentinel_ok(&["-w", "example", "-s", CREDS, "-t", TEMPLATE, "-f", "yaml"]);
    wait_file(&path, "PWD: VSecMRocks!\nUSR: admin\n", limit, &mut sidecar);
    w.sentinel_ok(&["-w", "example", "-s", CREDS]);
    wait_file(&path, CREDS, limit, &mut sidecar);

    // Deleted: VSecM's sidecar empties the file.
    w.sentinel_ok(&["-d", "-w", "example"]);
    wait_file(&path, "", limit, &mut sidecar);

    // And picks up a new registration after the deletion.
    w.sentinel_ok(&["-w", "example", "-s", "second"]);
    wait_file(&path, "second", limit, &mut sidecar);
    assert!(sidecar.exited().is_none(), "the sidecar must keep running:\n{}", sidecar.log_text());
}

/// VSecM's init container (`startup.Watch()`): keeps the pod waiting until the
/// workload's secret is registered, ignores other workloads' secrets, and exits 0
/// after `VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT`.
#[test]
fn vsecm_init_container_exits_only_after_registration() {
    let w = World::start("vsecm-init", &[("example", EXAMPLE_UID), ("other", OTHER_UID)]);
    let wait_before_exit = Duration::from_millis(1000);
    let mut init = Bg::spawn(
        &w,
        EXAMPLE_UID,
        "init-container",
        &[
            ("VSECM_INIT_CONTAINER_POLL_INTERVAL", "300"),
            ("VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT", &wait_before_exit.as_millis().to_string()),
        ],
        &["startup"],
    );

    // Several polls with nothing registered: still waiting.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(init.exited(), None, "the init container exited before any registration:\n{}", init.log_text());

    // Another workload's secret does not release it.
    w.sentinel_ok(&["-w", "other", "-s", "not-for-example"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(init.exited(), None, "another workload's secret released the init container:\n{}", init.log_text());

    // Its own secret does, after the configured wait.
    let registered = Instant::now();
    w.sentinel_ok(&["-w", "example", "-s", "ready"]);
    let code = loop {
        if let Some(code) = init.exited() {
            break code;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(30),
            "the init container did not exit within 30s of the registration:\n{}",
            init.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = registered.elapsed();
    eprintln!("init container exited {:.1}s after the registration", took.as_secs_f64());
    assert_eq!(code, Some(0), "startup.Watch() exits 0 once the secret exists:\n{}", init.log_text());
    assert!(
        took >= wait_before_exit,
        "it must wait VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT ({wait_before_exit:?}) first, exited after {took:?}"
    );
    w.expect_secret(EXAMPLE_UID, "ready", "the secret the init container waited for");
}
