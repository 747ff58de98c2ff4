//! What every `aegis` and `safe` process does first: keep the secrets it holds out
//! of core files and away from debuggers, and (if asked) out of swap.
//!
//! - `RLIMIT_CORE` 0: a crash writes no core file, whatever `ulimit -c` was. Programs
//!   started by `aegis run` inherit this limit.
//! - `PR_SET_DUMPABLE` 0: no core file either way, and other processes of the same
//!   user cannot attach with ptrace or read `/proc/<pid>/mem`.
//! - With `--lock-memory` (`AEGIS_LOCK_MEMORY`): all memory is locked (`mlockall`),
//!   so secret values are never written to swap. Only done where it cannot fail
//!   later: with an unlimited `RLIMIT_MEMLOCK` or `CAP_IPC_LOCK`. Otherwise a
//!   locked process would fail to allocate once over the limit, so Aegis warns and
//!   runs unlocked.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// The bit of `CAP_IPC_LOCK` in the capability sets of `/proc/self/status`.
const CAP_IPC_LOCK: u32 = 14;

/// Turns core dumps off for this process. An error says what could not be set.
pub fn no_core_dumps() -> Result<(), String> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("cannot set RLIMIT_CORE to 0: {e}"))?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("cannot clear PR_SET_DUMPABLE: {e}"))
}

/// Locks all current and future memory if that cannot make later allocations fail;
/// otherwise returns why not (the caller warns and goes on unlocked).
pub fn lock_memory() -> Result<(), String> {
    let (soft, _) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| format!("cannot read RLIMIT_MEMLOCK: {e}"))?;
    if soft != RLIM_INFINITY && !has_ipc_lock() {
        return Err(format!(
            "RLIMIT_MEMLOCK is {soft} bytes and the process lacks CAP_IPC_LOCK; run with `ulimit -l unlimited` or \
             grant CAP_IPC_LOCK to lock memory"
        ));
    }
    use nix::sys::mman::{mlockall, MlockAllFlags};
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).map_err(|e| format!("mlockall failed: {e}"))
}

/// Whether `CAP_IPC_LOCK` is in the effective set (from `/proc/self/status`).
fn has_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective_caps)
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The `CapEff:` line of a `/proc/<pid>/status` text.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Hardens the process as described above, warning (never failing) where the
/// system does not allow a step. Called after logging is set up.
pub fn apply(lock: bool) {
    if let Err(why) = no_core_dumps() {
        tracing::warn!("core dumps may still be written: {why}");
    }
    if lock {
        match lock_memory() {
            Ok(()) => tracing::info!("memory locked: secret values are never swapped out"),
            Err(why) => tracing::warn!("memory not locked (secret values may be swapped out): {why}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_capabilities() {
        let status = "Name:\taegis\nCapInh:\t0000000000000000\nCapEff:\t0000000000004000\n";
        assert_eq!(effective_caps(status), Some(1 << CAP_IPC_LOCK));
        assert_eq!(effective_caps("Name:\tx\n"), None);
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
    }
}
