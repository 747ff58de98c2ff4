//! A throw-away PostgreSQL cluster of a test's own: Debian's server, started by
//! `scripts/postgres.sh` in a temporary directory (installed by it when missing, else
//! the test fails saying so), with the role `aegis` and its password in a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::delivery::path_str;
use super::repo_root;

/// A PostgreSQL cluster of the test's own; stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A cluster that takes TLS connections only, with a certificate from a CA of its own ([`Postgres::ca_file`]).
    pub fn start_tls() -> Self {
        Self::start_with(&["--tls"])
    }

    fn start_with(options: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The server runs as `postgres`, which must be able to reach its directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = Command::new(repo_root().join("scripts/postgres.sh"))
            .args(["start"])
            .arg(dir.path().join("pg"))
            .args(options)
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

    /// The CA of a cluster started with [`Postgres::start_tls`].
    pub fn ca_file(&self) -> PathBuf {
        PathBuf::from(&self.env["AEGIS_TEST_POSTGRES_CA_FILE"])
    }

    pub fn script(&self, what: &str) {
        let out = Command::new(repo_root().join("scripts/postgres.sh"))
            .arg(what)
            .arg(self.dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh {what}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn url(&self, db: &str) -> String {
        let base = &self.env["AEGIS_TEST_POSTGRES_URL"];
        format!("{}/{db}", base.rsplit_once('/').unwrap().0)
    }

    pub fn password_file(&self) -> PathBuf {
        PathBuf::from(&self.env["AEGIS_TEST_POSTGRES_PASSWORD_FILE"])
    }

    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(Path::new(&self.env["AEGIS_TEST_POSTGRES_BIN"]).join(name));
        c.env("PGPASSWORD", std::fs::read_to_string(self.password_file()).unwrap().trim());
        c
    }

    pub fn create_db(&self, db: &str) {
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
    pub fn safe_flags(&self, db: &str) -> Vec<String> {
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
