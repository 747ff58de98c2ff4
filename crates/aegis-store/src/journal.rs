//! The directory backend's journal: one append and one `fdatasync` per batch.
//!
//! A batch (or an all-or-nothing group) of sealed records is appended to the
//! file `journal` as one frame and made durable with one `fdatasync`; that is
//! the commit. Only then are the records written to their own files, without
//! an fsync each. Those files are made durable together at a checkpoint (one
//! `syncfs` of the file system), after which the journal is emptied. At open,
//! every frame still in the journal is written to its files again, so a record
//! file the crash left stale or empty is replaced by its committed bytes.
//!
//! A frame: `AGJ1`, the body's length (big-endian u32), the body, and the
//! SHA-256 of everything before it. The body: a count (u32), then per record
//! the name's length (u16), the name, the record's length (u32) and the sealed
//! record. A frame is whole or ignored, so a group is all or nothing across a
//! crash. The journal holds only sealed records and names, like the record
//! files: no plaintext.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis_core::SecretName;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::backend::SealedRecord;

/// The journal's file name in the data directory (never a record's: those end in `.rec`).
pub(crate) const FILE: &str = "journal";
const MAGIC: &[u8; 4] = b"AGJ1";
const HEAD: usize = 8;
const HASH: usize = 32;
/// Journal size past which the next write checkpoints (bounds the replay at start).
pub(crate) const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// How long opening waits for another process to let go of the data directory
/// (a Safe still shutting down) before refusing.
const LOCK_WAIT: Duration = if cfg!(test) { Duration::from_millis(200) } else { Duration::from_secs(5) };

/// The open journal and its committed length.
#[derive(Debug)]
pub(crate) struct Journal {
    /// Locked (`flock`, exclusive) while open: one process per data directory.
    file: Flock<File>,
    /// Bytes of whole, durable frames.
    len: u64,
    /// A failed append whose bytes could not be cut off: nothing may follow them.
    torn: bool,
}

/// What reading the journal at open found.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Every record of every whole frame, in commit order.
    pub(crate) records: Vec<SealedRecord>,
    /// Whole frames read.
    pub(crate) frames: usize,
    /// Bytes of an unfinished last frame (a crash during its append; never acknowledged).
    pub(crate) torn_tail: u64,
    /// A damaged frame followed by more bytes.
    pub(crate) damaged: Option<Damage>,
}

/// Where the journal is damaged, why, and its bytes from there on (kept in quarantine).
#[derive(Debug)]
pub(crate) struct Damage {
    pub(crate) at: u64,
    pub(crate) why: String,
    pub(crate) rest: Vec<u8>,
}

impl Journal {
    /// Opens (creating, mode 0600) the journal in `dir` and reads every whole frame.
    pub(crate) fn open(dir: &Path) -> io::Result<(Self, Replay)> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path(dir))?;
        let file = lock(file)?;
        let mut bytes = Vec::new();
        (&*file).read_to_end(&mut bytes)?;
        let replay = read_frames(&bytes);
        Ok((Self { file, len: bytes.len() as u64, torn: false }, replay))
    }

    /// Appends one frame holding `records` and makes it durable. On failure
    /// the journal is as before (or marked torn, and cut back before the next append).
    pub(crate) fn append(&mut self, records: &[SealedRecord]) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.file.sync_data()?;
            self.torn = false;
        }
        let written = write_frame(&self.file, self.len, records).and_then(|n| self.file.sync_data().map(|()| n));
        let frame_len = match written {
            Ok(n) => n,
            Err(e) => {
                // The frame's bytes must not stay in front of the next one.
                if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                    self.torn = true;
                }
                return Err(e);
            }
        };
        self.len += frame_len;
        Ok(())
    }

    /// Bytes committed since the last checkpoint.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Makes every file of the file system durable (the record files written
    /// since the last checkpoint among them), then empties the journal.
    pub(crate) fn checkpoint(&mut self) -> io::Result<()> {
        if self.len == 0 && !self.torn {
            return Ok(());
        }
        sync_file_system(&self.file)?;
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        self.torn = false;
        Ok(())
    }
}

/// Takes the journal's lock, waiting up to [`LOCK_WAIT`] for another process to release it.
fn lock(mut file: File) -> io::Result<Flock<File>> {
    let until = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < until => {
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "another process is using this data directory (its journal is locked): stop the other Safe, \
                     or give this one a data directory of its own",
                ))
            }
            Err((_, e)) => return Err(io::Error::from(e)),
        }
    }
}

/// The journal's path in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

#[cfg(target_os = "linux")]
fn sync_file_system(file: &File) -> io::Result<()> {
    nix::unistd::syncfs(file).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn sync_file_system(_file: &File) -> io::Result<()> {
    nix::unistd::sync();
    Ok(())
}

fn too_long(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what} is too long for a journal frame"))
}

/// The most bytes of a frame held at once while it is written: a large
/// group (a restore) is written and hashed in pieces, not copied whole.
const WRITE_PIECE: usize = 1 << 20;

/// Writes the frame of `records` at `at` in pieces of [`WRITE_PIECE`],
/// hashing as it goes; returns its length. Same bytes as [`encode`].
fn write_frame(file: &File, at: u64, records: &[SealedRecord]) -> io::Result<u64> {
    let size: usize = records.iter().map(|(n, b)| 6 + n.as_str().len() + b.len()).sum();
    let body = u32::try_from(4 + size).map_err(|_| too_long("the batch"))?;
    let count = u32::try_from(records.len()).map_err(|_| too_long("the batch"))?;
    let mut hash = Sha256::new();
    let mut piece = Vec::with_capacity(WRITE_PIECE.min(HEAD + 4 + size + HASH));
    let mut offset = at;
    let flush = |piece: &mut Vec<u8>, hash: &mut Sha256, offset: &mut u64| -> io::Result<()> {
        hash.update(&piece[..]);
        file.write_all_at(piece, *offset)?;
        *offset += piece.len() as u64;
        piece.clear();
        Ok(())
    };
    piece.extend_from_slice(MAGIC);
    piece.extend_from_slice(&body.to_be_bytes());
    piece.extend_from_slice(&count.to_be_bytes());
    for (name, bytes) in records {
        let n = u16::try_from(name.as_str().len()).map_err(|_| too_long("a secret name"))?;
        let b = u32::try_from(bytes.len()).map_err(|_| too_long("a record"))?;
        piece.extend_from_slice(&n.to_be_bytes());
        piece.extend_from_slice(name.as_str().as_bytes());
        piece.extend_from_slice(&b.to_be_bytes());
        if piece.len() + bytes.len() > WRITE_PIECE {
            flush(&mut piece, &mut hash, &mut offset)?;
        }
        if bytes.len() > WRITE_PIECE {
            hash.update(bytes);
            file.write_all_at(bytes, offset)?;
            offset += bytes.len() as u64;
        } else {
            piece.extend_from_slice(bytes);
        }
    }
    let digest = {
        hash.update(&piece[..]);
        hash.finalize()
    };
    piece.extend_from_slice(&digest);
    file.write_all_at(&piece, offset)?;
    offset += piece.len() as u64;
    Ok(offset - at)
}

#[cfg(test)]
fn encode(records: &[SealedRecord]) -> io::Result<Vec<u8>> {
    let size: usize = records.iter().map(|(n, b)| 6 + n.as_str().len() + b.len()).sum();
    let mut frame = Vec::with_capacity(HEAD + 4 + size + HASH);
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&[0; 4]);
    let count = u32::try_from(records.len()).map_err(|_| too_long("the batch"))?;
    frame.extend_from_slice(&count.to_be_bytes());
    for (name, bytes) in records {
        let n = u16::try_from(name.as_str().len()).map_err(|_| too_long("a secret name"))?;
        let b = u32::try_from(bytes.len()).map_err(|_| too_long("a record"))?;
        frame.extend_from_slice(&n.to_be_bytes());
        frame.extend_from_slice(name.as_str().as_bytes());
        frame.extend_from_slice(&b.to_be_bytes());
        frame.extend_from_slice(bytes);
    }
    let body = u32::try_from(frame.len() - HEAD).map_err(|_| too_long("the batch"))?;
    frame[4..HEAD].copy_from_slice(&body.to_be_bytes());
    let hash = Sha256::digest(&frame);
    frame.extend_from_slice(&hash);
    Ok(frame)
}

/// Why a frame could not be read: cut short by the end of the journal, or damaged.
enum Bad {
    Short,
    Damaged(String),
}

fn read_frames(bytes: &[u8]) -> Replay {
    let mut replay = Replay::default();
    let mut at = 0usize;
    while at < bytes.len() {
        match frame_at(&bytes[at..]) {
            Ok((records, used)) => {
                replay.records.extend(records);
                replay.frames += 1;
                at += used;
            }
            // An append cut short by a crash was never acknowledged.
            Err(Bad::Short) => {
                replay.torn_tail = (bytes.len() - at) as u64;
                break;
            }
            Err(Bad::Damaged(why)) => {
                replay.damaged = Some(Damage { at: at as u64, why, rest: bytes[at..].to_vec() });
                break;
            }
        }
    }
    replay
}

/// The records of the frame at the start of `rest`, and its length.
fn frame_at(rest: &[u8]) -> Result<(Vec<SealedRecord>, usize), Bad> {
    if rest.len() < HEAD {
        return Err(Bad::Short);
    }
    if &rest[..4] != MAGIC {
        return Err(Bad::Damaged("a frame does not start with the journal's magic bytes".to_owned()));
    }
    let body = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    let end = HEAD + body;
    if rest.len() < end + HASH {
        return Err(Bad::Short);
    }
    if Sha256::digest(&rest[..end]).as_slice() != &rest[end..end + HASH] {
        // A last frame whose pages were not all written is a torn append, not damage.
        return Err(if rest.len() == end + HASH {
            Bad::Short
        } else {
            Bad::Damaged("a frame's checksum does not match its bytes".to_owned())
        });
    }
    let records = records_of(&rest[HEAD..end]).map_err(Bad::Damaged)?;
    Ok((records, end + HASH))
}

fn records_of(body: &[u8]) -> Result<Vec<SealedRecord>, String> {
    let mut r = body;
    let count = u32::from_be_bytes(take(&mut r, 4)?.try_into().map_err(|_| "short count")?) as usize;
    let mut records = Vec::with_capacity(count.min(r.len() / 6));
    for _ in 0..count {
        let n = u16::from_be_bytes(take(&mut r, 2)?.try_into().map_err(|_| "short name length")?) as usize;
        let name = std::str::from_utf8(take(&mut r, n)?).map_err(|_| "a record name is not UTF-8".to_owned())?;
        let name = SecretName::parse_stored(name).map_err(|e| format!("a record name is not a secret name: {e}"))?;
        let b = u32::from_be_bytes(take(&mut r, 4)?.try_into().map_err(|_| "short record length")?) as usize;
        records.push((name, take(&mut r, b)?.to_vec()));
    }
    if !r.is_empty() {
        return Err("a frame holds bytes after its last record".to_owned());
    }
    Ok(records)
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if r.len() < n {
        return Err("a frame ends inside a record".to_owned());
    }
    let (head, rest) = r.split_at(n);
    *r = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recs(pairs: &[(&str, &[u8])]) -> Vec<SealedRecord> {
        pairs.iter().map(|(n, b)| (SecretName::parse_stored(n).unwrap(), b.to_vec())).collect()
    }

    fn names(r: &Replay) -> Vec<(String, Vec<u8>)> {
        r.records.iter().map(|(n, b)| (n.to_string(), b.clone())).collect()
    }

    #[test]
    fn frames_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.frames, 0);
        j.append(&recs(&[("a", b"1"), ("k8s:b", b"22")])).unwrap();
        j.append(&recs(&[("a", b"333")])).unwrap();
        drop(j);
        let (j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.frames, 2);
        assert_eq!(r.torn_tail, 0);
        assert!(r.damaged.is_none());
        let want = vec![("a".into(), b"1".to_vec()), ("k8s:b".into(), b"22".to_vec()), ("a".into(), b"333".to_vec())];
        assert_eq!(names(&r), want);
        assert_eq!(j.len(), std::fs::metadata(path(dir.path())).unwrap().len());
    }

    #[test]
    fn a_frame_written_in_pieces_is_the_frame_encoded_whole() {
        // Small records, one over the piece size, and enough to span several pieces.
        let big = vec![7u8; WRITE_PIECE + 5];
        let mut pairs: Vec<(String, Vec<u8>)> = (0..3000).map(|i| (format!("s{i}"), vec![i as u8; 700])).collect();
        pairs.insert(10, ("huge".into(), big));
        let records: Vec<SealedRecord> =
            pairs.iter().map(|(n, b)| (SecretName::parse_stored(n).unwrap(), b.clone())).collect();
        for set in [&records[..1], &records[..]] {
            let dir = tempfile::tempdir().unwrap();
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            j.append(set).unwrap();
            let bytes = std::fs::read(path(dir.path())).unwrap();
            assert_eq!(bytes, encode(set).unwrap());
            assert_eq!(read_frames(&bytes).records.len(), set.len());
        }
    }

    #[test]
    fn a_torn_last_frame_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&recs(&[("a", b"1")])).unwrap();
        let keep = j.len();
        j.append(&recs(&[("b", b"2"), ("c", b"3")])).unwrap();
        let full = j.len();
        drop(j);
        let bytes = std::fs::read(path(dir.path())).unwrap();
        // Every cut inside the second frame drops it whole, and only it.
        for cut in keep + 1..full {
            let r = read_frames(&bytes[..cut as usize]);
            assert_eq!(names(&r), vec![("a".into(), b"1".to_vec())], "cut at {cut}");
            assert_eq!(r.torn_tail, cut - keep);
            assert!(r.damaged.is_none());
        }
    }

    #[test]
    fn a_last_frame_with_unwritten_pages_is_torn_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&recs(&[("a", b"1")])).unwrap();
        let keep = j.len() as usize;
        j.append(&recs(&[("b", b"2")])).unwrap();
        drop(j);
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xff;
        let r = read_frames(&bytes);
        assert_eq!(r.frames, 1);
        assert_eq!(r.torn_tail as usize, bytes.len() - keep);
        assert!(r.damaged.is_none());
    }

    #[test]
    fn damage_before_more_frames_is_reported_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&recs(&[("a", b"1")])).unwrap();
        let first = j.len() as usize;
        j.append(&recs(&[("b", b"2")])).unwrap();
        j.append(&recs(&[("c", b"3")])).unwrap();
        drop(j);
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        bytes[first + HEAD + 6] ^= 0xff;
        let r = read_frames(&bytes);
        assert_eq!(names(&r), vec![("a".into(), b"1".to_vec())]);
        let damage = r.damaged.unwrap();
        assert_eq!(damage.at as usize, first);
        assert_eq!(damage.rest, bytes[first..].to_vec());
        assert!(damage.why.contains("checksum"), "{}", damage.why);
        // A length past the end of the file is an unfinished frame, never a large allocation.
        let mut huge = bytes[..first].to_vec();
        huge.extend_from_slice(MAGIC);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let r = read_frames(&huge);
        assert_eq!(r.frames, 1);
        assert_eq!(r.torn_tail, 8);
    }

    #[test]
    fn a_frame_naming_no_secret_is_damage() {
        let frame = encode(&recs(&[("ok", b"1")])).unwrap();
        let mut bad = frame.clone();
        // The name "ok" becomes "o/", which no secret may be called.
        bad[HEAD + 4 + 2 + 1] = b'/';
        let end = bad.len() - HASH;
        let hash = Sha256::digest(&bad[..end]);
        bad[end..].copy_from_slice(&hash);
        bad.extend_from_slice(&frame);
        let r = read_frames(&bad);
        assert_eq!(r.frames, 0);
        assert!(r.damaged.unwrap().why.contains("not a secret name"));
    }

    #[test]
    fn a_second_process_cannot_open_the_journal_while_it_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        // Another open file description, as another process would have.
        let e = Journal::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("another process is using this data directory"), "{e}");
        drop(j);
        Journal::open(dir.path()).unwrap();
    }

    #[test]
    fn checkpoint_empties_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&recs(&[("a", b"1")])).unwrap();
        assert!(j.len() > 0);
        j.checkpoint().unwrap();
        assert_eq!(j.len(), 0);
        assert_eq!(std::fs::metadata(path(dir.path())).unwrap().len(), 0);
        j.append(&recs(&[("b", b"2")])).unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&r), vec![("b".into(), b"2".to_vec())]);
    }
}
