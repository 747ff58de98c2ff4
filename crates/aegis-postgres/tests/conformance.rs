//! The backend conformance suite run against PostgreSQL: a real server, one
//! new database per check. `scripts/test.sh` starts the server
//! (`scripts/postgres.sh start`) and sets `AEGIS_TEST_POSTGRES_URL` and
//! `AEGIS_TEST_POSTGRES_PASSWORD_FILE`; without them these tests fail and say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use aegis_core::SecretName;
use aegis_postgres::{PgBackend, PgSettings};
use aegis_store::conformance::Subject;
use aegis_store::Backend;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need a PostgreSQL server. Run scripts/test.sh, or \
             `eval \"$(scripts/postgres.sh start /tmp/aegis-pg | sed 's/^/export /')\"` first"
        )
    })
}

/// A PostgreSQL server; each place is a database of its own.
struct Pg {
    url: String,
    password_file: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Pg {
    fn from_env() -> Self {
        Self { url: env("AEGIS_TEST_POSTGRES_URL"), password_file: env("AEGIS_TEST_POSTGRES_PASSWORD_FILE").into() }
    }

    fn url_of(&self, db: &str) -> String {
        let (base, _) = self.url.rsplit_once('/').unwrap();
        format!("{base}/{db}")
    }

    fn psql(&self, db: &str, sql: &str) {
        let password = std::fs::read_to_string(&self.password_file).unwrap();
        let out = Command::new("psql")
            .arg(self.url_of(db))
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .env("PGPASSWORD", password.trim())
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Subject for Pg {
    type Place = String;

    fn empty(&self) -> String {
        let db = format!("conformance_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        db
    }

    fn open(&self, place: &String) -> Arc<dyn Backend> {
        let mut s = PgSettings::new(self.url_of(place));
        s.password_file = Some(self.password_file.clone());
        Arc::new(PgBackend::open(&s).unwrap_or_else(|e| panic!("opening {place}: {e}")))
    }

    /// Flips the bits of one byte in the middle of the stored record.
    fn damage(&self, place: &String, name: &SecretName) {
        let n = name.as_str().replace('\'', "''");
        self.psql(
            place,
            &format!(
                "UPDATE aegis_records SET record = set_byte(record, length(record) / 2, \
                 get_byte(record, length(record) / 2) # 90) WHERE name = '{n}'"
            ),
        );
    }
}

aegis_store::backend_conformance!(Pg::from_env());
