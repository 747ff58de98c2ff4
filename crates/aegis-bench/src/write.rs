//! `aegis-bench write` and `aegis-bench propagation`: durable writes through
//! the SDK, and the time until a sidecar's file holds each one.

use std::time::{Duration, Instant};

use aegis::exit::CliError;
use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;

use crate::{micros, report, Report};

/// Which API a write goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WriteApi {
    /// `PUT /v1/secrets/{name}`.
    Native,
    /// VSecM's upsert, `POST /sentinel/v1/secrets`, one workload a request.
    Vsecm,
}

/// One write through `api`; errors are counted, not told.
async fn write_one(c: &aegis_sdk::Client, api: WriteApi, name: &str, value: &str) -> bool {
    match api {
        WriteApi::Native => c.put(name, &put_req(value.to_owned())).await.is_ok(),
        WriteApi::Vsecm => {
            let body = serde_json::json!({ "workloads": [name], "value": value }).to_string().into_bytes();
            let r = c.raw(aegis_sdk::Method::POST, "/sentinel/v1/secrets", body).await;
            r.is_ok_and(|(status, _)| status == 200)
        }
    }
}

pub(crate) async fn write(
    writers: usize,
    dur: Duration,
    size: usize,
    api: WriteApi,
    prefix: &str,
) -> Result<Report, CliError> {
    let client = aegis::connect::client().await?;
    let prefix = prefix.to_owned();
    write_with(&client, writers, dur, size, api, move |w, i| format!("{prefix}-{w}-{}", i % 64)).await
}

/// Writes as `client` from `writers` concurrent writers for `dur`; writer `w`'s
/// `i`-th write goes to the secret `name(w, i)`.
pub(crate) async fn write_with(
    client: &aegis_sdk::Client,
    writers: usize,
    dur: Duration,
    size: usize,
    api: WriteApi,
    name: impl Fn(usize, u64) -> String + Clone + Send + 'static,
) -> Result<Report, CliError> {
    let value = "x".repeat(size.max(1));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers.max(1))
        .map(|w| {
            let (c, v, name) = (client.clone(), value.clone(), name.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = 0u64;
                while start.elapsed() < dur {
                    let t0 = Instant::now();
                    if write_one(&c, api, &name(w, i), &v).await {
                        lat.push(micros(t0.elapsed()));
                    } else {
                        errors += 1;
                    }
                    i += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let (all, errors) = crate::gather(tasks).await?;
    let through = match api {
        WriteApi::Native => "native PUT",
        WriteApi::Vsecm => "VSecM upsert",
    };
    Ok(report(
        format!("durable writes ({through}), {writers} writers, {size}-byte values"),
        all,
        errors,
        start.elapsed(),
    ))
}

/// Writes `secrets` distinct secrets once each, `writers` at a time; errors are counted.
pub(crate) async fn fill(secrets: usize, writers: usize, size: usize) -> Result<Report, CliError> {
    let client = aegis::connect::client().await?;
    let value = "x".repeat(size.max(1));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers.max(1))
        .map(|_| {
            let (c, v, next) = (client.clone(), value.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= secrets {
                        break;
                    }
                    let t0 = Instant::now();
                    if write_one(&c, WriteApi::Native, &format!("fill-{i}"), &v).await {
                        lat.push(micros(t0.elapsed()));
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (all, errors) = crate::gather(tasks).await?;
    Ok(report(format!("fill: {secrets} secrets of {size} bytes, {writers} writers"), all, errors, start.elapsed()))
}

fn put_req(value: String) -> PutSecret {
    PutSecret::new(SecretValue::new(value))
}

/// Polls the file until it holds `want` (a 100 µs poll: finer than the figures measured);
/// the time it took from `start`.
fn wait_for_file(file: &std::path::Path, want: &str, start: Instant, limit: Duration) -> Option<Duration> {
    while start.elapsed() < limit {
        if std::fs::read(file).is_ok_and(|b| b == want.as_bytes()) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

pub(crate) async fn propagation(
    updates: usize,
    file: &std::path::Path,
    secret: &str,
    from_start: bool,
) -> Result<Report, CliError> {
    let client = aegis::connect::client().await?;
    let mut lat = Vec::with_capacity(updates);
    let mut errors = 0;
    let started = Instant::now();
    for i in 0..updates {
        let value = format!("propagation-{i}-{}", started.elapsed().as_nanos());
        let sent = Instant::now();
        client.put(secret, &put_req(value.clone())).await?;
        let from = if from_start { sent } else { Instant::now() };
        let f = file.to_owned();
        let seen = tokio::task::spawn_blocking(move || wait_for_file(&f, &value, from, Duration::from_secs(10)))
            .await
            .map_err(CliError::failure)?;
        match seen {
            Some(d) => lat.push(micros(d)),
            None => errors += 1,
        }
    }
    let from = if from_start { "the write's start" } else { "its acknowledgement" };
    Ok(report(format!("propagation to a sidecar file, {updates} updates, from {from}"), lat, errors, started.elapsed()))
}
