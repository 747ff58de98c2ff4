//! The `aegis` command line: the clap definition and the dispatch to each
//! job's module (`serve`, `admin`, `workload`).

use clap::{Parser, Subcommand};

use crate::admin::secrets::{EncryptArgs, GetArgs, ListArgs, NameArg, NameVersion, PutArgs};
use crate::admin::state::UnsealArgs;
use crate::admin::{secrets, state};
use crate::exit::CliError;
use crate::output::Out;

/// Aegis: a Kubernetes-native secrets store, wire-compatible with VMware Secrets Manager.
#[derive(Parser, Debug)]
#[command(
    name = "aegis",
    version,
    about,
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 forbidden, 5 sealed, 6 conflict, 7 unreachable, 64 bad configuration."
)]
pub struct Cli {
    /// Logging flags (`-v`, `--log`, `--log-format`).
    #[command(flatten)]
    pub log: crate::LogArgs,
    /// Lock all memory (mlockall) so secret values are never swapped out; needs an unlimited
    /// RLIMIT_MEMLOCK or CAP_IPC_LOCK, else a warning and the process runs unlocked.
    #[arg(long, env = "AEGIS_LOCK_MEMORY", global = true)]
    pub lock_memory: bool,
    #[command(subcommand)]
    cmd: Command,
}

impl Cli {
    /// The default log level of the command: `info` for the ones that run in
    /// a pod or for long and log progress (`server`, `dev`, `sidecar`, `init`,
    /// `run`, `sentinel`); `warn` for client commands, which print nothing but
    /// their answer.
    pub fn default_log_level(&self) -> &'static str {
        match &self.cmd {
            Command::Dev(a) if a.serves() => "info",
            Command::Server(a) => a.vsecm_log_filter().unwrap_or("info"),
            Command::Sidecar(_) | Command::Init(_) | Command::Run(_) | Command::Sentinel(_) => "info",
            _ => "warn",
        }
    }
}

// Parsed once per process: the size of the Safe's settings costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a Safe with a throw-away local CA, for trying Aegis on one machine.
    Dev(crate::serve::dev::DevArgs),
    /// Run the Safe (identity from SPIFFE_ENDPOINT_SOCKET or AEGIS_SVID_* files).
    Server(crate::serve::server::ServerArgs),
    /// Print the calling workload's secret.
    Fetch(crate::workload::FetchArgs),
    /// Write a new version of a secret.
    Put(PutArgs),
    /// Read a secret (latest version or --version).
    Get(GetArgs),
    /// List secrets with metadata.
    List(ListArgs),
    /// Soft-delete a secret (undelete restores it).
    Delete(NameArg),
    /// Restore a soft-deleted secret.
    Undelete(NameArg),
    /// Destroy one version's value for good.
    Destroy(NameVersion),
    /// Make an earlier version current again.
    Rollback(NameVersion),
    /// Show a secret's version history.
    History(NameArg),
    /// Encrypt a value for git (as `safe -e`), read from --value or standard input.
    Encrypt(EncryptArgs),
    /// Give a sealed Safe its root key (three lines) from a file or standard input.
    Unseal(UnsealArgs),
    /// Show whether the Safe is sealed, how many secrets it holds, its root key id.
    Status(Out),
    /// Generate a new root key and re-encrypt every record with it.
    RotateRootKey(Out),
    /// Replication between Safes: `status` shows each link (see docs/REPLICATION.md).
    Replication(crate::admin::state::ReplicationArgs),
    /// Keep a file up to date with the workload's secret (VSecM sidecar).
    Sidecar(crate::workload::sidecar::SidecarArgs),
    /// Wait until the workload's secret exists (VSecM init container).
    Init(crate::workload::init::InitArgs),
    /// Run a command with the workload's secret in its environment.
    Run(crate::workload::run::RunArgs),
    /// Sentinel tasks: apply the init-command file.
    Sentinel(crate::admin::sentinel::SentinelArgs),
    /// Import secrets from another store (VSecM's data directory).
    Import(crate::admin::import::ImportArgs),
    /// Read the Safe's audit trail: `verify` its chain and anchors, `tail` it.
    Audit(crate::admin::audit::AuditArgs),
    /// Take an encrypted backup of every secret (`--out FILE`), or check one (`verify FILE`).
    Backup(crate::admin::backup::BackupArgs),
    /// Restore a backup into the Safe (`--in FILE`).
    Restore(crate::admin::backup::RestoreArgs),
    /// Who may do what: `put`, `get`, `list`, `delete` and `explain` policies.
    Policy(crate::admin::policy::PolicyArgs),
    /// Tools on record stores with the Safes stopped: `copy` (a data directory to PostgreSQL, or back).
    Store(crate::admin::store::StoreArgs),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Command::Dev(a) => crate::serve::dev::run(a).await,
        Command::Server(a) => crate::serve::server::run(a).await,
        Command::Fetch(a) => crate::workload::fetch(a).await,
        Command::Put(a) => secrets::put(a).await,
        Command::Get(a) => secrets::get(a).await,
        Command::List(a) => secrets::list(a).await,
        Command::Delete(a) => secrets::delete(a).await,
        Command::Undelete(a) => secrets::undelete(a).await,
        Command::Destroy(a) => secrets::destroy(a).await,
        Command::Rollback(a) => secrets::rollback(a).await,
        Command::History(a) => secrets::history(a).await,
        Command::Encrypt(a) => secrets::encrypt(a).await,
        Command::Unseal(a) => state::unseal(a).await,
        Command::Status(out) => state::status(out).await,
        Command::RotateRootKey(out) => state::rotate_root_key(out).await,
        Command::Replication(a) => state::replication(a).await,
        Command::Sidecar(a) => crate::workload::sidecar::run(a).await,
        Command::Init(a) => crate::workload::init::run(a).await,
        Command::Run(a) => crate::workload::run::run(a).await,
        Command::Sentinel(a) => crate::admin::sentinel::run(a).await,
        Command::Import(a) => crate::admin::import::run(a).await,
        Command::Audit(a) => crate::admin::audit::run(a).await,
        Command::Backup(a) => crate::admin::backup::backup(a).await,
        Command::Restore(a) => crate::admin::backup::restore(a).await,
        Command::Store(a) => crate::admin::store::run(a).await,
        Command::Policy(a) => crate::admin::policy::run(a).await,
    }
}
