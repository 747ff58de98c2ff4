//! The encryption of backup files.
//!
//! A backup is an age file (binary, X25519 stanzas, age's STREAM payload:
//! 64 KiB chunks, each authenticated and numbered, the last one marked), so
//! a flipped, reordered or missing byte anywhere is refused. It is encrypted
//! to the Safe's root key (its age recipient, the second line of the root
//! key) and to any age recipients given at backup time; whoever holds one of
//! those identities can open it, with this crate or with the `age` tool.
//!
//! A holder of a recipient's identity who is not the Safe unwraps the file's
//! key ([`BackupKey`]) on their side and hands only that key to the Safe, so
//! the identity itself never reaches it.

use std::cell::RefCell;
use std::fmt;
use std::io::{BufReader, Read, Write};

use age::secrecy::ExposeSecret;
use age::stream::{StreamReader, StreamWriter};
use age_core::format::{FileKey, Stanza};
use base64::Engine;
use zeroize::Zeroizing;

use crate::{CryptoError, Keyring, RootKey};

const FILE_KEY_LEN: usize = 16;
const X25519_TAG: &str = "X25519";

/// The key of one backup file: opens that file and no other. Never printed.
pub struct BackupKey(Zeroizing<[u8; FILE_KEY_LEN]>);

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupKey(..)")
    }
}

impl BackupKey {
    /// Its base64 form, to hand to the Safe with the backup.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]))
    }

    /// Parses the base64 form; the error never quotes the text.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| CryptoError::Backup("the backup key is not valid base64".to_owned()))?,
        );
        let key: [u8; FILE_KEY_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Backup(format!("the backup key must be {FILE_KEY_LEN} bytes")))?;
        Ok(Self(Zeroizing::new(key)))
    }
}

/// Parses an age recipient (`age1…`) given at backup time.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, CryptoError> {
    text.trim().parse().map_err(|_| {
        CryptoError::Backup(format!(
            "'{}' is not an age X25519 recipient: it must start with age1 (as printed by age-keygen)",
            text.trim()
        ))
    })
}

/// Parses an age identity file (`AGE-SECRET-KEY-1…` lines, `#` comments).
pub fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, CryptoError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.parse::<age::x25519::Identity>().map_err(|_| {
            CryptoError::Backup(format!(
                "line {} of the identity file is not an age X25519 identity (AGE-SECRET-KEY-1…)",
                i + 1
            ))
        })?);
    }
    if out.is_empty() {
        return Err(CryptoError::Backup("the identity file holds no age identity".to_owned()));
    }
    Ok(out)
}

/// Starts a backup file on `out`, encrypted to `root` and to `extra`.
/// Write the content, then call `finish()`: a file not finished is refused as truncated.
pub fn encrypt_backup<W: Write>(
    root: &RootKey,
    extra: &[age::x25519::Recipient],
    out: W,
) -> Result<StreamWriter<W>, CryptoError> {
    let own = root.age_recipient();
    let all = std::iter::once(own).chain(extra.iter()).map(|r| r as &dyn age::Recipient);
    let enc = age::Encryptor::with_recipients(all)
        .map_err(|e| CryptoError::Backup(format!("the backup could not be encrypted: {e}")))?;
    enc.wrap_output(out).map_err(|e| CryptoError::Backup(format!("the backup could not be written: {e}")))
}

/// What opens a backup.
pub enum Unlock<'a> {
    /// The Safe's root keys (the current one and any older still loaded).
    Keyring(&'a Keyring),
    /// A backup key unwrapped by the holder of an identity.
    Key(&'a BackupKey),
    /// Age identities of recipients given at backup time.
    Identities(&'a [age::x25519::Identity]),
}

/// Opens a backup file: reads and checks its header, and returns the reader
/// of its content (each chunk checked as it is read) and, when opened with
/// identities, the file's key.
pub fn decrypt_backup<R: Read>(
    input: R,
    unlock: Unlock<'_>,
) -> Result<(StreamReader<R>, Option<BackupKey>), CryptoError> {
    let dec = age::Decryptor::new(input).map_err(|e| header_error(&e))?;
    match unlock {
        Unlock::Keyring(ring) => {
            let ids: Vec<&dyn age::Identity> = ring.keys().map(|k| k.age_identity() as &dyn age::Identity).collect();
            dec.decrypt(ids.into_iter()).map(|r| (r, None)).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => CryptoError::Backup(
                    "this backup was not encrypted to the Safe's root key (taken by another Safe, or \
                     before the root key was rotated?); restore it with the age identity of a recipient \
                     given at backup time (--identity FILE)"
                        .to_owned(),
                ),
                other => header_error(&other),
            })
        }
        Unlock::Key(key) => {
            let given = Given(key);
            dec.decrypt(std::iter::once(&given as &dyn age::Identity)).map(|r| (r, None)).map_err(|e| match e {
                age::DecryptError::InvalidMac | age::DecryptError::NoMatchingKeys => CryptoError::Backup(
                    "the backup key given does not open this backup (a key of another file, or its header \
                     was altered)"
                        .to_owned(),
                ),
                other => header_error(&other),
            })
        }
        Unlock::Identities(ids) => {
            let captures: Vec<Capture<'_>> =
                ids.iter().map(|i| Capture { inner: i, got: RefCell::new(None) }).collect();
            let reader = dec.decrypt(captures.iter().map(|c| c as &dyn age::Identity)).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => CryptoError::Backup(
                    "none of the identities given opens this backup; give the identity of a recipient named \
                     at backup time"
                        .to_owned(),
                ),
                other => header_error(&other),
            })?;
            let key = captures.iter().find_map(|c| c.got.borrow_mut().take()).map(BackupKey);
            Ok((reader, key))
        }
    }
}

/// Opens a backup file from a reader that is not buffered.
pub fn decrypt_backup_buffered<R: Read>(
    input: R,
    unlock: Unlock<'_>,
) -> Result<(StreamReader<BufReader<R>>, Option<BackupKey>), CryptoError> {
    decrypt_backup(BufReader::with_capacity(64 * 1024, input), unlock)
}

fn header_error(e: &age::DecryptError) -> CryptoError {
    CryptoError::Backup(
        match e {
            age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
                "it is not an Aegis backup: the file does not start with an age header (damaged, or another file)"
            }
            age::DecryptError::InvalidMac => "its header was altered: the header's MAC does not match",
            age::DecryptError::Io(_) => "its header could not be read (the file is empty or cut short)",
            _ => "its header could not be opened (damaged)",
        }
        .to_owned(),
    )
}

/// Unwraps with an identity and keeps a copy of the file key it gave.
struct Capture<'a> {
    inner: &'a age::x25519::Identity,
    got: RefCell<Option<Zeroizing<[u8; FILE_KEY_LEN]>>>,
}

impl age::Identity for Capture<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        let r = self.inner.unwrap_stanza(stanza);
        if let Some(Ok(key)) = &r {
            *self.got.borrow_mut() = Some(Zeroizing::new(*key.expose_secret()));
        }
        r
    }
}

/// Offers a known file key for the file's X25519 stanzas; the header's MAC
/// then decides whether it is the right one.
struct Given<'a>(&'a BackupKey);

impl age::Identity for Given<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        (stanza.tag == X25519_TAG).then(|| Ok(FileKey::new(Box::new(*self.0 .0))))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn backup(root: &RootKey, extra: &[age::x25519::Recipient], content: &[u8]) -> Vec<u8> {
        let mut w = encrypt_backup(root, extra, Vec::new()).unwrap();
        w.write_all(content).unwrap();
        w.finish().unwrap()
    }

    fn read_all<R: Read>(mut r: StreamReader<R>) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn the_root_key_an_identity_and_the_key_it_unwraps_each_open_a_backup() {
        let root = std::sync::Arc::new(RootKey::generate());
        let ring = Keyring::new(root.clone());
        let id = age::x25519::Identity::generate();
        let content = vec![7u8; 200_000];
        let file = backup(&root, &[id.to_public()], &content);

        let (r, none) = decrypt_backup(&file[..], Unlock::Keyring(&ring)).unwrap();
        assert!(none.is_none());
        assert_eq!(read_all(r).unwrap(), content);

        let (r, key) = decrypt_backup(&file[..], Unlock::Identities(std::slice::from_ref(&id))).unwrap();
        assert_eq!(read_all(r).unwrap(), content);
        let key = BackupKey::from_base64(&key.expect("the identity's key").to_base64()).unwrap();
        let (r, _) = decrypt_backup(&file[..], Unlock::Key(&key)).unwrap();
        assert_eq!(read_all(r).unwrap(), content);
    }

    #[test]
    fn another_root_key_another_file_s_key_and_a_damaged_file_are_refused_by_name() {
        let root = std::sync::Arc::new(RootKey::generate());
        let content = vec![1u8; 150_000];
        let file = backup(&root, &[], &content);

        let other = Keyring::new(std::sync::Arc::new(RootKey::generate()));
        let e = decrypt_backup(&file[..], Unlock::Keyring(&other)).err().unwrap().to_string();
        assert!(e.contains("not encrypted to the Safe's root key"), "{e}");

        let id = age::x25519::Identity::generate();
        let second = backup(&root, &[id.to_public()], b"x");
        let (_, key) = decrypt_backup(&second[..], Unlock::Identities(std::slice::from_ref(&id))).unwrap();
        let e = decrypt_backup(&file[..], Unlock::Key(&key.unwrap())).err().unwrap().to_string();
        assert!(e.contains("does not open this backup"), "{e}");

        let ring = Keyring::new(root.clone());
        let mut flipped = file.clone();
        let at = flipped.len() - 1000;
        flipped[at] ^= 1;
        let (r, _) = decrypt_backup(&flipped[..], Unlock::Keyring(&ring)).unwrap();
        assert!(read_all(r).is_err(), "a flipped byte in the content must be refused");

        let cut = &file[..file.len() - 70_000];
        let (r, _) = decrypt_backup(cut, Unlock::Keyring(&ring)).unwrap();
        assert!(read_all(r).is_err(), "a file cut at a chunk boundary must be refused");

        let e = decrypt_backup(&b"not a backup"[..], Unlock::Keyring(&ring)).err().unwrap().to_string();
        assert!(e.contains("not an Aegis backup") || e.contains("could not be read"), "{e}");
    }

    #[test]
    fn bad_recipients_and_identity_files_are_named() {
        assert!(parse_recipient("age1nope").unwrap_err().to_string().contains("not an age X25519 recipient"));
        let e = parse_identities("# a comment\nAGE-SECRET-KEY-1NOPE\n").err().unwrap().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_identities("\n# none\n").err().unwrap().to_string().contains("no age identity"));
    }
}
