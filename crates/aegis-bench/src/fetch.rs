//! `aegis-bench fetch`: workload fetches over raw hyper connections, kept alive
//! or one per fetch; also the mTLS target the watcher benchmark connects to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis::exit::{CliError, FAILURE};
use aegis_sdk::Settings;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{report, Report};

pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) tls: TlsConnector,
}

pub(crate) async fn target(s: &Settings, full_handshakes: bool) -> Result<Target, CliError> {
    let source = aegis_identity::start_source(&s.identity).await.map_err(CliError::failure)?;
    let roles = s.roles.clone();
    let mut cfg =
        aegis_identity::client_config(source, Arc::new(move |id| roles.is_safe(id))).map_err(CliError::failure)?;
    if full_handshakes {
        // Every connection pays a full handshake with both certificate chains verified.
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    let hostport = s.url.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let addr = tokio::net::lookup_host(&hostport)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::new(FAILURE, format!("cannot resolve {hostport}")))?;
    let host = hostport.rsplit_once(':').map_or(hostport.clone(), |(h, _)| h.to_owned());
    Ok(Target { addr, host, tls: TlsConnector::from(Arc::new(cfg)) })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(t: &Target) -> Result<Sender, String> {
    let tcp = TcpStream::connect(t.addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
    let tls = t.tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one_fetch(sender: &mut Sender, host: &str) -> Result<(), String> {
    let req = hyper::Request::get("/workload/v1/secrets")
        .header(hyper::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Fetches as the workload of `s` from `connections` connections for `dur`.
pub(crate) async fn fetch(s: &Settings, connections: usize, dur: Duration, new_conn: bool) -> Result<Report, CliError> {
    let t = Arc::new(target(s, new_conn).await?);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut sender: Option<Sender> = None;
                while start.elapsed() < dur {
                    let t0 = Instant::now();
                    if new_conn || sender.is_none() {
                        sender = connect(&t).await.ok();
                    }
                    let r = match sender.as_mut() {
                        Some(s) => one_fetch(s, &t.host).await,
                        None => Err("connect failed".to_owned()),
                    };
                    match r {
                        Ok(()) => lat.push(crate::micros(t0.elapsed())),
                        Err(_) => {
                            errors += 1;
                            sender = None;
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (all, errors) = crate::gather(tasks).await?;
    let mode = if new_conn { "new connection per fetch" } else { "kept-alive connections" };
    Ok(report(format!("fetch, {connections} connections, {mode}"), all, errors, start.elapsed()))
}
