//! A real PostgreSQL server for the adapter's tests. `scripts/test.sh` starts
//! it (`scripts/postgres.sh start`) and sets `AEGIS_TEST_POSTGRES_URL` and
//! `AEGIS_TEST_POSTGRES_PASSWORD_FILE`; without them the tests fail and say so.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use aegis_postgres::{PgBackend, PgSettings};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need a PostgreSQL server. Run scripts/test.sh, or \
             `eval \"$(scripts/postgres.sh start /tmp/aegis-pg | sed 's/^/export /')\"` first"
        )
    })
}

/// A PostgreSQL server; each test place is a database of its own.
pub struct Pg {
    url: String,
    password_file: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Pg {
    pub fn from_env() -> Self {
        Self { url: env("AEGIS_TEST_POSTGRES_URL"), password_file: env("AEGIS_TEST_POSTGRES_PASSWORD_FILE").into() }
    }

    pub fn url_of(&self, db: &str) -> String {
        let (base, _) = self.url.rsplit_once('/').unwrap();
        format!("{base}/{db}")
    }

    pub fn psql(&self, db: &str, sql: &str) {
        let password = std::fs::read_to_string(&self.password_file).unwrap();
        let out = Command::new("psql")
            .arg(self.url_of(db))
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .env("PGPASSWORD", password.trim())
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A new, empty database named after `what`.
    pub fn new_db(&self, what: &str) -> String {
        let db = format!("{what}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        db
    }

    /// A backend over database `db`.
    pub fn backend(&self, db: &str) -> PgBackend {
        let mut s = PgSettings::new(self.url_of(db));
        s.password_file = Some(self.password_file.clone());
        PgBackend::open(&s).unwrap_or_else(|e| panic!("opening {db}: {e}"))
    }

    /// [`Pg::backend`], shared.
    pub fn shared_backend(&self, db: &str) -> Arc<PgBackend> {
        Arc::new(self.backend(db))
    }
}
