//! `aegis import vsecm`: brings a VSecM 0.28 Safe's secrets into Aegis, from either
//! of its backing stores: the data directory (`VSECM_SAFE_BACKING_STORE=file`, one
//! `<name>.age` file per secret) or PostgreSQL (`=postgres`, one row `(name, data)`
//! per secret in the table `"vsecm-secrets"`, `data` the same age file in base64).
//!
//! Two phases. First, locally and before anything is sent: every record is read
//! (within the size and count caps), decrypted with VSecM's root key and parsed,
//! the same way whichever store it comes from; a record that fails is reported by
//! name with the reason and left out. If not one record decrypts because none was
//! encrypted to the key, the key is wrong and nothing is imported. Second, against the Safe, as the
//! Sentinel: each secret is compared with Aegis's current version (value,
//! namespaces, template, format, validity window) and, unless `--dry-run`,
//! written as a new version through `PUT /v1/secrets/{name}` with VSecM's
//! `created`/`updated` times, so versions, push delivery and durability apply as
//! for any write. Unchanged secrets are not written again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aegis_core::api::{PutSecret, SecretRead};
use aegis_core::timefmt::{never, rfc3339};
use aegis_core::transform::Format;
use aegis_core::vsecm_record::{rfc3339_nanos, VsecmRecord};
use aegis_core::SecretName;
use aegis_crypto::{CryptoError, RootKey};
use aegis_postgres::tokio_postgres::error::SqlState;
use aegis_postgres::{PgError, PgSettings};
use aegis_sdk::{Client, ClientError};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::Serialize;

use crate::connect::client;
use crate::exit::{CliError, CONFIG, FAILURE, UNREACHABLE};
use crate::output::{print_json, printable, Output};

/// Default cap on one record, an `.age` file or a row's decoded data (VSecM values are
/// small; Aegis's own request cap is of this order).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Default cap on the number of records (`.age` files or rows).
pub const DEFAULT_MAX_SECRETS: usize = 10_000;
/// The table VSecM's Safe keeps its secrets in (`VSECM_SAFE_BACKING_STORE=postgres`).
pub const DEFAULT_POSTGRES_TABLE: &str = "vsecm-secrets";
/// Longest time the read of VSecM's table may take.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Secrets compared and written at the same time.
const IN_FLIGHT: usize = 16;
/// Cap on a root key file (the key is three short lines).
const MAX_ROOT_KEY_FILE_BYTES: u64 = 4096;

/// `aegis import` arguments.
#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    cmd: ImportCmd,
}

#[derive(Subcommand, Debug)]
enum ImportCmd {
    /// Import a VSecM (0.28) Safe's secrets: its data directory (`<name>.age` files) or its PostgreSQL table.
    Vsecm(VsecmArgs),
}

/// `aegis import vsecm` arguments.
#[derive(Args, Debug)]
pub struct VsecmArgs {
    /// VSecM's data directory (its VSECM_SAFE_DATA_PATH, `/var/local/vsecm/data` in VSecM's chart),
    /// when VSecM ran with VSECM_SAFE_BACKING_STORE=file. Give this or --postgres-url.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// VSecM's PostgreSQL database (the `dataSourceName` of its `vsecm-safe` secret), when VSecM ran
    /// with VSECM_SAFE_BACKING_STORE=postgres: postgres://user@host:5432/db (the password in
    /// --postgres-password-file). Only read. Give this or --data-dir.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// A file holding the database password for --postgres-url.
    #[arg(long, value_name = "FILE", requires = "postgres_url")]
    postgres_password_file: Option<PathBuf>,
    /// PEM CA certificates that sign the database's certificate (TLS), for --postgres-url.
    #[arg(long, value_name = "FILE", requires = "postgres_url")]
    postgres_ca_file: Option<PathBuf>,
    /// The table VSecM's Safe wrote its rows (name, data) to.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_POSTGRES_TABLE, requires = "postgres_url")]
    postgres_table: String,
    /// VSecM's root key: a file holding its three lines (the `KEY_TXT` of the `vsecm-root-key` Secret).
    #[arg(long, value_name = "FILE", conflicts_with = "root_key_secret")]
    root_key_file: Option<PathBuf>,
    /// VSecM's root key from this Kubernetes Secret (its `KEY_TXT`; VSecM names it `vsecm-root-key`).
    /// Read only: the import never writes to Kubernetes.
    #[arg(long, value_name = "NAME")]
    root_key_secret: Option<String>,
    /// Namespace of --root-key-secret.
    #[arg(long, value_name = "NAMESPACE", default_value = aegis_kube::rootkey::DEFAULT_NAMESPACE)]
    root_key_namespace: String,
    /// Kubeconfig for --root-key-secret (else in-cluster settings).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE", value_parser = crate::values::path_or_empty())]
    kubeconfig: Option<PathBuf>,
    /// Only list what would change (new / changed / unchanged per secret); write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Largest record read (an `.age` file, or a row's data once base64-decoded); a larger one is reported and skipped.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Most records (`.age` files or rows) accepted; more refuses the whole import.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SECRETS)]
    max_secrets: usize,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Output,
}

/// Where VSecM's root key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A file holding the three lines.
    File(PathBuf),
    /// A Kubernetes Secret (read only).
    Kubernetes(aegis_kube::SecretStoreSettings),
}

/// Loads VSecM's root key from `source`. Errors name the source, never the key.
pub async fn load_root_key(source: &KeySource) -> Result<Arc<RootKey>, CliError> {
    match source {
        KeySource::Kubernetes(settings) => {
            let store = aegis_kube::SecretStore::new(settings.clone()).map_err(|e| CliError::new(CONFIG, e))?;
            store.read_existing().await.map_err(|e| CliError::new(CONFIG, e.to_string()))
        }
        KeySource::File(path) => {
            let text = read_capped(path, MAX_ROOT_KEY_FILE_BYTES).map_err(|why| {
                CliError::new(CONFIG, format!("cannot read the root key file {}: {why}", path.display()))
            })?;
            let text = zeroize::Zeroizing::new(String::from_utf8(text.to_vec()).map_err(|_| {
                CliError::new(CONFIG, format!("the root key file {} is not UTF-8 text", path.display()))
            })?);
            RootKey::parse(&text).map(Arc::new).map_err(|e| {
                CliError::new(
                    CONFIG,
                    format!("{e} (in {}); give the file VSecM's Safe used (its KEY_TXT)", path.display()),
                )
            })
        }
    }
}

fn key_source(a: &VsecmArgs) -> Result<KeySource, CliError> {
    match (&a.root_key_file, &a.root_key_secret) {
        (Some(p), _) => Ok(KeySource::File(p.clone())),
        (None, Some(name)) => Ok(KeySource::Kubernetes(aegis_kube::SecretStoreSettings {
            namespace: a.root_key_namespace.clone(),
            name: name.clone(),
            kubeconfig: a.kubeconfig.clone().filter(|p| !p.as_os_str().is_empty()),
            ..aegis_kube::SecretStoreSettings::vsecm_defaults()
        })),
        (None, None) => Err(CliError::new(
            CONFIG,
            "give VSecM's root key with --root-key-file FILE (its three lines) or --root-key-secret NAME \
             (the Kubernetes Secret holding it, e.g. vsecm-root-key)",
        )),
    }
}

/// Reads a file of at most `cap` bytes (checked before and while reading).
fn read_capped(path: &Path, cap: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len > cap {
        return Err(format!("it is {len} bytes, over the limit of {cap} (raise --max-file-bytes if it is genuine)"));
    }
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(len as usize));
    f.take(cap + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > cap {
        return Err(format!("it grew over the limit of {cap} bytes while being read"));
    }
    Ok(buf)
}

/// Runs `aegis import`.
pub async fn run(a: ImportArgs) -> Result<(), CliError> {
    match a.cmd {
        ImportCmd::Vsecm(v) => vsecm(v).await,
    }
}

/// The `.age` files of a VSecM data directory, by secret name (backups and other files left out).
fn age_files(dir: &Path, max: usize) -> Result<Vec<(String, PathBuf)>, CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::new(CONFIG, format!("cannot read the VSecM data directory {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError::new(FAILURE, format!("cannot list {}: {e}", dir.display())))?;
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else { continue };
        // VSecM keeps `<name>-<n>-.age.backup` copies next to each record: not records.
        let Some(name) = file.strip_suffix(".age") else { continue };
        if name.is_empty() || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        files.push((name.to_owned(), entry.path()));
        if files.len() > max {
            return Err(CliError::new(
                FAILURE,
                format!("{} holds more than {max} .age files; raise --max-secrets to import them all", dir.display()),
            ));
        }
    }
    files.sort();
    Ok(files)
}

/// Where VSecM's records are read from.
#[derive(Debug)]
enum Source {
    /// Its data directory: `<name>.age` files.
    Dir(PathBuf),
    /// Its PostgreSQL table: rows `(name, data)`, `data` an age file in base64.
    Table {
        /// How to reach the database.
        settings: PgSettings,
        /// The table's name (one identifier, quoted when used).
        table: String,
    },
}

impl Source {
    /// What one record is called in messages, by the name it is stored under.
    fn record(&self, name: &str) -> String {
        match self {
            Source::Dir(_) => format!("the file is named {name}.age"),
            Source::Table { .. } => format!("the row is named {name}"),
        }
    }
}

fn source(a: &VsecmArgs) -> Result<Source, CliError> {
    match (&a.data_dir, &a.postgres_url) {
        (Some(dir), None) => Ok(Source::Dir(dir.clone())),
        (None, Some(url)) => {
            let mut settings = PgSettings::new(url.clone());
            settings.password_file.clone_from(&a.postgres_password_file);
            settings.ca_file.clone_from(&a.postgres_ca_file);
            if a.postgres_table.is_empty() {
                return Err(CliError::new(
                    CONFIG,
                    "--postgres-table is empty: give the table's name (VSecM's is vsecm-secrets)",
                ));
            }
            Ok(Source::Table { settings, table: a.postgres_table.clone() })
        }
        (Some(_), Some(_)) => Err(CliError::new(
            CONFIG,
            "give --data-dir or --postgres-url, not both: import one VSecM backing store at a time",
        )),
        (None, None) => Err(CliError::new(
            CONFIG,
            "give VSecM's secrets with --data-dir DIR (its VSECM_SAFE_DATA_PATH, when VSECM_SAFE_BACKING_STORE \
             was file) or --postgres-url URL (its database, when VSECM_SAFE_BACKING_STORE was postgres)",
        )),
    }
}

/// One record as stored, under its stored name: an `.age` file (read when its turn
/// comes, so that only one file at a time is in memory), a row's decoded data, or why
/// the row's data could not be had.
enum Raw {
    File(PathBuf),
    Bytes(zeroize::Zeroizing<Vec<u8>>),
    Unreadable(String),
}

type Stored = (String, Raw);

impl Raw {
    /// The age-encrypted bytes, within `cap`.
    fn into_bytes(self, cap: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        match self {
            Raw::File(path) => read_capped(&path, cap).map_err(|why| format!("cannot read it: {why}")),
            Raw::Bytes(b) => Ok(b),
            Raw::Unreadable(why) => Err(why),
        }
    }
}

/// The records of a VSecM data directory, and how to name the directory in messages.
fn dir_records(dir: &Path, max: usize) -> Result<(Vec<Stored>, String), CliError> {
    let files = age_files(dir, max)?;
    if files.is_empty() {
        return Err(CliError::new(
            CONFIG,
            format!("{} holds no .age files: is it VSecM's data directory (VSECM_SAFE_DATA_PATH)?", dir.display()),
        ));
    }
    let stored = files.into_iter().map(|(name, path)| (name, Raw::File(path))).collect();
    Ok((stored, dir.display().to_string()))
}

/// `name` as one quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The length of `n` bytes in padded base64.
fn base64_len(n: u64) -> u64 {
    n.div_ceil(3).saturating_mul(4)
}

/// Decodes a row's `data` (standard base64, as VSecM's Safe writes it) within `cap` bytes.
fn decode_row(data: &str, cap: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| "its data is not base64 (VSecM's Safe writes the age file in standard base64)".to_owned())?;
    if bytes.len() as u64 > cap {
        return Err(format!(
            "its data is {} bytes, over the limit of {cap} (raise --max-file-bytes if it is genuine)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// What to say when the database cannot be used.
fn pg_error(e: PgError) -> CliError {
    match e {
        PgError::Config(why) => CliError::new(CONFIG, why),
        PgError::Unreachable { target, why } => CliError::new(
            UNREACHABLE,
            format!(
                "cannot read VSecM's database at {target}: {why}; check --postgres-url (host, port, database, user) \
                 and --postgres-password-file, and that the database lets this host in; nothing was imported"
            ),
        ),
    }
}

/// The rows of VSecM's table, and how to name the table in messages. Only reads: one
/// `SELECT` of at most `max + 1` rows, each row's data fetched only when within `cap`.
async fn table_records(
    settings: &PgSettings,
    table: &str,
    max: usize,
    cap: u64,
) -> Result<(Vec<Stored>, String), CliError> {
    let (client, target) = aegis_postgres::connect(settings, "aegis-import-vsecm").await.map_err(pg_error)?;
    let place = format!("the table {} at {target}", quote_ident(table));
    let text_cap = i64::try_from(base64_len(cap)).unwrap_or(i64::MAX);
    let limit = i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1);
    let query = format!(
        "SELECT name::text, octet_length(data::text)::bigint, \
         CASE WHEN octet_length(data::text) <= $1::bigint THEN data::text END \
         FROM {} ORDER BY name LIMIT $2::bigint",
        quote_ident(table)
    );
    let rows = match tokio::time::timeout(QUERY_TIMEOUT, client.query(&query, &[&text_cap, &limit])).await {
        Err(_) => {
            return Err(CliError::new(
                UNREACHABLE,
                format!("reading {place} took over {} s; nothing was imported", QUERY_TIMEOUT.as_secs()),
            ))
        }
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) if e.code().is_none() => {
            let why = aegis_postgres::error_text(&e);
            return Err(CliError::new(UNREACHABLE, format!("cannot read {place}: {why}; nothing was imported")));
        }
        Ok(Err(e)) => {
            let advice = match e.code() {
                Some(c) if *c == SqlState::UNDEFINED_TABLE => format!(
                    "{place} does not exist: is this the database VSecM's Safe wrote to (the dataSourceName of its \
                     vsecm-safe secret)? Give --postgres-table if the table has another name"
                ),
                Some(c) if *c == SqlState::UNDEFINED_COLUMN => {
                    format!("{place} has no columns name and data: it is not VSecM's table (VSecM's has name and data)")
                }
                Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
                    format!("the database user may not read {place}: GRANT SELECT on it to that user")
                }
                _ => format!("cannot read {place}: {}", aegis_postgres::error_text(&e)),
            };
            return Err(CliError::new(CONFIG, format!("{advice}; nothing was imported")));
        }
    };
    if rows.len() > max {
        return Err(CliError::new(
            FAILURE,
            format!("{place} holds more than {max} rows; raise --max-secrets to import them all"),
        ));
    }
    if rows.is_empty() {
        return Err(CliError::new(
            CONFIG,
            format!("{place} holds no rows: is this the database VSecM's Safe wrote to (VSECM_SAFE_BACKING_STORE=postgres)?"),
        ));
    }
    let mut stored = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        // The query casts each column to the type read here; a failure is reported, not a panic.
        let name = row.try_get::<_, Option<String>>(0).ok().flatten();
        let len = row.try_get::<_, Option<i64>>(1);
        let data = row.try_get::<_, Option<String>>(2).map(|d| d.map(zeroize::Zeroizing::new));
        let Some(name) = name else {
            stored.push((format!("(row {} without a name)", i + 1), Raw::Unreadable("its name is NULL".to_owned())));
            continue;
        };
        let raw = match (data, len) {
            (Ok(Some(data)), _) => decode_row(&data, cap).map_or_else(Raw::Unreadable, Raw::Bytes),
            (Ok(None), Ok(None)) => Raw::Unreadable("its data is NULL".to_owned()),
            (Ok(None), Ok(Some(len))) => Raw::Unreadable(format!(
                "its data is {len} bytes of base64, over the limit of {cap} decoded bytes (raise --max-file-bytes if it is genuine)"
            )),
            (Err(e), _) | (_, Err(e)) => Raw::Unreadable(format!("its data cannot be read: {e}")),
        };
        stored.push((name, raw));
    }
    Ok((stored, place))
}

/// Why one record was not imported.
#[derive(Debug)]
enum Failure {
    /// Not encrypted to the root key given.
    WrongKey,
    /// Anything else, as text.
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::WrongKey => f.write_str("it was not encrypted to this root key"),
            Failure::Other(s) => f.write_str(s),
        }
    }
}

/// Decrypts and parses one record stored under `name` (an age file, whichever store held it).
fn open_record(key: &RootKey, src: &Source, name: &str, bytes: &[u8]) -> Result<VsecmRecord, Failure> {
    let plain = key.decrypt_age_file(bytes).map_err(|e| match e {
        CryptoError::AgeFile(why) if why.contains("not encrypted to this root key") => Failure::WrongKey,
        other => Failure::Other(other.to_string()),
    })?;
    let record = VsecmRecord::parse(&plain).map_err(|e| Failure::Other(e.to_string()))?;
    if record.name != name {
        return Err(Failure::Other(format!(
            "{} but holds the secret '{}'; rename it or leave it out",
            src.record(name),
            record.name.escape_debug()
        )));
    }
    SecretName::parse(&record.name).map_err(|e| Failure::Other(format!("Aegis does not accept its name: {e}")))?;
    Ok(record)
}

/// What the import does (or would do) with one secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Not in Aegis yet.
    New,
    /// In Aegis with another value or other metadata.
    Changed,
    /// In Aegis exactly so: not written again.
    Unchanged,
    /// Could not be read, decrypted, parsed or written.
    Failed,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Line {
    name: String,
    change: Change,
    /// The version written (not on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    dry_run: bool,
    secrets: Vec<Line>,
}

/// The Aegis write for a VSecM record.
fn put_of(r: &VsecmRecord, cas: u64) -> PutSecret {
    PutSecret {
        value: r.value.clone(),
        namespaces: Some(r.namespaces()),
        template: r.template().map(str::to_owned),
        format: Some(Format::parse_lenient(&r.meta.format).as_str().to_owned()),
        not_before: Some(rfc3339_nanos(r.not_before)),
        expires_after: Some(r.expires_text()),
        cas: Some(cas),
        created: Some(rfc3339_nanos(r.created)),
        updated: Some(rfc3339_nanos(r.updated)),
    }
}

/// Whether Aegis's current version already is this record (to the second, as the API shows times).
fn same(r: &VsecmRecord, cur: &SecretRead) -> bool {
    let i = &cur.info;
    let expires = if r.expires_text() == "never" { rfc3339(never()) } else { rfc3339(r.expires_after) };
    cur.value == r.value
        && i.namespaces == r.namespaces()
        && i.template.as_deref().map(str::trim) == r.template()
        && i.format == Format::parse_lenient(&r.meta.format).as_str()
        && i.not_before == rfc3339(r.not_before)
        && i.expires_after == expires
}

/// Aegis's current version of `name`, or `None` if it has none (new or deleted).
async fn current(c: &Client, name: &str) -> Result<Option<SecretRead>, ClientError> {
    match c.get(name, None).await {
        Ok(r) if r.info.deleted.is_none() => Ok(Some(r)),
        Ok(_) | Err(ClientError::Refused { status: 404 | 410, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a write error concerns this secret only (the import goes on) or the whole run.
fn per_secret(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused { status: 400 | 409 | 410 | 413 | 422, .. })
}

async fn sync_one(c: &Client, r: &VsecmRecord, dry_run: bool) -> Result<Line, ClientError> {
    let line = |change, version, reason| Line { name: r.name.clone(), change, version, reason };
    let cur = match current(c, &r.name).await {
        Ok(cur) => cur,
        Err(e) if per_secret(&e) => return Ok(line(Change::Failed, None, Some(e.to_string()))),
        Err(e) => return Err(e),
    };
    let (change, cas) = match &cur {
        None => (Change::New, 0),
        Some(cur) if same(r, cur) => return Ok(line(Change::Unchanged, None, None)),
        Some(cur) => (Change::Changed, cur.info.version),
    };
    if dry_run {
        return Ok(line(change, None, None));
    }
    match c.put(&r.name, &put_of(r, cas)).await {
        Ok(info) => Ok(line(change, Some(info.version), None)),
        Err(e) if per_secret(&e) => Ok(line(Change::Failed, None, Some(e.to_string()))),
        Err(e) => Err(e),
    }
}

fn print(report: &Report, output: Output) -> Result<(), CliError> {
    if output == Output::Json {
        return print_json(report);
    }
    for l in &report.secrets {
        let label = match l.change {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
            Change::Failed => "failed",
        };
        // File names are whatever the directory holds: escaped, so none can forge a line.
        let name = printable(&l.name);
        match (&l.version, &l.reason) {
            (_, Some(why)) => println!("{label:<10} {name}: {}", printable(why)),
            (Some(v), None) => println!("{label:<10} {name} (version {v})"),
            (None, None) => println!("{label:<10} {name}"),
        }
    }
    let count = |c| report.secrets.iter().filter(|l| l.change == c).count();
    println!(
        "{}{} new, {} changed, {} unchanged, {} failed",
        if report.dry_run { "dry run (nothing written): " } else { "" },
        count(Change::New),
        count(Change::Changed),
        count(Change::Unchanged),
        count(Change::Failed)
    );
    Ok(())
}

async fn vsecm(a: VsecmArgs) -> Result<(), CliError> {
    let src = source(&a)?;
    let key = load_root_key(&key_source(&a)?).await?;
    let (stored, place) = match &src {
        Source::Dir(dir) => dir_records(dir, a.max_secrets)?,
        Source::Table { settings, table } => table_records(settings, table, a.max_secrets, a.max_file_bytes).await?,
    };
    let mut records = Vec::new();
    let mut lines = Vec::new();
    let mut wrong_key = 0;
    for (name, raw) in stored {
        let opened = match raw.into_bytes(a.max_file_bytes) {
            Ok(bytes) => open_record(&key, &src, &name, &bytes),
            Err(why) => Err(Failure::Other(why)),
        };
        match opened {
            Ok(r) => records.push(r),
            Err(f) => {
                wrong_key += usize::from(matches!(f, Failure::WrongKey));
                lines.push(Line { name, change: Change::Failed, version: None, reason: Some(f.to_string()) });
            }
        }
    }
    if records.is_empty() && wrong_key > 0 {
        return Err(CliError::new(
            CONFIG,
            format!(
                "none of the {} records in {place} was encrypted to this root key: wrong root key? Give the key VSecM's Safe used; nothing was imported",
                lines.len(),
            ),
        ));
    }
    let c = client().await?;
    let mut fatal = None;
    // A few writes in flight let the Safe commit them in groups (one fsync for many).
    let mut results = futures::stream::iter(&records)
        .map(|r| async { (r.name.as_str(), sync_one(&c, r, a.dry_run).await) })
        .buffer_unordered(IN_FLIGHT);
    while let Some((name, result)) = results.next().await {
        match result {
            Ok(line) => lines.push(line),
            // An error that is not about one secret (Safe out of reach, sealed, refusing
            // the caller) stops the run; importing again finishes it.
            Err(e) => {
                fatal = Some((name.to_owned(), e));
                break;
            }
        }
    }
    drop(results);
    lines.sort_by(|x, y| x.name.cmp(&y.name));
    let report = Report { dry_run: a.dry_run, secrets: lines };
    print(&report, a.output)?;
    if let Some((name, e)) = fatal {
        let mut err = CliError::from(e);
        err.message = format!(
            "stopped at '{name}': {}; the secrets listed above were handled (a few more may have been); run the import again to finish",
            err.message
        );
        return Err(err);
    }
    let failed: Vec<&str> =
        report.secrets.iter().filter(|l| l.change == Change::Failed).map(|l| l.name.as_str()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            FAILURE,
            format!(
                "{} of {} secrets were not imported ({}); the others were{}",
                failed.len(),
                report.secrets.len(),
                failed.join(", "),
                if a.dry_run { " checked" } else { "" }
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lists_records_not_backups() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.age", "k8s:b.age", "a-1-.age.backup", "notes.txt", ".age"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("dir.age")).unwrap();
        let names: Vec<String> = age_files(d.path(), 10).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "k8s:b"]);
        let e = age_files(d.path(), 1).unwrap_err();
        assert!(e.message.contains("--max-secrets"), "{}", e.message);
    }

    fn args(argv: &[&str]) -> Result<VsecmArgs, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: VsecmArgs,
        }
        Cli::try_parse_from(std::iter::once("vsecm").chain(argv.iter().copied())).map(|c| c.a)
    }

    #[test]
    fn exactly_one_source() {
        let k = ["--root-key-file", "k"];
        let both = args(&[&k[..], &["--data-dir", "d", "--postgres-url", "postgres://u@h/db"]].concat()).unwrap();
        assert!(source(&both).unwrap_err().message.contains("not both"));
        let neither = source(&args(&k).unwrap()).unwrap_err();
        assert_eq!(neither.code, CONFIG);
        assert!(
            neither.message.contains("--data-dir") && neither.message.contains("--postgres-url"),
            "{}",
            neither.message
        );
        assert!(matches!(source(&args(&[&k[..], &["--data-dir", "d"]].concat()).unwrap()).unwrap(), Source::Dir(_)));
        let pg = args(&[&k[..], &["--postgres-url", "postgres://u@h/db", "--postgres-password-file", "pw"]].concat());
        match source(&pg.unwrap()).unwrap() {
            Source::Table { settings, table } => {
                assert_eq!(table, "vsecm-secrets");
                assert_eq!(settings.password_file, Some(PathBuf::from("pw")));
            }
            Source::Dir(_) => panic!("not the table"),
        }
        // The PostgreSQL settings only with --postgres-url.
        assert!(args(&[&k[..], &["--data-dir", "d", "--postgres-table", "t"]].concat()).is_err());
    }

    #[test]
    fn rows_are_standard_base64_within_the_cap() {
        assert_eq!(&decode_row("aGVsbG8=\n", 5).unwrap()[..], b"hello");
        assert!(decode_row("aGVsbG8=", 4).unwrap_err().contains("over the limit of 4"));
        assert!(decode_row("not base64!", 100).unwrap_err().contains("not base64"));
        assert_eq!(base64_len(5), 8);
        assert_eq!(base64_len(6), 8);
        assert_eq!(quote_ident("vsecm-secrets"), "\"vsecm-secrets\"");
        assert_eq!(quote_ident("a\"; DROP TABLE x; --"), "\"a\"\"; DROP TABLE x; --\"");
    }

    #[test]
    fn caps_file_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.age");
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(read_capped(&p, 99).unwrap_err().contains("over the limit of 99"));
        assert_eq!(read_capped(&p, 100).unwrap().len(), 100);
    }

    #[test]
    fn bad_key_file_names_the_file_not_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key.txt");
        std::fs::write(&p, "AGE-SECRET-KEY-TOPSECRET\nonly two lines\n").unwrap();
        let e = futures::executor::block_on(load_root_key(&KeySource::File(p))).unwrap_err();
        assert_eq!(e.code, CONFIG);
        assert!(e.message.contains("key.txt") && !e.message.contains("TOPSECRET"), "{}", e.message);
    }
}
