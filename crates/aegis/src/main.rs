//! `aegis`: the Safe, dev mode, admin and workload commands.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = aegis::cli::Cli::parse();
    cli.log.init(cli.default_log_level());
    aegis::harden::apply(cli.lock_memory);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(aegis::exit::FAILURE);
        }
    };
    aegis::exit::finish(rt.block_on(aegis::cli::run(cli)))
}
