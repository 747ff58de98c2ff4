//! The sink: a writer thread behind a bounded queue, and the handle requests use.
//!
//! Requests hand events over with `try_send` and never block on the file.
//! Fetch lines are written in batches and made durable on a short timer;
//! an admin write waits (up to its deadline) for its line to be fsynced.
//! While the file cannot be written, admin writes are refused at once and
//! other events are counted; the first line written afterwards is a `gap`
//! line with those counts.
//!
//! Identical requests that change nothing are folded (see `fold`): the first
//! of a series is written at once, its repeats become one line with a `count`.
//!
//! The trail cannot fill its disk or block the admin: rotated files past the
//! size or age limit are deleted (a `retention` line records it), and below
//! the reserve of free space only admin writes' lines are written. An audit
//! file moved or deleted is noticed before the next write and replaced. After
//! every anchor its position is sealed in the head file (see `head`), and at
//! start the trail read back is compared with it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_crypto::AuditKey;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::durable::{Ack, SyncPoint};
pub use crate::durable::{Unavailable, STALL};
use crate::files;
use crate::fold::{FoldLimits, Folds, Repeats};
use crate::head::Head as SealedHead;
use crate::line::{self, anchor_message, Event, Kind, Out, Parsed};

/// Default size at which the audit file is rotated.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Default number of lines between two anchors.
pub const DEFAULT_ANCHOR_EVERY: u64 = 1000;
/// Longest time between two anchors while lines are written.
pub const ANCHOR_INTERVAL: Duration = Duration::from_secs(60);
/// Events waiting for the writer; more are counted as lost (fetches) or refused (writes).
pub const DEFAULT_QUEUE: usize = 65_536;
/// Longest time a fetch line waits to be fsynced.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);
/// How often the writer wakes with nothing to do (timed fsync, anchors, recovery).
const TICK: Duration = Duration::from_millis(100);
/// Most events written in one batch.
const MAX_BATCH: usize = 4096;
/// How long the writer gathers fetch lines before writing them (an admin write's line cuts it short).
const GATHER: Duration = Duration::from_millis(5);
/// Longest time a line someone waits to see durable waits for the fsync of a store commit to cover it
/// before the writer runs one itself: under concurrent writes, a write's `done` line then shares the next
/// commit's fsync instead of taking one of its own.
const DURABLE_GATHER: Duration = Duration::from_millis(2);
/// Pause between attempts to open an audit file that could not be opened.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Least time between two attempts to rotate a file that could not be rotated.
const ROTATE_RETRY: Duration = Duration::from_secs(1);
/// A failure that repeats (rotation, the head file) is logged at most once per this period, with the repeats counted.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Lines waiting for standard output; more are dropped there (never in the file).
const STDOUT_QUEUE: usize = 1024;
/// Default most bytes of the whole trail (current and rotated files); past it the oldest rotated files are deleted
/// (half the chart's 1 GiB volume, which also holds the records).
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 512 * 1024 * 1024;
/// Default longest time a rotated file is kept (since its last line).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default free space kept on the audit file system for admin writes' lines: below it, other lines are counted, not written.
pub const DEFAULT_RESERVE_BYTES: u64 = 16 * 1024 * 1024;
/// How often retention looks for rotated files past their age (it also runs after each rotation and at start).
const RETAIN_EVERY: Duration = Duration::from_secs(600);
/// Default window in which identical requests that change nothing are folded into one line.
pub const DEFAULT_FOLD: Duration = crate::fold::DEFAULT_WINDOW;
/// Longest fold window.
pub const MAX_FOLD: Duration = crate::fold::MAX_WINDOW;
/// Default most series folded at once.
pub const DEFAULT_FOLD_MAX_SERIES: usize = crate::fold::DEFAULT_MAX_SERIES;
/// Default most series of one caller folded at once.
pub const DEFAULT_FOLD_SERIES_PER_CALLER: usize = crate::fold::DEFAULT_MAX_SERIES_PER_CALLER;

/// Where and how the trail is written.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The audit file (`None`: no file).
    pub file: Option<PathBuf>,
    /// Also print each line on standard output.
    pub stdout: bool,
    /// Rotate the file when it reaches this size.
    pub max_file_bytes: u64,
    /// Anchor after this many lines.
    pub anchor_every: u64,
    /// Queue length.
    pub queue: usize,
    /// Window in which identical requests that change nothing are folded
    /// into one line (zero: one line per request).
    pub fold: Duration,
    /// The sealed head file (see [`crate::head`]), kept with the store's records; `None`: no head.
    pub head: Option<PathBuf>,
    /// Most series folded at once; past it, requests fold into one catch-all line.
    pub fold_max_series: usize,
    /// Most series of one caller; past it, its requests fold into its own catch-all line.
    pub fold_series_per_caller: usize,
    /// Most bytes of the whole trail: the oldest rotated files past it are deleted.
    pub max_total_bytes: u64,
    /// Rotated files whose last line is older than this are deleted (zero: kept whatever their age).
    pub max_age: Duration,
    /// Free space kept for admin writes' lines (zero: none).
    pub reserve_bytes: u64,
}

impl SinkConfig {
    /// A trail in `file` with the default limits, not on standard output.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            file,
            stdout: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            anchor_every: DEFAULT_ANCHOR_EVERY,
            queue: DEFAULT_QUEUE,
            fold: DEFAULT_FOLD,
            head: None,
            fold_max_series: crate::fold::DEFAULT_MAX_SERIES,
            fold_series_per_caller: crate::fold::DEFAULT_MAX_SERIES_PER_CALLER,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_age: DEFAULT_MAX_AGE,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
        }
    }
}

/// What the trail has done since the Safe started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Whether an admin write can be audited now (false: it is refused with 503).
    pub available: bool,
    /// Lines written.
    pub lines: u64,
    /// Requests folded into another line's `count`.
    pub folded: u64,
    /// Events that could not be written (reported in gap lines).
    pub lost: u64,
    /// Admin writes refused because the trail could not be written.
    pub refused: u64,
}

/// A request waiting for its line: until it is written, or until it is durable.
struct Waiter {
    ack: Ack,
    durable: bool,
}

type Msg = (Event, Option<Waiter>);

/// State the handle and the writer share.
struct Shared {
    epoch: Instant,
    lost: AtomicU64,
    refused: AtomicU64,
    /// Unix milliseconds of the first event missed since the last gap line; 0 for none.
    first_missed_ms: AtomicI64,
    failing: AtomicBool,
    failure: Mutex<String>,
    /// Milliseconds after `epoch` (plus one) when the current write began; 0 when none runs.
    busy_since: AtomicU64,
    key: Mutex<Option<AuditKey>>,
    close: Mutex<Option<oneshot::Sender<()>>>,
    /// Events handed over and not yet taken by the writer (the queue's bound).
    queued: AtomicUsize,
    /// Since start: lines written, repeats folded, events lost and admin writes refused.
    lines: AtomicU64,
    folded: AtomicU64,
    lost_total: AtomicU64,
    refused_total: AtomicU64,
    /// How far the file is written and durable; the fsync the writer and the store share.
    sync: SyncPoint,
}

impl Shared {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            lost: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            first_missed_ms: AtomicI64::new(0),
            failing: AtomicBool::new(false),
            failure: Mutex::new(String::new()),
            busy_since: AtomicU64::new(0),
            key: Mutex::new(None),
            close: Mutex::new(None),
            queued: AtomicUsize::new(0),
            lines: AtomicU64::new(0),
            folded: AtomicU64::new(0),
            lost_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            sync: SyncPoint::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Counts `n` events that were not written (fetches, reads, answers).
    fn lose(&self, n: u64) {
        self.lost_total.fetch_add(n, Ordering::Relaxed);
        self.miss(&self.lost, n);
    }

    /// Counts one admin write refused because its line could not be written.
    fn refuse(&self) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        self.miss(&self.refused, 1);
    }

    /// Counts `n` missed events in `counter`, for the next gap line.
    fn miss(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let _ = self.first_missed_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether an admin write may be attempted now.
    fn check(&self) -> Result<(), Unavailable> {
        if self.failing.load(Ordering::Acquire) {
            let why = self.failure.lock().map(|w| w.clone()).unwrap_or_default();
            return Err(Unavailable::Io(why));
        }
        let busy = self.busy_since.load(Ordering::Acquire);
        if busy != 0 && self.now_ms().saturating_sub(busy) > STALL.as_millis() as u64 {
            return Err(Unavailable::Stalled);
        }
        if self.sync.busy_for().is_some_and(|t| t > STALL) {
            return Err(Unavailable::Stalled);
        }
        Ok(())
    }

    fn set_failing(&self, why: &str) {
        if let Ok(mut w) = self.failure.lock() {
            why.clone_into(&mut w);
        }
        self.failing.store(true, Ordering::Release);
    }
}

/// The handle to the audit trail. Cheap to clone; the writer stops (with a
/// last anchor) when [`Sink::close`] is called or the last handle is dropped.
#[derive(Clone, Default)]
pub struct Sink {
    inner: Option<Arc<Inner>>,
}

/// The queue is an unbounded channel (memory is taken only for events waiting)
/// bounded by a count, so an idle Safe holds no preallocated queue.
struct Inner {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    capacity: usize,
    /// The writer thread, woken at once for an admin write's line.
    writer: std::thread::Thread,
}

impl Inner {
    /// Hands `msg` to the writer unless `capacity` events are already waiting.
    fn try_send(&self, msg: Msg) -> Result<(), ()> {
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(());
        }
        self.tx.send(msg).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() { "Sink(on)" } else { "Sink(off)" })
    }
}

impl Sink {
    /// No trail: every call does nothing.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Starts the writer thread. The file is opened by that thread (so a file
    /// that blocks on open cannot stop the Safe from starting); only its
    /// directory is created here.
    pub fn start(cfg: SinkConfig) -> io::Result<Self> {
        if cfg.file.is_none() && !cfg.stdout {
            return Ok(Self::off());
        }
        if let Some(file) = &cfg.file {
            create_private_dir(aegis_fs::parent_dir(file))?;
        }
        let (tx, rx) = channel();
        let shared = Arc::new(Shared::new());
        let capacity = cfg.queue.max(1);
        let writer = Writer::new(cfg, shared.clone())?;
        let handle = std::thread::Builder::new().name("aegis-audit".into()).spawn(move || writer.run(rx))?;
        let writer = handle.thread().clone();
        Ok(Self { inner: Some(Arc::new(Inner { tx, shared, capacity, writer })) })
    }

    /// Whether events are recorded.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// What the trail has done since start (`None` when it is off), for the metrics.
    pub fn stats(&self) -> Option<Stats> {
        let s = &self.inner.as_ref()?.shared;
        Some(Stats {
            available: s.check().is_ok(),
            lines: s.lines.load(Ordering::Relaxed),
            folded: s.folded.load(Ordering::Relaxed),
            lost: s.lost_total.load(Ordering::Relaxed),
            refused: s.refused_total.load(Ordering::Relaxed),
        })
    }

    /// Records an event without waiting. When the queue is full the event
    /// is counted and reported in the next `gap` line.
    pub fn record(&self, event: Event) {
        if let Some(i) = &self.inner {
            if i.try_send((event, None)).is_err() {
                i.shared.lose(1);
            }
        }
    }

    /// Records an event and waits until it is durable (fsynced), at most `wait`.
    /// Refuses at once while the file cannot be written or a write is stuck.
    pub async fn record_durable(&self, event: Event, wait: Duration) -> Result<(), Unavailable> {
        self.record_and_wait(event, wait, true).await
    }

    /// Records an event and waits until it is written into the file (not yet
    /// fsynced), at most `wait`: for a change whose commit calls
    /// [`Sink::sync_written`] first, so that the line is durable before the change is.
    pub async fn record_written(&self, event: Event, wait: Duration) -> Result<(), Unavailable> {
        self.record_and_wait(event, wait, false).await
    }

    async fn record_and_wait(&self, event: Event, wait: Duration, durable: bool) -> Result<(), Unavailable> {
        let Some(i) = &self.inner else { return Ok(()) };
        if let Err(e) = i.shared.check() {
            i.shared.refuse();
            return Err(e);
        }
        let (ack, done) = oneshot::channel();
        if i.try_send((event, Some(Waiter { ack, durable }))).is_err() {
            i.shared.refuse();
            return Err(Unavailable::Full);
        }
        i.writer.unpark();
        // Wait for the writer, but give up as soon as it is seen stuck rather than at the deadline.
        let deadline = Instant::now() + wait;
        tokio::pin!(done);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Unavailable::Timeout);
            }
            match tokio::time::timeout(left.min(STALL / 4), &mut done).await {
                Ok(Ok(r)) => return r,
                Ok(Err(_)) => return Err(Unavailable::Closed),
                Err(_) => i.shared.check()?,
            }
        }
    }

    /// Makes every line written so far durable (one fsync shared by every
    /// caller waiting at the time). Blocks: the store calls it from its commit
    /// thread before each commit. A failure makes the trail unavailable to admin
    /// writes until the writer has started over.
    pub fn sync_written(&self) -> Result<(), Unavailable> {
        let Some(i) = &self.inner else { return Ok(()) };
        i.shared.check()?;
        i.shared.sync.sync_written().inspect_err(|e| {
            i.shared.set_failing(&e.to_string());
            i.writer.unpark();
        })
    }

    /// Anchors from now on with `key` (and anchors at once what came before).
    pub fn set_key(&self, key: AuditKey) {
        if let Some(i) = &self.inner {
            if let Ok(mut k) = i.shared.key.lock() {
                *k = Some(key);
            }
        }
    }

    /// Writes a last anchor and stops the writer, waiting at most `wait`.
    pub async fn close(&self, wait: Duration) {
        let Some(i) = &self.inner else { return };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut c) = i.shared.close.lock() {
            *c = Some(tx);
        }
        let _ = tokio::time::timeout(wait, rx).await;
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The next line's position and the hash of the line before it.
#[derive(Clone, Copy)]
struct Head {
    seq: u64,
    hash: [u8; 32],
}

struct OpenFile {
    file: Arc<File>,
    len: u64,
    regular: bool,
    /// The file's device and inode, taken at open: what the path must still name.
    id: (u64, u64),
}

/// The free space of the audit file system at the last look.
#[derive(Clone, Copy)]
struct Space {
    at: Instant,
    free: u64,
    /// [`Writer::appended`] at that time.
    appended: u64,
}

/// Longest time a look at the free space is trusted for (the trail's own lines are
/// subtracted meanwhile; other writers to the file system count from the next look).
const SPACE_EVERY: Duration = Duration::from_millis(100);

/// The `start` line still to write: why, and what the Safe found when it read the trail back.
#[derive(Default)]
struct StartNote {
    note: String,
    cut_head_seq: Option<u64>,
    head_missing: bool,
}

impl From<String> for StartNote {
    fn from(note: String) -> Self {
        Self { note, ..Self::default() }
    }
}

/// A failure logged at most once per [`LOG_EVERY`]: counts the repeats in between.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    /// `Some(repeats not logged since the last time)` when this one is to be logged.
    fn ready(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.skipped))
    }
}

/// The writer thread's state.
struct Writer {
    cfg: SinkConfig,
    shared: Arc<Shared>,
    file: Option<OpenFile>,
    /// Whether the chain head was read from the existing trail.
    loaded: bool,
    next_open: Instant,
    head: Head,
    key: Option<AuditKey>,
    anchor_due: bool,
    since_anchor: u64,
    last_anchor: Instant,
    failing_since: Option<OffsetDateTime>,
    /// The `start` line still to write.
    start: Option<StartNote>,
    /// When a rotation that failed is tried again.
    next_rotate: Instant,
    rotate_errors: Throttle,
    head_errors: Throttle,
    retention_errors: Throttle,
    /// Rotated files deleted by retention and the first event kept, for the next `retention` line.
    retention: Option<(u64, u64)>,
    last_retain: Instant,
    /// Retention is to run at the next housekeeping (after the trail was read back at start).
    retain_due: bool,
    /// Whether the file system had less free space than the reserve at the last look.
    low_space: bool,
    /// The last look at the free space.
    space: Option<Space>,
    /// Bytes appended since start (every file), to discount them from the last look at the free space.
    appended: u64,
    /// When the path was last compared with the open file.
    moved_checked: Instant,
    stdout: Option<SyncSender<Vec<u8>>>,
    /// Series of identical requests whose first line is written.
    folds: Folds,
}

impl Writer {
    fn new(cfg: SinkConfig, shared: Arc<Shared>) -> io::Result<Self> {
        let stdout = if cfg.stdout { Some(stdout_thread()?) } else { None };
        let folds = Folds::new(FoldLimits {
            window: cfg.fold,
            max_series: cfg.fold_max_series.max(1),
            per_caller: cfg.fold_series_per_caller.max(1),
        });
        let now = Instant::now();
        Ok(Self {
            cfg,
            shared,
            file: None,
            loaded: false,
            next_open: now,
            head: Head { seq: 0, hash: [0; 32] },
            key: None,
            anchor_due: false,
            since_anchor: 0,
            last_anchor: now,
            failing_since: None,
            start: Some("the Safe started".to_owned().into()),
            next_rotate: now,
            rotate_errors: Throttle::default(),
            head_errors: Throttle::default(),
            retention_errors: Throttle::default(),
            retention: None,
            last_retain: now,
            retain_due: false,
            low_space: false,
            space: None,
            appended: 0,
            moved_checked: now,
            stdout,
            folds,
        })
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let mut batch = Vec::new();
            // Lines someone waits to see durable are fsynced within DURABLE_GATHER, unless a commit's fsync covers
            // them first.
            let waiting = self.shared.sync.oldest_waiting();
            let timeout = waiting.map_or(TICK, |t| DURABLE_GATHER.saturating_sub(t.elapsed()));
            match rx.recv_timeout(timeout) {
                Ok(m) => {
                    if m.1.is_none() && waiting.is_none() {
                        // Gather more fetch lines into this batch: one write and no wake-up per line.
                        std::thread::park_timeout(GATHER);
                    }
                    batch.push(m);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.finish(),
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            if let Some(k) = self.shared.key.lock().ok().and_then(|mut k| k.take()) {
                self.key = Some(k);
                self.anchor_due = true;
            }
            self.write_batch(batch, false);
            if let Some(why) = self.shared.sync.take_broken() {
                // An fsync run for a commit failed: start over in a fresh open of the file, with a gap line.
                self.drop_file(&why);
                self.failed(&why, None, Vec::new());
            }
            if self.shared.sync.oldest_waiting().is_some_and(|t| t.elapsed() >= DURABLE_GATHER) {
                self.sync_now();
            }
            self.housekeeping();
            if let Some(done) = self.shared.close.lock().ok().and_then(|mut c| c.take()) {
                // What was queued before the close is written too.
                let rest: Vec<Msg> = rx.try_iter().collect();
                self.shared.queued.fetch_sub(rest.len(), Ordering::AcqRel);
                self.write_batch(rest, false);
                self.finish();
                let _ = done.send(());
                return;
            }
        }
    }

    /// Writes the pending `start` and `gap` lines, the repeats of series whose
    /// fold window closed (all when `all`) and `batch`, then answers the waiting requests.
    fn write_batch(&mut self, batch: Vec<Msg>, all: bool) {
        let (batch, folded) = self.folds.fold(batch);
        self.shared.folded.fetch_add(folded, Ordering::Relaxed);
        let mut repeats = self.folds.closed(all);
        let mut gap = self.failing_since.is_some()
            || self.shared.lost.load(Ordering::Relaxed) > 0
            || self.shared.refused.load(Ordering::Relaxed) > 0;
        let mut batch = batch;
        if !(batch.is_empty() && repeats.is_empty()) && self.below_reserve() {
            // The reserve is for admin writes: other lines are counted (the gap line written once there is
            // room again says how many), so that a flood of them cannot use up the space admin lines need.
            self.lose_repeats(&std::mem::take(&mut repeats));
            let before = batch.len();
            batch.retain(|(e, waiter)| waiter.is_some() || e.phase.is_some());
            if batch.len() < before {
                self.shared.lose((before - batch.len()) as u64);
            }
            gap = self.failing_since.is_some();
        }
        if batch.is_empty() && repeats.is_empty() && !gap && self.start.is_none() && self.retention.is_none() {
            return;
        }
        self.check_moved();
        if self.cfg.file.is_some() && !self.loaded {
            // The first open reads the chain head from the trail: before any line is built.
            if let Err(why) = self.open().map(|_| ()) {
                self.lose_repeats(&repeats);
                return self.failed(&why, None, batch);
            }
        }
        let mut buf = Vec::with_capacity(256 * (batch.len() + 2));
        let mut head = self.head;
        let now = OffsetDateTime::now_utc();
        if let Some(start) = &self.start {
            let bare = Out::bare(head.seq, Kind::Start, now, hex::encode(head.hash));
            let out = Out {
                note: Some(start.note.clone()),
                cut_head_seq: start.cut_head_seq,
                head_missing: start.head_missing.then_some(true),
                ..bare
            };
            push(&mut buf, &mut head, &out);
        }
        let taken = gap.then(|| self.push_gap(&mut buf, &mut head, now));
        if let Some((deleted, first_kept)) = self.retention {
            let out = Out {
                deleted_files: Some(deleted),
                first_kept: Some(first_kept),
                note: Some(
                    "rotated files past the retention limits were deleted: the trail starts at first_kept".into(),
                ),
                ..Out::bare(head.seq, Kind::Retention, now, hex::encode(head.hash))
            };
            push(&mut buf, &mut head, &out);
        }
        for r in &repeats {
            let out = repeats_line(head.seq, r, hex::encode(head.hash));
            push(&mut buf, &mut head, &out);
        }
        for (e, _) in &batch {
            let out = Out::request(head.seq, e, hex::encode(head.hash));
            push(&mut buf, &mut head, &out);
        }
        match self.append(&buf, head.seq) {
            Ok(()) => {
                self.since_anchor += self.advance(head);
                self.start = None;
                self.retention = None;
                self.recovered(taken);
                let mut durable = Vec::new();
                for w in batch.into_iter().filter_map(|(_, w)| w) {
                    if w.durable {
                        durable.push(w.ack);
                    } else {
                        let _ = w.ack.send(Ok(()));
                    }
                }
                self.shared.sync.wait_for(head.seq, durable);
            }
            Err(why) => {
                self.lose_repeats(&repeats);
                self.failed(&why, taken, batch)
            }
        }
    }

    /// Moves the chain head past lines just written, and counts them; returns how many.
    fn advance(&mut self, head: Head) -> u64 {
        let written = head.seq - self.head.seq;
        self.shared.lines.fetch_add(written, Ordering::Relaxed);
        self.head = head;
        written
    }

    /// Counts the repeats whose line was not written as lost (the next `gap` line reports them).
    fn lose_repeats(&self, repeats: &[Repeats]) {
        let lost: u64 = repeats.iter().map(|r| r.count).sum();
        if lost > 0 {
            self.shared.lose(lost);
        }
    }

    /// Adds the gap line; returns the counts it took (given back if it is not written).
    fn push_gap(&mut self, buf: &mut Vec<u8>, head: &mut Head, now: OffsetDateTime) -> (u64, u64, i64) {
        let lost = self.shared.lost.swap(0, Ordering::Relaxed);
        let refused = self.shared.refused.swap(0, Ordering::Relaxed);
        let first = self.shared.first_missed_ms.swap(0, Ordering::Relaxed);
        let from = match (self.failing_since, first) {
            (Some(t), _) => t,
            (None, ms) => OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(now),
        };
        let out = Out {
            lost: Some(lost),
            refused: Some(refused),
            from: Some(line::rfc3339(from)),
            note: Some("events were not written between from and time".to_owned()),
            ..Out::bare(head.seq, Kind::Gap, now, hex::encode(head.hash))
        };
        push(buf, head, &out);
        (lost, refused, first)
    }

    fn recovered(&mut self, taken: Option<(u64, u64, i64)>) {
        if self.failing_since.take().is_some() {
            let (lost, refused, _) = taken.unwrap_or_default();
            tracing::warn!(lost, refused, "the audit trail is written again; a gap line records what was missed");
        }
        self.shared.failing.store(false, Ordering::Release);
    }

    fn failed(&mut self, why: &str, taken: Option<(u64, u64, i64)>, batch: Vec<Msg>) {
        if let Some((lost, refused, first)) = taken {
            self.shared.lost.fetch_add(lost, Ordering::Relaxed);
            self.shared.refused.fetch_add(refused, Ordering::Relaxed);
            let _ = self.shared.first_missed_ms.compare_exchange(0, first, Ordering::Relaxed, Ordering::Relaxed);
        }
        for (_, waiter) in batch {
            match waiter {
                Some(w) => {
                    self.shared.refuse();
                    let _ = w.ack.send(Err(Unavailable::Io(why.to_owned())));
                }
                None => self.shared.lose(1),
            }
        }
        if self.failing_since.is_none() {
            self.failing_since = Some(OffsetDateTime::now_utc());
            tracing::error!(
                error = why,
                "the audit trail cannot be written: admin writes are refused (503) until it can; fetches go on \
                 and a gap line will record what was missed"
            );
        }
        self.shared.set_failing(why);
    }

    /// Appends `buf`, whose lines end before `end`, to the file (and standard output), without an fsync.
    fn append(&mut self, buf: &[u8], end: u64) -> Result<(), String> {
        if self.cfg.file.is_some() {
            self.shared.busy_since.store(self.shared.now_ms(), Ordering::Release);
            let r = self.write_file(buf);
            self.shared.busy_since.store(0, Ordering::Release);
            r?;
        }
        self.shared.sync.wrote(end);
        if let Some(out) = &self.stdout {
            let _ = out.try_send(buf.to_vec());
        }
        Ok(())
    }

    fn write_file(&mut self, buf: &[u8]) -> Result<(), String> {
        let f = self.open()?;
        let before = f.len;
        match (&*f.file).write_all(buf) {
            Ok(()) => {
                f.len += buf.len() as u64;
                self.appended += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Take back a partly written batch: the chain goes on from the last whole line.
                if f.regular {
                    let _ = f.file.set_len(before);
                }
                let why = e.to_string();
                self.drop_file(&why);
                Err(why)
            }
        }
    }

    /// Makes every line written durable (an fsync, unless a commit's fsync already covered them).
    fn sync_now(&mut self) {
        if let Err(e) = self.shared.sync.sync_through(self.head.seq) {
            let why = e.to_string();
            self.shared.sync.take_broken();
            self.drop_file(&why);
            self.failed(&why, None, Vec::new());
        }
    }

    /// Stops writing into the open file after a failure: what it holds unsynced is given up (its waiters fail).
    fn drop_file(&mut self, why: &str) {
        self.file = None;
        self.shared.sync.abandon(why);
    }

    /// Closes the open file after making it durable, so that the next line starts a new one.
    fn close_file(&mut self) {
        self.sync_now();
        self.file = None;
        self.shared.sync.switch(None, self.head.seq);
    }

    /// The open audit file, opening it (at most once per [`REOPEN_EVERY`]) if needed.
    fn open(&mut self) -> Result<&mut OpenFile, String> {
        if self.file.is_none() {
            let Some(path) = self.cfg.file.clone() else { return Err("no audit file".to_owned()) };
            if Instant::now() < self.next_open {
                return Err("the audit file could not be opened (retrying every second)".to_owned());
            }
            self.next_open = Instant::now() + REOPEN_EVERY;
            let f = self.open_file(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // A pipe or device cannot be fsynced: a line written into it is as durable as it gets.
            self.shared.sync.switch(f.regular.then(|| f.file.clone()), self.head.seq);
            self.file = Some(f);
        }
        self.file.as_mut().ok_or_else(|| "no audit file".to_owned())
    }

    fn open_file(&mut self, path: &Path) -> io::Result<OpenFile> {
        // The directory may have been removed while the Safe ran: make it again.
        create_private_dir(aegis_fs::parent_dir(path))?;
        // Non-blocking open: a FIFO with no reader fails (ENXIO) instead of hanging.
        let file =
            OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(nix::libc::O_NONBLOCK).open(path)?;
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND))?;
        let meta = file.metadata()?;
        let regular = meta.is_file();
        let id = (meta.dev(), meta.ino());
        let mut len = 0;
        if regular {
            let tail = files::tail(path)?;
            if tail.complete_len < tail.len {
                tracing::warn!(
                    bytes = tail.len - tail.complete_len,
                    "the audit file ends with a partial line (a crash or failed write); it is cut off"
                );
                file.set_len(tail.complete_len)?;
            }
            len = tail.complete_len;
            if !self.loaded {
                self.load_head(path, tail.last)?;
                self.retain_due = true;
            }
        }
        self.loaded = true;
        Ok(OpenFile { file: Arc::new(file), len, regular, id })
    }

    /// Continues the chain from the last line of the trail (the current file, else the newest rotated one).
    fn load_head(&mut self, path: &Path, last: Option<Vec<u8>>) -> io::Result<()> {
        let last = match last {
            Some(l) => Some(l),
            None => match files::rotated_files(path)?.last() {
                Some((_, p)) => files::tail(p)?.last,
                None => None,
            },
        };
        if let Some(l) = &last {
            let seq = Parsed::parse(l).map(|p| p.seq + 1);
            if seq.is_none() {
                tracing::error!(
                    "the last line of the audit trail is not an audit event; the chain goes on from its hash"
                );
            }
            self.head = Head { seq: seq.unwrap_or(0), hash: line::hash(l) };
            self.start = Some("the Safe started; the chain goes on from the trail's last line".to_owned().into());
        }
        self.compare_sealed_head(path, last.is_some());
        Ok(())
    }

    /// Compares the trail just read back with its sealed head: a trail that ends
    /// before the head's anchor was cut, and the `start` line says so.
    fn compare_sealed_head(&mut self, path: &Path, had_lines: bool) {
        let Some(head_path) = self.cfg.head.clone() else { return };
        let sealed = match SealedHead::read(&head_path) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, head = %head_path.display(), "cannot read the audit head; it is treated as missing");
                None
            }
        };
        // A head of another audit file (the trail was moved with --audit-file) says nothing about this one.
        let sealed = sealed.filter(|h| h.file == path.display().to_string());
        let start = self.start.get_or_insert_with(StartNote::default);
        match sealed {
            None if had_lines => {
                tracing::warn!(
                    head = %head_path.display(),
                    "the audit head is missing although the trail has lines: whether its newest lines were removed \
                     cannot be proven (the start line records it)"
                );
                start.head_missing = true;
            }
            None => {}
            Some(h) => {
                let last = self.head.seq.checked_sub(1).filter(|_| had_lines);
                let cut = last.is_none_or(|n| n < h.seq || (n == h.seq && hex::encode(self.head.hash) != h.hash));
                if cut {
                    tracing::error!(
                        head_seq = h.seq,
                        trail_end = ?last,
                        "the audit trail was cut back: it ends before the anchor its sealed head records (newest lines \
                         or files removed); the start line records it and `aegis audit verify` reports it"
                    );
                    start.cut_head_seq = Some(h.seq);
                    start.note = format!(
                        "the Safe started; the trail was cut back: its sealed head records event {} but the trail ends \
                         {}; the chain goes on from what is left",
                        h.seq,
                        last.map_or("empty".to_owned(), |n| format!("at event {n}"))
                    );
                }
            }
        }
    }

    /// Records the anchor just written (`seq`, whose line hashes to `hash`) in the sealed head.
    fn write_head(&mut self, seq: u64, hash: &[u8; 32]) {
        let (Some(path), Some(key), Some(file)) = (&self.cfg.head, &self.key, &self.cfg.file) else { return };
        let head = SealedHead::seal(key, seq, hash, file, line::rfc3339(OffsetDateTime::now_utc()));
        if let Err(e) = head.write(path) {
            if let Some(skipped) = self.head_errors.ready() {
                tracing::error!(
                    error = %e, head = %path.display(), skipped,
                    "cannot write the audit head: verify can then only prove the trail up to an older anchor"
                );
            }
        }
    }

    /// Notices an audit file moved or deleted (its path now names another
    /// file, or none): the next line starts a new file at the path, rather
    /// than going on into a file nobody will find.
    /// One `stat` of the path: the open file's identity was taken when it was opened.
    fn check_moved(&mut self) {
        self.moved_checked = Instant::now();
        let (Some(path), Some(open)) = (&self.cfg.file, &self.file) else { return };
        let same = std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == open.id);
        if same {
            return;
        }
        tracing::warn!(
            file = %path.display(),
            "the audit file was moved or deleted while the Safe ran: a new one is started at its path; the lines \
             written before are in the moved file (or lost if it was deleted), and verify reports them missing"
        );
        self.close_file();
        self.next_open = Instant::now();
        self.start = Some(
            "the audit file was moved or deleted while the Safe ran; the chain goes on from the last line written to it"
                .to_owned()
                .into(),
        );
    }

    /// The timed fsync, anchors and rotation.
    fn housekeeping(&mut self) {
        if self.failing_since.is_some() {
            return;
        }
        // Before every write (in `write_batch`), and every TICK while nothing is written.
        if self.moved_checked.elapsed() >= TICK {
            self.check_moved();
        }
        if self.start.is_some() && self.file.is_none() && self.loaded {
            // Reopen at once, so that a trail that cannot be written is seen (and reported) now.
            self.write_batch(Vec::new(), false);
            if self.failing_since.is_some() {
                return;
            }
        }
        if self.shared.sync.unsynced().is_some_and(|since| since >= SYNC_EVERY) {
            self.sync_now();
            if self.failing_since.is_some() {
                return;
            }
        }
        let due = self.anchor_due
            || self.since_anchor >= self.cfg.anchor_every
            || self.last_anchor.elapsed() >= ANCHOR_INTERVAL;
        if self.since_anchor > 0 && due {
            self.anchor();
        }
        if self.file.as_ref().is_some_and(|f| f.regular && f.len >= self.cfg.max_file_bytes) {
            self.rotate();
        }
        if self.loaded && (self.retain_due || self.last_retain.elapsed() >= RETAIN_EVERY) {
            self.retain();
        }
        if self.retention.is_some() {
            self.write_batch(Vec::new(), false);
        }
    }

    /// Whether the audit file system has less free space than the reserve
    /// (then only admin writes' lines are written); logs each change. While
    /// there is room, a look at the free space serves for [`SPACE_EVERY`].
    fn below_reserve(&mut self) -> bool {
        let Some(path) = &self.cfg.file else { return false };
        if self.cfg.reserve_bytes == 0 || self.file.as_ref().is_some_and(|f| !f.regular) {
            return false;
        }
        if let Some(last) = self.space.filter(|l| !self.low_space && l.at.elapsed() < SPACE_EVERY) {
            // A recent look, less what the trail wrote since: no `statvfs` per batch while there is room.
            if last.free.saturating_sub(self.appended - last.appended) >= self.cfg.reserve_bytes {
                return false;
            }
        }
        let Ok(fs) = nix::sys::statvfs::statvfs(aegis_fs::parent_dir(path)) else { return false };
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        let free = (fs.blocks_available() as u64).saturating_mul(fs.fragment_size() as u64);
        self.space = Some(Space { at: Instant::now(), free, appended: self.appended });
        let low = free < self.cfg.reserve_bytes;
        if low != self.low_space {
            self.low_space = low;
            if low {
                tracing::warn!(
                    free,
                    reserve = self.cfg.reserve_bytes,
                    "the audit file system has less free space than its reserve: fetch and read lines are counted, \
                     not written, so that admin writes can still be recorded; free space (see docs/AUDIT.md)"
                );
            } else {
                tracing::info!(free, "the audit file system has room again: every line is written");
            }
        }
        low
    }

    /// Deletes the oldest rotated files past the size or age limit; the next
    /// batch writes a `retention` line saying where the trail now starts.
    fn retain(&mut self) {
        self.last_retain = Instant::now();
        self.retain_due = false;
        let Some(path) = self.cfg.file.clone() else { return };
        let rotated = match files::rotated_files(&path) {
            Ok(r) => r,
            Err(e) => return self.retention_error(&e),
        };
        let sized: Vec<(PathBuf, u64, Option<Duration>)> = rotated
            .into_iter()
            .filter_map(|(_, p)| {
                let m = std::fs::metadata(&p).ok().filter(std::fs::Metadata::is_file)?;
                let age = m.modified().ok().and_then(|t| t.elapsed().ok());
                Some((p, m.len(), age))
            })
            .collect();
        let current = self.file.as_ref().map_or(0, |f| f.len);
        let mut total = current + sized.iter().map(|(_, len, _)| len).sum::<u64>();
        let mut deleted = 0;
        for (p, len, age) in &sized {
            let too_old = !self.cfg.max_age.is_zero() && age.is_some_and(|a| a > self.cfg.max_age);
            // Room for the current file to grow to its full size: the trail never passes the limit.
            if total.saturating_add(self.cfg.max_file_bytes) <= self.cfg.max_total_bytes && !too_old {
                break;
            }
            if let Err(e) = std::fs::remove_file(p) {
                self.retention_error(&e);
                break;
            }
            total -= len;
            deleted += 1;
        }
        if deleted == 0 {
            return;
        }
        let _ = aegis_fs::sync_dir(aegis_fs::parent_dir(&path));
        let first_kept = files::trail_files(&path)
            .ok()
            .and_then(|f| f.first().and_then(|p| files::first_seq(p)))
            .unwrap_or(self.head.seq);
        let before = self.retention.map_or(0, |(n, _)| n);
        self.retention = Some((before + deleted, first_kept));
        tracing::info!(deleted, first_kept, "audit retention deleted the oldest rotated files (size or age limit)");
    }

    fn retention_error(&mut self, e: &io::Error) {
        if let Some(skipped) = self.retention_errors.ready() {
            tracing::error!(error = %e, skipped, "audit retention could not delete the oldest rotated files");
        }
    }

    /// Writes an anchor line (durably) if a key is loaded.
    fn anchor(&mut self) {
        let Some(key) = &self.key else { return };
        let key_id = key.id().to_string();
        let prev = hex::encode(self.head.hash);
        let mac = hex::encode(key.mac(&anchor_message(self.head.seq, &prev, &key_id)));
        let out = Out {
            key_id: Some(key_id),
            mac: Some(mac),
            ..Out::bare(self.head.seq, Kind::Anchor, OffsetDateTime::now_utc(), prev)
        };
        let mut buf = Vec::with_capacity(256);
        let mut head = self.head;
        push(&mut buf, &mut head, &out);
        let seq = self.head.seq;
        match self.append(&buf, head.seq) {
            Ok(()) => {
                self.advance(head);
                self.sync_now();
                if self.failing_since.is_some() {
                    return;
                }
                self.write_head(seq, &head.hash);
                self.since_anchor = 0;
                self.anchor_due = false;
                self.last_anchor = Instant::now();
            }
            Err(why) => self.failed(&why, None, Vec::new()),
        }
    }

    /// Anchors, then moves the file aside as the next rotated file; the next line starts a new file.
    fn rotate(&mut self) {
        let Some(path) = self.cfg.file.clone() else { return };
        if Instant::now() < self.next_rotate {
            return;
        }
        if self.since_anchor > 0 {
            self.anchor();
        }
        if self.failing_since.is_some() {
            return;
        }
        let n = files::rotated_files(&path).ok().and_then(|r| r.last().map(|(n, _)| n + 1)).unwrap_or(1);
        let to = files::rotated(&path, n);
        match std::fs::rename(&path, &to).and_then(|()| aegis_fs::sync_dir(aegis_fs::parent_dir(&path))) {
            Ok(()) => {
                self.close_file();
                self.next_open = Instant::now();
                self.start = Some(format!("rotated: the chain goes on from {}", to.display()).into());
                self.retain();
            }
            Err(e) => {
                self.next_rotate = Instant::now() + ROTATE_RETRY;
                if let Some(skipped) = self.rotate_errors.ready() {
                    tracing::error!(
                        error = %e, file = %path.display(), skipped,
                        "could not rotate the audit file; it keeps growing (retried every second, logged once a \
                         minute: `skipped` counts the failures not logged)"
                    );
                }
            }
        }
    }

    /// The last anchor (or fsync) before stopping.
    fn finish(&mut self) {
        if self.failing_since.is_none() {
            self.write_batch(Vec::new(), true);
            if self.key.is_some() && self.since_anchor > 0 {
                self.anchor();
            }
            self.sync_now();
        }
    }
}

/// The line of a series' repeats; a catch-all line leaves out what its requests did not share.
fn repeats_line(seq: u64, r: &Repeats, prev: String) -> Out<'_> {
    let out = Out { count: Some(r.count), since: Some(line::rfc3339(r.since)), ..Out::request(seq, &r.event, prev) };
    if !r.varied {
        return out;
    }
    Out {
        caller: (!r.event.caller.is_empty()).then_some(&*r.event.caller),
        secrets: None,
        version: None,
        result: None,
        status: None,
        varied: Some(true),
        note: Some(
            if r.event.caller.is_empty() {
                "requests of many callers past the fold limit: counted, not itemized"
            } else {
                "requests of this caller that differed (names, versions, statuses) past its share of folded series: \
                 counted, not itemized"
            }
            .to_owned(),
        ),
        ..out
    }
}

/// Serializes `out` as one line onto `buf` and moves `head` past it.
fn push(buf: &mut Vec<u8>, head: &mut Head, out: &Out<'_>) {
    let start = buf.len();
    if serde_json::to_writer(&mut *buf, out).is_err() {
        buf.truncate(start);
        return;
    }
    head.hash = line::hash(&buf[start..]);
    head.seq += 1;
    buf.push(b'\n');
}

/// A thread that copies lines to standard output, so a slow reader of it never holds up the file.
fn stdout_thread() -> io::Result<SyncSender<Vec<u8>>> {
    let (tx, rx) = sync_channel::<Vec<u8>>(STDOUT_QUEUE);
    std::thread::Builder::new().name("aegis-audit-stdout".into()).spawn(move || {
        for buf in rx {
            let mut out = io::stdout().lock();
            let _ = out.write_all(&buf).and_then(|()| out.flush());
        }
    })?;
    Ok(tx)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aegis_crypto::RootKey;

    use super::*;
    use crate::Phase;

    fn fetch(i: usize, caller: &str, status: u16) -> Event {
        Event {
            time: OffsetDateTime::now_utc(),
            request_id: format!("r{i}").into(),
            caller: Arc::from(caller),
            action: "fetch",
            api: "vsecm",
            route: "/workload/v1/secrets",
            secrets: vec!["billing".to_owned()],
            version: Some(3),
            status,
            phase: None,
            policy: None,
        }
    }

    /// 500 fetches by `a`, every 50th refused (404), every 100th beside an admin write; the lines written.
    async fn flood(dir: &Path, fold: Duration) -> Vec<serde_json::Value> {
        let path = dir.join("audit.log");
        let key = RootKey::generate();
        let sink = Sink::start(SinkConfig { fold, ..SinkConfig::new(Some(path.clone())) }).unwrap();
        sink.set_key(key.audit_key());
        for i in 0..500 {
            sink.record(fetch(i, "spiffe://td/a", if i % 50 == 0 { 404 } else { 200 }));
            if i % 100 == 0 {
                let write = Event { phase: Some(Phase::Intent), ..fetch(i, "spiffe://td/admin", 0) };
                sink.record_durable(write, Duration::from_secs(5)).await.unwrap();
            }
        }
        sink.close(Duration::from_secs(5)).await;
        crate::verify::verify(std::slice::from_ref(&path), &[key.audit_key()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn series<'a>(lines: &'a [serde_json::Value], caller: &str, status: u64) -> Vec<&'a serde_json::Value> {
        lines.iter().filter(|l| l["caller"] == caller && l["status"] == status).collect()
    }

    /// How many requests the lines stand for.
    fn requests(lines: &[&serde_json::Value]) -> u64 {
        lines.iter().map(|l| l["count"].as_u64().unwrap_or(1)).sum()
    }

    #[tokio::test]
    async fn repeated_requests_are_folded_into_a_counted_line_and_writes_never_are() {
        let dir = tempfile::tempdir().unwrap();
        let lines = flood(dir.path(), Duration::from_secs(30)).await;
        let ok = series(&lines, "spiffe://td/a", 200);
        assert_eq!(requests(&ok), 490, "every fetch is counted: {ok:?}");
        assert_eq!(ok.len(), 2, "the first fetch, then one line for its repeats: {ok:?}");
        assert!(ok[0].get("count").is_none() && ok[0]["request_id"] == "r1", "{:?}", ok[0]);
        let repeats = ok[1];
        assert_eq!((repeats["count"].as_u64(), repeats["request_id"].as_str()), (Some(489), Some("r499")));
        assert!(repeats["since"].as_str().unwrap() <= repeats["time"].as_str().unwrap(), "{repeats}");
        let refused = series(&lines, "spiffe://td/a", 404);
        assert_eq!((requests(&refused), refused.len()), (10, 2), "a different answer is another series: {refused:?}");
        let writes = lines.iter().filter(|l| l["phase"] == "intent").count();
        assert_eq!(writes, 5, "admin writes are each written, never folded");
    }

    #[tokio::test]
    async fn a_zero_fold_window_writes_a_line_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let lines = flood(dir.path(), Duration::ZERO).await;
        let ok = series(&lines, "spiffe://td/a", 200);
        assert_eq!((ok.len(), requests(&ok)), (490, 490));
        assert!(ok.iter().all(|l| l.get("count").is_none()));
    }

    #[tokio::test]
    async fn a_durable_line_is_in_the_file_when_its_wait_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = Sink::start(SinkConfig::new(Some(path.clone()))).unwrap();
        for i in 0..20 {
            let done = Event { phase: Some(Phase::Done), ..fetch(i, "spiffe://td/admin", 200) };
            sink.record_durable(done, Duration::from_secs(5)).await.unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(&format!("\"request_id\":\"r{i}\"")), "line {i} not written: {text}");
        }
        sink.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn repeats_that_could_not_be_written_are_counted_in_the_gap_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let sink = Sink::start(SinkConfig { fold: Duration::from_millis(100), ..SinkConfig::new(Some(path.clone())) })
            .unwrap();
        // Nobody reads the FIFO: it cannot be opened, the first fetch and then its folded repeats are lost.
        for i in 0..50 {
            sink.record(fetch(i, "spiffe://td/a", 200));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reader = std::thread::spawn(move || std::fs::read(&path).unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sink.close(Duration::from_secs(5)).await;
        drop(sink);
        let text = String::from_utf8(reader.join().unwrap()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let gaps: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "gap").collect();
        assert_eq!(gaps.len(), 1, "{text}");
        assert_eq!(gaps[0]["lost"].as_u64(), Some(50), "the first line and its 49 repeats: {text}");
        assert!(series(&lines, "spiffe://td/a", 200).is_empty(), "{text}");
    }

    #[tokio::test]
    async fn a_series_ends_with_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = Sink::start(SinkConfig { fold: Duration::from_millis(100), ..SinkConfig::new(Some(path.clone())) })
            .unwrap();
        for i in 0..3 {
            sink.record(fetch(2 * i, "spiffe://td/a", 200));
            sink.record(fetch(2 * i + 1, "spiffe://td/a", 200));
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let ok = series(&lines, "spiffe://td/a", 200);
        let counts: Vec<Option<u64>> = ok.iter().map(|l| l["count"].as_u64()).collect();
        assert_eq!(counts, [None, Some(1), None, Some(1), None, Some(1)], "written before the Safe stops: {ok:?}");
        sink.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn rotated_files_past_their_age_are_deleted_and_the_trail_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = RootKey::generate();
        let cfg = |max_age| SinkConfig { max_file_bytes: 2000, max_age, ..SinkConfig::new(Some(path.clone())) };
        let sink = Sink::start(cfg(Duration::ZERO)).unwrap();
        sink.set_key(key.audit_key());
        for i in 0..60 {
            let e = Event { phase: Some(Phase::Done), ..fetch(i, "spiffe://td/admin", 200) };
            sink.record_durable(e, Duration::from_secs(5)).await.unwrap();
        }
        sink.close(Duration::from_secs(5)).await;
        let rotated = files::rotated_files(&path).unwrap();
        assert!(rotated.len() >= 3, "{rotated:?}");
        let year_ago = std::time::SystemTime::now() - Duration::from_secs(365 * 86_400);
        for (_, p) in &rotated[..2] {
            File::options().write(true).open(p).unwrap().set_modified(year_ago).unwrap();
        }
        let sink = Sink::start(cfg(Duration::from_secs(86_400))).unwrap();
        sink.set_key(key.audit_key());
        tokio::time::sleep(Duration::from_millis(500)).await;
        sink.close(Duration::from_secs(5)).await;
        let files = files::trail_files(&path).unwrap();
        assert!(!files.contains(&rotated[0].1) && !files.contains(&rotated[1].1), "{files:?}");
        assert!(files.contains(&rotated[2].1), "younger files are kept: {files:?}");
        let s = crate::verify(&files, &[key.audit_key()]).unwrap();
        assert!(s.first_seq > 0 && s.retained_from == Some(s.first_seq), "{s:?}");
        std::fs::remove_file(&files[0]).unwrap();
        let files = files::trail_files(&path).unwrap();
        let f = crate::verify(&files, &[key.audit_key()]).unwrap_err();
        assert_eq!(f.kind, crate::FindingKind::Incomplete, "{f}");
    }
}
