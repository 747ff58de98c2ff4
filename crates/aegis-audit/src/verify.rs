//! Checks a trail: the hash chain line by line and, with the root keys, the
//! anchors' MACs. Names the first line that was changed, removed, reordered
//! or truncated.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use aegis_crypto::AuditKey;

use crate::line::{self, anchor_message, Kind, Parsed, GENESIS};

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
    /// An anchor's MAC does not match: forged, or lines before it were rewritten.
    Forged,
    /// The trail does not begin at its first event (earlier files or lines missing).
    Incomplete,
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
    /// Anchors whose MAC was checked.
    pub anchors_checked: u64,
    /// Anchors under a root key that was not given (not checked).
    pub anchors_unchecked: u64,
    /// Root key ids of the unchecked anchors.
    pub missing_keys: BTreeSet<String>,
    /// Lines after the last anchor (covered by the chain only).
    pub after_last_anchor: u64,
}

/// One line of one file.
struct Entry<'a> {
    file: &'a Path,
    line: usize,
    bytes: &'a [u8],
}

/// The previous line, as the next one must refer to it.
struct Prev<'a> {
    file: &'a Path,
    line: usize,
    seq: u64,
    hash: [u8; 32],
}

/// Checks the trail made of `files` (oldest first) with the anchor keys `keys`.
pub fn verify(files: &[PathBuf], keys: &[AuditKey]) -> Result<Summary, Finding> {
    let mut contents = Vec::with_capacity(files.len());
    for f in files {
        let bytes =
            std::fs::read(f).map_err(|e| finding(f, 0, FindingKind::Unreadable, format!("cannot read: {e}")))?;
        contents.push((f.as_path(), bytes));
    }
    let mut entries = Vec::new();
    for (file, bytes) in &contents {
        split(file, bytes, &mut entries)?;
    }
    check(&entries, keys)
}

/// Splits a file into lines; a last line without its newline is a truncation.
fn split<'a>(file: &'a Path, bytes: &'a [u8], out: &mut Vec<Entry<'a>>) -> Result<(), Finding> {
    let mut rest = bytes;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(finding(
                file,
                line,
                FindingKind::Truncated,
                "the file ends in the middle of this line: truncated",
            ));
        };
        out.push(Entry { file, line, bytes: &rest[..end] });
        rest = &rest[end + 1..];
    }
    Ok(())
}

fn check(entries: &[Entry<'_>], keys: &[AuditKey]) -> Result<Summary, Finding> {
    let mut summary = Summary::default();
    let mut prev: Option<Prev<'_>> = None;
    for (i, e) in entries.iter().enumerate() {
        let Some(p) = Parsed::parse(e.bytes) else {
            return Err(at(e, FindingKind::Changed, "this line is not an audit event: changed"));
        };
        let hash = line::hash(e.bytes);
        match &prev {
            None => first_line(e, &p)?,
            Some(before) => link(entries, i, before, &p)?,
        }
        if p.kind == Kind::Anchor {
            anchor(e, &p, keys, &mut summary)?;
            summary.after_last_anchor = 0;
        } else {
            summary.after_last_anchor += 1;
        }
        summary.lines += 1;
        prev = Some(Prev { file: e.file, line: e.line, seq: p.seq, hash });
    }
    Ok(summary)
}

fn first_line(e: &Entry<'_>, p: &Parsed) -> Result<(), Finding> {
    if p.seq == 0 && p.prev == GENESIS {
        return Ok(());
    }
    Err(at(
        e,
        FindingKind::Incomplete,
        &format!(
            "the trail starts at event {} instead of event 0: earlier lines or files are missing (give every file, \
             oldest first)",
            p.seq
        ),
    ))
}

/// Checks that line `i` follows `before`, and says what happened if not.
fn link(entries: &[Entry<'_>], i: usize, before: &Prev<'_>, p: &Parsed) -> Result<(), Finding> {
    let e = &entries[i];
    let expected = before.seq + 1;
    if p.prev == hex::encode(before.hash) {
        return if p.seq == expected {
            Ok(())
        } else {
            Err(at(e, FindingKind::Changed, &format!("event number {} where {expected} belongs: changed", p.seq)))
        };
    }
    if p.seq == expected {
        let detail =
            format!("this line was changed (line {} of {} records another hash for it)", e.line, e.file.display());
        return Err(Finding { file: before.file.to_owned(), line: before.line, kind: FindingKind::Changed, detail });
    }
    let later = entries[i + 1..].iter().any(|x| Parsed::parse(x.bytes).is_some_and(|q| q.seq == expected));
    if p.seq < expected || later {
        return Err(at(
            e,
            FindingKind::Reordered,
            &format!("event {} comes where event {expected} belongs: lines were reordered", p.seq),
        ));
    }
    Err(at(
        e,
        FindingKind::Removed,
        &format!("{} line(s) removed before this line (events {expected} to {})", p.seq - expected, p.seq - 1),
    ))
}

fn anchor(e: &Entry<'_>, p: &Parsed, keys: &[AuditKey], summary: &mut Summary) -> Result<(), Finding> {
    let key_id = p.key_id.as_deref().unwrap_or_default();
    let Some(key) = keys.iter().find(|k| k.id().to_string() == key_id) else {
        summary.anchors_unchecked += 1;
        summary.missing_keys.insert(key_id.to_owned());
        return Ok(());
    };
    let tag = p.mac.as_deref().and_then(|m| hex::decode(m).ok()).unwrap_or_default();
    if key.verify(&anchor_message(p.seq, &p.prev, key_id), &tag) {
        summary.anchors_checked += 1;
        return Ok(());
    }
    Err(at(
        e,
        FindingKind::Forged,
        "this anchor's MAC does not match: it was forged, or lines before it were rewritten with a new chain",
    ))
}

fn at(e: &Entry<'_>, kind: FindingKind, detail: &str) -> Finding {
    finding(e.file, e.line, kind, detail)
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
