//! One file per key of a JSON object secret (`aegis sidecar --split-dir`).
//!
//! Each key becomes a file named after it holding the key's value (strings as
//! they are, other JSON values as their JSON text), written atomically. Only
//! keys made of ASCII letters, digits, `.`, `_` and `-`, not starting with a
//! dot, at most 255 bytes, become files; others are refused (and logged), so a
//! key can never name a path outside the directory or a hidden file.
//!
//! The directory may hold other files: the sidecar removes only the files it
//! wrote itself, which it lists in `.aegis-keys` (key names, never values).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::workload::filewrite::{self, FileError, FileMode};

/// The list of files this sidecar wrote, kept in the directory across restarts.
const MANIFEST: &str = ".aegis-keys";

/// What one update did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Files written (new or changed content).
    pub written: usize,
    /// Files removed (keys no longer in the secret).
    pub removed: usize,
    /// Keys that are not safe file names.
    pub refused: Vec<String>,
}

impl Outcome {
    /// Whether any file changed.
    pub fn changed(&self) -> bool {
        self.written + self.removed > 0
    }
}

/// A directory kept in step with the keys of a secret.
#[derive(Debug, Clone)]
pub struct SplitDir {
    dir: PathBuf,
    mode: FileMode,
}

impl SplitDir {
    /// A directory whose files get `mode`.
    pub fn new(dir: PathBuf, mode: FileMode) -> Self {
        Self { dir, mode }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the directory hold one file per (safe) key and nothing else of ours.
    pub fn apply(&self, entries: &[(String, Zeroizing<String>)]) -> Result<Outcome, FileError> {
        filewrite::ensure_dir(&self.dir)?;
        let before = self.read_manifest();
        let (keep, refused): (Vec<_>, Vec<_>) = entries.iter().partition(|(k, _)| safe_file_name(k));
        let now: BTreeSet<String> = keep.iter().map(|(k, _)| k.clone()).collect();
        // List new names before writing them, so a crash never leaves a file of ours unlisted.
        let listed: BTreeSet<String> = before.union(&now).cloned().collect();
        if listed != before {
            self.write_manifest(&listed)?;
        }
        let mut out = Outcome { refused: refused.into_iter().map(|(k, _)| k.clone()).collect(), ..Outcome::default() };
        for (key, value) in keep {
            if filewrite::sync(&self.dir.join(key), value.as_bytes(), self.mode)? {
                out.written += 1;
            }
        }
        for gone in before.difference(&now) {
            if filewrite::remove(&self.dir.join(gone))? {
                out.removed += 1;
            }
        }
        if listed != now {
            self.write_manifest(&now)?;
        }
        Ok(out)
    }

    fn read_manifest(&self) -> BTreeSet<String> {
        let text = std::fs::read_to_string(self.dir.join(MANIFEST)).unwrap_or_default();
        text.lines().filter(|l| safe_file_name(l)).map(str::to_owned).collect()
    }

    fn write_manifest(&self, names: &BTreeSet<String>) -> Result<(), FileError> {
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        filewrite::write_atomic(&self.dir.join(MANIFEST), text.as_bytes(), FileMode::PRIVATE)
    }
}

/// Whether `key` can be a file name in the directory (see the module docs).
pub fn safe_file_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 255
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, Zeroizing<String>)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), Zeroizing::new((*v).to_owned()))).collect()
    }

    #[test]
    fn file_names() {
        for ok in ["DB_USER", "tls.crt", "a-b", "0"] {
            assert!(safe_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "a b", "é", "a\0b", &"x".repeat(256)] {
            assert!(!safe_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn writes_changes_and_removes_only_its_own_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("other"), "not ours").unwrap();
        let s = SplitDir::new(d.path().to_owned(), FileMode::PRIVATE);
        let o = s.apply(&entries(&[("a", "1"), ("b", "2"), ("../c", "3")])).unwrap();
        assert_eq!((o.written, o.removed, o.refused.clone()), (2, 0, vec!["../c".to_owned()]));
        assert_eq!(std::fs::read_to_string(d.path().join("a")).unwrap(), "1");
        let o = s.apply(&entries(&[("a", "1"), ("b", "2")])).unwrap();
        assert!(!o.changed());
        // A new SplitDir (a restarted sidecar) still knows which files are its own.
        let s = SplitDir::new(d.path().to_owned(), FileMode::PRIVATE);
        let o = s.apply(&entries(&[("a", "9"), ("other", "mine now")])).unwrap();
        assert_eq!((o.written, o.removed), (2, 1));
        assert!(!d.path().join("b").exists());
        s.apply(&[]).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, vec![std::ffi::OsString::from(".aegis-keys")]);
    }
}
