//! The `aegis` and `safe` commands.
//!
//! Exit codes (also in docs/CLI.md): 0 success; 1 other error; 2 bad command
//! line; 3 not found; 4 permission denied (wrong role); 5 the Safe is sealed;
//! 6 conflict (check-and-set, destroyed version, wrong state); 7 the Safe
//! cannot be reached or TLS failed; 64 bad configuration.

pub mod admin;
pub mod cli;
pub mod connect;
pub mod exit;
pub mod output;
pub mod serve;
pub mod workload;

/// Sets up `tracing` from `AEGIS_LOG` (default `info`) and `AEGIS_LOG_FORMAT` (`text` or `json`), on stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AEGIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("AEGIS_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
