//! Versioned schema migrations, run at start-up under an advisory lock so
//! that replicas starting together apply each exactly once.

use deadpool_postgres::Pool;

/// The advisory lock key of Aegis's migrations ("aegismig" as a number).
const LOCK: i64 = 0x6165_6769_736d_6967;

/// Each migration, in order; its version is its position plus one. Never edit
/// one that shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: sealed records by name, the change sequence, and records set aside.
    "CREATE SEQUENCE aegis_change_seq;
     CREATE TABLE aegis_records (
         name TEXT PRIMARY KEY,
         record BYTEA NOT NULL,
         seq BIGINT NOT NULL,
         updated_at TIMESTAMPTZ NOT NULL
     );
     CREATE INDEX aegis_records_seq ON aegis_records (seq);
     CREATE TABLE aegis_quarantine (
         id BIGSERIAL PRIMARY KEY,
         name TEXT NOT NULL,
         record BYTEA NOT NULL,
         reason TEXT NOT NULL,
         set_aside_at TIMESTAMPTZ NOT NULL DEFAULT now()
     );",
    // 2: each record's revision (from its clear header), for the check of a write
    // against what another Safe may have written since.
    "ALTER TABLE aegis_records ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;",
    // 3: the root key id every Safe seals under (one row), replaced by a rotation
    // before any record is re-sealed; a commit of a record sealed under another key is refused.
    // Also the settings every Safe must agree on (the instance name of the Kubernetes copies).
    "CREATE TABLE aegis_sealing_key (
         only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
         key_id BYTEA NOT NULL,
         set_at TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     CREATE TABLE aegis_settings (
         name TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );",
];

/// Brings the schema up to date; the error says what failed.
pub(crate) async fn run(pool: &Pool) -> Result<(), String> {
    let mut client = pool.get().await.map_err(|e| format!("cannot connect: {}", crate::pool_error_text(&e)))?;
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK]).await.map_err(|e| format!("advisory lock: {e}"))?;
    let result = apply(&mut client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK]).await;
    result?;
    unlocked.map(|_| ()).map_err(|e| format!("advisory unlock: {e}"))
}

async fn apply(client: &mut deadpool_postgres::Client) -> Result<(), String> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS aegis_schema (version INT NOT NULL)")
        .await
        .map_err(|e| format!("cannot create the schema version table: {e}"))?;
    let row = client.query_opt("SELECT max(version) FROM aegis_schema", &[]).await.map_err(|e| e.to_string())?;
    let current = row.and_then(|r| r.get::<_, Option<i32>>(0)).unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(format!(
            "the database's schema is at version {current}, newer than this build knows ({known}): \
             run the Aegis release that migrated it, or a later one"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        tx.batch_execute(sql).await.map_err(|e| format!("migration {version}: {e}"))?;
        tx.execute("INSERT INTO aegis_schema (version) VALUES ($1)", &[&version])
            .await
            .map_err(|e| format!("migration {version}: {e}"))?;
        tx.commit().await.map_err(|e| format!("migration {version}: {e}"))?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}
