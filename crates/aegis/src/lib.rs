//! The `aegis` and `safe` commands.
//!
//! Exit codes (also in docs/CLI.md): 0 success; 1 other error; 2 bad command
//! line; 3 not found; 4 permission denied (wrong role); 5 the Safe is sealed;
//! 6 conflict (check-and-set, destroyed version, wrong state); 7 the Safe
//! cannot be reached or TLS failed; 64 bad configuration.

pub mod admin;
pub mod cli;
pub mod connect;
pub mod escape;
pub mod exit;
pub mod harden;
pub mod output;
pub mod serve;
pub mod values;
pub mod workload;

/// `tracing` format on standard error.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging flags shared by every binary: how much to log and in which format.
///
/// Client commands log at `warn` by default so that they print nothing but
/// their answer; the long-running ones (`aegis server`, `aegis dev`, the
/// workload agents) log at `info`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// Log more on standard error: -v info, -vv debug, -vvv trace (wins over AEGIS_LOG).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// `tracing` filter, e.g. `debug` or `aegis_server=trace`.
    #[arg(long = "log", env = "AEGIS_LOG", global = true, value_name = "FILTER")]
    pub filter: Option<String>,
    /// Log format on standard error.
    #[arg(long, env = "AEGIS_LOG_FORMAT", global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// A parser of the logging environment variables alone, for `safe`, whose
/// command line stays VSecM's.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct LogEnv {
    #[command(flatten)]
    log: LogArgs,
}

impl LogArgs {
    /// The logging settings from `AEGIS_LOG` and `AEGIS_LOG_FORMAT` only.
    pub fn from_env() -> Result<Self, crate::exit::CliError> {
        use clap::Parser as _;
        LogEnv::try_parse_from(std::iter::empty::<String>()).map(|p| p.log).map_err(|e| {
            crate::exit::CliError::new(
                crate::exit::CONFIG,
                format!("AEGIS_LOG_FORMAT must be `text` or `json` ({})", e.kind()),
            )
        })
    }

    /// The filter to use: `-v` flags, else `--log`/`AEGIS_LOG` (unless empty), else `default`.
    pub fn filter_or(&self, default: &str) -> String {
        match (self.verbose, &self.filter) {
            // Empty is unset (as KUBECONFIG=""), so the command's default applies.
            (0, Some(f)) if !f.trim().is_empty() => f.clone(),
            (0, _) => default.to_owned(),
            (1, _) => "info".to_owned(),
            (2, _) => "debug".to_owned(),
            _ => "trace".to_owned(),
        }
    }

    /// Sets up `tracing` on standard error, at `default` unless asked otherwise.
    pub fn init(&self, default: &str) {
        let wanted = self.filter_or(default);
        let filter = tracing_subscriber::EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
            eprintln!("warning: invalid log filter {wanted:?} ({e}); logging at {default}");
            tracing_subscriber::EnvFilter::new(default)
        });
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Json => builder.json().try_init(),
            LogFormat::Text => builder.try_init(),
        };
    }
}

/// Waits for SIGTERM or SIGINT: how the Safe and a Sentinel kept running are stopped.
pub async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
