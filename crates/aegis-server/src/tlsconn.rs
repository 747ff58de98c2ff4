//! The server's side of a TLS connection, over rustls's unbuffered API.
//!
//! tokio-rustls drives rustls's buffered connection, whose receive buffer (4 KiB)
//! is allocated at the first read and kept for the connection's life: a third of
//! what an idle watcher cost. Here the connection's buffers are owned by
//! [`TlsStream`] and freed whenever they are empty and the connection waits, so
//! an idle connection holds its keys and its peer's certificates, and no buffer.
//!
//! rustls does all of TLS (the handshake, the client certificate's verification,
//! records, alerts, key updates); this module only moves bytes between it and
//! the socket.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much room a read from the socket is given at least.
const READ_SIZE: usize = 8 * 1024;
/// Most received bytes held before rustls can use them: a handshake message may
/// span records up to 64 KiB (rustls's own limit), plus one record being read.
const MAX_INCOMING: usize = 64 * 1024 + 18 * 1024 + 512;
/// Most plaintext taken in one write: one call is encrypted into one buffer.
const MAX_WRITE: usize = 64 * 1024;
/// Encrypted bytes waiting for the socket past which a write waits for them to go.
const MAX_OUTGOING: usize = 64 * 1024;
/// Room for each record's header, content type and tag (22 bytes in TLS 1.3, 29 in 1.2).
const RECORD_OVERHEAD: usize = 32;
/// Largest plaintext of one record.
const RECORD_PLAINTEXT: usize = 16 * 1024;

/// What to do once application data may be written.
#[derive(Clone, Copy)]
enum Then<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Bytes waiting to be read, handed out in order and freed once all are: the plaintext a
/// TLS stream received, or the bytes a watch connection read before handing over to hyper.
#[derive(Default)]
pub(crate) struct Unread {
    bytes: Vec<u8>,
    at: usize,
}

impl Unread {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, at: 0 }
    }

    /// How many bytes wait.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn extend(&mut self, more: &[u8]) {
        self.bytes.extend_from_slice(more);
    }

    /// Copies what waits (as much as fits) into `buf`; false when nothing waited.
    pub(crate) fn take(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.len() == 0 {
            return false;
        }
        let n = buf.remaining().min(self.len());
        buf.put_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        if self.len() == 0 {
            *self = Self::default();
        }
        true
    }
}

/// Where rustls stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// It needs more bytes from the peer (during the handshake, or a record is partial).
    Input,
    /// Application data may be written (what was asked then is done).
    Open,
    /// Both sides sent close_notify.
    Closed,
}

/// A server-side TLS stream whose buffers exist only while they hold bytes.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Bytes received and not yet consumed by rustls.
    incoming: Vec<u8>,
    /// Plaintext received and not yet read.
    plain: Unread,
    /// Bytes for the peer not yet written to the socket, from `out_at`.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer closed its side (close_notify, or the socket's end): reads return end of stream.
    read_closed: bool,
    /// close_notify is queued.
    close_sent: bool,
    /// A TLS failure: every later call fails with it (boxed: rarely there, 64 bytes inline).
    failed: Option<Box<rustls::Error>>,
}

/// Completes the server's side of a TLS handshake on `tcp` (no deadline: the caller sets one).
pub(crate) async fn accept(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut s = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plain: Unread::default(),
        outgoing: Vec::new(),
        out_at: 0,
        read_closed: false,
        close_sent: false,
        failed: None,
    };
    poll_fn(|cx| s.poll_handshake(cx)).await?;
    Ok(s)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Makes `out` longer by what `write` needs at its end: `write` is called with `guess`
/// bytes of room, then again with the size it asked for.
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let at = out.len();
    out.resize(at + guess, 0);
    let r = match write(&mut out[at..]) {
        Err(e) => match needs(&e) {
            Some(required) => {
                out.resize(at + required, 0);
                write(&mut out[at..])
            }
            None => Err(e),
        },
        ok => ok,
    };
    out.truncate(at + *r.as_ref().unwrap_or(&0));
    r.map(|_| ())
}

impl TlsStream {
    /// The client's certificate chain (the handshake is complete).
    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    fn fail(&self) -> io::Error {
        match &self.failed {
            Some(e) => tls_error(rustls::Error::clone(e)),
            None => io::Error::other("TLS connection failed"),
        }
    }

    /// Lets rustls process the bytes received, until it needs more of them or
    /// application data may be written (then `then` is done). Handshake messages,
    /// alerts and records go to `outgoing`, plaintext to `plain`.
    fn advance(&mut self, then: Then<'_>) -> io::Result<Stop> {
        if self.failed.is_some() {
            return Err(self.fail());
        }
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let stop = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut read = Ok(None);
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                self.plain.extend(record.payload);
                            }
                            Err(e) => {
                                read = Err(e);
                                break;
                            }
                        }
                    }
                    read
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let out = &mut self.outgoing;
                    match append(out, 0, |b| e.encode(b), needs_encode) {
                        Ok(()) => Ok(None),
                        Err(e) => Err(rustls::Error::General(e.to_string())),
                    }
                }
                // Sent in order with what follows: `outgoing` is written before any wait for the peer.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::Input)),
                Ok(ConnectionState::PeerClosed) => {
                    self.read_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    Ok(Some(Stop::Closed))
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let out = &mut self.outgoing;
                    let done = match then {
                        Then::Nothing => Ok(()),
                        Then::Encrypt(data) => {
                            let records = data.len().div_ceil(RECORD_PLAINTEXT).max(1);
                            append(out, data.len() + records * RECORD_OVERHEAD, |b| w.encrypt(data, b), needs_encrypt)
                        }
                        Then::CloseNotify => append(out, RECORD_OVERHEAD, |b| w.queue_close_notify(b), needs_encrypt),
                    };
                    done.map(|()| Some(Stop::Open)).map_err(|e| rustls::Error::General(e.to_string()))
                }
                // Early data is never accepted (the config allows none); nothing else is known.
                Ok(_) => Err(rustls::Error::General("unexpected TLS connection state".to_owned())),
            };
            self.incoming.drain(..discard);
            match stop {
                Ok(None) => {}
                Ok(Some(stop)) => return Ok(stop),
                Err(e) => return Err(self.failing(e)),
            }
        }
    }

    /// Records `e` and encodes the alert rustls queued for it, to be sent before the connection ends.
    fn failing(&mut self, e: rustls::Error) -> io::Error {
        // Once only: the alert is the first thing rustls hands out after a failure, and
        // processing on would meet the failure again. Always the same buffer: rustls may hold
        // positions in it (a handshake message in pieces).
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
            let _ = append(&mut self.outgoing, 0, |b| enc.encode(b), needs_encode);
        }
        self.incoming.drain(..discard);
        self.failed = Some(Box::new(e));
        self.fail()
    }

    /// Writes `outgoing` to the socket; frees it once empty.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            match ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_at..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_at += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.outgoing = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming`; `Ok(false)` at its end. While the socket
    /// has nothing, an empty `incoming` is freed.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if self.tcp.poll_read_ready(cx)?.is_pending() {
                if self.incoming.is_empty() {
                    self.incoming = Vec::new();
                }
                return Poll::Pending;
            }
            if self.incoming.len() >= MAX_INCOMING {
                let e = rustls::Error::General("the peer sent a TLS message larger than the limit".to_owned());
                return Poll::Ready(Err(self.failing(e)));
            }
            self.incoming.reserve(READ_SIZE.min(MAX_INCOMING - self.incoming.len()));
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(_) => return Poll::Ready(Ok(true)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let stop = match self.advance(Then::Nothing) {
                Ok(stop) => stop,
                Err(e) => {
                    // The alert, if the socket takes it now.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            ready!(self.poll_send(cx))?;
            match stop {
                // The server may write before the client's Finished; the handshake is done once it is read.
                Stop::Open if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Stop::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Stop::Open | Stop::Input => {}
            }
            if !ready!(self.poll_receive(cx))? {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed during the TLS handshake",
                )));
            }
        }
    }
}

fn needs_encode(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn needs_encrypt(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 || this.plain.take(buf) {
                // A watch waits without reading: nothing left to process is not kept for it.
                if this.incoming.is_empty() {
                    this.incoming = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.advance(Then::Nothing)?;
            if this.plain.len() > 0 || this.read_closed {
                continue;
            }
            // What rustls answered (a key update) goes out now; a full socket does not stop reading.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            // The end of the socket without close_notify ends the stream too: requests carry their length.
            if !ready!(this.poll_receive(cx))? {
                this.read_closed = true;
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outgoing.len() - this.out_at >= MAX_OUTGOING {
            ready!(this.poll_send(cx))?;
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        let had_plain = this.plain.len();
        match this.advance(Then::Encrypt(data))? {
            Stop::Open => {}
            Stop::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Stop::Input => return Poll::Ready(Err(io::Error::other("TLS handshake not complete"))),
        }
        if this.plain.len() > had_plain {
            // Plaintext found while writing: whoever reads is woken for it (the same task, in hyper).
            cx.waker().wake_by_ref();
        }
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.failed.is_none() {
            this.close_sent = true;
            // Without close_notify (a failed connection) the socket is still shut down.
            let _ = this.advance(Then::CloseNotify);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "tlsconn_tests.rs"]
mod tests;
