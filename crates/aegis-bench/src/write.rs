//! `aegis-bench write` and `aegis-bench propagation`: durable writes through
//! the SDK, and the time until a sidecar's file holds each one.

use std::time::{Duration, Instant};

use aegis::exit::CliError;
use aegis_core::api::PutSecret;
use aegis_core::secret::SecretValue;

use crate::{report, Report};

pub(crate) async fn write(writers: usize, dur: Duration, size: usize) -> Result<Report, CliError> {
    let client = aegis::connect::client().await?;
    let value = "x".repeat(size.max(1));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers.max(1))
        .map(|w| {
            let (c, v) = (client.clone(), value.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = 0u64;
                while start.elapsed() < dur {
                    let req = put_req(v.clone());
                    let t0 = Instant::now();
                    match c.put(&format!("bench-{w}-{}", i % 64), &req).await {
                        Ok(_) => lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        Err(_) => errors += 1,
                    }
                    i += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let (all, errors) = crate::gather(tasks).await?;
    Ok(report(format!("durable writes, {writers} writers, {size}-byte values"), all, errors, start.elapsed()))
}

fn put_req(value: String) -> PutSecret {
    PutSecret::new(SecretValue::new(value))
}

/// Polls the file until it holds `want` (a 100 µs poll: finer than the figures measured).
fn wait_for_file(file: &std::path::Path, want: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read(file).is_ok_and(|b| b == want.as_bytes()) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

pub(crate) async fn propagation(updates: usize, file: &std::path::Path, secret: &str) -> Result<Report, CliError> {
    let client = aegis::connect::client().await?;
    let mut lat = Vec::with_capacity(updates);
    let mut errors = 0;
    let started = Instant::now();
    for i in 0..updates {
        let value = format!("propagation-{i}-{}", started.elapsed().as_nanos());
        client.put(secret, &put_req(value.clone())).await?;
        let f = file.to_owned();
        let seen = tokio::task::spawn_blocking(move || wait_for_file(&f, &value, Duration::from_secs(10)))
            .await
            .map_err(CliError::failure)?;
        match seen {
            Some(d) => lat.push(d.as_micros().min(u128::from(u32::MAX)) as u32),
            None => errors += 1,
        }
    }
    Ok(report(format!("propagation to a sidecar file, {updates} updates"), lat, errors, started.elapsed()))
}
