//! How commands print: text for people or JSON for scripts.

use clap::ValueEnum;
use serde::Serialize;

pub use crate::escape::{json_printable, printable};
use crate::exit::{CliError, FAILURE};

/// Output style.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For scripts.
    Json,
}

/// Prints `v` as pretty JSON on standard output.
pub fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::new(FAILURE, e.to_string()))?;
    println!("{}", json_printable(&s));
    Ok(())
}

/// The `-o/--output` flag shared by the commands that print.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Out {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}
