//! Checks a trail: the hash chain line by line, with the root keys the
//! anchors' MACs, and with the sealed head that the newest lines are there.
//! Names the first line that was changed, removed, reordered or truncated.
//!
//! The files are read as a stream, a line at a time, so memory stays bounded
//! whatever the size of the trail: one line (at most [`MAX_LINE`] bytes) and
//! a short lookahead of [`LOOKAHEAD`] lines to tell a reordering from a removal.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use aegis_crypto::AuditKey;

use crate::files::MAX_LINE;
use crate::head::Head;
use crate::line::{self, anchor_message, Kind, Parsed, GENESIS};

/// Lines read ahead, at most, to tell lines moved later from lines removed.
pub const LOOKAHEAD: usize = 64;
/// Read buffer per file.
const READ_BUFFER: usize = 64 * 1024;

/// What is wrong at a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A line's content differs from what the chain recorded.
    Changed,
    /// Lines are missing.
    Removed,
    /// Lines are out of order.
    Reordered,
    /// A file ends in the middle of a line.
    Truncated,
    /// An anchor's (or the head's) MAC does not match: forged, or lines before it were rewritten.
    Forged,
    /// The trail does not begin at its first event (earlier files or lines missing).
    Incomplete,
    /// The trail ends before the anchor the sealed head records: its newest lines or files were removed.
    Cut,
    /// A file could not be read.
    Unreadable,
}

/// The first problem found.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The file.
    pub file: PathBuf,
    /// The line number in that file, from 1.
    pub line: usize,
    /// What is wrong.
    pub kind: FindingKind,
    /// Explanation for people.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.detail)
    }
}

/// What a successful check covered.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Lines checked.
    pub lines: u64,
    /// The first and the last event checked.
    pub first_seq: u64,
    /// The last event checked (`None`: no line).
    pub last_seq: Option<u64>,
    /// Anchors whose MAC was checked.
    pub anchors_checked: u64,
    /// Anchors under a root key that was not given (not checked).
    pub anchors_unchecked: u64,
    /// Root key ids of the unchecked anchors.
    pub missing_keys: BTreeSet<String>,
    /// Lines after the last anchor (covered by the chain only).
    pub after_last_anchor: u64,
    /// The first event kept by the Safe's retention, as its newest retention line records it.
    pub retained_from: Option<u64>,
    /// The head the trail reached, and whether its MAC was checked (`None`: no head given).
    pub head: Option<(Head, bool)>,
}

/// One line of one file.
struct Entry {
    file: usize,
    line: usize,
    bytes: Vec<u8>,
}

/// The previous line, as the next one must refer to it.
struct Prev {
    file: usize,
    line: usize,
    seq: u64,
    hash: [u8; 32],
}

/// Checks the trail made of `files` (oldest first) with the anchor keys `keys`.
pub fn verify(files: &[PathBuf], keys: &[AuditKey]) -> Result<Summary, Finding> {
    verify_with_head(files, keys, None)
}

/// Checks the trail made of `files` (oldest first) with the anchor keys `keys`
/// and, if given, the sealed `head`: the trail must reach the anchor it records.
pub fn verify_with_head(files: &[PathBuf], keys: &[AuditKey], head: Option<&Head>) -> Result<Summary, Finding> {
    let mut reader = Reader { files, next_file: 0, current: None, ahead: VecDeque::new() };
    let mut check = Check::new(files, keys, head)?;
    while let Some(entry) = reader.next() {
        check.line(&mut reader, entry?)?;
    }
    check.end()
}

/// The lines of the files, one at a time, with a bounded lookahead.
struct Reader<'a> {
    files: &'a [PathBuf],
    next_file: usize,
    current: Option<(usize, BufReader<File>, usize)>,
    ahead: VecDeque<Result<Entry, Finding>>,
}

impl Reader<'_> {
    fn next(&mut self) -> Option<Result<Entry, Finding>> {
        self.ahead.pop_front().or_else(|| self.read())
    }

    /// Reads the next line from the files; a last line without its newline is a truncation.
    fn read(&mut self) -> Option<Result<Entry, Finding>> {
        loop {
            if self.current.is_none() {
                let idx = self.next_file;
                let path = self.files.get(idx)?;
                self.next_file += 1;
                match File::open(path) {
                    Ok(f) => self.current = Some((idx, BufReader::with_capacity(READ_BUFFER, f), 0)),
                    Err(e) => return Some(Err(finding(path, 0, FindingKind::Unreadable, format!("cannot read: {e}")))),
                }
            }
            let (file, reader, line) = self.current.as_mut()?;
            let (file, path) = (*file, &self.files[*file]);
            let mut bytes = Vec::new();
            match reader.by_ref().take(MAX_LINE + 1).read_until(b'\n', &mut bytes) {
                Ok(0) => self.current = None,
                Ok(n) => {
                    *line += 1;
                    if bytes.last() == Some(&b'\n') {
                        bytes.pop();
                        return Some(Ok(Entry { file, line: *line, bytes }));
                    }
                    let detail = if n as u64 > MAX_LINE {
                        "this line is longer than any audit line: changed"
                    } else {
                        "the file ends in the middle of this line: truncated"
                    };
                    let kind = if n as u64 > MAX_LINE { FindingKind::Changed } else { FindingKind::Truncated };
                    return Some(Err(finding(path, *line, kind, detail)));
                }
                Err(e) => return Some(Err(finding(path, *line, FindingKind::Unreadable, format!("cannot read: {e}")))),
            }
        }
    }

    /// Whether one of the next [`LOOKAHEAD`] lines is event `seq`.
    fn later_has(&mut self, seq: u64) -> bool {
        while self.ahead.len() < LOOKAHEAD && self.ahead.back().is_none_or(Result::is_ok) {
            match self.read() {
                Some(x) => self.ahead.push_back(x),
                None => break,
            }
        }
        self.ahead.iter().flatten().any(|x| Parsed::parse(&x.bytes).is_some_and(|q| q.seq == seq))
    }
}

/// The checks' state as lines go by.
struct Check<'a> {
    files: &'a [PathBuf],
    keys: &'a [AuditKey],
    head: Option<&'a Head>,
    head_found: bool,
    summary: Summary,
    prev: Option<Prev>,
    /// Where the trail starts, when it does not start at event 0 (checked at the end).
    late_start: Option<(usize, usize, u64)>,
}

impl<'a> Check<'a> {
    fn new(files: &'a [PathBuf], keys: &'a [AuditKey], head: Option<&'a Head>) -> Result<Self, Finding> {
        let mut summary = Summary::default();
        if let Some(h) = head {
            let authentic = h.authentic(keys);
            if authentic == Some(false) {
                let detail = "the audit head's MAC does not match: it was forged or changed";
                return Err(finding(Path::new(crate::head::HEAD_FILE), 1, FindingKind::Forged, detail));
            }
            summary.head = Some((h.clone(), authentic.is_some()));
        }
        Ok(Self { files, keys, head, head_found: false, summary, prev: None, late_start: None })
    }

    fn at(&self, file: usize, line: usize, kind: FindingKind, detail: impl Into<String>) -> Finding {
        finding(&self.files[file], line, kind, detail)
    }

    fn line(&mut self, reader: &mut Reader<'_>, e: Entry) -> Result<(), Finding> {
        let Some(p) = Parsed::parse(&e.bytes) else {
            return Err(self.at(e.file, e.line, FindingKind::Changed, "this line is not an audit event: changed"));
        };
        let hash = line::hash(&e.bytes);
        match &self.prev {
            None if p.seq == 0 && p.prev == GENESIS => {}
            None => self.late_start = Some((e.file, e.line, p.seq)),
            Some(before) => self.link(reader, &e, before, &p)?,
        }
        // An anchor's own MAC first: a forged anchor is named as such, not as a line the head disowns.
        self.kind(&e, &p)?;
        self.head_line(&e, &p, &hash)?;
        self.summary.lines += 1;
        if self.prev.is_none() {
            self.summary.first_seq = p.seq;
        }
        self.summary.last_seq = Some(p.seq);
        self.prev = Some(Prev { file: e.file, line: e.line, seq: p.seq, hash });
        Ok(())
    }

    /// The line the head records must be exactly the line there.
    fn head_line(&mut self, e: &Entry, p: &Parsed, hash: &[u8; 32]) -> Result<(), Finding> {
        let Some(h) = self.head.filter(|h| h.seq == p.seq) else { return Ok(()) };
        if h.hash != hex::encode(hash) {
            let detail = format!(
                "this is not the line the audit head records for event {} (written {}): the trail was rewritten",
                h.seq, h.time
            );
            return Err(self.at(e.file, e.line, FindingKind::Changed, detail));
        }
        self.head_found = true;
        Ok(())
    }

    /// What each kind of line adds: anchors' MACs, retention, restarts that found the trail cut.
    fn kind(&mut self, e: &Entry, p: &Parsed) -> Result<(), Finding> {
        match p.kind {
            Kind::Anchor => {
                self.anchor(e, p)?;
                self.summary.after_last_anchor = 0;
                return Ok(());
            }
            Kind::Retention => self.summary.retained_from = self.summary.retained_from.max(p.first_kept),
            Kind::Start if p.cut_head_seq.is_some() => {
                let detail = format!(
                    "when the Safe started here, the trail ended before event {} that its sealed head recorded: the \
                     newest lines or files before this line were removed",
                    p.cut_head_seq.unwrap_or_default()
                );
                return Err(self.at(e.file, e.line, FindingKind::Cut, detail));
            }
            Kind::Start
                if p.head_missing == Some(true)
                    && self.summary.anchors_checked + self.summary.anchors_unchecked > 0 =>
            {
                let detail = "when the Safe started here, the audit head was missing although the trail was anchored: \
                              whether the newest lines or files before this line were removed cannot be proven";
                return Err(self.at(e.file, e.line, FindingKind::Cut, detail));
            }
            _ => {}
        }
        self.summary.after_last_anchor += 1;
        Ok(())
    }

    /// Checks that `e` follows `before`, and says what happened if not.
    fn link(&self, reader: &mut Reader<'_>, e: &Entry, before: &Prev, p: &Parsed) -> Result<(), Finding> {
        let expected = before.seq + 1;
        if p.prev == hex::encode(before.hash) {
            return if p.seq == expected {
                Ok(())
            } else {
                let detail = format!("event number {} where {expected} belongs: changed", p.seq);
                Err(self.at(e.file, e.line, FindingKind::Changed, detail))
            };
        }
        if p.seq == expected {
            let detail = format!(
                "this line was changed (line {} of {} records another hash for it)",
                e.line,
                self.files[e.file].display()
            );
            return Err(self.at(before.file, before.line, FindingKind::Changed, detail));
        }
        if p.seq < expected || reader.later_has(expected) {
            let detail = format!("event {} comes where event {expected} belongs: lines were reordered", p.seq);
            return Err(self.at(e.file, e.line, FindingKind::Reordered, detail));
        }
        let detail =
            format!("{} line(s) removed before this line (events {expected} to {})", p.seq - expected, p.seq - 1);
        Err(self.at(e.file, e.line, FindingKind::Removed, detail))
    }

    fn anchor(&mut self, e: &Entry, p: &Parsed) -> Result<(), Finding> {
        let key_id = p.key_id.as_deref().unwrap_or_default();
        let Some(key) = self.keys.iter().find(|k| k.id().to_string() == key_id) else {
            self.summary.anchors_unchecked += 1;
            self.summary.missing_keys.insert(key_id.to_owned());
            return Ok(());
        };
        let tag = p.mac.as_deref().and_then(|m| hex::decode(m).ok()).unwrap_or_default();
        if key.verify(&anchor_message(p.seq, &p.prev, key_id), &tag) {
            self.summary.anchors_checked += 1;
            return Ok(());
        }
        let detail =
            "this anchor's MAC does not match: it was forged, or lines before it were rewritten with a new chain";
        Err(self.at(e.file, e.line, FindingKind::Forged, detail))
    }

    /// What only the whole trail tells: where it starts, and whether it reaches its head.
    fn end(self) -> Result<Summary, Finding> {
        if let Some((file, line, seq)) = self.late_start {
            if self.summary.retained_from.is_none_or(|kept| seq > kept) {
                let detail = format!(
                    "the trail starts at event {seq} instead of event 0: earlier lines or files are missing and no \
                     retention line of the Safe records their deletion (give every file, oldest first)"
                );
                return Err(self.at(file, line, FindingKind::Incomplete, detail));
            }
        }
        if let Some(h) = self.head.filter(|_| !self.head_found) {
            let (file, line, ends) = match &self.prev {
                Some(p) => (p.file, p.line, format!("ends at event {}", p.seq)),
                None => (self.files.len().saturating_sub(1), 0, "is empty".to_owned()),
            };
            let detail = format!(
                "the trail {ends}, but the Safe's sealed audit head records event {} (an anchor written {}): the \
                 newest lines or files were removed",
                h.seq, h.time
            );
            return Err(match self.files.get(file) {
                Some(_) => self.at(file, line, FindingKind::Cut, detail),
                None => finding(Path::new(crate::head::HEAD_FILE), 1, FindingKind::Cut, detail),
            });
        }
        Ok(self.summary)
    }
}

fn finding(file: &Path, line: usize, kind: FindingKind, detail: impl Into<String>) -> Finding {
    Finding { file: file.to_owned(), line, kind, detail: detail.into() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use aegis_crypto::RootKey;
    use time::OffsetDateTime;

    use super::*;
    use crate::{Event, Phase, Sink, SinkConfig};

    fn event(i: usize) -> Event {
        Event {
            time: OffsetDateTime::now_utc(),
            request_id: format!("r{i}").into(),
            caller: Arc::from("spiffe://td/workload/a"),
            action: "fetch",
            api: "native",
            route: "/v1/workload/secret",
            secrets: vec![format!("s{i}")],
            version: Some(1),
            status: 200,
            phase: None,
            policy: None,
        }
    }

    /// A trail of `n` events in `dir`, anchored under `key`, rotated at `max` bytes.
    async fn trail(dir: &Path, key: &RootKey, n: usize, max: u64) -> PathBuf {
        let path = dir.join("audit/audit.log");
        let sink =
            Sink::start(SinkConfig { max_file_bytes: max, anchor_every: 7, ..SinkConfig::new(Some(path.clone())) })
                .unwrap();
        sink.set_key(key.audit_key());
        for i in 0..n {
            if i % 5 == 0 {
                let mut e = event(i);
                e.phase = Some(Phase::Intent);
                sink.record_durable(e, Duration::from_secs(5)).await.unwrap();
            } else {
                sink.record(event(i));
            }
        }
        sink.close(Duration::from_secs(5)).await;
        path
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect()
    }

    fn write(p: &Path, lines: &[String]) {
        std::fs::write(p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[tokio::test]
    async fn a_clean_trail_verifies_and_each_kind_of_tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = RootKey::generate();
        let path = trail(dir.path(), &key, 40, u64::MAX).await;
        let keys = [key.audit_key()];
        let files = vec![path.clone()];
        let s = verify(&files, &keys).unwrap_or_else(|f| panic!("{f}\n{}", std::fs::read_to_string(&path).unwrap()));
        assert!(s.anchors_checked >= 5 && s.after_last_anchor == 0, "{s:?}");
        let good = lines(&path);
        type Tamper = fn(&mut Vec<String>);
        let cases: [(Tamper, FindingKind, usize); 4] = [
            (|l| l[10] = l[10].replace("\"s", "\"x"), FindingKind::Changed, 11),
            (|l| drop(l.remove(10)), FindingKind::Removed, 11),
            (|l| l.swap(10, 11), FindingKind::Reordered, 11),
            (|l| drop(l.remove(0)), FindingKind::Incomplete, 1),
        ];
        for (tamper, kind, line) in cases {
            let mut l = good.clone();
            tamper(&mut l);
            write(&path, &l);
            let f = verify(&files, &keys).unwrap_err();
            assert_eq!((f.kind, f.line), (kind, line), "{f}");
        }
        let anchor = good.iter().position(|l| l.contains("\"anchor\"")).unwrap();
        let mut l = good.clone();
        let mac_at = l[anchor].find("\"mac\":\"").unwrap() + 7;
        let flipped = if &l[anchor][mac_at..=mac_at] == "0" { "1" } else { "0" };
        l[anchor].replace_range(mac_at..=mac_at, flipped);
        write(&path, &l);
        let f = verify(&files, &keys).unwrap_err();
        assert_eq!((f.kind, f.line), (FindingKind::Forged, anchor + 1), "{f}");
        write(&path, &good);
        let s = verify(&files, &[]).unwrap();
        assert!(s.anchors_checked == 0 && s.anchors_unchecked > 0, "without keys the MACs are not checked");
        let mut text = std::fs::read(&path).unwrap();
        text.truncate(text.len() - 5);
        std::fs::write(&path, text).unwrap();
        assert_eq!(verify(&files, &keys).unwrap_err().kind, FindingKind::Truncated);
    }

    #[tokio::test]
    async fn rotation_and_restart_carry_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let key = RootKey::generate();
        let path = trail(dir.path(), &key, 60, 2000).await;
        trail(dir.path(), &key, 10, 2000).await;
        let files = crate::files::trail_files(&path).unwrap();
        assert!(files.len() > 3, "{files:?}");
        let s = verify(&files, &[key.audit_key()]).unwrap();
        assert!(s.lines > 70, "{s:?}");
        let all: Vec<String> = files.iter().flat_map(|f| lines(f)).collect();
        assert_eq!(all.iter().filter(|l| l.contains("goes on from the trail's last line")).count(), 1);
        assert!(all.iter().filter(|l| l.contains("rotated: the chain goes on")).count() >= files.len() - 1);
        assert!(verify(&files[1..], &[key.audit_key()]).unwrap_err().kind == FindingKind::Incomplete);
    }
}
