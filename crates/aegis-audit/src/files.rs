//! Where a trail's files are: the current file `<name>` and the rotated ones
//! `<name>.000001`, `<name>.000002`… (oldest first), and reading the last line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Longest line the sink writes; a longer "line" at the end of a file is damage.
pub const MAX_LINE: u64 = 64 * 1024;

/// The name of the `n`th rotated file of the trail at `current`.
pub fn rotated(current: &Path, n: u64) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{n:06}"));
    PathBuf::from(name)
}

/// The rotation number of `candidate` if it is a rotated file of `current`.
fn rotation_number(current: &Path, candidate: &Path) -> Option<u64> {
    let base = current.file_name()?.to_str()?;
    let name = candidate.file_name()?.to_str()?;
    let digits = name.strip_prefix(base)?.strip_prefix('.')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// The rotated files of the trail at `current`, oldest first, with their numbers.
pub fn rotated_files(current: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = aegis_fs::parent_dir(current);
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if let Some(n) = rotation_number(current, &path) {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Every file of the trail at `current`, oldest first: the rotated ones, then `current` if it exists.
pub fn trail_files(current: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated_files(current)?.into_iter().map(|(_, p)| p).collect();
    if current.exists() {
        files.push(current.to_owned());
    }
    Ok(files)
}

/// The `seq` of the first line of a file, if it has a readable one.
pub fn first_seq(path: &Path) -> Option<u64> {
    let mut line = Vec::new();
    BufReader::new(File::open(path).ok()?).take(MAX_LINE + 1).read_until(b'\n', &mut line).ok()?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    crate::line::Parsed::parse(&line).map(|p| p.seq)
}

/// The end of a file: its last complete line, and where complete lines end
/// (bytes after that are a partial line left by a crash or a failed write).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// The last complete line, without its newline.
    pub last: Option<Vec<u8>>,
    /// Length of the file up to and including the last newline.
    pub complete_len: u64,
    /// Length of the file.
    pub len: u64,
}

/// Reads the end of a regular file.
pub fn tail(path: &Path) -> io::Result<Tail> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let window = len.min(2 * MAX_LINE + 2);
    f.seek(SeekFrom::Start(len - window))?;
    let mut buf = Vec::with_capacity(window as usize);
    f.take(window).read_to_end(&mut buf)?;
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        // No newline within the window: nothing complete near the end.
        return Ok(Tail { last: None, complete_len: if window == len { 0 } else { len }, len });
    };
    let complete_len = len - window + end as u64 + 1;
    let start = buf[..end].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if start == 0 && window < len {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the last line of the audit file is too long"));
    }
    Ok(Tail { last: Some(buf[start..end].to_vec()), complete_len, len })
}

/// The last `n` complete lines of `path` that `keep` accepts, read a line at
/// a time (memory holds `n` lines, whatever the file's size), and where the
/// complete lines end.
pub fn last_matching(
    path: &Path,
    n: usize,
    keep: &impl Fn(&[u8]) -> bool,
) -> io::Result<(std::collections::VecDeque<Vec<u8>>, u64)> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut found = std::collections::VecDeque::new();
    let mut complete = 0;
    loop {
        let mut line = Vec::new();
        let read = reader.by_ref().take(MAX_LINE + 1).read_until(b'\n', &mut line)?;
        if read == 0 || line.last() != Some(&b'\n') {
            // The end, a partial last line (still being written), or damage: stop at the last whole line.
            return Ok((found, complete));
        }
        complete += read as u64;
        line.pop();
        if n > 0 && keep(&line) {
            if found.len() == n {
                found.pop_front();
            }
            found.push_back(line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_are_found_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join("audit.log");
        for n in [2, 10, 1] {
            std::fs::write(rotated(&cur, n), b"").unwrap();
        }
        std::fs::write(dir.path().join("audit.log.x"), b"").unwrap();
        std::fs::write(dir.path().join("other.log.000003"), b"").unwrap();
        std::fs::write(&cur, b"").unwrap();
        let names: Vec<_> =
            trail_files(&cur).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["audit.log.000001", "audit.log.000002", "audit.log.000010", "audit.log"]);
    }

    #[test]
    fn the_tail_is_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"one\ntwo\nthr").unwrap();
        let t = tail(&p).unwrap();
        assert_eq!((t.last.as_deref(), t.complete_len, t.len), (Some(&b"two"[..]), 8, 11));
        std::fs::write(&p, b"").unwrap();
        assert_eq!(tail(&p).unwrap(), Tail::default());
        std::fs::write(&p, b"only\n").unwrap();
        assert_eq!(tail(&p).unwrap().last.as_deref(), Some(&b"only"[..]));
    }
}
