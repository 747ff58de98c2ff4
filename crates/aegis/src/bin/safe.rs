//! `safe`: VSecM's Sentinel command, flag for flag.

fn main() -> std::process::ExitCode {
    match aegis::LogArgs::from_env() {
        Ok(log) => log.init("warn"),
        Err(e) => return aegis::exit::finish(Err(e)),
    }
    aegis::harden::apply(false);
    let args: Vec<String> = std::env::args().collect();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(aegis::exit::FAILURE);
        }
    };
    aegis::exit::finish(rt.block_on(aegis::admin::safe::run(&args)))
}
