//! The replica side: one task per source, asking for the changes after the
//! last one applied and applying them as read-only replicated secrets.
//!
//! Where a link stands is kept in the secrets themselves: each replicated
//! secret's origin holds the source's change number of the state held, in
//! the same record, so a crash can never separate a change from its
//! position. At start, the link goes on from the highest one held. A change
//! at or below the number a secret already holds is not applied again.
//!
//! A snapshot (the source's answer when the position cannot be continued) is
//! applied page by page with the selection left at 0 in each secret's origin,
//! so a replica that stops during one starts it again. When it is complete,
//! the secrets of that source it did not hold are deleted (soft), and the
//! newest secret is written once more with the source's selection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_core::api::ReplicationPage;
use aegis_core::error::chain;
use aegis_core::secret::{Origin, SecretDoc};
use aegis_core::SecretName;
use aegis_identity::IdentitySource;
use aegis_store::{Mutation, Store, StoreError};
use time::OffsetDateTime;

use super::{SourceSettings, SourceState};
use crate::state::AppState;

/// How long the source holds a request open when nothing changed.
pub const WAIT: Duration = Duration::from_secs(5);
/// A request not answered this long after the wait is given up (a silent cut).
const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for a TCP connection to the source.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits between failed attempts: from the first, doubling up to the second.
const RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// Largest answer read from a source.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Starts one link per configured source; they run for the Safe's life.
pub fn spawn_links(state: Arc<AppState>, identity: Arc<dyn IdentitySource>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..state.settings.replication.sources.len())
        .map(|i| tokio::spawn(run(state.clone(), identity.clone(), i)))
        .collect()
}

/// The position to ask from, and the selection the state held was sent under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Position {
    seq: u64,
    name: Option<SecretName>,
    selection: u64,
}

/// The position the secrets of `source` held in `store` stand at.
fn held_position(store: &Store, source: &str) -> Position {
    store
        .list()
        .iter()
        .filter_map(|e| e.doc.origin.as_ref().filter(|o| o.source == source).map(|o| (o, &e.doc.name)))
        .max_by(|(a, an), (b, bn)| (a.seq, *an).cmp(&(b.seq, *bn)))
        .map(|(o, name)| Position { seq: o.seq, name: Some(name.clone()), selection: o.selection })
        .unwrap_or_default()
}

/// A snapshot being applied: its selection and the secrets it held so far.
struct Snapshot {
    selection: u64,
    received: HashSet<SecretName>,
}

async fn run(state: Arc<AppState>, identity: Arc<dyn IdentitySource>, index: usize) {
    let Some((cfg, link)) = state.replication.sources.get(index) else { return };
    let presented: Arc<Mutex<Option<String>>> = Arc::default();
    let http = match client(identity, cfg, presented.clone()) {
        Ok(h) => h,
        Err(why) => {
            tracing::error!(source = %cfg.id, error = %why, "replication link cannot start");
            set(link, |s| {
                s.state = "down";
                s.error = Some(why);
            });
            return;
        }
    };
    let mut position: Option<Position> = None;
    let mut snapshot: Option<Snapshot> = None;
    let mut retry = RETRY.0;
    loop {
        let Ok(store) = state.store() else {
            set(link, |s| {
                s.state = "sealed";
                s.error = Some("this Safe is sealed: waiting for its root key".to_owned());
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let from = position
            .get_or_insert_with(|| {
                let held = held_position(&store, cfg.id.as_str());
                set(link, |s| s.applied = s.applied.max(held.seq));
                held
            })
            .clone();
        let outcome = match ask(&http, cfg, &from).await {
            Ok(page) => apply(&state, &store, cfg, link, page, &mut snapshot).await,
            Err(why) => Err(explain(why, &presented, cfg)),
        };
        match outcome {
            Ok(next) => {
                position = Some(next);
                retry = RETRY.0;
            }
            Err(why) => {
                // The position stays: what the failed page applied is skipped when it comes again.
                let first = set(link, |s| {
                    let first = s.down_since.is_none() || s.state == "connecting";
                    s.state = "down";
                    s.caught_up = false;
                    s.down_since.get_or_insert_with(Instant::now);
                    s.error = Some(why.clone());
                    first
                });
                if first {
                    tracing::warn!(source = %cfg.id, url = %cfg.url, error = %why, "replication link down; retrying");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY.1);
            }
        }
    }
}

fn set<T>(link: &Mutex<SourceState>, f: impl FnOnce(&mut SourceState) -> T) -> T {
    f(&mut link.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The HTTP client of one link: this Safe's SVID as client certificate, and
/// the source accepted only with exactly the configured SPIFFE ID (its chain
/// checked against its trust domain's bundle, as the agent delivers it).
fn client(
    identity: Arc<dyn IdentitySource>,
    cfg: &SourceSettings,
    presented: Arc<Mutex<Option<String>>>,
) -> Result<reqwest::Client, String> {
    let expected = cfg.id.clone();
    let authorize: aegis_identity::AuthorizeServer = Arc::new(move |id| {
        *presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
        *id == expected
    });
    let tls = aegis_identity::client_config(identity, authorize).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(WAIT + ANSWER_GRACE)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Why a request failed, naming the SPIFFE ID the source presented when it was not the configured one.
fn explain(why: String, presented: &Mutex<Option<String>>, cfg: &SourceSettings) -> String {
    match presented.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(id) if id != cfg.id.as_str() => format!(
            "the Safe at {} presented the SPIFFE ID {id}, not {}: fix --replicate-from (or the source's SVID)",
            cfg.url, cfg.id
        ),
        _ => why,
    }
}

/// One request: the changes after `from`.
async fn ask(http: &reqwest::Client, cfg: &SourceSettings, from: &Position) -> Result<ReplicationPage, String> {
    let mut url = reqwest::Url::parse(&format!("{}/v1/replication/changes", cfg.url.trim_end_matches('/')))
        .map_err(|e| format!("bad source URL {}: {e}", cfg.url))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("after", &from.seq.to_string());
        if let Some(name) = &from.name {
            q.append_pair("after_name", name.as_str());
        }
        q.append_pair("selection", &from.selection.to_string());
        q.append_pair("wait_ms", &WAIT.as_millis().to_string());
    }
    let mut resp = http.get(url).send().await.map_err(|e| format!("cannot reach {}: {}", cfg.url, chain(&e)))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("answer from {} cut: {}", cfg.url, chain(&e)))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the answer from {} is larger than {MAX_ANSWER} bytes", cfg.url));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let message = serde_json::from_slice::<aegis_core::api::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        return Err(format!("{} answered {status}: {message}", cfg.url));
    }
    // serde_json's message may quote the input, which holds values: only where it failed.
    let page: ReplicationPage = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "unexpected answer from {}: not a replication page ({:?} error at line {}, column {})",
            cfg.url,
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if page.source != cfg.id.as_str() {
        return Err(format!("the answer from {} names its source {}, not {}", cfg.url, page.source, cfg.id));
    }
    Ok(page)
}

/// Applies one page; the position to ask from next, or why the page could
/// not be applied (what was applied stays: the next request goes on from it).
async fn apply(
    state: &AppState,
    store: &Store,
    cfg: &SourceSettings,
    link: &Mutex<SourceState>,
    page: ReplicationPage,
    snapshot: &mut Option<Snapshot>,
) -> Result<Position, String> {
    let source = cfg.id.as_str();
    if page.snapshot {
        if snapshot.is_none() {
            tracing::info!(source = %cfg.id, head = page.head, "replication: applying a snapshot of the source");
        }
        *snapshot = Some(Snapshot { selection: page.selection, received: HashSet::new() });
    }
    let selection = if snapshot.is_some() { 0 } else { page.selection };
    let mut jobs = Vec::new();
    let mut top = 0u64;
    for change in page.changes {
        let name = change.doc.name.clone();
        if let Some(s) = snapshot.as_mut() {
            s.received.insert(name.clone());
        }
        if change.omitted {
            // The source could not send it: said in the status, and the position goes on.
            let new = set(link, |s| s.too_large.insert(name.to_string()));
            if new {
                tracing::warn!(secret = %name, source, "replication: the source sent this secret without its value (larger than one change may carry); it is not replicated");
            }
            top = top.max(change.seq);
            continue;
        }
        set(link, |s| s.too_large.remove(name.as_str()));
        if let Some(held) = store.get(&name) {
            match held.doc.origin.as_deref() {
                // Held already (a page asked for again after a failure): never applied twice.
                Some(o) if o.source == source && o.seq >= change.seq => {
                    top = top.max(o.seq);
                    continue;
                }
                Some(o) if o.source == source => {}
                _ => {
                    conflict(link, &cfg.id, &name, held.doc.origin.as_deref().map(|o| o.source.as_str()));
                    continue;
                }
            }
        }
        let mut doc = change.doc;
        doc.origin = Some(Box::new(Origin { source: source.to_owned(), seq: change.seq, selection }));
        jobs.push((name, doc.current, change.seq, Mutation::Replicate(Box::new(doc))));
    }
    // Sent in order and committed together (the writer batches them): one fsync for the page.
    let results = futures::future::join_all(jobs.into_iter().map(|(name, version, seq, m)| async move {
        let r = store.apply(name.clone(), m).await;
        (name, version, seq, r)
    }))
    .await;
    let mut applied = 0u64;
    let peer: Arc<str> = Arc::from(source);
    for (name, version, seq, r) in results {
        match r {
            Ok(_) => {
                applied += 1;
                top = top.max(seq);
                crate::audit::replicated(state, "replicate-apply", &peer, &name, version);
                set(link, |s| s.conflicts.remove(name.as_str()));
            }
            Err(StoreError::InTheWay { held_by, .. }) => conflict(link, &cfg.id, &name, Some(&held_by)),
            Err(e) => {
                set(link, |s| s.changes_applied += applied);
                return Err(format!("could not apply the change of '{name}' from {source}: {e}"));
            }
        }
    }
    let done = snapshot.as_ref().is_some_and(|_| !page.more);
    if done {
        if let Some(s) = snapshot.take() {
            finish_snapshot(state, store, source, &s).await?;
        }
    }
    let next = Position {
        seq: page.next_seq,
        name: page.next_name.as_deref().map(SecretName::parse_stored).transpose().map_err(|e| e.to_string())?,
        selection: page.selection,
    };
    set(link, |s| {
        s.state = if snapshot.is_some() { "snapshot" } else { "up" };
        s.error = None;
        s.down_since = None;
        s.last_contact = Some(OffsetDateTime::now_utc());
        s.source_head = page.head;
        s.changes_applied += applied;
        s.applied = s.applied.max(top);
        let caught_up = !page.more && snapshot.is_none();
        if caught_up {
            s.caught_up_at = Instant::now();
        }
        s.caught_up = caught_up;
    });
    Ok(next)
}

/// Ends a snapshot: the secrets of `source` it did not hold are deleted here
/// (the source no longer replicates them), and the newest one is written
/// again with the snapshot's selection, so that a restart goes on from it.
async fn finish_snapshot(state: &AppState, store: &Store, source: &str, snapshot: &Snapshot) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    let peer: Arc<str> = Arc::from(source);
    let gone: Vec<SecretDoc> = store
        .list()
        .iter()
        .filter(|e| {
            e.doc.origin.as_ref().is_some_and(|o| o.source == source)
                && e.doc.deleted.is_none()
                && !snapshot.received.contains(&e.doc.name)
        })
        .map(|e| e.doc.clone())
        .collect();
    for mut doc in gone {
        let name = doc.name.clone();
        doc.deleted = Some(now);
        doc.updated = now;
        doc.revision += 1;
        let version = doc.current;
        store.apply(name.clone(), Mutation::Replicate(Box::new(doc))).await.map_err(|e| e.to_string())?;
        crate::audit::replicated(state, "replicate-delete", &peer, &name, version);
        tracing::info!(secret = %name, source, "replication: the source no longer replicates this secret; deleted here");
    }
    let newest = held_position(store, source);
    if let Some(entry) = newest.name.as_ref().and_then(|n| store.get(n)) {
        let mut doc = entry.doc.clone();
        if let Some(o) = doc.origin.as_mut() {
            o.selection = snapshot.selection;
        }
        store.apply(doc.name.clone(), Mutation::Replicate(Box::new(doc))).await.map_err(|e| e.to_string())?;
    }
    tracing::info!(source, secrets = snapshot.received.len(), "replication: snapshot applied");
    Ok(())
}

/// Notes (and logs, once per secret) a replicated secret not applied because another is in the way.
fn conflict(link: &Mutex<SourceState>, source: &aegis_core::SpiffeId, name: &SecretName, held_by: Option<&str>) {
    let new = set(link, |s| s.conflicts.insert(name.to_string()));
    if new {
        tracing::warn!(
            secret = %name,
            %source,
            held_by = held_by.unwrap_or("this Safe"),
            "replication: a secret of that name not from this source is in the way; its changes are not applied \
             until it is renamed or deleted"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use aegis_core::secret::{SecretMeta, SecretValue};
    use aegis_store::{DirBackend, StoreOptions};

    async fn store(dir: &std::path::Path) -> Store {
        store_with(dir, Arc::new(aegis_crypto::RootKey::generate())).await
    }

    async fn store_with(dir: &std::path::Path, key: Arc<aegis_crypto::RootKey>) -> Store {
        // A store just dropped lets go of the directory when its writer task ends.
        let mut tries = 0;
        let backend = loop {
            match DirBackend::open(dir) {
                Ok(b) => break Arc::new(b),
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let ring = aegis_crypto::Keyring::new(key);
        Store::open(backend, ring, StoreOptions::default()).await.unwrap().0
    }

    fn replicated(name: &str, seq: u64, source: &str) -> Mutation {
        let now = OffsetDateTime::now_utc();
        let mut doc = SecretDoc::empty(SecretName::parse(name).unwrap(), now);
        doc.put(SecretValue::new("v"), SecretMeta::defaults(now), None, now, 10).unwrap();
        doc.origin = Some(Box::new(Origin { source: source.to_owned(), seq, selection: 7 }));
        Mutation::Replicate(Box::new(doc))
    }

    // Two threads: the first store's writer lets go of the directory while the second opens it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_position_is_the_highest_change_held_from_that_source_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = "spiffe://a.example/aegis/safe";
        let key = Arc::new(aegis_crypto::RootKey::generate());
        {
            let s = store_with(dir.path(), key.clone()).await;
            assert_eq!(held_position(&s, a), Position::default());
            s.apply(SecretName::parse("x").unwrap(), replicated("x", 9, a)).await.unwrap();
            s.apply(SecretName::parse("y").unwrap(), replicated("y", 4, a)).await.unwrap();
            s.apply(SecretName::parse("z").unwrap(), replicated("z", 30, "spiffe://c.example/aegis/safe"))
                .await
                .unwrap();
        }
        let s = store_with(dir.path(), key).await;
        let p = held_position(&s, a);
        assert_eq!((p.seq, p.name.unwrap().as_str(), p.selection), (9, "x", 7));
    }

    #[tokio::test]
    async fn replicated_secrets_are_read_only_and_never_overwrite_a_local_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let a = "spiffe://a.example/aegis/safe";
        let x = SecretName::parse("x").unwrap();
        s.apply(x.clone(), replicated("x", 1, a)).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let put = || Mutation::Put {
            value: SecretValue::new("local"),
            meta: SecretMeta::defaults(now),
            cas: None,
            view: None,
            stamps: None,
        };
        let e = s.apply(x.clone(), put()).await.unwrap_err();
        assert!(matches!(&e, StoreError::Replicated { from, .. } if from == a), "{e}");
        assert!(e.to_string().contains("read-only here") && e.to_string().contains(a), "{e}");
        for m in [Mutation::Delete, Mutation::Rollback(aegis_core::secret::VersionNumber::after(0))] {
            assert!(matches!(s.apply(x.clone(), m).await, Err(StoreError::Replicated { .. })));
        }
        let local = SecretName::parse("mine").unwrap();
        s.apply(local.clone(), put()).await.unwrap();
        let e = s.apply(local.clone(), replicated("mine", 2, a)).await.unwrap_err();
        assert!(matches!(&e, StoreError::InTheWay { held_by, .. } if held_by == "this Safe"), "{e}");
        let e = s.apply(x.clone(), replicated("x", 3, "spiffe://c.example/aegis/safe")).await.unwrap_err();
        assert!(matches!(&e, StoreError::InTheWay { held_by, .. } if held_by == a), "{e}");
        // A policy record is never written by a source, whatever its page says.
        let policy = SecretName::parse_stored("policy:open-all").unwrap();
        let now = OffsetDateTime::now_utc();
        let mut doc = SecretDoc::empty(policy.clone(), now);
        doc.put(SecretValue::new("{}"), SecretMeta::defaults(now), None, now, 10).unwrap();
        doc.origin = Some(Box::new(Origin { source: a.to_owned(), seq: 9, selection: 7 }));
        let e = s.apply(policy.clone(), Mutation::Replicate(Box::new(doc))).await.unwrap_err();
        assert!(e.to_string().contains("policy records are never replicated"), "{e}");
        assert!(s.get(&policy).is_none());
        // A source whose history restarted sends a lower revision: the one held here still goes up.
        let before = s.get(&x).unwrap().doc.revision;
        s.apply(x.clone(), replicated("x", 4, a)).await.unwrap();
        assert!(s.get(&x).unwrap().doc.revision > before, "revisions only go up");
        assert_eq!(s.get(&local).unwrap().doc.live().unwrap().1.expose(), "local", "nothing was overwritten");
    }
}
