//! Per-identity request rates: a token bucket per SPIFFE ID, set globally
//! (`AEGIS_RATE_PER_IDENTITY`, `AEGIS_RATE_BURST`) or by the first policy
//! naming the ID that sets one. A request past its rate is answered 429 with
//! `Retry-After`; the buckets are split over shards so one noisy identity
//! contends only with the identities that hash to its shard, for a few
//! hundred nanoseconds, and never waits.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aegis_core::policy::Rate;

/// Shards of the bucket map.
const SHARDS: usize = 16;
/// The most identities tracked at once (a shard past its share forgets the
/// buckets that are full again, then all of its buckets).
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every identity with a rate.
pub struct Quotas {
    shards: Vec<Mutex<HashMap<Box<str>, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
    /// The rate of identities no policy gives one.
    pub global: Option<Rate>,
}

impl Quotas {
    /// Buckets for the global `rate` (`None`: only policies set rates).
    pub fn new(global: Option<Rate>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            global,
        }
    }

    /// Takes one request of `id` at `rate`: `Err` with how long to wait when
    /// its bucket is empty.
    pub fn take(&self, id: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = f64::from(rate.burst);
        if !map.contains_key(id) && map.len() >= MAX_TRACKED / SHARDS {
            // Full buckets carry no state: forget them first, then everything.
            map.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate.per_second < burst);
            if map.len() >= MAX_TRACKED / SHARDS {
                map.clear();
            }
        }
        let b = map.entry(id.into()).or_insert(Bucket { tokens: burst, at: now });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate.per_second;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_tells_how_long_to_wait() {
        let q = Quotas::new(None);
        let rate = Rate { per_second: 10.0, burst: 3 };
        let t0 = Instant::now();
        for _ in 0..3 {
            q.take("a", rate, t0).unwrap();
        }
        let wait = q.take("a", rate, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        // Another identity has its own bucket.
        q.take("b", rate, t0).unwrap();
        // A tenth of a second later, one more.
        q.take("a", rate, t0 + Duration::from_millis(100)).unwrap();
        assert!(q.take("a", rate, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn the_map_stays_bounded() {
        let q = Quotas::new(None);
        let rate = Rate { per_second: 1.0, burst: 2 };
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED + 5_000) {
            q.take(&format!("id-{i}"), rate, t0).unwrap();
        }
        let held: usize = q.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= MAX_TRACKED, "{held}");
    }
}
