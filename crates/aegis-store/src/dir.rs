//! The default backend: a directory with one file per secret.
//!
//! Each write goes to a temporary file in the same directory, is fsynced, and
//! renamed over the old file; one fsync of the directory then makes the whole
//! batch's renames durable. Files of one batch are written and fsynced in
//! parallel so the file system can commit them in one journal transaction. The
//! temporary files and the directory fsync are `aegis-fs`'s pieces.
//!
//! A short name is the file name (`%XX`-escaped, plus `.rec`). A name whose
//! file name would pass [`MAX_FILE_NAME`] bytes is stored as
//! `=<sha256 hex of the name>.rec`, and that file starts with a clear header
//! (magic, big-endian u16 length, the name) before the sealed record, so every
//! accepted name fits the 255-byte file name limit of common file systems.
//! Names are not secret; the sealed record binds its name, so a header naming
//! another secret cannot be opened as that secret.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};

use aegis_core::SecretName;

use crate::backend::{GroupError, Listing, SealedRecord, SetAside, Unnamed};
use crate::writer::copy_io;
use crate::{Backend, StoreError};

const EXT: &str = ".rec";
const TMP_PREFIX: &str = ".tmp-";
const QUARANTINE: &str = "quarantine";
const WRITE_THREADS: usize = 8;
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
    counter: AtomicU64,
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
    /// Opens (creating if needed, mode 0700) a data directory and removes
    /// temporary files left by a crash.
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
        Ok(Self { dir: dir.to_owned(), counter: AtomicU64::new(0) })
    }

    /// The path of the record file for `name`.
    pub fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(file_name(name))
    }

    /// Writes `name`'s record to a new temporary file (named without the
    /// secret's name, so its length never depends on the name).
    fn write_temp(&self, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let head = if is_hashed(name) { name_header(name)? } else { Vec::new() };
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        aegis_fs::write_new(&tmp, &[&head, bytes], 0o600)?;
        Ok(tmp)
    }

    /// Writes every record to its temporary file, in parallel; one result per
    /// record, in order (a writer thread that fails counts for each of its records).
    fn write_temps(&self, records: &[SealedRecord]) -> Vec<io::Result<PathBuf>> {
        let chunk = records.len().div_ceil(WRITE_THREADS).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = records
                .chunks(chunk)
                .map(|part| {
                    (
                        part.len(),
                        s.spawn(move || part.iter().map(|(n, b)| self.write_temp(n.as_str(), b)).collect::<Vec<_>>()),
                    )
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|(len, h)| {
                    h.join()
                        .unwrap_or_else(|_| (0..len).map(|_| Err(io::Error::other("writer thread failed"))).collect())
                })
                .collect()
        })
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
        Ok(listing)
    }

    fn read(&self, name: &SecretName) -> Result<Vec<u8>, StoreError> {
        let name = name.as_str();
        let path = self.record_path(name);
        if !is_hashed(name) {
            return fs::read(path).map_err(|e| io_err(name, e));
        }
        let read = || -> io::Result<Vec<u8>> {
            let mut f = File::open(&path)?;
            if read_name_header(&mut f)? != name {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "record file header names another secret"));
            }
            let mut rest = Vec::new();
            f.read_to_end(&mut rest)?;
            Ok(rest)
        };
        read().map_err(|e| io_err(name, e))
    }

    fn write_batch(&self, records: &[SealedRecord]) -> Vec<Result<(), StoreError>> {
        let temps = self.write_temps(records);
        let mut results: Vec<Result<(), StoreError>> = records
            .iter()
            .zip(temps)
            .map(|((name, _), tmp)| {
                let name = name.as_str();
                let tmp = tmp.map_err(|e| io_err(name, e))?;
                fs::rename(&tmp, self.record_path(name)).map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    io_err(name, e)
                })
            })
            .collect();
        if let Err(e) = self.sync_dir() {
            tracing::error!(error = %e, "directory fsync failed");
            for (r, (name, _)) in results.iter_mut().zip(records) {
                if r.is_ok() {
                    *r = Err(io_err(name.as_str(), crate::writer::copy_io(&e)));
                }
            }
        }
        results
    }

    fn write_group(&self, records: &[SealedRecord]) -> Result<(), GroupError> {
        write_group(self, records)
    }

    /// Moves the file into `quarantine/` with a `.reason` file beside it.
    fn set_aside(&self, name: &SecretName, reason: &str) -> Result<SetAside, StoreError> {
        let name = name.as_str();
        let qdir = self.dir.join(QUARANTINE);
        fs::create_dir_all(&qdir).map_err(|e| io_err(name, e))?;
        let src = self.record_path(name);
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let dst = qdir.join(format!("{}.{stamp}", file_name(name)));
        fs::rename(&src, &dst).map_err(|e| io_err(name, e))?;
        let note = qdir.join(format!("{}.{stamp}.reason", file_name(name)));
        fs::write(note, format!("{reason}\n")).map_err(|e| io_err(name, e))?;
        self.sync_dir().map_err(|e| io_err(name, e))?;
        Ok(SetAside { kept_at: dst.display().to_string() })
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

/// All or nothing: every temporary file is written and fsynced before any
/// record is replaced; a failed temporary write removes them all.
fn write_group(b: &DirBackend, records: &[SealedRecord]) -> Result<(), GroupError> {
    let fail = |stored: Vec<SecretName>, name: &str, e: io::Error| GroupError { stored, error: io_err(name, e) };
    let temps = b.write_temps(records);
    let failed = records.iter().zip(&temps).find_map(|((n, _), t)| t.as_ref().err().map(|e| (n, copy_io(e))));
    if let Some((name, e)) = failed {
        for tmp in temps.iter().flatten() {
            let _ = fs::remove_file(tmp);
        }
        return Err(fail(Vec::new(), name.as_str(), e));
    }
    let temps: Vec<PathBuf> = temps.into_iter().flatten().collect();
    let mut stored = Vec::with_capacity(records.len());
    for (i, ((name, _), tmp)) in records.iter().zip(&temps).enumerate() {
        if let Err(e) = fs::rename(tmp, b.record_path(name.as_str())) {
            for t in &temps[i..] {
                let _ = fs::remove_file(t);
            }
            let _ = b.sync_dir();
            return Err(fail(stored, name.as_str(), e));
        }
        stored.push(name.clone());
    }
    b.sync_dir().map_err(|e| {
        let first = stored.first().map(|n| n.as_str().to_owned()).unwrap_or_default();
        fail(stored.clone(), &first, e)
    })
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

    #[test]
    fn group_write_reports_exactly_what_was_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let recs = |v: &[u8]| recs(&[("a", v), ("b", v), ("c", v)]);
        b.write_group(&recs(b"v1")).unwrap();
        // A non-empty directory where "b"'s record should be makes its rename fail.
        fs::remove_file(b.record_path("b")).unwrap();
        fs::create_dir(b.record_path("b")).unwrap();
        fs::write(b.record_path("b").join("x"), b"").unwrap();
        let e = b.write_group(&recs(b"v2")).unwrap_err();
        assert_eq!(e.stored, vec![n("a")]);
        assert_eq!(b.read(&n("a")).unwrap(), b"v2".to_vec());
        assert_eq!(b.read(&n("c")).unwrap(), b"v1".to_vec());
        assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(TMP_PREFIX)));
    }

    #[test]
    fn leftover_temp_files_are_removed_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(".tmp-a.rec-1-0"), b"half").unwrap();
        DirBackend::open(tmp.path()).unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn failed_write_leaves_previous_record() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        assert!(b.write_batch(&recs(&[("a", b"v1")]))[0].is_ok());
        // A directory where the record file should be makes the rename fail.
        fs::remove_file(b.record_path("a")).unwrap();
        fs::create_dir(b.record_path("a")).unwrap();
        fs::write(b.record_path("a").join("x"), b"").unwrap();
        let r = b.write_batch(&recs(&[("a", b"v2")]));
        assert!(r[0].is_err());
        assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(TMP_PREFIX)));
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
    fn temp_file_names_do_not_hold_the_secret_name() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBackend::open(tmp.path()).unwrap();
        let t = b.write_temp(&long_name(253), b"x").unwrap();
        let f = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(f.starts_with(TMP_PREFIX) && f.len() < 40, "{f}");
    }
}
