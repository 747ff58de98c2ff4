//! The backend conformance suite run against PostgreSQL: a real server (see
//! `common`), one new database per check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use aegis_core::SecretName;
use aegis_store::conformance::Subject;
use aegis_store::Backend;
use common::Pg;

impl Subject for Pg {
    type Place = String;

    fn empty(&self) -> String {
        self.new_db("conformance")
    }

    fn open(&self, place: &String) -> Arc<dyn Backend> {
        self.shared_backend(place)
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
