//! Helpers shared by the fuzz targets in `fuzz_targets/`: a Safe served in
//! process (the real router over a real data directory), the YAML reader that
//! checks the transformation's YAML, and a printer for init-command files.
//!
//! Every target checks properties (round trips, budgets, what an error may
//! show), not only that nothing panics. A failed `assert!` is a finding: its
//! message names the property and never prints a secret value.

pub mod initcmd_print;
pub mod safe;
pub mod yaml_check;

/// A marker put inside secret values: no error answer may contain it.
pub const CANARY: &str = "Zq9CANARYv7x";

/// Whether `text` holds [`CANARY`].
pub fn leaks_canary(text: &[u8]) -> bool {
    text.windows(CANARY.len()).any(|w| w == CANARY.as_bytes())
}

/// The CPU time this process has used so far (user and system, from
/// `/proc/self/stat`, in clock ticks of 10 ms). A render that took long on
/// the wall clock because the machine was busy with other processes has not
/// ignored its time limit; one that used the CPU that long has.
pub fn process_cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat is readable");
    // Fields after the command name (which may hold spaces, so split after its `)`).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    std::time::Duration::from_millis(ticks * 10)
}
