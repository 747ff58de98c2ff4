//! Backups and restores over the native API (docs/BACKUP.md).
//!
//! - `POST /v1/admin/backup` streams an encrypted backup of a snapshot of the
//!   store: writes go on meanwhile; the file holds every write acknowledged
//!   before the request.
//! - `POST /v1/admin/backup/verify` reads a backup file and checks all of it.
//! - `POST /v1/admin/restore[?replace=true]` reads a backup file, checks all
//!   of it, and only then writes its secrets in one all-or-nothing commit.
//!
//! One transfer runs at a time. The file is encrypted and decrypted on
//! blocking threads, fed through bounded channels, so neither a backup nor a
//! file being read is ever held whole; a restore holds the secrets it will
//! write, as the Safe holds every secret in memory anyway.

use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use aegis_core::api::{BackupChecked as Checked, BackupRequest, RestoreDone};
use aegis_core::secret::SecretDoc;
use aegis_crypto::backup::{decrypt_backup_buffered, encrypt_backup, parse_recipient, BackupKey, Unlock};
use aegis_crypto::Keyring;
use aegis_store::backup::{BackupReader, BackupWriter, Header};
use aegis_store::Entry;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

type St = State<Arc<AppState>>;
type Who = Extension<Arc<Caller>>;

/// The header that carries a backup's key, unwrapped by the holder of a
/// recipient's identity (`aegis restore --identity`); never logged.
pub const KEY_HEADER: &str = "aegis-backup-key";
/// The answer's headers of a backup: what it holds.
pub const SECRETS_HEADER: &str = "aegis-backup-secrets";
/// The store commit the backup goes up to.
pub const COMMIT_HEADER: &str = "aegis-backup-commit";
/// Most age recipients one backup is encrypted to, besides the root key.
pub const MAX_RECIPIENTS: usize = 16;
/// The size of the pieces a backup is sent in.
const CHUNK: usize = 64 * 1024;
/// Pieces in flight between the thread that encrypts (or decrypts) and the connection.
const PIECES: usize = 8;

/// Query of `POST /v1/admin/restore`.
#[derive(Debug, Deserialize)]
pub struct RestoreQuery {
    #[serde(default)]
    replace: bool,
}

fn one_at_a_time(s: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    s.transfers
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::conflict("another backup, restore or check is running; retry when it has finished"))
}

/// `POST /v1/admin/backup`: the encrypted backup, streamed.
pub async fn backup(State(s): St, Extension(c): Who, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    crate::policy::allow(&s, &c, aegis_core::policy::Action::Admin, aegis_core::policy::Target::Safe)?;
    let body = crate::extract::body(b, s.settings.max_body_bytes)?;
    let req: BackupRequest = if body.is_empty() {
        BackupRequest::default()
    } else {
        crate::extract::json(Ok(body), s.settings.max_body_bytes)?
    };
    if req.recipients.len() > MAX_RECIPIENTS {
        return Err(ApiError::bad_request(format!(
            "{} recipients given; a backup is encrypted to at most {MAX_RECIPIENTS} besides the root key",
            req.recipients.len()
        )));
    }
    let recipients = req
        .recipients
        .iter()
        .map(|r| parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let store = s.store()?;
    let permit = one_at_a_time(&s)?;
    let snap = store.snapshot();
    let header = Header::of(&snap);
    let root = store.keyring().current().clone();
    let deadline = Instant::now() + s.settings.transfer_timeout;
    let (tx, rx) = mpsc::channel::<Bytes>(PIECES);
    let whole = Arc::new(AtomicBool::new(false));
    let (secrets, commit) = (header.secrets, header.commit);
    let (rt, done) = (tokio::runtime::Handle::current(), whole.clone());
    // `done` is set before the sender is dropped (in `write_backup`), so the body never sees a closed channel first.
    tokio::task::spawn_blocking(move || {
        let _one = permit;
        let started = Instant::now();
        let out = Pieces { tx, rt, deadline, buf: Vec::with_capacity(CHUNK), sent: 0, whole: done };
        match write_backup(out, &root, &recipients, &header, &snap.entries) {
            Ok(bytes) => {
                tracing::info!(
                    secrets,
                    commit,
                    bytes,
                    recipients = recipients.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "backup sent"
                );
            }
            // The answer then ends in an error, not a clean end (see `Piecewise`): the client knows.
            Err(e) => {
                tracing::warn!(error = %e, "backup cut off; the client's file is incomplete and a restore refuses it")
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(Piecewise { rx, whole, ended: false }));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(SECRETS_HEADER, HeaderValue::from(secrets));
    h.insert(COMMIT_HEADER, HeaderValue::from(commit));
    Ok(resp)
}

/// The answer's body: the pieces the encrypting thread sends. The thread
/// marks `whole` once the file is complete; a channel closed without it (the
/// backup failed, or ran out of time) ends the answer in an error, never in a
/// clean end the client would take for a whole file.
struct Piecewise {
    rx: mpsc::Receiver<Bytes>,
    whole: Arc<AtomicBool>,
    ended: bool,
}

impl futures::Stream for Piecewise {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(piece)) => Poll::Ready(Some(Ok(piece))),
            Poll::Ready(None) => {
                self.ended = true;
                if self.whole.load(Ordering::SeqCst) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(io::Error::other("the backup was cut off on the Safe (see its log)"))))
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Encrypts the backup of `entries` into `out`; the bytes sent.
fn write_backup(
    out: Pieces,
    root: &aegis_crypto::RootKey,
    recipients: &[age::x25519::Recipient],
    header: &Header,
    entries: &[Arc<Entry>],
) -> io::Result<u64> {
    let enc = encrypt_backup(root, recipients, out).map_err(io::Error::other)?;
    let mut w = BackupWriter::new(enc, header)?;
    for e in entries {
        w.secret(&e.doc)?;
    }
    let mut pieces = w.finish()?.finish()?;
    pieces.flush()?;
    // Marked whole before `pieces` (the sender) is dropped and the channel closes.
    pieces.whole.store(true, Ordering::SeqCst);
    Ok(pieces.sent)
}

/// Sends what is written to the connection in pieces of [`CHUNK`] bytes,
/// waiting while [`PIECES`] are in flight, never past the transfer deadline;
/// fails once the client has gone or the deadline has passed.
struct Pieces {
    tx: mpsc::Sender<Bytes>,
    rt: tokio::runtime::Handle,
    deadline: Instant,
    buf: Vec<u8>,
    sent: u64,
    /// Set once the file is complete (see [`Piecewise`]).
    whole: Arc<AtomicBool>,
}

impl Pieces {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let late = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the transfer deadline passed (--transfer-timeout-ms); the client read too slowly",
            )
        };
        let left = self.deadline.checked_duration_since(Instant::now()).ok_or_else(late)?;
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.sent += piece.len() as u64;
        // A client that stops reading holds this thread (and the one transfer slot) until the deadline, no longer.
        self.rt.block_on(self.tx.send_timeout(piece, left)).map_err(|e| match e {
            mpsc::error::SendTimeoutError::Timeout(_) => late(),
            mpsc::error::SendTimeoutError::Closed(_) => {
                io::Error::new(io::ErrorKind::BrokenPipe, "the client stopped reading the backup")
            }
        })
    }
}

impl Write for Pieces {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// `POST /v1/admin/backup/verify`: reads the backup file and checks all of it.
pub async fn verify(State(s): St, Extension(c): Who, headers: HeaderMap, b: Body) -> Result<Json<Checked>, ApiError> {
    crate::policy::allow(&s, &c, aegis_core::policy::Action::Admin, aegis_core::policy::Target::Safe)?;
    let ready = (|| {
        let store = s.store()?;
        let key = key_of(&headers)?;
        Ok::<_, ApiError>((store, key, one_at_a_time(&s)?))
    })();
    let (store, key, _one) = match ready {
        Ok(r) => r,
        Err(e) => return Err(drained(&s, b, e).await),
    };
    let (checked, _) = read_backup(&s, store.keyring(), key, b, false).await?;
    Ok(Json(checked))
}

/// `POST /v1/admin/restore[?replace=true]`: checks the whole file, then writes its secrets all or nothing.
pub async fn restore(
    State(s): St,
    Extension(c): Who,
    q: Result<Query<RestoreQuery>, QueryRejection>,
    headers: HeaderMap,
    b: Body,
) -> Result<Json<RestoreDone>, ApiError> {
    crate::policy::allow(&s, &c, aegis_core::policy::Action::Admin, aegis_core::policy::Target::Safe)?;
    let ready = (|| {
        let Query(q) =
            q.map_err(|e| ApiError::bad_request(format!("invalid query: {}; use ?replace=true", e.body_text())))?;
        let store = s.store()?;
        let key = key_of(&headers)?;
        let one = one_at_a_time(&s)?;
        if !q.replace && !store.is_empty() {
            return Err(aegis_store::StoreError::NotEmpty { secrets: store.len() }.into());
        }
        Ok::<_, ApiError>((q, store, key, one))
    })();
    let (q, store, key, _one) = match ready {
        Ok(r) => r,
        Err(e) => return Err(drained(&s, b, e).await),
    };
    let (checked, docs) = read_backup(&s, store.keyring(), key, b, true).await?;
    crate::audit::intent_before_commit(&s).await?;
    let started = Instant::now();
    let done = store.restore(docs, q.replace).await?;
    s.metrics.secrets.set(store.len() as i64);
    tracing::info!(
        secrets = done.secrets,
        replaced = done.replaced,
        kept = done.kept,
        commit = checked.commit,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "backup restored"
    );
    Ok(Json(RestoreDone { backup: checked, restored: done.secrets, replaced: done.replaced, kept: done.kept }))
}

/// Reads and drops the file being sent (within the restore limit) before
/// answering `e`: a client still sending gets the answer, not a broken pipe.
async fn drained(s: &AppState, body: Body, e: ApiError) -> ApiError {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut total: u64 = 0;
    while let Some(Ok(frame)) = body.frame().await {
        total += frame.data_ref().map_or(0, |d| d.len() as u64);
        if total > s.settings.max_restore_bytes {
            break;
        }
    }
    e
}

fn key_of(headers: &HeaderMap) -> Result<Option<BackupKey>, ApiError> {
    let Some(v) = headers.get(KEY_HEADER) else { return Ok(None) };
    let text = v.to_str().map_err(|_| ApiError::bad_request(format!("the {KEY_HEADER} header is not text")))?;
    BackupKey::from_base64(text).map(Some).map_err(|e| ApiError::bad_request(format!("{KEY_HEADER}: {e}")))
}

/// Streams the request body into a thread that decrypts and checks it; the
/// secrets when `keep`.
async fn read_backup(
    s: &AppState,
    ring: Arc<Keyring>,
    key: Option<BackupKey>,
    body: Body,
    keep: bool,
) -> Result<(Checked, Vec<SecretDoc>), ApiError> {
    use http_body_util::BodyExt;
    let max = s.settings.max_restore_bytes;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PIECES);
    let reader = tokio::task::spawn_blocking(move || {
        let input = Received { rx, piece: Bytes::new(), read: 0 };
        check(input, &ring, key.as_ref(), keep)
    });
    let mut body = body;
    let mut total: u64 = 0;
    let mut cut = None;
    let mut reading = true;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(_) => {
                let _ = tx.send(Err(io::Error::other("the client's upload failed"))).await;
                cut =
                    Some(ApiError::bad_request("the backup could not be read from the request; nothing was restored"));
                break;
            }
        };
        total += data.len() as u64;
        if total > max {
            if cut.is_none() {
                let _ = tx.send(Err(io::Error::other("over the size limit"))).await;
                cut = Some(ApiError::too_large(format!(
                    "the backup is larger than {max} bytes (--max-restore-bytes); nothing was restored"
                )));
                reading = false;
            }
            // Read and dropped up to the limit again, so a client still sending
            // gets the answer; past that, the connection is closed.
            if total > max.saturating_mul(2) {
                break;
            }
            continue;
        }
        // When the reader stops early (its error says why), the rest is read
        // and dropped, so a client still sending gets the answer, not a broken pipe.
        if reading && tx.send(Ok(data)).await.is_err() {
            reading = false;
        }
    }
    drop(tx);
    let result = reader.await.map_err(|_| ApiError::internal("the thread reading the backup failed"))?;
    if let Some(e) = cut {
        return Err(e);
    }
    let (mut checked, docs) = result?;
    checked.bytes = total;
    Ok((checked, docs))
}

fn check(
    input: Received,
    ring: &Keyring,
    key: Option<&BackupKey>,
    keep: bool,
) -> Result<(Checked, Vec<SecretDoc>), ApiError> {
    let refused = |why: String| ApiError::bad_request(format!("the backup is refused, nothing was restored: {why}"));
    let unlock = match key {
        Some(k) => Unlock::Key(k),
        None => Unlock::Keyring(ring),
    };
    let (plain, _) = decrypt_backup_buffered(input, unlock).map_err(|e| refused(e.to_string()))?;
    let mut reader = BackupReader::open(BufReader::with_capacity(CHUNK, plain)).map_err(|e| refused(e.0))?;
    let mut docs = Vec::new();
    while let Some(doc) = reader.next_secret().map_err(|e| refused(e.0))? {
        if keep {
            docs.push(doc);
        }
    }
    Ok((reader.header().summary(0), docs))
}

/// Reads what the connection receives, piece by piece, on a blocking thread.
struct Received {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    piece: Bytes,
    read: u64,
}

impl Read for Received {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(p)) => self.piece = p,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.piece.len());
        out[..n].copy_from_slice(&self.piece.split_to(n));
        self.read += n as u64;
        Ok(n)
    }
}
