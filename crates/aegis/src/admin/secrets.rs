//! Admin commands on secrets: `put`, `get`, `list`, `delete`, `undelete`,
//! `destroy`, `rollback`, `history` and `encrypt`.

use aegis_core::api::{PutSecret, SecretInfo};
use aegis_core::secret::{SecretValue, VersionNumber};
use aegis_core::SecretName;

use crate::connect::{client, read_stdin};
use crate::exit::CliError;
use crate::output::{print_json, Out, Output};
use crate::values::FormatArg;

/// Arguments of `aegis put`.
#[derive(clap::Args, Debug)]
pub struct PutArgs {
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
    /// Delivery format (any case).
    #[arg(short = 'f', long, value_enum, ignore_case = true)]
    format: Option<FormatArg>,
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

/// Arguments of `aegis get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Secret name.
    name: String,
    /// Version to read (from 1).
    #[arg(long, value_parser = version_number)]
    version: Option<VersionNumber>,
    #[command(flatten)]
    out: Out,
}

/// Arguments of `aegis list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Include soft-deleted secrets.
    #[arg(long)]
    deleted: bool,
    #[command(flatten)]
    out: Out,
}

/// Arguments of the commands that take a secret name.
#[derive(clap::Args, Debug)]
pub struct NameArg {
    /// Secret name.
    name: String,
    #[command(flatten)]
    out: Out,
}

fn version_number(text: &str) -> Result<VersionNumber, String> {
    VersionNumber::parse(text).map_err(|e| e.to_string())
}

/// Arguments of the commands that take a secret name and a version.
#[derive(clap::Args, Debug)]
pub struct NameVersion {
    /// Secret name.
    name: String,
    /// Version number (from 1).
    #[arg(value_parser = version_number)]
    version: VersionNumber,
    #[command(flatten)]
    out: Out,
}

/// Arguments of `aegis encrypt`.
#[derive(clap::Args, Debug)]
pub struct EncryptArgs {
    /// The value (else standard input).
    #[arg(long)]
    value: Option<String>,
}

fn print_info(i: &SecretInfo, out: Out) -> Result<(), CliError> {
    if out.output == Output::Json {
        return print_json(i);
    }
    let state = if i.deleted.is_some() { " (deleted)" } else { "" };
    let kube = i.kubernetes.as_ref().map(kube_state).unwrap_or_default();
    let from = i.replicated_from.as_ref().map(|s| format!("; replicated from {s} (read-only)")).unwrap_or_default();
    let line =
        format!("{}: version {}{state}, updated {}, format {}{kube}{from}", i.name, i.version, i.updated, i.format);
    println!("{}", crate::output::printable(&line));
    Ok(())
}

/// `; kubernetes synced v3`, `; kubernetes conflict: <reason>`…
fn kube_state(k: &aegis_core::api::KubeSync) -> String {
    let version = k.synced_version.map(|v| format!(" v{v}")).unwrap_or_default();
    let reason = k.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    format!("; kubernetes {}{version}{reason}", k.state)
}

/// `aegis put`: writes a new version of a secret.
pub async fn put(a: PutArgs) -> Result<(), CliError> {
    let c = client().await?;
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
        format: a.format.map(|f| aegis_core::transform::Format::from(f).as_str().to_owned()),
        not_before: a.not_before,
        expires_after: a.expires,
        cas: a.cas,
        created: None,
        updated: None,
    };
    print_info(&c.put(&a.name, &req).await?, a.out)
}

/// `aegis get`: prints a secret (latest version or `--version`).
pub async fn get(a: GetArgs) -> Result<(), CliError> {
    let r = client().await?.get(&a.name, a.version).await?;
    if a.out.output == Output::Json {
        return print_json(&r);
    }
    println!("{}", r.value.expose());
    Ok(())
}

/// `aegis list`: lists secrets with metadata.
pub async fn list(a: ListArgs) -> Result<(), CliError> {
    let l = client().await?.list(a.deleted).await?;
    if a.out.output == Output::Json {
        return print_json(&l);
    }
    if l.secrets.is_empty() {
        println!("no secrets");
    }
    for i in &l.secrets {
        print_info(i, a.out)?;
    }
    Ok(())
}

/// `aegis delete`: soft-deletes a secret.
pub async fn delete(a: NameArg) -> Result<(), CliError> {
    print_info(&client().await?.delete(&a.name).await?, a.out)
}

/// `aegis undelete`: restores a soft-deleted secret.
pub async fn undelete(a: NameArg) -> Result<(), CliError> {
    print_info(&client().await?.undelete(&a.name).await?, a.out)
}

/// `aegis destroy`: destroys one version's value for good.
pub async fn destroy(a: NameVersion) -> Result<(), CliError> {
    print_info(&client().await?.destroy(&a.name, a.version).await?, a.out)
}

/// `aegis rollback`: makes an earlier version current again.
pub async fn rollback(a: NameVersion) -> Result<(), CliError> {
    print_info(&client().await?.rollback(&a.name, a.version).await?, a.out)
}

/// `aegis history`: shows a secret's version history.
pub async fn history(a: NameArg) -> Result<(), CliError> {
    let h = client().await?.history(&a.name).await?;
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

/// `aegis encrypt`: encrypts a value for git (as `safe -e`).
pub async fn encrypt(a: EncryptArgs) -> Result<(), CliError> {
    let c = client().await?;
    let v = match a.value {
        Some(v) => SecretValue::new(v),
        None => read_stdin("value")?,
    };
    println!("{}", c.encrypt(v).await?);
    Ok(())
}
