//! The `aegis` command line.

use std::io::Read;
use std::path::PathBuf;

use aegis_core::api::{PutSecret, SecretInfo};
use aegis_core::secret::SecretValue;
use aegis_core::SecretName;
use aegis_sdk::{Client, Settings};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::exit::{CliError, CONFIG};

/// Aegis: a Kubernetes-native secrets store, wire-compatible with VMware Secrets Manager.
#[derive(Parser, Debug)]
#[command(
    name = "aegis",
    version,
    about,
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 forbidden, 5 sealed, 6 conflict, 7 unreachable, 64 bad configuration."
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

/// Output style.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For scripts.
    Json,
}

#[derive(Args, Debug, Clone, Copy)]
struct Out {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a Safe with a throw-away local CA, for trying Aegis on one machine.
    Dev(crate::dev::DevArgs),
    /// Run the Safe (identity from SPIFFE_ENDPOINT_SOCKET or AEGIS_SVID_* files).
    Server(crate::server::ServerArgs),
    /// Print the calling workload's secret.
    Fetch(Out),
    /// Write a new version of a secret.
    Put(PutArgs),
    /// Read a secret (latest version or --version).
    Get {
        /// Secret name.
        name: String,
        /// Version to read.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        out: Out,
    },
    /// List secrets with metadata.
    List {
        /// Include soft-deleted secrets.
        #[arg(long)]
        deleted: bool,
        #[command(flatten)]
        out: Out,
    },
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
    Encrypt {
        /// The value (else standard input).
        #[arg(long)]
        value: Option<String>,
    },
    /// Give a sealed Safe its root key (three lines) from a file or standard input.
    Unseal {
        /// File with the root key (else standard input).
        #[arg(long)]
        root_key_file: Option<PathBuf>,
    },
    /// Show whether the Safe is sealed, how many secrets it holds, its root key id.
    Status(Out),
    /// Generate a new root key and re-encrypt every record with it.
    RotateRootKey(Out),
    /// Load generator: measure fetches, writes and start-up.
    Bench(crate::bench::BenchArgs),
    /// Keep a file up to date with the workload's secret (VSecM sidecar).
    Sidecar(crate::sidecar::SidecarArgs),
    /// Wait until the workload's secret exists (VSecM init container).
    Init(crate::initc::InitArgs),
    /// Run a command with the workload's secret in its environment.
    Run(crate::runner::RunArgs),
    /// Sentinel tasks: apply the init-command file.
    Sentinel(crate::sentinel::SentinelArgs),
}

#[derive(Args, Debug)]
struct NameArg {
    /// Secret name.
    name: String,
    #[command(flatten)]
    out: Out,
}

#[derive(Args, Debug)]
struct NameVersion {
    /// Secret name.
    name: String,
    /// Version number.
    version: u64,
    #[command(flatten)]
    out: Out,
}

#[derive(Args, Debug)]
struct PutArgs {
    /// Secret name (a workload's name, or k8s:NAME, raw:NAME): ASCII letters,
    /// digits, '.', '-' and '_' after the optional prefix; put `--` before a
    /// name that starts with '-'.
    name: String,
    /// The value; omit to read it from standard input (keeps it out of shell history).
    #[arg(long)]
    value: Option<String>,
    /// Kubernetes namespace (repeatable).
    #[arg(short = 'n', long = "namespace")]
    namespaces: Vec<String>,
    /// Go text/template applied to a JSON value.
    #[arg(short = 't', long)]
    template: Option<String>,
    /// json, yaml or raw.
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// now or RFC 3339.
    #[arg(long)]
    not_before: Option<String>,
    /// never or RFC 3339.
    #[arg(long)]
    expires: Option<String>,
    /// Write only if this version is current (0: only if the secret does not exist).
    #[arg(long)]
    cas: Option<u64>,
    #[command(flatten)]
    out: Out,
}

/// Client settings from the environment.
pub fn settings() -> Result<Settings, CliError> {
    Settings::from_lookup(|k| std::env::var(k).ok()).map_err(|e| CliError::new(CONFIG, e.to_string()))
}

/// A client from the environment.
pub async fn client() -> Result<Client, CliError> {
    Ok(Client::connect(&settings()?).await?)
}

/// Reads all of standard input (for values and keys kept out of argv).
pub fn read_stdin(what: &str) -> Result<SecretValue, CliError> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| CliError::new(crate::exit::FAILURE, format!("cannot read the {what} from standard input: {e}")))?;
    let trimmed = s.trim_end_matches(['\n', '\r']).to_owned();
    zeroize::Zeroize::zeroize(&mut s);
    Ok(SecretValue::new(trimmed))
}

fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::new(crate::exit::FAILURE, e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn print_info(i: &SecretInfo, out: Out) -> Result<(), CliError> {
    if out.output == Output::Json {
        return print_json(i);
    }
    let state = if i.deleted.is_some() { " (deleted)" } else { "" };
    println!("{}: version {}{state}, updated {}, format {}", i.name, i.version, i.updated, i.format);
    Ok(())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Command::Dev(a) => crate::dev::run(a).await,
        Command::Server(a) => crate::server::run(a).await,
        Command::Bench(a) => crate::bench::run(a).await,
        Command::Fetch(out) => crate::workload::fetch(out.output).await,
        Command::Sidecar(a) => crate::sidecar::run(a).await,
        Command::Init(a) => crate::initc::run(a).await,
        Command::Run(a) => crate::runner::run(a).await,
        Command::Sentinel(a) => crate::sentinel::run(a).await,
        cmd => admin(cmd).await,
    }
}

async fn admin(cmd: Command) -> Result<(), CliError> {
    let c = client().await?;
    match cmd {
        Command::Put(a) => {
            // The Safe's rule, checked before the value is read or sent.
            SecretName::parse(&a.name).map_err(CliError::failure)?;
            let value = match a.value {
                Some(v) => SecretValue::new(v),
                None => read_stdin("secret value")?,
            };
            let req = PutSecret {
                value,
                namespaces: (!a.namespaces.is_empty()).then_some(a.namespaces),
                template: a.template,
                format: a.format,
                not_before: a.not_before,
                expires_after: a.expires,
                cas: a.cas,
            };
            print_info(&c.put(&a.name, &req).await?, a.out)
        }
        Command::Get { name, version, out } => {
            let r = c.get(&name, version).await?;
            if out.output == Output::Json {
                return print_json(&r);
            }
            println!("{}", r.value.expose());
            Ok(())
        }
        Command::List { deleted, out } => {
            let l = c.list(deleted).await?;
            if out.output == Output::Json {
                return print_json(&l);
            }
            if l.secrets.is_empty() {
                println!("no secrets");
            }
            for i in &l.secrets {
                print_info(i, out)?;
            }
            Ok(())
        }
        Command::Delete(a) => print_info(&c.delete(&a.name).await?, a.out),
        Command::Undelete(a) => print_info(&c.undelete(&a.name).await?, a.out),
        Command::Destroy(a) => print_info(&c.destroy(&a.name, a.version).await?, a.out),
        Command::Rollback(a) => print_info(&c.rollback(&a.name, a.version).await?, a.out),
        Command::History(a) => {
            let h = c.history(&a.name).await?;
            if a.out.output == Output::Json {
                return print_json(&h);
            }
            for v in &h.versions {
                let mark = if v.current { " (current)" } else { "" };
                let gone = if v.destroyed { " destroyed" } else { "" };
                println!("{}\t{}{gone}{mark}", v.version, v.created);
            }
            Ok(())
        }
        Command::Encrypt { value } => {
            let v = match value {
                Some(v) => SecretValue::new(v),
                None => read_stdin("value")?,
            };
            println!("{}", c.encrypt(v).await?);
            Ok(())
        }
        Command::Unseal { root_key_file } => {
            let key =
                match root_key_file {
                    Some(p) => SecretValue::new(std::fs::read_to_string(&p).map_err(|e| {
                        CliError::new(CONFIG, format!("cannot read root key file {}: {e}", p.display()))
                    })?),
                    None => read_stdin("root key")?,
                };
            let s = c.unseal(key).await?;
            println!("unsealed: {} secrets, root key {}", s.secrets, s.key_id.unwrap_or_default());
            Ok(())
        }
        Command::Status(out) => {
            let s = c.status().await?;
            if out.output == Output::Json {
                return print_json(&s);
            }
            let state = if s.sealed { "sealed" } else { "unsealed" };
            println!(
                "{state}; {} secrets; root key {}; aegis {}",
                s.secrets,
                s.key_id.unwrap_or_else(|| "-".into()),
                s.version
            );
            Ok(())
        }
        Command::RotateRootKey(out) => {
            let r = c.rotate_root_key().await?;
            if out.output == Output::Json {
                return print_json(&r);
            }
            println!("root key rotated: new key {}, {} records re-encrypted", r.key_id, r.records);
            Ok(())
        }
        Command::Dev(_)
        | Command::Server(_)
        | Command::Bench(_)
        | Command::Fetch(_)
        | Command::Sidecar(_)
        | Command::Init(_)
        | Command::Run(_)
        | Command::Sentinel(_) => Ok(()),
    }
}
