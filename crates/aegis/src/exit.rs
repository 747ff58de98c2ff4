//! Errors at the command's edge, with an exit code and advice.

use aegis_sdk::ClientError;

/// Success.
pub const OK: u8 = 0;
/// Anything else.
pub const FAILURE: u8 = 1;
/// Bad usage (as clap's own usage errors).
pub const USAGE: u8 = 2;
/// Not found.
pub const NOT_FOUND: u8 = 3;
/// Permission denied.
pub const FORBIDDEN: u8 = 4;
/// Sealed.
pub const SEALED: u8 = 5;
/// Conflict.
pub const CONFLICT: u8 = 6;
/// Unreachable.
pub const UNREACHABLE: u8 = 7;
/// Bad configuration.
pub const CONFIG: u8 = 64;

/// An error to print and exit with.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// Message (what went wrong and what to do).
    pub message: String,
}

impl CliError {
    /// A new error.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// An error with the general failure code (1) and `e`'s message.
    pub fn failure(e: impl std::fmt::Display) -> Self {
        Self::new(FAILURE, e.to_string())
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Config(_) | ClientError::Identity(_) => CONFIG,
            ClientError::Connect { .. } => UNREACHABLE,
            ClientError::Refused { status, .. } => match status {
                404 => NOT_FOUND,
                403 => FORBIDDEN,
                503 => SEALED,
                409 | 410 => CONFLICT,
                _ => FAILURE,
            },
            ClientError::Decode(_) => FAILURE,
        };
        Self::new(code, e.to_string())
    }
}

/// Prints the error (if any) and returns the process exit code.
pub fn finish(r: Result<(), CliError>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Messages quote paths, names and the Safe's answers: never raw to a terminal.
            eprintln!("error: {}", crate::escape::printable(&e.message));
            std::process::ExitCode::from(e.code)
        }
    }
}
