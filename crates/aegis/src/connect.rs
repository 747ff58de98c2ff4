//! The connection setup every client-side command shares: settings from the
//! environment, a connected client, and values read from standard input.
//!
//! It imports no command module; they all import it.

use std::io::Read;

use aegis_core::secret::SecretValue;
use aegis_sdk::{Client, Settings};

use crate::exit::{CliError, CONFIG, FAILURE};

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
        .map_err(|e| CliError::new(FAILURE, format!("cannot read the {what} from standard input: {e}")))?;
    let trimmed = s.trim_end_matches(['\n', '\r']).to_owned();
    zeroize::Zeroize::zeroize(&mut s);
    Ok(SecretValue::new(trimmed))
}
