//! A Safe that closes a kept-alive connection just as the next request arrives
//! (what an idle deadline or an expired client SVID does): a read is sent once
//! more on a new connection, a write is never repeated.
//!
//! The server here is a stand-in on purpose: the race cannot be timed against the
//! real Safe, so this module plays the closing side with real mTLS.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aegis_core::roles::RoleRules;
use aegis_core::SpiffeId;
use aegis_identity::devca::DevCa;
use aegis_identity::{IdentityConfig, IdentitySource, StaticSource, SvidPaths};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{Client, ClientError, Settings};

const ANSWER: &str = r#"{"name":"billing","data":"v1","version":1,"revision":1,"updated":"2026-01-01T00:00:00Z"}"#;

fn source(ca: &DevCa, workload: &str, ns: &str) -> Arc<dyn IdentitySource> {
    let id = SpiffeId::parse(&RoleRules::dev_spiffe_id("vsecm.com", workload, ns)).unwrap();
    let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    Arc::new(StaticSource(Arc::new(svid.to_material().unwrap())))
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body); false at end of stream.
async fn read_request(io: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match io.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await.is_ok()
}

/// Serves HTTP/1.1 over mTLS. On the first connection it answers one request and
/// then drops the connection as soon as the second request has arrived; later
/// connections are answered normally. Returns how many requests arrived in all.
async fn closing_safe(ca: &DevCa) -> (String, Arc<AtomicUsize>) {
    let mut tls = aegis_identity::server_config(source(ca, "vsecm-safe", "vsecm-system")).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut io = acceptor.accept(tcp).await.unwrap();
            let (counter, answers) = (counter.clone(), if conn == 0 { 1 } else { usize::MAX });
            tokio::spawn(async move {
                let mut answered = 0;
                while read_request(&mut io).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if answered == answers {
                        // Closed cleanly (TLS close_notify), the request unanswered.
                        let _ = io.shutdown().await;
                        return;
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                        ANSWER.len()
                    );
                    io.write_all(reply.as_bytes()).await.unwrap();
                    answered += 1;
                }
            });
        }
    });
    (url, seen)
}

async fn client(dir: &Path) -> (Client, Arc<AtomicUsize>) {
    let ca = DevCa::load_or_create(dir, "vsecm.com").unwrap();
    let (url, seen) = closing_safe(&ca).await;
    let unused = SvidPaths { cert: dir.join("unused"), key: dir.join("unused"), bundle: dir.join("unused") };
    let settings = Settings {
        url,
        identity: IdentityConfig::Files(unused),
        roles: RoleRules::vsecm_defaults(),
        timeout: Duration::from_secs(10),
        new_connection_per_request: false,
    };
    (Client::with_source(source(&ca, "billing", "default"), &settings).unwrap(), seen)
}

#[tokio::test]
async fn a_read_is_sent_again_when_its_kept_alive_connection_closes_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let (client, seen) = client(dir.path()).await;
    assert_eq!(client.fetch().await.unwrap().unwrap().data.expose(), "v1");
    let second = client.fetch().await;
    assert_eq!(second.unwrap().unwrap().data.expose(), "v1", "the read after the close must succeed");
    assert_eq!(seen.load(Ordering::SeqCst), 3, "the closed request and its one repeat");
}

#[tokio::test]
async fn a_write_is_never_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (client, seen) = client(dir.path()).await;
    client.fetch().await.unwrap();
    let status = client.send(reqwest::Method::POST, "/v1/secrets/x/undelete", Some(&())).await;
    assert!(matches!(status, Err(ClientError::Connect { .. })), "a write on a closed connection is reported");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "the write reached the Safe exactly once");
}
