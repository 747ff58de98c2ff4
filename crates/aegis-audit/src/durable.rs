//! How far the audit file is durable, and the fsync that many waiters share.
//!
//! The writer thread appends lines and says how far it wrote; an fsync is asked
//! for by the writer (its timer, an anchor, the lines someone waits for) or by
//! another thread: the store calls [`crate::Sink::sync_written`] just before each
//! commit, so the `intent` lines of the writes in that commit are durable before
//! the change is, in one fsync for the whole commit. One fsync runs at a time;
//! whoever asks while it runs waits for it and, if it did not cover them, runs
//! the next one, which covers everything written meanwhile (group commit).

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A write or fsync of the audit file running longer than this makes the trail unavailable to admin writes
/// (long enough that a busy but healthy disk does not trip it).
pub const STALL: Duration = Duration::from_secs(5);

/// Why an admin write's audit line could not be written or made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// Writing or syncing the file failed.
    #[error("the audit file cannot be written: {0}")]
    Io(String),
    /// A write has been in progress for too long (a blocked disk, file system or pipe).
    #[error("the audit file has not finished a write for over {} ms (blocked disk, file system or pipe)", STALL.as_millis())]
    Stalled,
    /// The queue is full.
    #[error("the audit queue is full")]
    Full,
    /// Not durable within the request's deadline.
    #[error("the audit line was not durable within the request's deadline")]
    Timeout,
    /// The sink was closed.
    #[error("the audit trail is closed")]
    Closed,
}

/// Told when the lines it waits for are durable (or cannot be).
pub(crate) type Ack = oneshot::Sender<Result<(), Unavailable>>;

/// The audit file's durability: lines before `written` are in the file, lines
/// before `synced` are durable. Positions are the chain's sequence numbers.
pub(crate) struct SyncPoint {
    state: Mutex<State>,
    turn: Condvar,
}

struct State {
    /// The regular file lines are written into; `None` when there is nothing to
    /// fsync (no file, a pipe, or the file is being reopened).
    file: Option<Arc<File>>,
    written: u64,
    synced: u64,
    /// When the fsync in progress began.
    syncing: Option<Instant>,
    /// Set when an fsync failed (its lines may be lost): the writer takes it and starts over.
    broken: Option<String>,
    /// Acks waiting for the lines before their position to be durable, oldest first.
    waiting: VecDeque<(u64, Ack, Instant)>,
    last_sync: Instant,
}

impl SyncPoint {
    pub(crate) fn new() -> Self {
        let state = State {
            file: None,
            written: 0,
            synced: 0,
            syncing: None,
            broken: None,
            waiting: VecDeque::new(),
            last_sync: Instant::now(),
        };
        Self { state: Mutex::new(state), turn: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer starts writing at `at` into `file` (`None`: a pipe or no
    /// file, whose lines are as durable as they get once written). What was
    /// written into the previous file must have been synced or abandoned.
    pub(crate) fn switch(&self, file: Option<Arc<File>>, at: u64) {
        let mut s = self.lock();
        s.file = file;
        s.written = at;
        s.synced = s.synced.max(at);
        Self::answer(&mut s);
    }

    /// The lines before `end` are written.
    pub(crate) fn wrote(&self, end: u64) {
        let mut s = self.lock();
        s.written = end;
        if s.file.is_none() {
            s.synced = end;
        }
        Self::answer(&mut s);
    }

    /// Answers each of `acks` once the lines before `end` are durable.
    pub(crate) fn wait_for(&self, end: u64, acks: Vec<Ack>) {
        if acks.is_empty() {
            return;
        }
        let mut s = self.lock();
        let now = Instant::now();
        s.waiting.extend(acks.into_iter().map(|a| (end, a, now)));
        Self::answer(&mut s);
    }

    /// Fails every waiting ack and forgets the file: what was written into it
    /// since the last fsync cannot be made durable any more.
    pub(crate) fn abandon(&self, why: &str) {
        let mut s = self.lock();
        s.file = None;
        s.synced = s.written;
        for (_, ack, _) in s.waiting.drain(..) {
            let _ = ack.send(Err(Unavailable::Io(why.to_owned())));
        }
    }

    /// Makes every line written so far durable.
    pub(crate) fn sync_written(&self) -> Result<(), Unavailable> {
        let target = self.lock().written;
        self.sync_through(target)
    }

    /// Makes the lines before `target` durable: at once if they are, after the
    /// fsync in progress if it covers them, else by running one.
    pub(crate) fn sync_through(&self, target: u64) -> Result<(), Unavailable> {
        let mut s = self.lock();
        loop {
            if let Some(why) = &s.broken {
                return Err(Unavailable::Io(why.clone()));
            }
            if s.synced >= target {
                return Ok(());
            }
            if s.syncing.is_some() {
                s = self.turn.wait(s).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            let Some(file) = s.file.clone() else {
                // Nothing to fsync: the lines went into a pipe, or a file already synced or abandoned.
                s.synced = s.written;
                continue;
            };
            let upto = s.written;
            s.syncing = Some(Instant::now());
            drop(s);
            let r = file.sync_data();
            s = self.lock();
            s.syncing = None;
            match r {
                Ok(()) => {
                    // Only if the file is still the one lines go into: a switch already moved `synced` on.
                    if s.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, &file)) {
                        s.synced = s.synced.max(upto);
                    }
                    s.last_sync = Instant::now();
                    Self::answer(&mut s);
                }
                Err(e) => {
                    let why = format!("fsync of the audit file failed: {e}");
                    for (_, ack, _) in s.waiting.drain(..) {
                        let _ = ack.send(Err(Unavailable::Io(why.clone())));
                    }
                    s.broken = Some(why);
                }
            }
            self.turn.notify_all();
        }
    }

    /// Answers the acks whose lines are durable.
    fn answer(s: &mut State) {
        while s.waiting.front().is_some_and(|(end, _, _)| *end <= s.synced) {
            if let Some((_, ack, _)) = s.waiting.pop_front() {
                let _ = ack.send(Ok(()));
            }
        }
    }

    /// The failure of an fsync run by another thread, for the writer to act on (once).
    pub(crate) fn take_broken(&self) -> Option<String> {
        self.lock().broken.take()
    }

    /// Since when the oldest ack has waited, if one does.
    pub(crate) fn oldest_waiting(&self) -> Option<Instant> {
        self.lock().waiting.front().map(|(_, _, t)| *t)
    }

    /// Whether lines were written and not yet made durable, and how long ago the last fsync ended.
    pub(crate) fn unsynced(&self) -> Option<Duration> {
        let s = self.lock();
        (s.written > s.synced && s.file.is_some()).then(|| s.last_sync.elapsed())
    }

    /// How long the fsync in progress has run, if one does.
    pub(crate) fn busy_for(&self) -> Option<Duration> {
        self.lock().syncing.map(|t| t.elapsed())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().unwrap())
    }

    #[test]
    fn an_ack_is_answered_once_its_lines_are_synced_and_not_before() {
        let p = SyncPoint::new();
        p.switch(Some(file()), 0);
        let (tx, mut rx) = oneshot::channel();
        p.wrote(3);
        p.wait_for(3, vec![tx]);
        assert!(rx.try_recv().is_err(), "written, not durable yet");
        assert!(p.unsynced().is_some());
        p.sync_through(2).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ok(()))), "one fsync covers everything written before it");
        assert!(p.unsynced().is_none());
    }

    #[test]
    fn lines_without_a_file_to_sync_are_durable_once_written() {
        let p = SyncPoint::new();
        let (tx, mut rx) = oneshot::channel();
        p.wrote(5);
        p.wait_for(5, vec![tx]);
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        p.sync_written().unwrap();
    }

    #[test]
    fn an_abandoned_file_fails_its_waiters() {
        let p = SyncPoint::new();
        p.switch(Some(file()), 10);
        let (tx, mut rx) = oneshot::channel();
        p.wrote(11);
        p.wait_for(11, vec![tx]);
        p.abandon("disk gone");
        assert!(matches!(rx.try_recv(), Ok(Err(Unavailable::Io(w))) if w == "disk gone"));
    }

    #[test]
    fn concurrent_callers_all_get_their_lines_synced() {
        let p = Arc::new(SyncPoint::new());
        p.switch(Some(file()), 0);
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for j in 0..50 {
                        let end = i * 1000 + j + 1;
                        {
                            let mut s = p.lock();
                            s.written = s.written.max(end);
                        }
                        p.sync_through(end).unwrap();
                        assert!(p.lock().synced >= end);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
