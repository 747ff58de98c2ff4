//! Folding: identical requests that change nothing become one counted line.
//!
//! A workload polling its secret, or flooding the Safe with fetches, asks the
//! same thing again and again. The first request of a series (same caller,
//! action, API, route, secret names, version and status) is written at once;
//! the repeats that follow within the window are counted, and written as one
//! line with a `count` when the window closes. So the trail grows with the
//! number of callers, not with their request rate. Admin writes (events with a
//! phase, or waited for) are never folded.
//!
//! Folding degrades gracefully instead of stopping: a caller that opens more
//! than its share of series (varied requests: other names, versions, statuses)
//! has the rest folded into one catch-all line of its own per window, and past
//! the limit of series in all, new requests fold into one catch-all line for
//! every caller. Memory stays bounded by the limits, and every request is
//! still counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::line::Event;

/// Default window in which identical requests are folded into one line.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// Longest window.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Default most series folded at once (past it, requests fold into the catch-all line).
pub const DEFAULT_MAX_SERIES: usize = 4096;
/// Default most series of one caller (past it, its requests fold into its own catch-all line).
pub const DEFAULT_MAX_SERIES_PER_CALLER: usize = 64;
/// How often the series are checked for a closed window.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What identical requests that change nothing have in common.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    caller: Arc<str>,
    action: &'static str,
    api: &'static str,
    route: &'static str,
    secrets: Vec<String>,
    version: Option<u64>,
    status: u16,
    policy: Option<std::borrow::Cow<'static, str>>,
}

impl Key {
    /// Takes an event apart: what a series shares, and its own id and time.
    fn split(e: Event) -> (Self, Arc<str>, OffsetDateTime) {
        let key = Self {
            caller: e.caller,
            action: e.action,
            api: e.api,
            route: e.route,
            secrets: e.secrets,
            version: e.version,
            status: e.status,
            policy: e.policy,
        };
        (key, e.request_id, e.time)
    }

    fn event(&self, request_id: Arc<str>, time: OffsetDateTime) -> Event {
        Event {
            time,
            request_id,
            caller: self.caller.clone(),
            action: self.action,
            api: self.api,
            route: self.route,
            secrets: self.secrets.clone(),
            version: self.version,
            status: self.status,
            phase: None,
            policy: self.policy.clone(),
        }
    }
}

/// One series: its first request has its line; the repeats since are counted.
struct Series {
    opened: Instant,
    count: u64,
    since: OffsetDateTime,
    last: Option<(Arc<str>, OffsetDateTime)>,
}

/// A catch-all series: requests past the limits, counted with the last of them.
struct Varied {
    opened: Instant,
    count: u64,
    since: OffsetDateTime,
    last: Option<(Key, Arc<str>, OffsetDateTime)>,
}

/// The line that stands for a series' repeats: the last of them, with their
/// number and when the first of them ended. `varied`: a catch-all line, whose
/// requests differed (its event's caller is empty when it stands for many).
pub(crate) struct Repeats {
    pub event: Event,
    pub count: u64,
    pub since: OffsetDateTime,
    pub varied: bool,
}

/// The limits of folding.
#[derive(Debug, Clone, Copy)]
pub struct FoldLimits {
    /// Window in which identical requests are folded (zero: nothing is folded).
    pub window: Duration,
    /// Most series at once.
    pub max_series: usize,
    /// Most series of one caller at once.
    pub per_caller: usize,
}

/// The open series.
pub(crate) struct Folds {
    limits: FoldLimits,
    series: HashMap<Key, Series>,
    /// Open series per caller.
    callers: HashMap<Arc<str>, usize>,
    /// Each caller's catch-all series (at most `max_series` of them).
    varied: HashMap<Arc<str>, Varied>,
    /// The catch-all of everyone past every limit.
    overflow: Option<Varied>,
    checked: Instant,
}

impl Folds {
    /// Folds within the limits' window (zero: nothing is folded).
    pub fn new(limits: FoldLimits) -> Self {
        Self {
            limits,
            series: HashMap::new(),
            callers: HashMap::new(),
            varied: HashMap::new(),
            overflow: None,
            checked: Instant::now(),
        }
    }

    /// Takes the repeats out of `batch`: returns what is to be written now,
    /// and how many requests were folded.
    pub fn fold<A>(&mut self, batch: Vec<(Event, Option<A>)>) -> (Vec<(Event, Option<A>)>, u64) {
        if self.limits.window.is_zero() {
            return (batch, 0);
        }
        let mut now = Vec::with_capacity(batch.len());
        let mut folded = 0;
        for (e, ack) in batch {
            if ack.is_some() || e.phase.is_some() {
                now.push((e, ack));
                continue;
            }
            let (key, id, time) = Key::split(e);
            if let Some(s) = self.series.get_mut(&key) {
                if s.count == 0 {
                    s.since = time;
                }
                s.count += 1;
                s.last = Some((id, time));
                folded += 1;
                continue;
            }
            let mine = self.callers.get(&key.caller).copied().unwrap_or(0);
            if mine < self.limits.per_caller && self.series.len() < self.limits.max_series {
                now.push((key.event(id, time), None));
                *self.callers.entry(key.caller.clone()).or_default() += 1;
                self.series.insert(key, Series { opened: Instant::now(), count: 0, since: time, last: None });
                continue;
            }
            self.fold_varied(key, id, time);
            folded += 1;
        }
        (now, folded)
    }

    /// Counts a request past the limits in its caller's catch-all, or in everyone's past that.
    fn fold_varied(&mut self, key: Key, id: Arc<str>, time: OffsetDateTime) {
        let fresh = || Varied { opened: Instant::now(), count: 0, since: time, last: None };
        let slot = if self.varied.contains_key(&key.caller) || self.varied.len() < self.limits.max_series {
            self.varied.entry(key.caller.clone()).or_insert_with(fresh)
        } else {
            self.overflow.get_or_insert_with(fresh)
        };
        slot.count += 1;
        slot.last = Some((key, id, time));
    }

    /// The repeats of the series whose window has closed (all of them when `all`), oldest first.
    pub fn closed(&mut self, all: bool) -> Vec<Repeats> {
        if !all && self.checked.elapsed() < CHECK_EVERY {
            return Vec::new();
        }
        self.checked = Instant::now();
        let window = self.limits.window;
        let done = |opened: Instant| all || opened.elapsed() >= window;
        let (closed, open): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.series).into_iter().partition(|(_, s)| done(s.opened));
        self.series = open;
        let mut out = Vec::new();
        for (k, s) in closed {
            if let Some(n) = self.callers.get_mut(&k.caller) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.callers.remove(&k.caller);
                }
            }
            if let Some((id, time)) = s.last {
                out.push(Repeats { event: k.event(id, time), count: s.count, since: s.since, varied: false });
            }
        }
        let (closed, open): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.varied).into_iter().partition(|(_, v)| done(v.opened));
        self.varied = open;
        out.extend(closed.into_values().filter_map(|v| v.repeats(false)));
        if self.overflow.as_ref().is_some_and(|v| done(v.opened)) {
            out.extend(self.overflow.take().and_then(|v| v.repeats(true)));
        }
        out.sort_by_key(|r| r.since);
        out
    }
}

impl Varied {
    /// The catch-all line: the last request's action and route, with no names,
    /// version or status (they differed); `many`: no caller either.
    fn repeats(self, many: bool) -> Option<Repeats> {
        let (key, id, time) = self.last?;
        let mut event = key.event(id, time);
        event.secrets = Vec::new();
        event.version = None;
        if many {
            event.caller = Arc::from("");
        }
        Some(Repeats { event, count: self.count, since: self.since, varied: true })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Phase;

    fn fetch(i: usize, status: u16) -> (Event, Option<()>) {
        let e = Event {
            time: OffsetDateTime::now_utc(),
            request_id: format!("r{i}").into(),
            caller: Arc::from("spiffe://td/a"),
            action: "fetch",
            api: "native",
            route: "/v1/workload/secret",
            secrets: vec!["billing".to_owned()],
            version: Some(1),
            status,
            phase: None,
            policy: None,
        };
        (e, None)
    }

    fn limits(window: Duration, max_series: usize, per_caller: usize) -> FoldLimits {
        FoldLimits { window, max_series, per_caller }
    }

    fn varied(i: usize, caller: &str, name: &str) -> (Event, Option<()>) {
        let (mut e, a) = fetch(i, 404);
        e.caller = Arc::from(caller);
        e.secrets = vec![name.to_owned()];
        (e, a)
    }

    #[test]
    fn the_first_of_a_series_passes_its_repeats_are_counted_until_the_window_closes() {
        let mut f = Folds::new(limits(Duration::from_secs(30), 4096, 64));
        let batch = vec![fetch(0, 200), fetch(1, 200), fetch(2, 404), fetch(3, 200)];
        let (now, folded) = f.fold(batch);
        let ids: Vec<&str> = now.iter().map(|(e, _)| &*e.request_id).collect();
        assert_eq!((ids, folded), (vec!["r0", "r2"], 2));
        assert!(f.closed(false).is_empty(), "the window is still open");
        let write = (Event { phase: Some(Phase::Intent), ..fetch(4, 200).0 }, Some(()));
        let (now, folded) = f.fold(vec![write, fetch(5, 200)]);
        assert_eq!((now.len(), folded), (1, 1), "a write is never folded");
        let repeats = f.closed(true);
        assert_eq!(repeats.len(), 1, "the 404 had no repeats");
        assert_eq!((repeats[0].count, &*repeats[0].event.request_id), (3, "r5"));
        assert!(repeats[0].since <= repeats[0].event.time);
        let (now, _) = f.fold(vec![fetch(6, 200)]);
        assert_eq!(now.len(), 1, "a new series after the old one closed");
    }

    #[test]
    fn a_zero_window_folds_nothing() {
        let mut f = Folds::new(limits(Duration::ZERO, 4096, 64));
        let (now, folded) = f.fold(vec![fetch(0, 200), fetch(1, 200)]);
        assert_eq!((now.len(), folded), (2, 0));
    }

    #[test]
    fn varied_requests_past_a_callers_share_fold_into_its_own_catch_all_line() {
        let mut f = Folds::new(limits(Duration::from_secs(30), 4096, 4));
        let mut batch: Vec<_> = (0..1000).map(|i| varied(i, "spiffe://td/a", &format!("n{i}"))).collect();
        batch.push(varied(1000, "spiffe://td/b", "n0"));
        let (now, folded) = f.fold(batch);
        assert_eq!((now.len(), folded), (5, 996), "4 lines of a, 1 of b; the rest counted");
        let repeats = f.closed(true);
        assert_eq!(repeats.len(), 1, "one catch-all line");
        let r = &repeats[0];
        assert!(r.varied && &*r.event.caller == "spiffe://td/a" && r.event.secrets.is_empty());
        assert_eq!((r.count, &*r.event.request_id), (996, "r999"));
    }

    #[test]
    fn past_the_series_limit_requests_fold_into_one_line_instead_of_a_line_each() {
        let mut f = Folds::new(limits(Duration::from_secs(30), 8, 64));
        let batch = (0..200).map(|i| varied(i, &format!("spiffe://td/c{}", i / 10), &format!("n{i}")));
        let (now, folded) = f.fold(batch.collect());
        assert_eq!((now.len(), folded), (8, 192), "8 series, then everything is counted");
        let (now, folded) = f.fold((200..1200).map(|i| varied(i, "spiffe://td/z", &format!("n{i}"))).collect());
        assert_eq!((now.len(), folded), (0, 1000), "still folded, never a line per request");
        assert!(f.series.len() <= 8 && f.varied.len() <= 8, "memory stays bounded");
        let repeats = f.closed(true);
        assert_eq!(repeats.iter().map(|r| r.count).sum::<u64>(), 1192, "every request is counted");
        let many: Vec<_> = repeats.iter().filter(|r| r.event.caller.is_empty()).collect();
        assert_eq!(many.len(), 1, "one line for every caller past the limits");
        assert!(repeats.iter().all(|r| r.varied));
        assert!(f.series.is_empty() && f.varied.is_empty() && f.callers.is_empty());
    }
}
