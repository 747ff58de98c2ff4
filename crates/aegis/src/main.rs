//! `aegis`: the Safe, dev mode, admin and workload commands.

use clap::Parser;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path, and memory freed after a
/// burst of writes is returned to the system instead of staying in per-thread arenas (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
