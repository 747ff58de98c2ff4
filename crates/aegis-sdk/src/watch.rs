//! Push delivery: a stream of changes to the caller's secret.
//!
//! The Safe answers a watch as soon as the secret changes (long poll), so a
//! change reaches the workload within milliseconds. When the Safe cannot be
//! reached the stream reports it, keeps the last value with the caller, and
//! retries with exponential backoff and full jitter; once the Safe is back it
//! delivers the current state, so every watcher converges.

use std::time::Duration;

use aegis_core::api::{WatchEvent, WorkloadSecret};
use futures::Stream;
use rand::Rng;

use crate::{chain, refused, Client, ClientError};

/// How a watch waits and retries.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How long the Safe holds each watch request open when nothing changes.
    pub wait: Duration,
    /// First retry delay after a failure.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(25),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
        }
    }
}

/// One item of [`Client::watch`].
#[derive(Debug)]
pub enum WatchUpdate {
    /// The secret changed: its new value, or `None` if it was deleted or never existed.
    Changed(Option<WorkloadSecret>),
    /// The Safe could not be reached; the watch retries after `retry_in`.
    Unreachable {
        /// What failed.
        error: ClientError,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// A revision no secret has, so the first request answers at once.
const UNSEEN: u64 = u64::MAX;

struct State {
    client: Client,
    opts: WatchOptions,
    secret: Option<String>,
    revision: u64,
    backoff: Duration,
}

impl Client {
    /// One long poll: returns when the secret is at another revision than `revision`, or after `wait`.
    pub async fn watch_once(&self, revision: u64, wait: Duration) -> Result<WatchEvent, ClientError> {
        self.watch_once_for(None, revision, wait).await
    }

    /// [`Client::watch_once`] on the secret `secret` (a policy must allow the
    /// caller to read it), or on the caller's own with `None`.
    pub async fn watch_once_for(
        &self,
        secret: Option<&str>,
        revision: u64,
        wait: Duration,
    ) -> Result<WatchEvent, ClientError> {
        // A read: a replica that cannot be reached is left for the next; the
        // revision carries over (replicas share their revisions), so no change is
        // missed or delivered twice.
        let named = secret.map(|n| format!("&secret={}", crate::admin::seg(n))).unwrap_or_default();
        let resp = self
            .send_failing_over(true, |base| {
                self.http
                    .get(format!("{base}/v1/workload/watch?revision={revision}&wait_ms={}{named}", wait.as_millis()))
                    .timeout(wait + Duration::from_secs(15))
            })
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Connect { url: self.base(), reason: chain(&e) })?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Decode("watch answer is not a watch event".to_owned()))
    }

    /// Changes to the caller's secret, starting with its current state.
    ///
    /// ```no_run
    /// # async fn demo(client: aegis_sdk::Client) {
    /// use futures::StreamExt;
    /// use aegis_sdk::{WatchOptions, WatchUpdate};
    /// let mut updates = Box::pin(client.watch(WatchOptions::default()));
    /// while let Some(update) = updates.next().await {
    ///     match update {
    ///         WatchUpdate::Changed(Some(s)) => println!("version {}", s.version),
    ///         WatchUpdate::Changed(None) => println!("no secret"),
    ///         WatchUpdate::Unreachable { retry_in, .. } => println!("retrying in {retry_in:?}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn watch(&self, opts: WatchOptions) -> impl Stream<Item = WatchUpdate> + Send + 'static {
        self.watch_named(opts, None)
    }

    /// Changes to the secret `secret` (a policy must allow the caller to read
    /// it), or to the caller's own with `None`, starting with its current state.
    pub fn watch_named(
        &self,
        opts: WatchOptions,
        secret: Option<String>,
    ) -> impl Stream<Item = WatchUpdate> + Send + 'static {
        let backoff = opts.initial_backoff;
        let state = State { client: self.clone(), opts, secret, revision: UNSEEN, backoff };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                match st.client.watch_once_for(st.secret.as_deref(), st.revision, st.opts.wait).await {
                    Ok(ev) => {
                        st.backoff = st.opts.initial_backoff;
                        if ev.revision != st.revision {
                            st.revision = ev.revision;
                            return Some((WatchUpdate::Changed(ev.secret), st));
                        }
                    }
                    Err(error) => {
                        let retry_in = jitter(st.backoff);
                        st.backoff = (st.backoff * 2).min(st.opts.max_backoff);
                        // The last revision is kept: once the Safe is back it answers at
                        // once if the secret changed meanwhile, so watchers converge.
                        let item = WatchUpdate::Unreachable { error, retry_in };
                        tokio::time::sleep(retry_in).await;
                        return Some((item, st));
                    }
                }
            }
        })
    }
}

/// Full jitter: a uniform delay in [backoff/2, backoff].
fn jitter(backoff: Duration) -> Duration {
    let ms = backoff.as_millis().max(2) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(800));
            assert!(j >= Duration::from_millis(400) && j <= Duration::from_millis(800), "{j:?}");
        }
    }
}
