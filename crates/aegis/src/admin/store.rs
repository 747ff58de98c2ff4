//! `aegis store copy`: copies the sealed records of one record store into
//! another (a data directory to PostgreSQL, or back), with the Safes stopped.
//!
//! Records are copied as they are sealed: no key is needed and no value is
//! ever decrypted, so the Safe that opens the target needs the same root key.
//! The target must hold no record (unless `--replace`). Every record is read
//! back from the target and compared byte for byte; the copy fails, naming
//! the first record that differs, if any does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_store::{Backend, DirBackend};
use clap::{Args, Subcommand};

use crate::exit::{CliError, CONFIG, CONFLICT, FAILURE};
use crate::output::{print_json, Output};

/// Records written to the target at once.
const CHUNK: usize = 1024;

/// `aegis store` arguments.
#[derive(Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    cmd: StoreCmd,
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Copy every sealed record from one store to another (Safes stopped), verified record by record.
    Copy(CopyArgs),
}

/// `aegis store copy` arguments.
#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The store to read: a data directory, or `postgres://…`.
    #[arg(long, value_name = "DIR|URL")]
    from: String,
    /// The store to write: a data directory, or `postgres://…`.
    #[arg(long, value_name = "DIR|URL")]
    to: String,
    /// The database password file, for whichever side is PostgreSQL.
    #[arg(long, env = "AEGIS_STORE_PASSWORD_FILE", value_name = "FILE")]
    store_password_file: Option<PathBuf>,
    /// PEM CAs of the database's certificate.
    #[arg(long, env = "AEGIS_STORE_CA_FILE", value_name = "FILE")]
    store_ca_file: Option<PathBuf>,
    /// Copy into a target that holds records (the records of the same names are replaced).
    #[arg(long)]
    replace: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Runs `aegis store …`.
pub async fn run(a: StoreArgs) -> Result<(), CliError> {
    match a.cmd {
        StoreCmd::Copy(c) => tokio::task::spawn_blocking(move || copy(&c))
            .await
            .map_err(|_| CliError::failure("the copying thread failed"))?,
    }
}

fn open(place: &str, a: &CopyArgs) -> Result<Arc<dyn Backend>, CliError> {
    if place.starts_with("postgres://") || place.starts_with("postgresql://") {
        let settings = aegis_postgres::PgSettings {
            url: place.to_owned(),
            password_file: a.store_password_file.clone(),
            ca_file: a.store_ca_file.clone(),
            pool_size: 2,
            timeout: Duration::from_secs(30),
        };
        let pg = aegis_postgres::PgBackend::open(&settings).map_err(|e| CliError::new(CONFIG, e.to_string()))?;
        Ok(Arc::new(pg))
    } else {
        let dir = DirBackend::open(std::path::Path::new(place)).map_err(|e| CliError::new(CONFIG, e.to_string()))?;
        Ok(Arc::new(dir))
    }
}

fn copy(a: &CopyArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let from = open(&a.from, a)?;
    let to = open(&a.to, a)?;
    let fail = |what: &str, e: aegis_store::StoreError| CliError::new(FAILURE, format!("{what}: {e}"));
    let source = from.list().map_err(|e| fail("cannot list the source", e))?;
    for u in &source.unnamed {
        eprintln!("store copy: skipped {} in the source: {}", u.locator, u.reason);
    }
    let held = to.list().map_err(|e| fail("cannot list the target", e))?.names.len();
    if held > 0 && !a.replace {
        return Err(CliError::new(
            CONFLICT,
            format!("the target already holds {held} records; copy into an empty store, or add --replace"),
        ));
    }
    let total = source.names.len();
    let mut copied = 0usize;
    let mut bytes = 0u64;
    for names in source.names.chunks(CHUNK) {
        let records = names
            .iter()
            .map(|n| from.read(n).map(|b| (n.clone(), b)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail("cannot read the source", e))?;
        for (i, r) in to.write_batch(&records).into_iter().enumerate() {
            r.map_err(|e| fail(&format!("cannot write '{}' to the target", records[i].0), e))?;
        }
        for (name, sealed) in &records {
            let back = to.read(name).map_err(|e| fail(&format!("cannot read '{name}' back from the target"), e))?;
            if &back != sealed {
                return Err(CliError::new(
                    FAILURE,
                    format!("'{name}' reads back from the target different from the source"),
                ));
            }
            bytes += sealed.len() as u64;
        }
        copied += records.len();
        if total > CHUNK {
            eprintln!("store copy: {copied} of {total} records, {} s", started.elapsed().as_secs());
        }
    }
    to.flush().map_err(|e| fail("cannot make the target durable", e))?;
    if a.output == Output::Json {
        return print_json(&serde_json::json!({
            "from": from.describe(), "to": to.describe(), "records": copied, "bytes": bytes,
            "skipped": source.unnamed.len(), "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    println!(
        "copied {copied} records ({bytes} bytes) from {} to {}, each read back and compared; {} skipped",
        from.describe(),
        to.describe(),
        source.unnamed.len()
    );
    Ok(())
}
