//! Backups and restores (Sentinel): a backup is streamed from the Safe, a
//! backup file is streamed to it; neither is held whole here.

use std::time::Duration;

use aegis_core::api::{BackupChecked, BackupRequest, RestoreDone};
use bytes::Bytes;
use reqwest::Method;

use crate::{chain, refused, Client, ClientError};

/// The header that hands the Safe a backup's key (see `aegis_crypto::backup`).
pub const KEY_HEADER: &str = "aegis-backup-key";

/// A backup file being sent, piece by piece.
pub trait FileStream: futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + Sync + 'static {}

impl<S: futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + Sync + 'static> FileStream for S {}

/// A backup being received.
pub struct BackupStream {
    /// Secrets it holds.
    pub secrets: u64,
    /// The Safe's commit it goes up to.
    pub commit: u64,
    resp: reqwest::Response,
    base: String,
}

impl BackupStream {
    /// The next piece of the file; `None` once it is whole. An error if the
    /// Safe cut it off (the file is then incomplete and must be discarded).
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        self.resp.chunk().await.map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            reason: format!("the backup was cut off: {}", chain(&e)),
        })
    }
}

impl Client {
    /// Starts a backup, also encrypted to `recipients`; `timeout` bounds all of it.
    pub async fn backup(&self, recipients: Vec<String>, timeout: Duration) -> Result<BackupStream, ClientError> {
        let url = format!("{}/v1/admin/backup", self.base());
        let resp = self
            .http
            .request(Method::POST, &url)
            .timeout(timeout)
            .json(&BackupRequest { recipients })
            .send()
            .await
            .map_err(|e| ClientError::Connect { url: self.base(), reason: chain(&e) })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(refused(status, &body));
        }
        let number = |h: &str| {
            resp.headers().get(h).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).ok_or_else(|| {
                ClientError::Decode(format!("the backup's answer has no {h} header: is this an Aegis Safe?"))
            })
        };
        let (secrets, commit) = (number("aegis-backup-secrets")?, number("aegis-backup-commit")?);
        Ok(BackupStream { secrets, commit, resp, base: self.base() })
    }

    /// Sends a backup file to be checked; `key` opens it where the Safe's root key does not.
    pub async fn verify_backup(
        &self,
        file: impl FileStream,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<BackupChecked, ClientError> {
        self.transfer("/v1/admin/backup/verify", file, key, timeout).await
    }

    /// Sends a backup file to be restored (into an empty Safe unless `replace`).
    pub async fn restore(
        &self,
        file: impl FileStream,
        key: Option<&str>,
        replace: bool,
        timeout: Duration,
    ) -> Result<RestoreDone, ClientError> {
        let path = if replace { "/v1/admin/restore?replace=true" } else { "/v1/admin/restore" };
        self.transfer(path, file, key, timeout).await
    }

    async fn transfer<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        file: impl FileStream,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base());
        let mut req = self
            .http
            .request(Method::POST, &url)
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(file));
        if let Some(k) = key {
            req = req.header(KEY_HEADER, k);
        }
        let resp = req.send().await.map_err(|e| ClientError::Connect { url: self.base(), reason: chain(&e) })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ClientError::Connect { url: self.base(), reason: chain(&e) })?;
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(format!("the Safe's answer: {e}")))
    }
}
