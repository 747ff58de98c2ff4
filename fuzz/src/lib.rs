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
