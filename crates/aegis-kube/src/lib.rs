//! Aegis in Kubernetes.
//!
//! Everything that talks to the Kubernetes API lives here, so that the Safe,
//! the store and the CLI build and run without a cluster. The Safe binary wires
//! it in when the root key store is `kubernetes` or `k8s:` secrets are synced.

pub mod client;
pub mod rootkey;
pub mod sync;

pub use client::{connect, connect_with_timeout, ConnectError};
pub use rootkey::{SecretStore, SecretStoreSettings};
pub use sync::off::SyncOff;
pub use sync::{SyncConfig, Syncer};
