//! `safe`: VSecM's Sentinel command with its flags and messages.
//!
//! Unlike VSecM's, it exits non-zero (with the Safe's message) on failure.

use aegis_core::api::VsecmKeys;
use aegis_core::secret::SecretValue;
use aegis_core::SentinelAction;
use clap::Parser;

use aegis_sdk::Client;

use crate::connect::{client, read_stdin};
use crate::exit::{CliError, FAILURE};

/// VSecM-compatible Sentinel command.
#[derive(Parser, Debug)]
#[command(
    name = "safe",
    about = "Register, delete, list and encrypt secrets (VSecM-compatible)",
    disable_version_flag = true
)]
struct SafeArgs {
    /// Workload (secret) name; repeatable.
    #[arg(short = 'w', long = "workload")]
    workload: Vec<String>,
    /// The secret value; `gen:PATTERN` generates one.
    #[arg(short = 's', long = "secret")]
    secret: Option<String>,
    /// Kubernetes namespace; repeatable (default: default).
    #[arg(short = 'n', long = "namespace")]
    namespace: Vec<String>,
    /// Go template.
    #[arg(short = 't', long = "template")]
    template: Option<String>,
    /// json, yaml (or raw).
    // A string, not `FormatArg`: VSecM's `safe` sends any word and its Safe
    // reads an unknown one as json; this drop-in keeps that.
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Encrypt (with -s and no -w), or the value is encrypted (with -w), or encrypted export (with -l).
    #[arg(short = 'e', long = "encrypt")]
    encrypt: bool,
    /// Delete the workloads' secrets.
    #[arg(short = 'd', long = "delete")]
    delete: bool,
    /// List secrets.
    #[arg(short = 'l', long = "list")]
    list: bool,
    /// Root key: three newline-separated parts (`-` reads standard input).
    #[arg(short = 'i', long = "input-keys")]
    input_keys: Option<String>,
    /// Not before: now or RFC 3339.
    #[arg(short = 'N', long = "nbf", default_value = "now")]
    nbf: String,
    /// Expires: never or RFC 3339.
    #[arg(short = 'E', long = "exp", default_value = "never")]
    exp: String,
}

fn fail(msg: &str) -> CliError {
    CliError::new(FAILURE, msg)
}

/// Expands `gen:` patterns with the OS random source.
pub fn expand_value(value: &str) -> Result<SecretValue, CliError> {
    match aegis_core::generate::pattern_of(value) {
        Some(pattern) => aegis_core::generate::expand(pattern, &mut rand::rngs::OsRng)
            .map(SecretValue::new)
            .map_err(|e| CliError::new(FAILURE, format!("bad gen: pattern: {e}"))),
        None => Ok(SecretValue::new(value)),
    }
}

async fn input_keys(client: &Client, text: &SecretValue) -> Result<String, CliError> {
    let parts: Vec<&str> = text.expose().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let [secret, public, aes] = parts.as_slice() else {
        return Err(fail(
            "the root key must be three lines: the age secret key, the age public key and 64 hex characters",
        ));
    };
    let keys = VsecmKeys {
        age_secret_key: SecretValue::new(*secret),
        age_public_key: (*public).to_owned(),
        aes_cipher_key: SecretValue::new(*aes),
    };
    Ok(client.vsecm_keys(&keys).await?)
}

/// Carries out an action as VSecM's Sentinel would; returns the Safe's answer.
pub async fn execute(client: &Client, mut a: SentinelAction) -> Result<String, CliError> {
    if let Some(keys) = &a.input_keys {
        return input_keys(client, keys).await;
    }
    if a.workloads.is_empty() && !a.encrypt {
        return Err(fail("Please provide a workload name."));
    }
    if a.delete {
        return Ok(client.vsecm_delete(a.workloads).await?);
    }
    let Some(secret) = a.secret.take() else {
        return Err(fail("Please provide a secret."));
    };
    let req = a.into_upsert(expand_value(secret.expose())?);
    Ok(client.vsecm_upsert(&req).await?)
}

/// Runs `safe` with VSecM's arguments (`args[0]` is the program name).
pub async fn run(args: &[String]) -> Result<(), CliError> {
    let a = match SafeArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage { Err(CliError::new(2, "see `safe --help`")) } else { Ok(()) };
        }
    };
    if a.list {
        let list = client().await?.vsecm_list(a.encrypt).await?;
        let s = serde_json::to_string_pretty(&list).map_err(|e| fail(&e.to_string()))?;
        println!("{}", crate::output::json_printable(&s));
        return Ok(());
    }
    let input_keys = match a.input_keys {
        Some(k) if k == "-" => Some(read_stdin("root key")?),
        Some(k) => Some(SecretValue::new(k)),
        None => None,
    };
    if input_keys.is_none() && a.workload.is_empty() && !a.encrypt {
        return Err(fail("Please provide a workload name."));
    }
    if input_keys.is_none() && !a.delete && a.secret.is_none() {
        return Err(fail("Please provide a secret."));
    }
    let action = SentinelAction {
        workloads: a.workload,
        secret: a.secret.map(SecretValue::new),
        namespaces: a.namespace,
        template: a.template,
        format: a.format,
        encrypt: a.encrypt,
        delete: a.delete,
        input_keys,
        not_before: Some(a.nbf),
        expires: Some(a.exp),
    };
    println!("{}", crate::output::printable(&execute(&client().await?, action).await?));
    Ok(())
}
