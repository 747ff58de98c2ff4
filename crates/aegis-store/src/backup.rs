//! The content of a backup file, inside its encryption
//! ([`aegis_crypto::backup`]): JSON lines, one per line of the file.
//!
//! ```text
//! {"header":{"format":"aegis-backup","version":1,"taken_at":"…","commit":N,"secrets":S,"versions":V}}
//! {"secret":{…the secret's document, as the store seals it…}}      S lines, names ascending
//! {"end":{"secrets":S}}
//! ```
//!
//! The reader checks what encryption cannot: the header comes first, names
//! strictly ascend (no secret twice), every document is whole and consistent,
//! the count matches, and nothing follows the end. Its errors name the line
//! and what is wrong, never a value.

use std::io::{self, BufRead, Read, Write};

use aegis_core::secret::SecretDoc;
use aegis_core::SecretName;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The `format` of the header.
pub const FORMAT: &str = "aegis-backup";
/// The version of the content this build writes and reads.
pub const VERSION: u32 = 1;
/// The longest line read: one secret with its whole history.
pub const MAX_LINE: usize = 64 << 20;

/// The first line: what the backup holds and up to which change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The content's version ([`VERSION`]).
    pub version: u32,
    /// When the snapshot was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// The snapshot holds every change of the store's commits up to this one
    /// (counted since the Safe started), and so every write acknowledged before it was taken.
    pub commit: u64,
    /// Secrets that follow.
    pub secrets: u64,
    /// Versions those secrets hold together.
    pub versions: u64,
}

impl Header {
    /// The header of a backup of `snap`.
    pub fn of(snap: &crate::Snapshot) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            taken_at: snap.taken_at,
            commit: snap.commit,
            secrets: snap.entries.len() as u64,
            versions: snap.entries.iter().map(|e| e.doc.versions.len() as u64).sum(),
        }
    }

    /// What the backup holds, as the API reports it, for a file of `bytes`.
    pub fn summary(&self, bytes: u64) -> aegis_core::api::BackupChecked {
        aegis_core::api::BackupChecked {
            taken_at: self.taken_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            commit: self.commit,
            secrets: self.secrets,
            versions: self.versions,
            bytes,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LineOut<'a> {
    Header(&'a Header),
    Secret(&'a SecretDoc),
    End { secrets: u64 },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum LineIn {
    Header(Header),
    Secret(Box<SecretDoc>),
    End { secrets: u64 },
}

/// Why a backup's content is refused. Never holds a value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackupError(pub String);

/// Writes a backup's content to `W` (an encrypting writer).
pub struct BackupWriter<W: Write> {
    out: W,
    expected: u64,
    written: u64,
    buf: Zeroizing<Vec<u8>>,
}

impl<W: Write> BackupWriter<W> {
    /// Starts the content with its header.
    pub fn new(out: W, header: &Header) -> io::Result<Self> {
        let mut w = Self { out, expected: header.secrets, written: 0, buf: Zeroizing::new(Vec::with_capacity(4096)) };
        w.line(&LineOut::Header(header))?;
        Ok(w)
    }

    /// Adds one secret (in ascending name order).
    pub fn secret(&mut self, doc: &SecretDoc) -> io::Result<()> {
        self.written += 1;
        self.line(&LineOut::Secret(doc))
    }

    /// Ends the content; the count must be the header's.
    pub fn finish(mut self) -> io::Result<W> {
        if self.written != self.expected {
            return Err(io::Error::other(format!(
                "the backup holds {} secrets, its header announced {}",
                self.written, self.expected
            )));
        }
        self.line(&LineOut::End { secrets: self.written })?;
        Ok(self.out)
    }

    fn line(&mut self, line: &LineOut<'_>) -> io::Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut *self.buf, line).map_err(io::Error::other)?;
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)
    }
}

/// Reads and checks a backup's content from `R` (a decrypting reader).
pub struct BackupReader<R: BufRead> {
    input: R,
    header: Header,
    line: u64,
    seen: u64,
    versions: u64,
    last: Option<SecretName>,
    ended: bool,
    buf: Zeroizing<Vec<u8>>,
}

impl<R: BufRead> BackupReader<R> {
    /// Reads the header.
    pub fn open(input: R) -> Result<Self, BackupError> {
        let mut r = Self {
            input,
            header: Header {
                format: String::new(),
                version: 0,
                taken_at: OffsetDateTime::UNIX_EPOCH,
                commit: 0,
                secrets: 0,
                versions: 0,
            },
            line: 0,
            seen: 0,
            versions: 0,
            last: None,
            ended: false,
            buf: Zeroizing::new(Vec::with_capacity(4096)),
        };
        match r.next_line()? {
            Some(LineIn::Header(h)) => {
                if h.format != FORMAT {
                    return Err(BackupError(format!("line 1: the format is '{}', not '{FORMAT}'", h.format)));
                }
                if h.version != VERSION {
                    return Err(BackupError(format!(
                        "line 1: the backup is of content version {}, this build reads version {VERSION}; \
                         restore it with the Aegis release that wrote it or a later one",
                        h.version
                    )));
                }
                r.header = h;
                Ok(r)
            }
            Some(_) => Err(BackupError("line 1 is not the backup's header: the file was not written by Aegis".into())),
            None => Err(BackupError("the backup is empty: it holds no header".into())),
        }
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Secrets read so far.
    pub fn secrets_read(&self) -> u64 {
        self.seen
    }

    /// The next secret, checked; `None` after the end line, once the count is
    /// checked and nothing follows it.
    pub fn next_secret(&mut self) -> Result<Option<SecretDoc>, BackupError> {
        if self.ended {
            return Ok(None);
        }
        match self.next_line()? {
            Some(LineIn::Secret(doc)) => {
                let doc = *doc;
                self.check(&doc)?;
                self.seen += 1;
                self.versions += doc.versions.len() as u64;
                if self.seen > self.header.secrets {
                    return Err(BackupError(format!(
                        "line {}: more secrets than the header announced ({})",
                        self.line, self.header.secrets
                    )));
                }
                self.last = Some(doc.name.clone());
                Ok(Some(doc))
            }
            Some(LineIn::End { secrets }) => {
                if secrets != self.seen || secrets != self.header.secrets {
                    return Err(BackupError(format!(
                        "line {}: the backup ends after {} secrets, but announced {} (end line: {secrets})",
                        self.line, self.seen, self.header.secrets
                    )));
                }
                if self.versions != self.header.versions {
                    return Err(BackupError(format!(
                        "the secrets hold {} versions, the header announced {}",
                        self.versions, self.header.versions
                    )));
                }
                let mut extra = [0u8; 1];
                match self.input.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(BackupError("data follows the end of the backup".into())),
                    Err(e) => return Err(self.read_error(&e)),
                }
                self.ended = true;
                Ok(None)
            }
            Some(LineIn::Header(_)) => Err(BackupError(format!("line {}: a second header", self.line))),
            None => Err(BackupError(format!(
                "the backup is truncated: it ends after {} of {} secrets, without its end line",
                self.seen, self.header.secrets
            ))),
        }
    }

    fn check(&self, doc: &SecretDoc) -> Result<(), BackupError> {
        let at = self.line;
        if let Some(last) = &self.last {
            if doc.name.as_str() <= last.as_str() {
                return Err(BackupError(format!(
                    "line {at}: secret '{}' comes after '{last}': secrets must ascend by name, each once \
                     (the file was reordered or not written by Aegis)",
                    doc.name
                )));
            }
        }
        let bad = |what: &str| BackupError(format!("line {at}: secret '{}' is inconsistent: {what}", doc.name));
        if doc.revision == 0 {
            return Err(bad("its revision is 0"));
        }
        if doc.versions.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(bad("its version numbers do not ascend"));
        }
        if doc.current != 0 && doc.version(doc.current).is_none() {
            return Err(bad("its current version is not in its history"));
        }
        Ok(())
    }

    fn next_line(&mut self) -> Result<Option<LineIn>, BackupError> {
        self.buf.clear();
        let limit = MAX_LINE as u64 + 1;
        let n = (&mut self.input).take(limit).read_until(b'\n', &mut self.buf).map_err(|e| self.read_error(&e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() != Some(&b'\n') {
            return Err(if n as u64 >= limit {
                BackupError(format!("line {} is longer than {MAX_LINE} bytes", self.line))
            } else {
                BackupError(format!("line {} is cut short: the backup is truncated", self.line))
            });
        }
        serde_json::from_slice(&self.buf).map(Some).map_err(|e| {
            // serde_json's message may quote a value: give only where.
            BackupError(format!(
                "line {} is not a backup line (invalid JSON or an unexpected field at column {})",
                self.line,
                e.column()
            ))
        })
    }

    fn read_error(&self, e: &io::Error) -> BackupError {
        let after = format!("after {} of {} secrets", self.seen, self.header.secrets);
        BackupError(match e.kind() {
            io::ErrorKind::InvalidData => {
                format!("the backup was altered or damaged, or cut short, {after}: a chunk failed its authentication")
            }
            io::ErrorKind::UnexpectedEof => {
                format!("the backup is truncated (cut short) {after}: its last chunk is missing")
            }
            _ => format!("the backup could not be read {after}: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use aegis_core::secret::{SecretMeta, SecretValue};

    use super::*;

    fn doc(name: &str, value: &str) -> SecretDoc {
        let now = OffsetDateTime::now_utc();
        let mut d = SecretDoc::empty(SecretName::parse(name).unwrap(), now);
        d.put(SecretValue::new(value), SecretMeta::defaults(now), None, now, 10).unwrap();
        d
    }

    fn content(docs: &[SecretDoc]) -> Vec<u8> {
        let versions = docs.iter().map(|d| d.versions.len() as u64).sum();
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            taken_at: OffsetDateTime::now_utc(),
            commit: 7,
            secrets: docs.len() as u64,
            versions,
        };
        let mut w = BackupWriter::new(Vec::new(), &header).unwrap();
        for d in docs {
            w.secret(d).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<SecretDoc>, BackupError> {
        let mut r = BackupReader::open(bytes)?;
        let mut out = Vec::new();
        while let Some(d) = r.next_secret()? {
            out.push(d);
        }
        Ok(out)
    }

    #[test]
    fn what_is_written_reads_back_with_its_header() {
        let bytes = content(&[doc("a", "one"), doc("b", "two")]);
        let mut r = BackupReader::open(&bytes[..]).unwrap();
        assert_eq!(r.header().commit, 7);
        assert_eq!(r.next_secret().unwrap().unwrap().live().unwrap().1.expose(), "one");
        assert_eq!(r.next_secret().unwrap().unwrap().name.as_str(), "b");
        assert!(r.next_secret().unwrap().is_none());
    }

    #[test]
    fn reordered_repeated_missing_and_extra_lines_are_refused_without_values() {
        let bytes = content(&[doc("a", "SECRET-ONE"), doc("b", "SECRET-TWO")]);
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes();

        let swapped = join(&[lines[0], lines[2], lines[1], lines[3]]);
        let e = read_all(&swapped).unwrap_err().0;
        assert!(e.contains("must ascend"), "{e}");
        let twice = join(&[lines[0], lines[1], lines[1], lines[3]]);
        assert!(read_all(&twice).unwrap_err().0.contains("must ascend"));
        let short = join(&[lines[0], lines[1], lines[3]]);
        assert!(read_all(&short).unwrap_err().0.contains("ends after 1 secrets"));
        let no_end = join(&[lines[0], lines[1], lines[2]]);
        assert!(read_all(&no_end).unwrap_err().0.contains("truncated"));
        let after = join(&[lines[0], lines[1], lines[2], lines[3], lines[3]]);
        assert!(read_all(&after).unwrap_err().0.contains("data follows"));
        let broken = join(&[lines[0], &lines[1].replace("SECRET-ONE\"", "SECRET-ONE"), lines[2], lines[3]]);
        let e = read_all(&broken).unwrap_err().0;
        assert!(e.contains("line 2") && !e.contains("SECRET"), "{e}");
        assert!(read_all(b"").unwrap_err().0.contains("empty"));
        assert!(read_all(join(&[lines[1]]).as_slice()).unwrap_err().0.contains("not the backup's header"));
    }
}
