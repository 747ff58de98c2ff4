//! The default backend: a directory with one file per secret, and a journal.
//!
//! A batch of writes is committed by one append to the journal and one
//! `fdatasync` (see [`crate::journal`]); its records are then written over
//! their files in place, without an fsync each (the journal, not a rename,
//! makes the change atomic). A checkpoint (one `syncfs`, every 8 MiB of journal,
//! when the writer is idle, and after a root key rotation) makes those files
//! durable and empties the journal; at open, what the journal still holds is
//! written to the files again, so a crash never leaves a committed record stale.
//!
//! A short name is the file name (`%XX`-escaped, plus `.rec`). A name whose
//! file name would pass [`MAX_FILE_NAME`] bytes is stored as
//! `=<sha256 hex of the name>.rec`, and that file starts with a clear header
//! (magic, big-endian u16 length, the name) before the sealed record, so every
//! accepted name fits the 255-byte file name limit of common file systems.
//! Names are not secret; the sealed record binds its name, so a header naming
//! another secret cannot be opened as that secret.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};

use aegis_core::SecretName;

use crate::backend::{GroupError, Listing, SealedRecord, SetAside, Unnamed};
use crate::journal::{self, Journal, CHECKPOINT_BYTES};
use crate::writer::copy_io;
use crate::{Backend, StoreError};

const EXT: &str = ".rec";
const TMP_PREFIX: &str = ".tmp-";
const QUARANTINE: &str = "quarantine";
/// Longest file name (with `.rec`) kept as the escaped name; longer ones are hashed.
const MAX_FILE_NAME: usize = 200;
/// First byte of a hashed file name; [`escape`] never produces it.
const HASHED: char = '=';
/// Start of the header of a hashed record file.
const MAGIC: &[u8; 4] = b"AGN1";

/// A directory of sealed records.
#[derive(Debug)]
pub struct DirBackend {
    dir: PathBuf,
    state: Mutex<State>,
}

/// The journal, and the committed records whose file could not be written yet.
#[derive(Debug)]
struct State {
    journal: Journal,
    /// Committed in the journal, file not yet replaced (a failed write, retried
    /// before each commit): read from here, and no checkpoint until it is empty.
    unapplied: HashMap<SecretName, Vec<u8>>,
}

/// The file name of the record of `name`: the escaped name plus `.rec`, or
/// `=<sha256 hex of the name>.rec` when that is longer than 200 bytes (such
/// a file starts with [`name_header`]).
pub fn file_name(name: &str) -> String {
    let escaped = escape(name);
    if escaped.len() <= MAX_FILE_NAME {
        escaped
    } else {
        format!("{HASHED}{}{EXT}", hashed_stem(name))
    }
}

fn hashed_stem(name: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(name.as_bytes()))
}

/// Whether `name` is stored under a hashed file name with a header.
fn is_hashed(name: &str) -> bool {
    file_name(name).starts_with(HASHED)
}

/// The clear header of a hashed record file: magic, big-endian `u16` length
/// and the name. An error if the name is longer than 65,535 bytes.
pub fn name_header(name: &str) -> Result<Vec<u8>, io::Error> {
    let len = u16::try_from(name.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
    let mut h = Vec::with_capacity(MAGIC.len() + 2 + name.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(name.as_bytes());
    Ok(h)
}

/// Reads the header of a hashed record file ([`name_header`]): the name it
/// holds. An error if the magic is missing, the name is cut short or is not
/// UTF-8.
pub fn read_name_header(r: &mut impl Read) -> io::Result<String> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut fixed = [0u8; 6];
    r.read_exact(&mut fixed).map_err(|_| bad("record file has no name header"))?;
    if &fixed[..4] != MAGIC {
        return Err(bad("record file has no name header"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let mut name = vec![0u8; len];
    r.read_exact(&mut name).map_err(|_| bad("record file name header is cut short"))?;
    String::from_utf8(name).map_err(|_| bad("record file name header is not UTF-8"))
}

/// Bytes escaped after the first: all but ASCII alphanumerics, `-`, `_` and `.`.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
/// Bytes escaped as the first: a leading `.` too, so no file is hidden.
const ESCAPED_FIRST: &AsciiSet = &ESCAPED.add(b'.');

/// Escaped file name: safe characters kept, everything else `%XX` (upper
/// case; non-ASCII bytes always escaped).
fn escape(name: &str) -> String {
    let (first, rest) = name.as_bytes().split_at(name.len().min(1));
    format!("{}{}{EXT}", percent_encode(first, ESCAPED_FIRST), percent_encode(rest, ESCAPED))
}

/// The name a short (not hashed) record file name holds, the inverse of
/// [`file_name`]; `None` unless it ends in `.rec`, every `%` starts a
/// two-hex-digit escape (either case) and the bytes are UTF-8.
pub fn name_of_file(file: &str) -> Option<String> {
    let stem = file.strip_suffix(EXT)?;
    let escapes_valid = stem
        .split('%')
        .skip(1)
        .all(|after| after.get(..2).is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())));
    if !escapes_valid {
        return None;
    }
    percent_decode_str(stem).decode_utf8().ok().map(Cow::into_owned)
}

impl DirBackend {
    /// Opens (creating if needed, mode 0700) a data directory, removes
    /// temporary files left by a crash, writes what the journal still holds to
    /// the record files and checkpoints.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open { path: dir.display().to_string(), source };
        fs::create_dir_all(dir).map_err(open_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(open_err)?;
        for entry in fs::read_dir(dir).map_err(open_err)? {
            let entry = entry.map_err(open_err)?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                fs::remove_file(entry.path()).map_err(open_err)?;
            }
        }
        let (journal, replay) = Journal::open(dir).map_err(open_err)?;
        let backend = Self { dir: dir.to_owned(), state: Mutex::new(State { journal, unapplied: HashMap::new() }) };
        backend.recover(replay).map_err(open_err)?;
        Ok(backend)
    }

    /// Writes the journal's committed records to their files, keeps a damaged
    /// rest of the journal in quarantine, and checkpoints.
    fn recover(&self, replay: journal::Replay) -> io::Result<()> {
        if replay.frames > 0 {
            tracing::info!(frames = replay.frames, records = replay.records.len(), "journal replayed");
        }
        if replay.torn_tail > 0 {
            tracing::warn!(
                bytes = replay.torn_tail,
                "the journal ends in an unfinished append (a crash while writing it, never acknowledged); dropped"
            );
        }
        if let Some(damage) = &replay.damaged {
            let kept =
                self.quarantine(journal::FILE, &damage.why, |dst| aegis_fs::write_new(dst, &[&damage.rest], 0o600))?;
            tracing::error!(
                offset = damage.at, reason = %damage.why, kept_at = %kept.display(), applied_frames = replay.frames,
                "the journal is damaged: the frames before the damage were applied, the rest was moved to quarantine; \
                 records written after it may be at an older version, check them"
            );
        }
        let mut state = self.state();
        self.apply(&mut state, &replay.records);
        if !state.unapplied.is_empty() {
            // The Safe still starts: those records are served from memory, and
            // the journal is kept for the next write or start to retry.
            tracing::error!(
                records = state.unapplied.len(),
                "committed records could not be written to their files (is the disk full?); the journal keeps them"
            );
            return Ok(());
        }
        state.journal.checkpoint()
    }

    /// Replaces the files of committed `records`, in order; a file that cannot
    /// be replaced now is kept in `unapplied` (read from there, retried later).
    fn apply(&self, state: &mut State, records: &[SealedRecord]) {
        for (name, bytes) in records {
            if let Err(e) = self.replace(name.as_str(), bytes) {
                tracing::error!(secret = %name, error = %e, "a committed record's file could not be written; the journal keeps it and it is retried");
                state.unapplied.insert(name.clone(), bytes.clone());
            } else {
                state.unapplied.remove(name);
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The path of the record file for `name`.
    pub fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(file_name(name))
    }

    /// Writes `bytes` as `name`'s record file, in place, without an fsync. The
    /// journal makes this safe: it holds the bytes until a checkpoint has made
    /// the file durable, and a file cut short by a crash is written again from
    /// it at open. In place, because replacing the file through a temporary
    /// file and a rename costs the file system far more (a new inode, and the
    /// old one's blocks freed, per write).
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let head = if is_hashed(name) { name_header(name)? } else { Vec::new() };
        let path = self.record_path(name);
        // Never through a symbolic link planted where a record file belongs.
        let existing =
            fs::OpenOptions::new().write(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(&path);
        match existing {
            Ok(file) => {
                let len = (head.len() + bytes.len()) as u64;
                let before = file.metadata()?.len();
                file.write_all_at(&head, 0)?;
                file.write_all_at(bytes, head.len() as u64)?;
                // Cut only a file that was longer: a truncate costs the file
                // system more than the look at its length.
                if before > len {
                    file.set_len(len)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                aegis_fs::write_new_unsynced(&path, &[&head, bytes], 0o600)
            }
            Err(e) => Err(e),
        }
    }

    /// Commits `records` in one journal append, then replaces their files. A
    /// file that cannot be replaced now is kept in `unapplied` (read from
    /// there, retried before the next commit), as its record is committed.
    fn commit(&self, records: &[SealedRecord]) -> io::Result<()> {
        let mut state = self.state();
        self.retry_unapplied(&mut state);
        state.journal.append(records)?;
        self.apply(&mut state, records);
        if state.journal.len() >= CHECKPOINT_BYTES && state.unapplied.is_empty() {
            if let Err(e) = state.journal.checkpoint() {
                tracing::error!(error = %e, "journal checkpoint failed; the journal keeps the records and it is retried");
            }
        }
        Ok(())
    }

    /// Writes the files still behind the journal; those that fail again stay.
    fn retry_unapplied(&self, state: &mut State) {
        state.unapplied.retain(|name, bytes| self.replace(name.as_str(), bytes).is_err());
    }

    /// Keeps something named after `file` in `quarantine/`, put at the path it
    /// is given by `place`, with a `.reason` file beside it; returns that path.
    fn quarantine(&self, file: &str, reason: &str, place: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<PathBuf> {
        let qdir = self.dir.join(QUARANTINE);
        fs::create_dir_all(&qdir)?;
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let dst = qdir.join(format!("{file}.{stamp}"));
        place(&dst)?;
        fs::write(qdir.join(format!("{file}.{stamp}.reason")), format!("{reason}\n"))?;
        self.sync_dir()?;
        Ok(dst)
    }

    fn sync_dir(&self) -> io::Result<()> {
        aegis_fs::sync_dir(&self.dir)
    }
}

impl DirBackend {
    /// The name a hashed record file holds, checked against its file name.
    fn hashed_name(&self, file: &str) -> io::Result<String> {
        let mut f = File::open(self.dir.join(file))?;
        let name = read_name_header(&mut f)?;
        if file_name(&name) != file {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "record file name header does not match its file name",
            ));
        }
        Ok(name)
    }
}

fn io_err(name: &str, source: io::Error) -> StoreError {
    StoreError::Io { name: name.to_owned(), source }
}

impl Backend for DirBackend {
    fn list(&self) -> Result<Listing, StoreError> {
        let open_err = |source| StoreError::Open { path: self.dir.display().to_string(), source };
        let mut listing = Listing::default();
        for entry in fs::read_dir(&self.dir).map_err(open_err)? {
            let file = entry.map_err(open_err)?.file_name().to_string_lossy().into_owned();
            if !file.ends_with(EXT) {
                continue;
            }
            let name = if file.starts_with(HASHED) {
                self.hashed_name(&file).map_err(|e| e.to_string())
            } else {
                name_of_file(&file).ok_or_else(|| "file name is not a valid encoded secret name".to_owned())
            };
            match name.and_then(|n| SecretName::parse_stored(&n).map_err(|e| e.to_string())) {
                Ok(name) => listing.names.push(name),
                Err(reason) => listing.unnamed.push(Unnamed { locator: file, reason }),
            }
        }
        for name in self.state().unapplied.keys() {
            if !listing.names.contains(name) {
                listing.names.push(name.clone());
            }
        }
        Ok(listing)
    }

    fn read(&self, name: &SecretName) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        self.read_into(name, &mut bytes)?;
        Ok(bytes)
    }

    fn read_into(&self, name: &SecretName, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        buf.clear();
        if let Some(bytes) = self.state().unapplied.get(name) {
            buf.extend_from_slice(bytes);
            return Ok(());
        }
        let name = name.as_str();
        let read = |buf: &mut Vec<u8>| -> io::Result<()> {
            let mut f = File::open(self.record_path(name))?;
            if is_hashed(name) && read_name_header(&mut f)? != name {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "record file header names another secret"));
            }
            f.read_to_end(buf).map(drop)
        };
        read(buf).map_err(|e| io_err(name, e))
    }

    fn write_batch(&self, records: &[SealedRecord]) -> Vec<Result<(), StoreError>> {
        match self.commit(records) {
            Ok(()) => records.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                tracing::error!(error = %e, "journal append failed; nothing of the batch was stored");
                records.iter().map(|(name, _)| Err(io_err(name.as_str(), copy_io(&e)))).collect()
            }
        }
    }

    /// One journal frame: the group is committed whole or not at all.
    fn write_group(&self, records: &[SealedRecord]) -> Result<(), GroupError> {
        self.commit(records).map_err(|e| {
            let first = records.first().map(|(n, _)| n.as_str()).unwrap_or_default();
            GroupError { stored: Vec::new(), error: io_err(first, e) }
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        self.retry_unapplied(&mut state);
        if !state.unapplied.is_empty() {
            return Err(io_err("journal", io::Error::other("committed records could not be written to their files")));
        }
        state.journal.checkpoint().map_err(|e| io_err("journal", e))
    }

    /// Moves the file into `quarantine/` with a `.reason` file beside it.
    fn set_aside(&self, secret: &SecretName, reason: &str) -> Result<SetAside, StoreError> {
        // A committed record whose file could not be written yet is the one set aside: its bytes go to
        // quarantine, and so does the stale file behind it (if it can be moved), so neither loads again.
        let pending = self.state().unapplied.remove(secret);
        let name = secret.as_str();
        let src = self.record_path(name);
        let kept = match &pending {
            Some(bytes) => self.quarantine(&file_name(name), reason, |dst| {
                aegis_fs::write_new(dst, &[bytes], 0o600)?;
                if fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
                    let mut stale = dst.as_os_str().to_owned();
                    stale.push(".stale");
                    fs::rename(&src, stale)?;
                }
                Ok(())
            }),
            None => self.quarantine(&file_name(name), reason, |dst| fs::rename(&src, dst)),
        };
        match kept {
            Ok(dst) => Ok(SetAside { kept_at: dst.display().to_string() }),
            Err(e) => {
                if let Some(bytes) = pending {
                    self.state().unapplied.insert(secret.clone(), bytes);
                }
                Err(io_err(name, e))
            }
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_encoding_round_trips_and_is_path_safe() {
        for name in ["billing", "k8s:db-credentials", "raw:x", ".hidden", "a%b", "ünï"] {
            let f = file_name(name);
            assert!(!f.contains('/') && !f.starts_with('.'), "{f}");
            assert_eq!(name_of_file(&f).as_deref(), Some(name));
        }
    }

    #[test]
    fn file_names_are_pinned() {
        // Existing data directories hold these exact names: they must not change.
        let cases = [
            ("billing", "billing.rec"),
            ("k8s:db-credentials", "k8s%3Adb-credentials.rec"),
            ("raw:x", "raw%3Ax.rec"),
            (".hidden", "%2Ehidden.rec"),
            ("a%b", "a%25b.rec"),
            ("a.b", "a.b.rec"),
            (":.", "%3A..rec"),
            ("..", "%2E..rec"),
            ("a b/c~d", "a%20b%2Fc%7Ed.rec"),
            ("A_z-09", "A_z-09.rec"),
            ("ünï", "%C3%BCn%C3%AF.rec"),
            ("", ".rec"),
        ];
        for (name, file) in cases {
            assert_eq!(file_name(name), file, "{name:?}");
            assert_eq!(name_of_file(file).as_deref(), Some(name), "{file:?}");
        }
    }

    #[test]
    fn every_character_is_escaped_as_before() {
        // The rule the hand-written encoder followed, byte by byte.
        let reference = |name: &str| {
            let mut out = String::new();
            for b in name.bytes() {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !out.is_empty()) {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out + EXT
        };
        for c in (0u32..0x800).filter_map(char::from_u32).chain(['\u{ffff}', '\u{1f600}']) {
            for name in [c.to_string(), format!("{c}{c}"), format!("a{c}")] {
                assert_eq!(file_name(&name), reference(&name), "{name:?}");
                assert_eq!(name_of_file(&file_name(&name)).as_deref(), Some(name.as_str()));
            }
        }
    }

    #[test]
    fn decode_refuses_what_no_name_encodes_to() {
        for file in
            ["billing", "%zz.rec", "%4.rec", "a%.rec", "%%41.rec", "%4g.rec", "%FF.rec", "%C3.rec", "%\u{fc}0.rec"]
        {
            assert_eq!(name_of_file(file), None, "{file:?}");
        }
        // Lower-case escapes and unescaped characters are read as before.
        assert_eq!(name_of_file("k8s%3adb.rec").as_deref(), Some("k8s:db"));
        assert_eq!(name_of_file("a:b.rec").as_deref(), Some("a:b"));
        assert_eq!(name_of_file(".x.rec").as_deref(), Some(".x"));
    }

    fn n(s: &str) -> SecretName {
        SecretName::parse_stored(s).unwrap()
    }

    fn recs(pairs: &[(&str, &[u8])]) -> Vec<SealedRecord> {
        pairs.iter().map(|(name, v)| (n(name), v.to_vec())).collect()
    }

    fn names(b: &DirBackend) -> Vec<String> {
        let mut names: Vec<String> = b.list().unwrap().names.iter().map(ToString::to_string).collect();
        names.sort();
        names
    }

    #[test]
    fn batch_write_load_and_quarantine() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        assert!(b.write_batch(&recs(&[("a", b"one"), ("k8s:b", b"two")])).iter().all(Result::is_ok));
        assert_eq!(names(&b), ["a", "k8s:b"]);
        assert!(b.list().unwrap().unnamed.is_empty());
        assert_eq!(b.read(&n("k8s:b")).unwrap(), b"two".to_vec());
        let aside = b.set_aside(&n("a"), "test").unwrap();
        assert!(aside.kept_at.contains("/quarantine/a.rec."), "{aside:?}");
        assert_eq!(names(&b), ["k8s:b"]);
        assert!(tmp.path().join("quarantine").read_dir().unwrap().count() == 2);
        let mode = fs::metadata(b.record_path("k8s:b")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A non-empty directory where `name`'s record file belongs makes its rename fail.
    fn block(b: &DirBackend, name: &str) {
        block_at(&b.dir, &file_name(name));
    }

    fn no_temp_files(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(TMP_PREFIX))
    }

    #[test]
    fn a_committed_record_whose_file_cannot_be_written_is_kept_until_it_can() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let abc = |v: &[u8]| recs(&[("a", v), ("b", v), ("c", v)]);
        b.write_group(&abc(b"v1")).unwrap();
        block(&b, "b");
        // The group is committed in the journal: whole, though b's file is blocked.
        b.write_group(&abc(b"v2")).unwrap();
        for name in ["a", "b", "c"] {
            assert_eq!(b.read(&n(name)).unwrap(), b"v2".to_vec(), "{name}");
        }
        assert!(no_temp_files(tmp.path()));
        // No checkpoint may empty the journal while b's file is behind it.
        assert!(b.flush().is_err());
        assert!(fs::metadata(journal::path(tmp.path())).unwrap().len() > 0);
        fs::remove_dir_all(b.record_path("b")).unwrap();
        assert!(b.write_batch(&recs(&[("d", b"v1")]))[0].is_ok());
        assert_eq!(fs::read(b.record_path("b")).unwrap(), b"v2".to_vec());
        b.flush().unwrap();
        assert_eq!(fs::metadata(journal::path(tmp.path())).unwrap().len(), 0);
    }

    #[test]
    fn setting_aside_a_record_still_waiting_for_its_file_quarantines_its_bytes_and_forgets_it() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        assert!(b.write_batch(&recs(&[("a", b"a1")]))[0].is_ok());
        block(&b, "a");
        // Committed in the journal, kept in memory: its file cannot be written.
        assert!(b.write_batch(&recs(&[("a", b"a2")]))[0].is_ok());
        assert_eq!(b.read(&n("a")).unwrap(), b"a2".to_vec());
        let kept = b.set_aside(&n("a"), "cannot be opened").unwrap();
        assert_eq!(fs::read(&kept.kept_at).unwrap(), b"a2".to_vec(), "the committed bytes are what is kept");
        assert!(b.read(&n("a")).is_err(), "the name is free");
        // Nothing holds the journal back any more, and a reopened store does not bring the record back.
        fs::remove_dir_all(b.record_path("a")).unwrap();
        b.flush().unwrap();
        drop(b);
        let b = DirBackend::open(tmp.path()).unwrap();
        assert!(!names(&b).contains(&"a".to_owned()), "{:?}", names(&b));
    }

    #[test]
    fn reopening_writes_the_journal_over_stale_record_files() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        b.write_group(&recs(&[("a", b"a1"), ("b", b"b1")])).unwrap();
        assert!(b.write_batch(&recs(&[("a", b"a2")]))[0].is_ok());
        drop(b);
        // What a power loss can leave of files written without an fsync.
        fs::write(tmp.path().join("a.rec"), b"").unwrap();
        fs::remove_file(tmp.path().join("b.rec")).unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        assert_eq!(b.read(&n("a")).unwrap(), b"a2".to_vec());
        assert_eq!(b.read(&n("b")).unwrap(), b"b1".to_vec());
        assert_eq!(names(&b), vec!["a".to_owned(), "b".to_owned()]);
        // Opening checkpointed: the journal is empty.
        assert_eq!(fs::metadata(journal::path(tmp.path())).unwrap().len(), 0);
    }

    #[test]
    fn a_record_file_that_cannot_be_rewritten_at_open_does_not_stop_the_open() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        assert!(b.write_batch(&recs(&[("a", b"a1"), ("b", b"b1")]))[0].is_ok());
        drop(b);
        block_at(tmp.path(), "a.rec");
        let b = DirBackend::open(tmp.path()).unwrap();
        assert_eq!(b.read(&n("a")).unwrap(), b"a1".to_vec());
        assert_eq!(b.read(&n("b")).unwrap(), b"b1".to_vec());
        assert!(fs::metadata(journal::path(tmp.path())).unwrap().len() > 0, "the journal must be kept");
        fs::remove_dir_all(tmp.path().join("a.rec")).unwrap();
        b.flush().unwrap();
        assert_eq!(fs::read(tmp.path().join("a.rec")).unwrap(), b"a1".to_vec());
    }

    fn block_at(dir: &Path, file: &str) {
        let _ = fs::remove_file(dir.join(file));
        fs::create_dir(dir.join(file)).unwrap();
        fs::write(dir.join(file).join("x"), b"").unwrap();
    }

    #[test]
    fn a_damaged_journal_applies_what_precedes_the_damage_and_keeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        assert!(b.write_batch(&recs(&[("a", b"a1")]))[0].is_ok());
        let first = b.state().journal.len() as usize;
        assert!(b.write_batch(&recs(&[("b", b"b1")]))[0].is_ok());
        assert!(b.write_batch(&recs(&[("c", b"c1")]))[0].is_ok());
        drop(b);
        let jpath = journal::path(tmp.path());
        let mut bytes = fs::read(&jpath).unwrap();
        bytes[first + 12] ^= 0xff;
        fs::write(&jpath, &bytes).unwrap();
        fs::remove_file(tmp.path().join("a.rec")).unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        assert_eq!(b.read(&n("a")).unwrap(), b"a1".to_vec());
        let q: Vec<String> = fs::read_dir(tmp.path().join(QUARANTINE))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(q.len(), 2, "{q:?}");
        let kept = q.iter().find(|f| !f.ends_with(".reason")).unwrap();
        assert_eq!(fs::read(tmp.path().join(QUARANTINE).join(kept)).unwrap(), bytes[first..].to_vec());
        assert_eq!(fs::metadata(&jpath).unwrap().len(), 0);
    }

    #[test]
    fn leftover_temp_files_are_removed_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(".tmp-a.rec-1-0"), b"half").unwrap();
        DirBackend::open(tmp.path()).unwrap();
        assert!(no_temp_files(tmp.path()));
    }

    fn long_name(len: usize) -> String {
        "n".repeat(len)
    }

    fn longest_file_name(dir: &Path) -> usize {
        let mut longest = 0;
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            longest = longest.max(e.file_name().len());
            if e.file_type().unwrap().is_dir() {
                longest = longest.max(longest_file_name(&e.path()));
            }
        }
        longest
    }

    #[test]
    fn short_names_keep_their_escaped_file_names() {
        assert_eq!(file_name("billing"), "billing.rec");
        assert_eq!(file_name("k8s:db"), "k8s%3Adb.rec");
        let at_limit = long_name(MAX_FILE_NAME - EXT.len());
        assert_eq!(file_name(&at_limit), format!("{at_limit}.rec"));
        let over = long_name(MAX_FILE_NAME - EXT.len() + 1);
        assert!(file_name(&over).starts_with('=') && file_name(&over).len() < 80);
        // Non-ASCII stored names grow threefold when escaped.
        assert!(file_name(&"ü".repeat(40)).starts_with('='));
    }

    #[test]
    fn long_names_round_trip_through_hashed_files() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let a = long_name(253);
        let k = format!("k8s:{}", "x".repeat(236));
        let u = "ü".repeat(100);
        let written = recs(&[(&a, b"one"), (&k, b"two"), (&u, b"three"), ("short", b"four")]);
        assert!(b.write_batch(&written).iter().all(Result::is_ok));
        let mut want = vec![a.clone(), k.clone(), u.clone(), "short".to_owned()];
        want.sort();
        assert_eq!(names(&b), want);
        let unnamed = b.list().unwrap().unnamed;
        assert!(unnamed.is_empty(), "{unnamed:?}");
        assert_eq!(b.read(&n(&a)).unwrap(), b"one".to_vec());
        assert_eq!(b.read(&n(&k)).unwrap(), b"two".to_vec());
        assert_eq!(b.read(&n(&u)).unwrap(), b"three".to_vec());
        assert_eq!(b.read(&n("short")).unwrap(), b"four".to_vec());
        // Overwrite in place.
        assert!(b.write_batch(&recs(&[(&a, b"one-b")]))[0].is_ok());
        assert_eq!(b.read(&n(&a)).unwrap(), b"one-b".to_vec());
        b.set_aside(&n(&a), "test").unwrap();
        assert_eq!(b.list().unwrap().names.len(), 3);
        assert_eq!(tmp.path().join("quarantine").read_dir().unwrap().count(), 2);
        assert!(longest_file_name(tmp.path()) <= 255);
    }

    #[test]
    fn a_header_naming_another_secret_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let a = long_name(230);
        let c = long_name(240);
        assert!(b.write_batch(&recs(&[(&a, b"one"), (&c, b"two")])).iter().all(Result::is_ok));
        // Put c's file (header naming c) where a's file belongs.
        fs::copy(b.record_path(&c), b.record_path(&a)).unwrap();
        let err = b.read(&n(&a)).unwrap_err().to_string();
        assert!(err.contains("names another secret"), "{err}");
        assert_eq!(names(&b), vec![c.clone()]);
        let unnamed = b.list().unwrap().unnamed;
        assert_eq!(unnamed.len(), 1);
        assert!(unnamed[0].reason.contains("does not match"), "{unnamed:?}");
        // A hashed file with no header at all.
        fs::write(b.record_path(&a), b"garbage").unwrap();
        assert!(b.read(&n(&a)).is_err());
        assert_eq!(b.list().unwrap().unnamed.len(), 1);
    }

    #[test]
    fn a_record_file_is_never_written_through_a_symbolic_link() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"untouched").unwrap();
        std::os::unix::fs::symlink(&outside, b.record_path("a")).unwrap();
        let _ = b.write_batch(&recs(&[("a", b"v1")]));
        assert_eq!(fs::read(&outside).unwrap(), b"untouched".to_vec());
    }

    #[test]
    fn a_shorter_record_leaves_no_tail_of_the_longer_one() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let long = long_name(230);
        assert!(b.write_batch(&recs(&[("a", b"a-long-record"), (&long, b"h-long-record")])).iter().all(Result::is_ok));
        assert!(b.write_batch(&recs(&[("a", b"a2"), (&long, b"h2")])).iter().all(Result::is_ok));
        b.flush().unwrap();
        assert_eq!(fs::read(b.record_path("a")).unwrap(), b"a2".to_vec());
        drop(b);
        let b = DirBackend::open(tmp.path()).unwrap();
        assert_eq!(b.read(&n(&long)).unwrap(), b"h2".to_vec());
    }
}
