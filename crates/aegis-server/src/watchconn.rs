//! Watch requests served without hyper, so an idle watcher costs little memory.
//!
//! hyper keeps two read buffers (8 and 16 KiB) and an 8 KiB write buffer per
//! HTTP/1.1 connection for as long as a request is in flight; a long poll is in
//! flight for minutes. A workload's connection therefore starts here: request
//! heads are read with `httparse` into a small buffer, and as long as they are
//! plain `GET /v1/workload/watch` requests they are answered directly. The
//! first request that is anything else — and everything after it — goes to
//! hyper, with the bytes already read put back in front of the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aegis_core::api::ErrorBody;
use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::metrics::RequestLabels;
use crate::state::AppState;
use crate::tlsconn::Unread;
use crate::watch::{next_event, parse_query};

const ROUTE: &str = crate::routes::WORKLOAD_WATCH;
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// How the watch phase of a connection ended.
pub(crate) enum Phase {
    /// The connection is done.
    Closed,
    /// A request that is not a watch is at the start of the buffer: hand over to hyper.
    Handoff,
}

/// A parsed watch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// The query string (after `?`), if the target had one.
    pub query: Option<String>,
    /// The client asked to close the connection after the answer.
    pub close: bool,
}

/// What the bytes read so far on a connection hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// Not a complete request head yet.
    Incomplete,
    /// No request began within the idle deadline.
    Idle,
    /// A plain watch request whose head is this many bytes long.
    Watch(usize, WatchRequest),
    /// Anything else: hyper serves it.
    Other,
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// Classifies the bytes read so far on a connection: a `GET` of the watch
/// route over HTTP/1.1 without a body, not complete yet, or anything else
/// (left to hyper). Never [`Head::Idle`], which only the reader produces.
pub fn classify(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(_) => return Head::Other,
    };
    let (Some("GET"), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Head::Other };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let has_body = header(req.headers, "transfer-encoding").is_some()
        || header(req.headers, "content-length").is_some_and(|v| v != b"0");
    if path != ROUTE || has_body {
        return Head::Other;
    }
    let close = header(req.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
    Head::Watch(len, WatchRequest { query, close })
}

/// Reads until a request head is complete. `Ok(None)`: the peer closed cleanly between requests.
/// A request must begin within `wait` (`Head::Idle` otherwise) and its head
/// must then be complete within `head_timeout`.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    head_timeout: Duration,
    wait: Duration,
) -> io::Result<Option<Head>> {
    let waiting = Instant::now();
    let mut started: Option<Instant> = None;
    loop {
        if !buf.is_empty() {
            match classify(buf) {
                Head::Incomplete if buf.len() < MAX_HEAD => {}
                Head::Incomplete => return Ok(Some(Head::Other)),
                done => return Ok(Some(done)),
            }
        }
        // Read straight into the buffer's spare room: nothing is held while idle.
        buf.reserve(1024);
        let before = buf.len();
        let n = match started {
            None => match tokio::time::timeout(wait.saturating_sub(waiting.elapsed()), io.read_buf(buf)).await {
                Ok(r) => r?,
                Err(_) => return Ok(Some(Head::Idle)),
            },
            Some(t) => {
                let left = head_timeout.saturating_sub(t.elapsed());
                tokio::time::timeout(left, io.read_buf(buf))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head too slow"))??
            }
        };
        if n == 0 {
            return if before == 0 { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        started.get_or_insert_with(Instant::now);
    }
}

fn response(status: StatusCode, body: &[u8], close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

async fn answer(state: &AppState, caller: &Caller, req: &WatchRequest) -> (StatusCode, Vec<u8>) {
    let result = match parse_query(req.query.as_deref()) {
        // next_event ends its own wait before the request deadline.
        Ok(q) => next_event(state, caller, q).await,
        Err(e) => Err(e),
    };
    let encoded = match result {
        Ok(ev) => serde_json::to_vec(&ev).map(|b| (StatusCode::OK, b)),
        Err(e) => serde_json::to_vec(&ErrorBody { error: e.message().to_owned() }).map(|b| (e.status(), b)),
    };
    // The fixed body of the error, as that very encoding just failed.
    encoded.unwrap_or_else(|_| {
        (ApiError::internal("encoding failed").status(), br#"{"error":"encoding failed"}"#.to_vec())
    })
}

/// Serves watch requests on `io` until the peer closes or sends something else.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    state: &AppState,
    caller: &Caller,
    expires: tokio::time::Instant,
) -> io::Result<Phase> {
    let mut wait = state.settings.handshake_timeout;
    loop {
        // Between requests the client's SVID expiry closes the connection; a
        // request already read is answered first (with `connection: close`),
        // as hyper's graceful shutdown does, so no client sees a cut-off answer.
        let head = tokio::select! {
            h = read_head(io, buf, state.settings.handshake_timeout, wait) => h?,
            () = tokio::time::sleep_until(expires) => {
                tracing::info!(caller = %caller.id, "the client's SVID expired: closing its connection");
                return Ok(Phase::Closed);
            }
        };
        // The first request must come within the handshake deadline, later ones within the idle deadline.
        wait = state.settings.idle_timeout;
        let req = match head {
            None => return Ok(Phase::Closed),
            Some(Head::Idle) => {
                state.metrics.connections_idle_closed.inc();
                tracing::debug!(caller = %caller.id, "closing an idle connection");
                let _ = io.shutdown().await;
                return Ok(Phase::Closed);
            }
            Some(Head::Watch(len, req)) => {
                buf.drain(..len);
                if buf.is_empty() {
                    // Nothing pipelined: hold no buffer while the watch waits.
                    *buf = Vec::new();
                }
                req
            }
            Some(_) => return Ok(Phase::Handoff),
        };
        let start = Instant::now();
        let deadline = start + state.settings.request_timeout;
        let scope = crate::audit::Scope::new(caller.audit_name.clone(), axum::http::Method::GET, ROUTE, deadline);
        let (status, body) = scope.run(answer(state, caller, &req)).await;
        crate::audit::record(state, &scope, status.as_u16());
        let close = req.close || tokio::time::Instant::now() >= expires;
        let span = tracing::info_span!("request", caller = %caller.id, method = "GET", route = ROUTE);
        io.write_all(&response(status, &body, close)).await?;
        io.flush().await?;
        let latency = start.elapsed();
        state.metrics.requests.get_or_create(&RequestLabels { route: ROUTE, status: status.as_u16() }).inc();
        state.metrics.latency.observe(latency.as_secs_f64());
        let _enter = span.enter();
        tracing::debug!(status = status.as_u16(), latency_us = latency.as_micros() as u64, "watch answered");
        if close {
            let _ = io.shutdown().await;
            return Ok(Phase::Closed);
        }
    }
}

/// A stream with bytes already read put back in front.
pub(crate) struct Prefixed<S> {
    prefix: Unread,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix: Unread::new(prefix), inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.take(buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_watch_and_everything_else() {
        let w = b"GET /v1/workload/watch?revision=3&wait_ms=10 HTTP/1.1\r\nhost: x\r\n\r\n";
        assert!(matches!(classify(w), Head::Watch(n, WatchRequest { close: false, .. }) if n == w.len()));
        let c = b"GET /v1/workload/watch HTTP/1.1\r\nConnection: Close\r\n\r\n";
        assert!(matches!(classify(c), Head::Watch(_, WatchRequest { close: true, query: None })));
        assert!(matches!(classify(b"GET /v1/workload/wat"), Head::Incomplete));
        for other in [
            &b"GET /workload/v1/secrets HTTP/1.1\r\n\r\n"[..],
            b"POST /v1/workload/watch HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            b"GET /v1/workload/watch HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET /v1/workload/watch HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            assert!(matches!(classify(other), Head::Other), "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[tokio::test]
    async fn prefixed_replays_the_buffer_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(b"hello".to_vec(), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
