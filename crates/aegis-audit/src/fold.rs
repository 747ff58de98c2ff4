//! Folding: identical requests that change nothing become one counted line.
//!
//! A workload polling its secret, or flooding the Safe with fetches, asks the
//! same thing again and again. The first request of a series (same caller,
//! action, API, route, secret names, version and status) is written at once;
//! the repeats that follow within the window are counted, and written as one
//! line with a `count` when the window closes. So the trail grows with the
//! number of callers, not with their request rate. Admin writes (events with a
//! phase, or waited for) are never folded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::line::Event;

/// Default window in which identical requests are folded into one line.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// Longest window.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Most series folded at once; one more writes them all out first.
const MAX_SERIES: usize = 4096;
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

/// The line that stands for a series' repeats: the last of them, with their
/// number and when the first of them ended.
pub(crate) struct Repeats {
    pub event: Event,
    pub count: u64,
    pub since: OffsetDateTime,
}

/// The open series.
pub(crate) struct Folds {
    window: Duration,
    series: HashMap<Key, Series>,
    checked: Instant,
}

impl Folds {
    /// Folds within `window` (zero: nothing is folded).
    pub fn new(window: Duration) -> Self {
        Self { window, series: HashMap::new(), checked: Instant::now() }
    }

    /// Takes the repeats out of `batch`: returns what is to be written now,
    /// and how many requests were folded.
    pub fn fold<A>(&mut self, batch: Vec<(Event, Option<A>)>) -> (Vec<(Event, Option<A>)>, u64) {
        if self.window.is_zero() {
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
            now.push((key.event(id, time), None));
            self.series.insert(key, Series { opened: Instant::now(), count: 0, since: time, last: None });
        }
        (now, folded)
    }

    /// The repeats of the series whose window has closed (all of them when
    /// `all`, or when there are too many series), oldest first.
    pub fn closed(&mut self, all: bool) -> Vec<Repeats> {
        let full = self.series.len() >= MAX_SERIES;
        if !all && !full && self.checked.elapsed() < CHECK_EVERY {
            return Vec::new();
        }
        self.checked = Instant::now();
        let window = self.window;
        let (closed, open): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.series)
            .into_iter()
            .partition(|(_, s)| all || full || s.opened.elapsed() >= window);
        self.series = open;
        let mut out: Vec<Repeats> = closed
            .into_iter()
            .filter_map(|(k, s)| {
                let (id, time) = s.last?;
                Some(Repeats { event: k.event(id, time), count: s.count, since: s.since })
            })
            .collect();
        out.sort_by_key(|r| r.since);
        out
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
        };
        (e, None)
    }

    #[test]
    fn the_first_of_a_series_passes_its_repeats_are_counted_until_the_window_closes() {
        let mut f = Folds::new(Duration::from_secs(30));
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
        let mut f = Folds::new(Duration::ZERO);
        let (now, folded) = f.fold(vec![fetch(0, 200), fetch(1, 200)]);
        assert_eq!((now.len(), folded), (2, 0));
    }

    #[test]
    fn too_many_series_are_written_out_at_once() {
        let mut f = Folds::new(Duration::from_secs(30));
        let batch = (0..MAX_SERIES * 2).map(|i| {
            let (mut e, a) = fetch(i, 200);
            e.secrets = vec![format!("s{}", i % MAX_SERIES)];
            (e, a)
        });
        let (now, folded) = f.fold(batch.collect());
        assert_eq!((now.len(), folded as usize), (MAX_SERIES, MAX_SERIES));
        assert_eq!(f.closed(false).len(), MAX_SERIES, "the table is full: every series is written out");
        assert!(f.series.is_empty());
    }
}
