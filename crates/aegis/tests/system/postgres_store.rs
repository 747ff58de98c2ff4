//! The Safe on PostgreSQL: a real server (Debian's, started by
//! `scripts/postgres.sh` in a directory of each test's own), the real `aegis`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;
use serde_json::Value;

use crate::common::delivery::path_str;
use crate::common::*;

/// A PostgreSQL cluster of the test's own; stopped when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Postgres {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The server runs as `postgres`, which must be able to reach its directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = Command::new(repo_root().join("scripts/postgres.sh"))
            .args(["start"])
            .arg(dir.path().join("pg"))
            .output()
            .expect("run scripts/postgres.sh");
        assert!(out.status.success(), "scripts/postgres.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { dir, env }
    }

    fn script(&self, what: &str) {
        let out = Command::new(repo_root().join("scripts/postgres.sh"))
            .arg(what)
            .arg(self.dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh {what}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn url(&self, db: &str) -> String {
        let base = &self.env["AEGIS_TEST_POSTGRES_URL"];
        format!("{}/{db}", base.rsplit_once('/').unwrap().0)
    }

    fn password_file(&self) -> PathBuf {
        PathBuf::from(&self.env["AEGIS_TEST_POSTGRES_PASSWORD_FILE"])
    }

    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(Path::new(&self.env["AEGIS_TEST_POSTGRES_BIN"]).join(name));
        c.env("PGPASSWORD", std::fs::read_to_string(self.password_file()).unwrap().trim());
        c
    }

    fn create_db(&self, db: &str) {
        let out = self
            .tool("psql")
            .arg(self.url("postgres"))
            .args(["-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("CREATE DATABASE {db}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The dev Safe's flags for database `db`.
    fn safe_flags(&self, db: &str) -> Vec<String> {
        vec![
            "--store-url".into(),
            self.url(db),
            "--store-password-file".into(),
            path_str(&self.password_file()).to_owned(),
            "--store-timeout-ms".into(),
            "1500".into(),
        ]
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ =
            Command::new(repo_root().join("scripts/postgres.sh")).arg("stop").arg(self.dir.path().join("pg")).output();
    }
}

fn flags(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_live_in_postgresql_sealed_survive_a_restart_and_a_dump_holds_no_value() {
    let pg = Postgres::start();
    pg.create_db("safe_a");
    let f = pg.safe_flags("safe_a");
    let mut safe = Safe::dev_with(&flags(&f), None);
    let admin = safe.admin_env();
    let client = safe.client(&admin).await;
    let values: Vec<(String, String)> =
        (0..40).map(|i| (format!("pg-{i:02}"), format!("PLAINTEXT-MARKER-{i:02}-{}", "z".repeat(50)))).collect();
    for (n, v) in &values {
        client.put(n, &PutSecret::new(SecretValue::new(v.clone()))).await.unwrap();
    }
    client.put("pg-03", &PutSecret::new(SecretValue::new("PLAINTEXT-MARKER-second"))).await.unwrap();
    assert!(safe.log_text().contains("records in PostgreSQL"), "{}", safe.log_text());
    // No record file in the data directory: the records are in the database.
    assert!(!files_under(&safe.data_dir().join("data")).iter().any(|p| p.extension().is_some_and(|e| e == "rec")));

    safe.restart();
    safe.wait_ready();
    let client = safe.client(&admin).await;
    for (n, v) in values.iter().filter(|(n, _)| n != "pg-03") {
        assert_eq!(client.get(n, None).await.unwrap().value.expose(), v.as_str(), "{n}");
    }
    assert_eq!(client.history("pg-03").await.unwrap().versions.len(), 2);

    // pg_dump of the database: sealed records only, not one value.
    let out = pg.tool("pg_dump").arg(pg.url("safe_a")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("aegis_records") && dump.len() > 10_000, "a dump of {} bytes", dump.len());
    assert!(!dump.contains("PLAINTEXT-MARKER"), "the dump holds a value");
    assert!(!dump.contains("zzzzzzzzzz"), "the dump holds a value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_safe_s_backup_restores_into_a_postgresql_safe() {
    let dir_safe = Safe::dev();
    let admin = dir_safe.admin_env();
    for i in 0..50 {
        ok(dir_safe.aegis(&admin, &["put", &format!("b{i}"), "--value", &format!("value-{i}")]));
    }
    let work = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let id_file = work.path().join("id.txt");
    std::fs::write(&id_file, age::secrecy::ExposeSecret::expose_secret(&id.to_string())).unwrap();
    let file = work.path().join("dir.backup");
    ok(dir_safe.aegis(&admin, &["backup", "--out", path_str(&file), "--recipient", &id.to_public().to_string()]));

    let pg = Postgres::start();
    pg.create_db("restored");
    let f = pg.safe_flags("restored");
    let mut safe = Safe::dev_with(&flags(&f), None);
    let pg_admin = safe.admin_env();
    let done: Value =
        serde_json::from_str(&ok(safe
            .aegis(&pg_admin, &["restore", "--in", path_str(&file), "--identity", path_str(&id_file), "-o", "json"])))
        .unwrap();
    assert_eq!(done["restored"], 50);
    safe.restart();
    safe.wait_ready();
    for i in [0, 17, 49] {
        assert_eq!(ok(safe.aegis(&pg_admin, &["get", &format!("b{i}")])).trim(), format!("value-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_down_writes_fail_fast_with_503_reads_go_on_and_it_recovers_alone() {
    let pg = Postgres::start();
    pg.create_db("outage");
    let f = pg.safe_flags("outage");
    let safe = Safe::dev_with(&flags(&f), None);
    let admin = safe.admin_env();
    let client = safe.client(&admin).await;
    client.put("before", &PutSecret::new(SecretValue::new("kept"))).await.unwrap();

    pg.script("kill");
    let started = Instant::now();
    let err = client.put("during", &PutSecret::new(SecretValue::new("lost"))).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(err.to_string().contains("unavailable") && err.to_string().contains("nothing was changed"), "{err}");
    assert!(took < Duration::from_secs(5), "a write with the database down took {took:?}");
    // Reads are served from memory meanwhile.
    assert_eq!(client.get("before", None).await.unwrap().value.expose(), "kept");
    assert!(client.get("during", None).await.is_err(), "a refused write must not be visible");

    pg.script("resume");
    // The pool reconnects by itself: no restart of the Safe.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.put("after", &PutSecret::new(SecretValue::new("back"))).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.status(), Some(503), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the Safe did not recover after PostgreSQL came back: {e}"),
        }
    }
    assert_eq!(client.get("after", None).await.unwrap().value.expose(), "back");
}
