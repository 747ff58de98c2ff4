//! The unbuffered TLS stream against tokio-rustls's client, over real sockets and certificates.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use aegis_core::roles::RoleRules;
use aegis_core::SpiffeId;
use aegis_identity::devca::DevCa;
use aegis_identity::{IdentitySource, StaticSource, SvidMaterial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream as ClientStream;
use tokio_rustls::TlsConnector;

use super::{accept, TlsStream};

const DOMAIN: &str = "example.org";

fn source(ca: &DevCa, workload: &str) -> Arc<dyn IdentitySource> {
    source_trusting(ca, workload, ca)
}

/// An SVID of `ca` that verifies peers against `trusts`'s bundle.
fn source_trusting(ca: &DevCa, workload: &str, trusts: &DevCa) -> Arc<dyn IdentitySource> {
    let id = SpiffeId::parse(&RoleRules::dev_spiffe_id(DOMAIN, workload, "default")).unwrap();
    let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    let material =
        SvidMaterial::from_pem(svid.cert_pem.as_bytes(), svid.key_pem().as_bytes(), trusts.bundle_pem().as_bytes());
    Arc::new(StaticSource(Arc::new(material.unwrap())))
}

struct Pair {
    server: TlsStream,
    client: ClientStream<TcpStream>,
}

fn cas() -> (tempfile::TempDir, DevCa, DevCa) {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::load_or_create(&dir.path().join("a"), DOMAIN).unwrap();
    let other = DevCa::load_or_create(&dir.path().join("b"), DOMAIN).unwrap();
    (dir, ca, other)
}

/// The server's and the client's result of one handshake; the client's certificate from `client_ca`,
/// its bytes through `relay` (a port that forwards to the server's) when given.
async fn handshake(
    ca: &DevCa,
    client_ca: &DevCa,
    relay: Option<fn(TcpStream, TcpStream)>,
) -> (std::io::Result<TlsStream>, std::io::Result<ClientStream<TcpStream>>) {
    let server_config = Arc::new(aegis_identity::server_config(source(ca, "safe")).unwrap());
    let client = source_trusting(client_ca, "billing", ca);
    let client_config = aegis_identity::client_config(client, Arc::new(|_| true)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, server_config).await
    });
    if let Some(relay) = relay {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = addr;
        addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (a, _) = front.accept().await.unwrap();
            relay(a, TcpStream::connect(to).await.unwrap());
        });
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("safe").unwrap();
    let client = TlsConnector::from(Arc::new(client_config)).connect(name, tcp).await;
    let server = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
    (server, client)
}

async fn pair(ca: &DevCa) -> Pair {
    let (server, client) = handshake(ca, ca, None).await;
    Pair { server: server.unwrap(), client: client.unwrap() }
}

/// Forwards each direction one byte per write, so records and handshake messages arrive in pieces.
fn one_byte_at_a_time(a: TcpStream, b: TcpStream) {
    async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
        let mut byte = [0u8; 1];
        while let Ok(1) = from.read(&mut byte).await {
            if to.write_all(&byte).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = to.shutdown().await;
    }
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    tokio::spawn(pump(ar, bw));
    tokio::spawn(pump(br, aw));
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn carries_data_both_ways_and_names_the_client() {
    let (_dir, ca, _) = cas();
    let Pair { mut server, mut client } = pair(&ca).await;
    let chain = server.peer_certificates().expect("the client's chain");
    let id = aegis_identity::peer_spiffe_id(chain).unwrap();
    assert_eq!(id.as_str(), RoleRules::dev_spiffe_id(DOMAIN, "billing", "default"));

    // Larger than several records and than one write's limit, both ways at once.
    let big = pattern(300 * 1024);
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut back = vec![0u8; sent.len()];
        client.read_exact(&mut back).await.unwrap();
        (client, back)
    });
    let mut got = vec![0u8; big.len()];
    server.read_exact(&mut got).await.unwrap();
    assert!(got == big, "the server read other bytes than the client sent");
    server.write_all(&got).await.unwrap();
    server.flush().await.unwrap();
    let (_client, back) = writer.await.unwrap();
    assert!(back == big, "the client read other bytes than the server sent");
}

#[tokio::test]
async fn an_idle_connection_holds_no_buffer() {
    let (_dir, ca, _) = cas();
    let Pair { mut server, mut client } = pair(&ca).await;
    client.write_all(b"GET /v1/workload/watch HTTP/1.1\r\n\r\n").await.unwrap();
    let mut head = [0u8; 35];
    server.read_exact(&mut head).await.unwrap();
    server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    server.flush().await.unwrap();
    let mut answer = [0u8; 19];
    client.read_exact(&mut answer).await.unwrap();

    // Between requests, as a watch waits for a change without reading.
    let held = (server.incoming.capacity(), server.plain.bytes.capacity(), server.outgoing.capacity());
    assert_eq!(held, (0, 0, 0), "buffers (incoming, plaintext, outgoing) kept after a request was read");

    // A read that waits for the peer, as a connection between requests does.
    let mut buf = [0u8; 64];
    let mut read = Box::pin(server.read(&mut buf));
    assert!(read.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
    drop(read);
    let held = (server.incoming.capacity(), server.plain.bytes.capacity(), server.outgoing.capacity());
    assert_eq!(held, (0, 0, 0), "buffers (incoming, plaintext, outgoing) kept while idle");

    // And the connection still works afterwards.
    client.write_all(b"more").await.unwrap();
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"more");
}

#[tokio::test]
async fn records_and_handshake_arriving_one_byte_at_a_time() {
    let (_dir, ca, _) = cas();
    let (server, client) = handshake(&ca, &ca, Some(one_byte_at_a_time)).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    let msg = pattern(3000);
    client.write_all(&msg).await.unwrap();
    client.flush().await.unwrap();
    let mut got = vec![0u8; msg.len()];
    server.read_exact(&mut got).await.unwrap();
    assert!(got == msg);
    server.write_all(b"pong").await.unwrap();
    server.flush().await.unwrap();
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
}

#[tokio::test]
async fn a_client_of_another_ca_is_refused_with_an_alert() {
    let (_dir, ca, other) = cas();
    let (server, client) = handshake(&ca, &other, None).await;
    let e = server.err().expect("the server refused the client's certificate");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // TLS 1.3: the client learns of it at its first read, from the server's alert (not a bare close).
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            assert!(e.to_string().contains("alert"), "the client saw no alert: {e}");
            return;
        }
    };
    let mut buf = [0u8; 8];
    let e = client.read(&mut buf).await.expect_err("the client could read from a refused connection");
    assert!(e.to_string().contains("alert"), "the client saw no alert: {e}");
}

#[tokio::test]
async fn close_notify_ends_the_stream_both_ways() {
    let (_dir, ca, _) = cas();
    let Pair { mut server, mut client } = pair(&ca).await;
    client.shutdown().await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(server.read(&mut buf).await.unwrap(), 0, "the server did not see the client's close_notify");
    server.shutdown().await.unwrap();
    assert_eq!(client.read(&mut buf).await.unwrap(), 0, "the client did not see the server's close_notify");
    assert!(server.write_all(b"late").await.is_err(), "a write after shutdown succeeded");
}

#[tokio::test]
async fn what_is_not_tls_fails_the_handshake() {
    let (_dir, ca, _) = cas();
    let config = Arc::new(aegis_identity::server_config(source(&ca, "safe")).unwrap());
    for junk in [&b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff][..], &[][..]] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = config.clone();
        let server = tokio::spawn(async move { accept(listener.accept().await.unwrap().0, config).await });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(junk).await.unwrap();
        tcp.shutdown().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(r.is_err(), "a handshake from {} junk bytes succeeded", junk.len());
    }
}
