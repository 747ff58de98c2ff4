//! The validity window of a `k8s:` secret applied to its Kubernetes copies.
//!
//! A workload gets nothing (a 404) before `notBefore` and after `expires`;
//! its Kubernetes Secret follows: not created before `notBefore`, deleted
//! when the secret expires (even with `keep_on_delete`, which is about
//! deleted secrets). Deleted rather than emptied: a fetch answers "no
//! secret", and so does Kubernetes; a pod that needs the Secret fails to
//! start with "secret not found" instead of starting with no data. A timer
//! per secret with a boundary ahead re-syncs it when the boundary passes, so
//! the copies change on time, not at the next write.

use std::sync::Arc;
use std::time::Duration;

use aegis_core::secret::SecretMeta;
use aegis_core::SecretName;
use time::OffsetDateTime;

use super::Ctx;

/// The longest one sleep of a timer: it then looks at the clock again, so a
/// wall-clock jump delays a boundary by at most this.
const LONGEST_SLEEP: Duration = Duration::from_secs(60);

/// The next time the copies of a secret with `meta` change by themselves:
/// `notBefore` when ahead, else `expires` when ahead and not "never".
pub(super) fn next_boundary(meta: &SecretMeta, now: OffsetDateTime) -> Option<OffsetDateTime> {
    if now < meta.not_before {
        return Some(meta.not_before);
    }
    (now <= meta.expires_after && meta.expires_after != aegis_core::timefmt::never()).then_some(meta.expires_after)
}

/// Re-syncs `name` once `at` has passed; `None` cancels its timer. One timer
/// per secret: arming the same boundary again does nothing, and a timer whose
/// boundary was replaced ends without a sync.
pub(super) fn arm(ctx: &Arc<Ctx>, name: &SecretName, at: Option<OffsetDateTime>) {
    let mut timers = ctx.windows.lock().unwrap_or_else(|e| e.into_inner());
    let Some(at) = at else {
        timers.remove(name);
        return;
    };
    if timers.get(name) == Some(&at) {
        return;
    }
    timers.insert(name.clone(), at);
    drop(timers);
    let (ctx, name) = (ctx.clone(), name.clone());
    tokio::spawn(async move {
        loop {
            let left = at - OffsetDateTime::now_utc();
            if left.is_negative() {
                break;
            }
            // Just past the boundary: the window includes both ends.
            let left = Duration::try_from(left).unwrap_or(LONGEST_SLEEP) + Duration::from_millis(1);
            tokio::time::sleep(left.min(LONGEST_SLEEP)).await;
        }
        let mut timers = ctx.windows.lock().unwrap_or_else(|e| e.into_inner());
        if timers.get(&name) == Some(&at) {
            timers.remove(&name);
            drop(timers);
            tracing::debug!(secret = %name, "validity window boundary passed; syncing its Kubernetes Secrets");
            ctx.queue.push(name);
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn meta(not_before: OffsetDateTime, expires_after: OffsetDateTime) -> SecretMeta {
        SecretMeta { not_before, expires_after, ..SecretMeta::defaults(not_before) }
    }

    #[test]
    fn the_next_boundary_is_the_start_then_the_end_then_none() {
        let (a, b) = (datetime!(2030-01-01 0:00 UTC), datetime!(2030-01-02 0:00 UTC));
        let m = meta(a, b);
        assert_eq!(next_boundary(&m, a - time::Duration::SECOND), Some(a));
        assert_eq!(next_boundary(&m, a), Some(b));
        assert_eq!(next_boundary(&m, b), Some(b), "the end is still inside");
        assert_eq!(next_boundary(&m, b + time::Duration::SECOND), None);
        assert_eq!(next_boundary(&meta(a, aegis_core::timefmt::never()), b), None, "never has no timer");
    }
}
