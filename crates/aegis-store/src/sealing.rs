//! The root key the Safes sharing a backend seal under.
//!
//! A shared backend (a database) holds one sealing key id, set by the first
//! Safe that opens it and replaced by a root key rotation before any record is
//! re-sealed. The backend refuses, in commit order, a record sealed under
//! another key ([`StoreError::KeyRetired`]), so a Safe that has not yet
//! followed a rotation cannot leave a record under the retired key behind. A
//! Safe follows when it meets the new id (in a catch-up, or in such a
//! refusal): it loads the key from its root key store (the rotating Safe wrote
//! it there first, as the next key) and seals under it from then on.

use std::sync::Arc;

use aegis_crypto::{KeyId, Keyring};

use crate::backend::SealUnder;
use crate::rootkey::IfAbsent;
use crate::shared::Shared;
use crate::{Backend, RootKeyStore, StoreError};

/// At start-up: the keyring a Safe sharing `backend` seals with. Sets the
/// sealing key to this Safe's when none is set; refuses to start when the
/// one set is a key this Safe cannot load (its root key store is not the others').
pub(crate) async fn agree(
    backend: &Arc<dyn Backend>,
    keys: Option<&Arc<dyn RootKeyStore>>,
    ring: Keyring,
    sealing: Option<KeyId>,
) -> Result<Keyring, StoreError> {
    let sealing = match sealing {
        Some(id) => id,
        None => {
            let b = backend.clone();
            let ours = ring.current().id();
            tokio::task::spawn_blocking(move || match b.shared() {
                Some(log) => log.seal_under(ours, SealUnder::IfUnset),
                None => Ok(ours),
            })
            .await
            .map_err(|_| StoreError::Closed)??
        }
    };
    if let Some(turned) = ring.sealing_with(sealing) {
        return Ok(turned);
    }
    let loaded = match keys {
        Some(k) => Some(with_stored_keys(k.as_ref(), &ring).await),
        None => None,
    };
    loaded.and_then(|r| r.sealing_with(sealing)).ok_or(StoreError::ForeignKey { sealing, ours: ring.current().id() })
}

/// Follows a rotation another Safe made: seals under `sealing` from now on.
/// False when this Safe cannot load that key (logged).
pub(crate) async fn follow(shared: &Shared, sealing: KeyId) -> bool {
    let ring = shared.keyring.load_full();
    if ring.current().id() == sealing {
        return true;
    }
    let turned = match ring.sealing_with(sealing) {
        Some(r) => Some(r),
        None => match &shared.opts.keys {
            Some(k) => with_stored_keys(k.as_ref(), &ring).await.sealing_with(sealing),
            None => None,
        },
    };
    let Some(turned) = turned else {
        tracing::error!(
            key_id = %sealing,
            "another Safe sharing the store rotated the root key, and this Safe cannot load the new key from its \
             root key store: its writes are refused until it can (every Safe must use the same root key store)"
        );
        return false;
    };
    tracing::info!(key_id = %sealing, "following a root key rotation made by another Safe: sealing under the new key");
    shared.set_keyring(turned);
    true
}

/// `ring` with the root key store's keys (the root key and the next key of a rotation) added.
async fn with_stored_keys(keys: &dyn RootKeyStore, ring: &Keyring) -> Keyring {
    // Never generate: records exist, and a new key would open none of them.
    let root = keys.load_or_create(IfAbsent::Refuse { records: 1 }).await;
    let next = keys.read_next().await;
    let mut out = ring.clone();
    match root {
        Ok((k, _)) => out = out.with_older(k),
        Err(e) => tracing::error!(store = %keys.describe(), error = %e, "cannot read the root key store"),
    }
    match next {
        Ok(Some(k)) => out = out.with_older(k),
        Ok(None) => {}
        Err(e) => tracing::error!(store = %keys.describe(), error = %e, "cannot read the next root key"),
    }
    out
}
