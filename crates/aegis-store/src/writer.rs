//! The single writer: group commits and start-up loading.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aegis_core::secret::SecretDoc;
use aegis_core::SecretName;
use aegis_crypto::{KeyId, Keyring};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Listing, Unnamed};
use crate::entries::Entries;
use crate::entry::{Data, Entry, LoadReport, Mutation, Quarantined};
use crate::record::{self, seal, OpenError};
use crate::shared::Shared;
use crate::{Backend, CommitBarrier, GroupError, StoreError, Ticket};
use aegis_core::transform::Budget;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum Job {
    Mutate {
        name: SecretName,
        mutation: Mutation,
        reply: Reply<Arc<Entry>>,
        ticket: Option<Arc<Ticket>>,
    },
    Rotate {
        keyring: Keyring,
        reply: Reply<usize>,
        ticket: Option<Arc<Ticket>>,
    },
    /// Whole secrets from a backup, written all or nothing in one commit.
    Restore {
        docs: Vec<SecretDoc>,
        replace: bool,
        reply: Reply<crate::Restored>,
        ticket: Option<Arc<Ticket>>,
    },
    /// Takes up what other Safes sharing the backend committed.
    CatchUp,
    /// Changes applied all or nothing, in one commit of their own.
    Group {
        mutations: Vec<(SecretName, Mutation)>,
        reply: Reply<Vec<Arc<Entry>>>,
        ticket: Option<Arc<Ticket>>,
    },
}

/// How long the writer waits without a job before it flushes the backend.
const IDLE_FLUSH: Duration = Duration::from_secs(1);

pub(crate) async fn run(shared: Arc<Shared>, backend: Arc<dyn Backend>, mut rx: mpsc::Receiver<Job>) {
    let mut written = false;
    loop {
        let next = if written {
            match tokio::time::timeout(IDLE_FLUSH, rx.recv()).await {
                Ok(job) => job,
                Err(_) => {
                    flush(&backend).await;
                    written = false;
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = next else {
            if written {
                flush(&backend).await;
            }
            return;
        };
        written = true;
        let mut batch = Vec::new();
        let mut in_batch: std::collections::HashSet<SecretName> = std::collections::HashSet::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Rotate { keyring, reply, ticket } => {
                    if ticket.is_some_and(|t| !t.pick()) {
                        let _ = reply.send(Err(StoreError::Expired));
                    } else {
                        commit(&shared, &backend, std::mem::take(&mut batch)).await;
                        in_batch.clear();
                        let _ = reply.send(rotate(&shared, &backend, keyring).await);
                    }
                }
                Job::Group { mutations, reply, ticket } => {
                    if ticket.is_some_and(|t| !t.pick()) {
                        let _ = reply.send(Err(StoreError::Expired));
                    } else {
                        commit(&shared, &backend, std::mem::take(&mut batch)).await;
                        in_batch.clear();
                        let _ = reply.send(commit_group(&shared, &backend, mutations).await);
                    }
                }
                Job::CatchUp => {
                    // Notices from now on need another catch-up.
                    shared.catch_up_queued.store(false, Ordering::SeqCst);
                    commit(&shared, &backend, std::mem::take(&mut batch)).await;
                    in_batch.clear();
                    catch_up(&shared, &backend).await;
                }
                Job::Restore { docs, replace, reply, ticket } => {
                    if ticket.is_some_and(|t| !t.pick()) {
                        let _ = reply.send(Err(StoreError::Expired));
                    } else {
                        commit(&shared, &backend, std::mem::take(&mut batch)).await;
                        in_batch.clear();
                        let _ = reply.send(restore(&shared, &backend, docs, replace).await);
                    }
                }
                Job::Mutate { name, mutation, reply, ticket } => {
                    // A change whose request was given up (or is past its
                    // deadline) is refused before it is applied, so the
                    // request's timeout answer can say "not applied".
                    if ticket.is_some_and(|t| !t.pick()) {
                        let _ = reply.send(Err(StoreError::Expired));
                    } else {
                        // A second change of a secret goes to the next commit, so that each
                        // answer is the state its own change made (its own version number).
                        if !in_batch.insert(name.clone()) {
                            commit(&shared, &backend, std::mem::take(&mut batch)).await;
                            in_batch.clear();
                            in_batch.insert(name.clone());
                        }
                        batch.push((name, mutation, reply));
                    }
                }
            }
            if batch.len() < shared.opts.max_batch {
                next = rx.try_recv().ok();
            }
        }
        commit(&shared, &backend, batch).await;
    }
}

/// Makes what was written durable in its final place (a journal's
/// checkpoint); a failure is logged, as every write was already durable.
async fn flush(backend: &Arc<dyn Backend>) {
    let b = backend.clone();
    match tokio::task::spawn_blocking(move || b.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "flushing the store failed; it is retried when the writer is next idle")
        }
        Err(_) => tracing::error!("the flushing thread failed"),
    }
}

/// Applies one change; for a put, also returns the view computed before the write.
fn apply_one(
    base: Option<SecretDoc>,
    name: &SecretName,
    m: Mutation,
    max: usize,
) -> Result<(SecretDoc, Option<Data>), StoreError> {
    let now = OffsetDateTime::now_utc();
    let missing = || StoreError::NotFound(name.to_string());
    if let Mutation::Replicate(doc) = m {
        return replicate(base, name, *doc);
    }
    if let Some(origin) = base.as_ref().and_then(|d| d.origin.as_ref()) {
        return Err(StoreError::Replicated { name: name.to_string(), from: origin.source.clone() });
    }
    let mut doc = match (base, &m) {
        (Some(d), _) => d,
        (None, Mutation::Put { .. }) => SecretDoc::empty(name.clone(), now),
        (None, _) => return Err(missing()),
    };
    let mut computed = None;
    match m {
        Mutation::Put { value, meta, cas, view, stamps } => {
            let fresh = doc.current == 0 && doc.versions.is_empty();
            doc.put(value, meta, cas, stamps.map_or(now, |s| s.updated), max)?;
            if let (true, Some(s)) = (fresh, stamps) {
                doc.created = s.created;
            }
            computed = view;
        }
        Mutation::Delete => doc.soft_delete(now)?,
        Mutation::Undelete => doc.undelete(now)?,
        Mutation::Destroy(v) => doc.destroy(v, now)?,
        Mutation::Rollback(v) => {
            doc.rollback(v, now, max)?;
        }
        Mutation::Replicate(_) => unreachable!("handled above"),
    }
    Ok((doc, computed))
}

/// A replicated secret in place of `base`: refused over a secret that is not
/// from the same source (this Safe's own is never overwritten), and as stale
/// when it is not newer than what is held.
fn replicate(
    base: Option<SecretDoc>,
    name: &SecretName,
    mut doc: SecretDoc,
) -> Result<(SecretDoc, Option<Data>), StoreError> {
    let Some(origin) = doc.origin.as_ref() else {
        return Err(StoreError::Io {
            name: name.to_string(),
            source: io::Error::other("a replicated change without its origin"),
        });
    };
    if doc.name != *name {
        return Err(StoreError::Io {
            name: name.to_string(),
            source: io::Error::other("a replicated change of another name"),
        });
    }
    // Each Safe's policies are its own: a source (or a forged page) never writes one here.
    if name.kind() == aegis_core::SecretKind::Policy {
        return Err(StoreError::InTheWay {
            name: name.to_string(),
            from: origin.source.clone(),
            held_by: "this Safe's policies (policy records are never replicated)".to_owned(),
        });
    }
    if let Some(held) = base {
        // Watchers and the Kubernetes sync follow revisions up: never backwards here,
        // even when the source's history restarted.
        doc.revision = doc.revision.max(held.revision + 1);
        let other = match held.origin.as_ref() {
            None => Some("this Safe".to_owned()),
            Some(o) if o.source != origin.source => Some(o.source.clone()),
            Some(_) => None,
        };
        if let Some(held_by) = other {
            return Err(StoreError::InTheWay { name: name.to_string(), from: origin.source.clone(), held_by });
        }
    }
    Ok((doc, None))
}

fn copy_err(e: &StoreError, name: &SecretName) -> StoreError {
    match e {
        StoreError::Io { source, .. } => StoreError::Io { name: name.to_string(), source: copy_io(source) },
        StoreError::Barrier(why) => StoreError::Barrier(why.clone()),
        StoreError::Unavailable { what, why } => StoreError::Unavailable { what: what.clone(), why: why.clone() },
        StoreError::Changed(n) => StoreError::Changed(n.clone()),
        other => StoreError::Io { name: name.to_string(), source: io::Error::other(other.to_string()) },
    }
}

/// A copy of an I/O error that keeps the OS error code, which decides the answer.
pub(crate) fn copy_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

async fn commit(shared: &Shared, backend: &Arc<dyn Backend>, jobs: Vec<(SecretName, Mutation, Reply<Arc<Entry>>)>) {
    if jobs.is_empty() {
        return;
    }
    let mut work: HashMap<SecretName, (SecretDoc, Option<Data>)> = HashMap::new();
    let mut bases: HashMap<SecretName, u64> = HashMap::new();
    let mut waiting = Vec::with_capacity(jobs.len());
    for (name, m, reply) in jobs {
        let base = base_of(shared, &work, &mut bases, &name);
        match apply_one(base, &name, m, shared.opts.max_versions) {
            Ok(mut done) => {
                done.0.seq = shared.next_change();
                work.insert(name.clone(), done);
                waiting.push((name, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    let (outcome, newer) = persist(shared, backend, work, &bases).await;
    note_availability(shared, outcome.values().map(|r| r.as_ref().map(|_| ())));
    let mut changed: Vec<SecretName> = outcome.iter().filter(|(_, r)| r.is_ok()).map(|(n, _)| n.clone()).collect();
    {
        let mut map = shared.map.write().unwrap_or_else(|e| e.into_inner());
        for entry in outcome.values().flatten() {
            map.insert(entry.clone());
        }
        changed.extend(take_up(&mut map, newer));
    }
    if !changed.is_empty() {
        shared.seq.send_modify(|n| *n += 1);
        shared.watched.changed(changed.iter());
    }
    for (name, reply) in waiting {
        let r = match outcome.get(&name) {
            Some(Ok(entry)) => Ok(entry.clone()),
            Some(Err(e)) => Err(copy_err(e, &name)),
            None => Err(StoreError::Closed),
        };
        let _ = reply.send(r);
    }
}

/// Applies every change of a group or none: logical errors are found before
/// anything is written, and the records are written with
/// [`Backend::write_group`]. Records stored despite a failure (a rename failed
/// midway) are made visible, and the error names them.
async fn commit_group(
    shared: &Shared,
    backend: &Arc<dyn Backend>,
    mutations: Vec<(SecretName, Mutation)>,
) -> Result<Vec<Arc<Entry>>, StoreError> {
    let mut order: Vec<SecretName> = Vec::new();
    let mut work: HashMap<SecretName, (SecretDoc, Option<Data>)> = HashMap::new();
    let mut bases: HashMap<SecretName, u64> = HashMap::new();
    for (name, m) in mutations {
        let base = base_of(shared, &work, &mut bases, &name);
        let mut done = apply_one(base, &name, m, shared.opts.max_versions)?;
        done.0.seq = shared.next_change();
        if work.insert(name.clone(), done).is_none() {
            order.push(name);
        }
    }
    let docs: Vec<(SecretDoc, Option<Data>)> = order.iter().filter_map(|n| work.remove(n)).collect();
    let expected = docs.iter().map(|(d, _)| bases.get(&d.name).copied().unwrap_or(0)).collect();
    write_docs(shared, backend, docs, expected).await
}

/// The document a change applies to (the batch's own if it changed the
/// secret already), noting the stored revision it expects the first time.
fn base_of(
    shared: &Shared,
    work: &HashMap<SecretName, (SecretDoc, Option<Data>)>,
    bases: &mut HashMap<SecretName, u64>,
    name: &SecretName,
) -> Option<SecretDoc> {
    if let Some((doc, _)) = work.get(name) {
        return Some(doc.clone());
    }
    let current = shared.get(name).map(|e| e.doc.clone());
    bases.entry(name.clone()).or_insert_with(|| current.as_ref().map_or(0, |d| d.revision));
    current
}

/// Notes whether the backend answered: unavailable when a call failed with
/// [`StoreError::Unavailable`], available again when one succeeded.
fn note_availability<'a>(shared: &Shared, results: impl Iterator<Item = Result<(), &'a StoreError>>) {
    let (mut ok, mut down) = (false, false);
    for r in results {
        match r {
            Ok(()) => ok = true,
            Err(StoreError::Unavailable { .. }) => down = true,
            Err(_) => {}
        }
    }
    let was = shared.available.load(Ordering::Relaxed);
    let now = if ok {
        true
    } else if down {
        false
    } else {
        was
    };
    if now != was {
        shared.available.store(now, Ordering::Relaxed);
        if now {
            tracing::info!("the record store answers again");
        } else {
            tracing::error!("the record store is unavailable: writes are refused, reads are served from memory");
        }
    }
}

/// Puts in the map the entries read back from the backend that are newer
/// than what it holds (another Safe's changes); returns their names.
fn take_up(map: &mut Entries, newer: Vec<Entry>) -> Vec<SecretName> {
    let mut names = Vec::new();
    for entry in newer {
        let held = map.get(&entry.doc.name).map_or(0, |e| e.doc.revision);
        if entry.doc.revision > held {
            names.push(entry.doc.name.clone());
            map.insert(Arc::new(entry));
        }
    }
    names
}

/// Opens a record another Safe wrote; one this Safe cannot open is logged and not taken up.
fn open_theirs(keyring: &Keyring, budget: &Budget, name: &SecretName, bytes: &[u8]) -> Option<Entry> {
    match record::open(keyring, name.as_str(), bytes) {
        Ok(doc) => Some(Entry::new(doc, None, budget)),
        Err(_) => {
            tracing::warn!(secret = %name, "a record another Safe wrote cannot be opened here; it is not taken up");
            None
        }
    }
}

/// Reads `names` back from the backend and opens them (after another Safe
/// changed them); those that cannot be read or opened are left to the next catch-up.
fn read_back(backend: &dyn Backend, keyring: &Keyring, budget: &Budget, names: &[SecretName]) -> Vec<Entry> {
    names.iter().filter_map(|n| open_theirs(keyring, budget, n, &backend.read(n).ok()?)).collect()
}

/// [`take_up`] into the shared map, waking the watchers of what changed.
fn take_up_and_wake(shared: &Shared, newer: Vec<Entry>) -> usize {
    if newer.is_empty() {
        return 0;
    }
    let changed = take_up(&mut shared.map.write().unwrap_or_else(|e| e.into_inner()), newer);
    if !changed.is_empty() {
        shared.seq.send_modify(|n| *n += 1);
        shared.watched.changed(changed.iter());
    }
    changed.len()
}

/// Takes up what other Safes sharing the backend committed since the last
/// catch-up: records newer than the ones held replace them, and their
/// watchers are woken. A rotation another Safe made is followed first, so
/// that its re-sealed records open.
async fn catch_up(shared: &Shared, backend: &Arc<dyn Backend>) -> bool {
    if backend.shared().is_none() {
        return true;
    }
    loop {
        match catch_up_page(shared, backend).await {
            Some(read) if read >= PAGE => {}
            Some(_) => return true,
            None => return false,
        }
    }
}

/// Records read from a shared backend at once (a catch-up, a start-up): the
/// sealed bytes of a page are in memory together, never those of the whole store.
const PAGE: usize = 4096;

/// One page of [`catch_up`]: how many records were read, `None` if reading failed.
async fn catch_up_page(shared: &Shared, backend: &Arc<dyn Backend>) -> Option<usize> {
    let after = shared.log_seq.load(Ordering::SeqCst);
    let (b, keyring, budget) = (backend.clone(), shared.keyring.load_full(), shared.opts.template_budget);
    let read = tokio::task::spawn_blocking(move || {
        let Some(log) = b.shared() else { return Ok(Caught::Opened(Vec::new(), after, 0)) };
        let changes = log.changes_since(after, PAGE)?;
        if changes.sealing_key.is_some_and(|k| k != keyring.current().id()) {
            return Ok(Caught::Rotated(changes));
        }
        let read = changes.records.len();
        Ok::<_, StoreError>(Caught::Opened(open_all(&keyring, &budget, &changes.records), changes.last, read))
    })
    .await;
    let caught = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            note_availability(shared, std::iter::once(Err(&e)));
            tracing::warn!(error = %e, "catching up with the other Safes failed; retried at the next notice");
            return None;
        }
        Err(_) => return None,
    };
    note_availability(shared, std::iter::once(Ok(())));
    let (entries, last, read) = match caught {
        Caught::Opened(entries, last, read) => (entries, last, read),
        Caught::Rotated(changes) => {
            if let Some(k) = changes.sealing_key {
                crate::sealing::follow(shared, k).await;
            }
            let keyring = shared.keyring.load_full();
            let (last, read) = (changes.last, changes.records.len());
            let opened = tokio::task::spawn_blocking(move || open_all(&keyring, &budget, &changes.records)).await;
            (opened.unwrap_or_default(), last, read)
        }
    };
    let changed = take_up_and_wake(shared, entries);
    shared.log_seq.store(last, Ordering::SeqCst);
    if changed > 0 {
        tracing::debug!(secrets = changed, "took up changes of other Safes");
    }
    Some(read)
}

/// What a catch-up read: the records opened and the change number read up
/// to, or, when the others seal under a key this Safe does not yet, the
/// changes to open once it follows.
enum Caught {
    Opened(Vec<Entry>, u64, usize),
    Rotated(crate::Changes),
}

/// Opens the records other Safes wrote (those that cannot be opened are logged and left out).
fn open_all(keyring: &Keyring, budget: &Budget, records: &[crate::SealedRecord]) -> Vec<Entry> {
    records.iter().filter_map(|(n, bytes)| open_theirs(keyring, budget, n, bytes)).collect()
}

/// One attempt of [`write_docs`]: what was written (or the error), or, when
/// another Safe retired the key the group was sealed under, the docs back.
enum GroupAttempt {
    Done(Result<(), GroupError>, Vec<Option<Arc<Entry>>>, Vec<Entry>),
    Retired(KeyId, Vec<(SecretDoc, Option<Data>)>),
}

async fn write_docs_once(
    shared: &Shared,
    backend: &Arc<dyn Backend>,
    docs: Vec<(SecretDoc, Option<Data>)>,
    expected: Vec<u64>,
) -> Result<GroupAttempt, StoreError> {
    let keyring = shared.keyring.load_full();
    let b = backend.clone();
    let budget = shared.opts.template_budget;
    let barrier = shared.opts.barrier.clone();
    // Sealed off the async threads: a restore seals every secret at once.
    tokio::task::spawn_blocking(move || {
        let records = docs
            .iter()
            .map(|(doc, _)| Ok((doc.name.clone(), seal(&keyring, doc)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let result = match before_commit(barrier.as_deref()) {
            Ok(()) => b.write_group_expecting(&records, &expected),
            Err(why) => Err(GroupError { stored: Vec::new(), error: StoreError::Barrier(why) }),
        };
        if let Err(GroupError { error: StoreError::KeyRetired { sealing, .. }, stored }) = &result {
            if stored.is_empty() {
                return Ok(GroupAttempt::Retired(*sealing, docs));
            }
        }
        // Changed by another Safe: this one takes up the newer record, so a retry applies to it.
        let newer = match &result {
            Err(GroupError { error: StoreError::Changed(name), .. }) => records
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(n, _)| read_back(b.as_ref(), &keyring, &budget, std::slice::from_ref(n)))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let stored: Vec<bool> = match &result {
            Ok(()) => vec![true; records.len()],
            Err(e) => records.iter().map(|(n, _)| e.stored.contains(n)).collect(),
        };
        let entries: Vec<Option<Arc<Entry>>> = docs
            .into_iter()
            .zip(stored)
            .map(|((doc, data), ok)| ok.then(|| Arc::new(Entry::new(doc, data, &budget))))
            .collect();
        Ok::<_, StoreError>(GroupAttempt::Done(result, entries, newer))
    })
    .await
    .map_err(|_| StoreError::Io { name: String::new(), source: io::Error::other("writer thread failed") })?
}

/// Seals `docs` and writes them with [`Backend::write_group`], then makes the
/// stored ones visible. Records stored despite a failure (a rename failed
/// midway) are made visible too, and the error names them.
async fn write_docs(
    shared: &Shared,
    backend: &Arc<dyn Backend>,
    docs: Vec<(SecretDoc, Option<Data>)>,
    expected: Vec<u64>,
) -> Result<Vec<Arc<Entry>>, StoreError> {
    let order: Vec<SecretName> = docs.iter().map(|(d, _)| d.name.clone()).collect();
    let mut docs = docs;
    let mut followed = false;
    let (result, entries, newer) = loop {
        match write_docs_once(shared, backend, docs, expected.clone()).await? {
            GroupAttempt::Done(result, entries, newer) => break (result, entries, newer),
            // Another Safe rotated the root key: follow it once and seal again.
            GroupAttempt::Retired(sealing, back) => {
                if followed || !crate::sealing::follow(shared, sealing).await {
                    let name = order.first().map(ToString::to_string).unwrap_or_default();
                    tracing::error!(secret = %name, "group write refused: sealed under a root key the other Safes retired");
                    return Err(StoreError::KeyRetired { name, sealing });
                }
                followed = true;
                docs = back;
            }
        }
    };
    note_availability(shared, std::iter::once(result.as_ref().map(|_| ()).map_err(|e| &e.error)));
    take_up_and_wake(shared, newer);
    let visible: Vec<Arc<Entry>> = entries.iter().flatten().cloned().collect();
    if !visible.is_empty() {
        let mut map = shared.map.write().unwrap_or_else(|e| e.into_inner());
        for entry in &visible {
            if entry.transform_error().is_some() {
                shared.transform_failures.fetch_add(1, Ordering::Relaxed);
            }
            map.insert(entry.clone());
        }
        drop(map);
        shared.seq.send_modify(|n| *n += 1);
        shared.watched.changed(visible.iter().map(|e| &e.doc.name));
    }
    match result {
        Ok(()) => Ok(visible),
        Err(e) if e.stored.is_empty() => {
            tracing::error!(error = %e.error, "group write failed; nothing was stored");
            Err(e.error)
        }
        Err(e) => {
            let not_stored: Vec<String> =
                order.iter().filter(|n| !e.stored.contains(n)).map(ToString::to_string).collect();
            let source = match &e.error {
                StoreError::Io { source, .. } => copy_io(source),
                other => io::Error::other(other.to_string()),
            };
            let stored = e.stored.iter().map(ToString::to_string).collect();
            let err = StoreError::PartlyStored { stored, not_stored, source };
            tracing::error!(error = %err, "group write failed midway");
            Err(err)
        }
    }
}

/// Writes whole secrets from a backup in one all-or-nothing commit. Into a
/// store that holds secrets only with `replace`: each secret of the backup
/// then replaces the one of its name (at a revision above it, so watchers see
/// the change), and the others are kept.
async fn restore(
    shared: &Shared,
    backend: &Arc<dyn Backend>,
    mut docs: Vec<SecretDoc>,
    replace: bool,
) -> Result<crate::Restored, StoreError> {
    let held = shared.map.read().unwrap_or_else(|e| e.into_inner()).len();
    if held > 0 && !replace {
        return Err(StoreError::NotEmpty { secrets: held });
    }
    let mut replaced = 0;
    let mut expected = Vec::with_capacity(docs.len());
    for doc in &mut docs {
        doc.seq = shared.next_change();
        match shared.get(&doc.name) {
            Some(old) => {
                replaced += 1;
                doc.revision = doc.revision.max(old.doc.revision + 1);
                expected.push(old.doc.revision);
            }
            None => expected.push(0),
        }
    }
    let secrets = docs.len();
    let docs = docs.into_iter().map(|d| (d, None)).collect();
    write_docs(shared, backend, docs, expected).await?;
    Ok(crate::Restored { secrets, replaced, kept: held - replaced })
}

type Outcome = HashMap<SecretName, Result<Arc<Entry>, StoreError>>;

/// Changes to write, by name, with the views computed before the write.
type Work = HashMap<SecretName, (SecretDoc, Option<Data>)>;

/// Seals and writes `work`. Records refused because another Safe rotated the
/// root key meanwhile are sealed again under the new key and written once more.
async fn persist(
    shared: &Shared,
    backend: &Arc<dyn Backend>,
    work: Work,
    bases: &HashMap<SecretName, u64>,
) -> (Outcome, Vec<Entry>) {
    let (mut outcome, mut newer, retired) = persist_once(shared, backend, work, bases).await;
    if let Some((sealing, again)) = retired {
        if crate::sealing::follow(shared, sealing).await {
            let (o, n, still) = persist_once(shared, backend, again, bases).await;
            outcome.extend(o);
            newer.extend(n);
            refuse_retired(&mut outcome, still);
        } else {
            refuse_retired(&mut outcome, Some((sealing, again)));
        }
    }
    (outcome, newer)
}

/// Answers the changes refused under a retired key with [`StoreError::KeyRetired`].
fn refuse_retired(outcome: &mut Outcome, retired: Option<(KeyId, Work)>) {
    let Some((sealing, work)) = retired else { return };
    for (name, _) in work {
        tracing::error!(secret = %name, "write refused: sealed under a root key the other Safes retired");
        outcome.insert(name.clone(), Err(StoreError::KeyRetired { name: name.to_string(), sealing }));
    }
}

/// One attempt of [`persist`]: what was written or failed, the newer records
/// read back, and the changes refused under a retired key with the key to seal under instead.
async fn persist_once(
    shared: &Shared,
    backend: &Arc<dyn Backend>,
    work: Work,
    bases: &HashMap<SecretName, u64>,
) -> (Outcome, Vec<Entry>, Option<(KeyId, Work)>) {
    let keyring = shared.keyring.load_full();
    let mut outcome = HashMap::new();
    let mut docs = Vec::new();
    let mut records = Vec::new();
    let mut expected = Vec::new();
    for (name, (doc, data)) in work {
        match seal(&keyring, &doc) {
            Ok(bytes) => {
                expected.push(bases.get(&name).copied().unwrap_or(0));
                records.push((name.clone(), bytes));
                docs.push((name, doc, data));
            }
            Err(e) => {
                outcome.insert(name, Err(e));
            }
        }
    }
    let b = backend.clone();
    let budget = shared.opts.template_budget;
    // The views not computed before the write (rollback, undelete) are
    // rendered here, off the async threads and within the budget.
    let names: Vec<SecretName> = docs.iter().map(|(n, _, _)| n.clone()).collect();
    let barrier = shared.opts.barrier.clone();
    let (written, newer, retired) = tokio::task::spawn_blocking(move || {
        let results = match before_commit(barrier.as_deref()) {
            Ok(()) => b.write_batch_expecting(&records, &expected),
            Err(why) => records.iter().map(|_| Err(StoreError::Barrier(why.clone()))).collect(),
        };
        // Changed by another Safe: this one takes up the newer records, so a retry applies to them.
        let changed: Vec<SecretName> = records
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Err(StoreError::Changed(_))))
            .map(|((n, _), _)| n.clone())
            .collect();
        let newer = read_back(b.as_ref(), &keyring, &budget, &changed);
        let mut retired: Option<(KeyId, Work)> = None;
        let mut written = Vec::with_capacity(docs.len());
        for ((name, doc, data), r) in docs.into_iter().zip(results) {
            match r {
                Err(StoreError::KeyRetired { sealing, .. }) => {
                    retired.get_or_insert_with(|| (sealing, HashMap::new())).1.insert(name, (doc, data));
                }
                r => written.push((name, r.map(|()| Entry::new(doc, data, &budget)))),
            }
        }
        (written, newer, retired)
    })
    .await
    .unwrap_or_else(|_| {
        let failed = || StoreError::Io { name: String::new(), source: io::Error::other("writer thread failed") };
        (names.into_iter().map(|n| (n, Err(failed()))).collect(), Vec::new(), None)
    });
    for (name, r) in written {
        match &r {
            Ok(entry) if entry.transform_error().is_some() => {
                shared.transform_failures.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(secret = %name, error = %e, "write failed; previous version kept"),
        }
        outcome.insert(name, r.map(Arc::new));
    }
    (outcome, newer, retired)
}

/// Makes what must precede a commit durable; a failure refuses the commit.
fn before_commit(barrier: Option<&dyn CommitBarrier>) -> Result<(), String> {
    let r = barrier.map_or(Ok(()), CommitBarrier::before_commit);
    if let Err(why) = &r {
        tracing::error!(error = %why, "a commit was refused: what must precede it could not be made durable");
    }
    r
}

async fn rotate(shared: &Shared, backend: &Arc<dyn Backend>, keyring: Keyring) -> Result<usize, StoreError> {
    let keyring = match backend.shared() {
        Some(_) => fence(shared, backend, keyring).await?,
        None => keyring,
    };
    let docs: Vec<SecretDoc> =
        shared.map.read().unwrap_or_else(|e| e.into_inner()).values().map(|e| e.doc.clone()).collect();
    let total = docs.len();
    let barrier = shared.opts.barrier.clone();
    tokio::task::spawn_blocking(move || before_commit(barrier.as_deref()))
        .await
        .map_err(|_| StoreError::Io { name: String::new(), source: io::Error::other("writer thread failed") })?
        .map_err(StoreError::Barrier)?;
    for chunk in docs.chunks(1024) {
        let records =
            chunk.iter().map(|d| Ok((d.name.clone(), seal(&keyring, d)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let b = backend.clone();
        let expected: Vec<u64> = chunk.iter().map(|d| d.revision).collect();
        let results = tokio::task::spawn_blocking(move || b.write_batch_expecting(&records, &expected))
            .await
            .map_err(|_| StoreError::Io { name: String::new(), source: io::Error::other("writer thread failed") })?;
        // Changed by another Safe after the fence: written under the new key already.
        if let Some(e) = results.into_iter().filter_map(Result::err).find(|e| !matches!(e, StoreError::Changed(_))) {
            return Err(e);
        }
    }
    shared.set_keyring(keyring);
    // No record sealed with the retired key stays in a journal.
    flush(backend).await;
    tracing::info!(records = total, "root key rotated; every record re-sealed");
    Ok(total)
}

/// The start of a rotation on a shared backend: from now on the backend
/// refuses records sealed under any key but the new one, and this Safe holds
/// every record committed before that (so it re-seals them all). Returns the
/// keyring to re-seal with: the new key, the old ones still opening records.
async fn fence(shared: &Shared, backend: &Arc<dyn Backend>, keyring: Keyring) -> Result<Keyring, StoreError> {
    let (b, id) = (backend.clone(), keyring.current().id());
    tokio::task::spawn_blocking(move || match b.shared() {
        Some(log) => log.seal_under(id, crate::SealUnder::Replace).map(|_| ()),
        None => Ok(()),
    })
    .await
    .map_err(|_| StoreError::Io { name: String::new(), source: io::Error::other("writer thread failed") })??;
    let ring = shared.keyring.load_full().all().fold(keyring, |r, k| r.with_older(k.clone()));
    shared.set_keyring(ring.clone());
    if !catch_up(shared, backend).await {
        return Err(StoreError::Unavailable {
            what: backend.describe(),
            why: "could not read the other Safes' changes before re-sealing; the rotation is finished at the next \
                  start or rotation"
                .to_owned(),
        });
    }
    Ok(ring)
}

/// What a load gives: the entries, the report, and for a shared backend the
/// change number it read up to and the key its Safes seal under.
type Loaded = (Entries, LoadReport, u64, Option<KeyId>);

/// Loads and opens every record, in parallel; failures are quarantined and reported.
pub(crate) async fn load(backend: Arc<dyn Backend>, keyring: Keyring, budget: Budget) -> Result<Loaded, StoreError> {
    tokio::task::spawn_blocking(move || load_blocking(backend.as_ref(), &keyring, &budget))
        .await
        .map_err(|_| StoreError::Io { name: String::new(), source: io::Error::other("loader thread failed") })?
}

/// Opens one record at start-up: the bytes the backend gave, or read into
/// `buf`, the loader thread's one buffer (decrypted in place, then wiped).
fn open_record(
    backend: &dyn Backend,
    keyring: &Keyring,
    name: SecretName,
    read: Option<Vec<u8>>,
    budget: &Budget,
    buf: &mut Vec<u8>,
) -> Opened {
    let opened = match read {
        Some(mut bytes) => record::open_in(keyring, name.as_str(), &mut bytes),
        None => match backend.read_into(&name, buf) {
            Ok(()) => record::open_in(keyring, name.as_str(), buf),
            Err(e) => Err(OpenError::Bad(e.to_string())),
        },
    };
    let mut doc = match opened {
        Ok(doc) => doc,
        Err(e) => return Err((name, e)),
    };
    // The name the document holds is the one listed (`open` checked that they
    // are the same): the listed copy is kept and the other freed at once, so
    // that every secret in memory carries its name once.
    doc.name = name;
    // A template over the budget makes this one secret an error, never a
    // failed (or stalled) start-up.
    Ok(Entry::new(doc, None, budget))
}

/// The error for a loader thread that died (a bug): names the records it held.
fn loader_failed((first, last, count): (String, String, usize)) -> StoreError {
    StoreError::Io {
        name: first.clone(),
        source: io::Error::other(format!(
            "a loader thread failed while opening {count} records ('{first}' to '{last}'); nothing was loaded, \
             see the log above for the cause"
        )),
    }
}

/// Reads, opens and parses records on all cores, one at a time per thread, so
/// the sealed bytes of 100,000 records are never all in memory at once. A
/// shared backend (a database) gives the records page by page from its change
/// log instead, and the change number the store then catches up from.
fn load_blocking(backend: &dyn Backend, keyring: &Keyring, budget: &Budget) -> Result<Loaded, StoreError> {
    let mut loading = Loading::default();
    let (last, sealing) = match backend.shared() {
        Some(log) => {
            let mut after = 0;
            loop {
                let page = log.changes_since(after, PAGE)?;
                let read = page.records.len();
                let (names, bytes): (Vec<SecretName>, Vec<Option<Vec<u8>>>) =
                    page.records.into_iter().map(|(n, b)| (n, Some(b))).unzip();
                loading.take(open_parallel(backend, keyring, budget, names, bytes)?)?;
                after = page.last;
                if read < PAGE {
                    break (after, page.sealing_key);
                }
            }
        }
        None => {
            let Listing { names, unnamed } = backend.list()?;
            let bytes = vec![None; names.len()];
            loading.take(open_parallel(backend, keyring, budget, names, bytes)?)?;
            for Unnamed { locator, reason } in unnamed {
                tracing::error!(entry = %locator, %reason, "stored entry cannot be named; left in place");
                loading.unnamed.push(Quarantined { name: locator, reason });
            }
            (0, None)
        }
    };
    let (map, report) = loading.finish(backend);
    Ok((map, report, last, sealing))
}

/// What a load has opened so far. The records that cannot be opened are set
/// aside only at the end, once every record was read: a wrong root key must
/// stop the load before anything is quarantined, and a record damaged in one
/// page of a shared backend may have been replaced in a later one.
#[derive(Default)]
struct Loading {
    map: Entries,
    bad: HashMap<SecretName, String>,
    unnamed: Vec<Quarantined>,
}

impl Loading {
    fn take(&mut self, opened: Vec<Opened>) -> Result<(), StoreError> {
        if let Some(pos) = opened.iter().position(|r| matches!(r, Err((_, OpenError::UnknownKey(_))))) {
            if let Some(Err((_, OpenError::UnknownKey(e)))) = opened.into_iter().nth(pos) {
                return Err(e);
            }
            return Err(StoreError::Closed);
        }
        for r in opened {
            match r {
                Ok(entry) => {
                    self.bad.remove(&entry.doc.name);
                    self.map.insert(Arc::new(entry));
                }
                Err((name, OpenError::Bad(reason))) => {
                    self.map.remove(&name);
                    self.bad.insert(name, reason);
                }
                Err((_, OpenError::UnknownKey(_))) => {}
            }
        }
        Ok(())
    }

    /// The entries and the report; sets aside what could not be opened.
    fn finish(self, backend: &dyn Backend) -> (Entries, LoadReport) {
        let mut report = LoadReport::default();
        for entry in self.map.values() {
            if let Some(why) = entry.doc.name.current_rule_violation() {
                tracing::warn!(
                    secret = %entry.doc.name,
                    reason = %why,
                    "stored secret name breaks the current name rule: it is loaded and can still be read and deleted, \
                     but takes no new value; copy it to an allowed name and delete this one"
                );
                report.legacy_names.push(entry.doc.name.to_string());
            }
            if entry.transform_error().is_some() {
                report.transform_failures += 1;
            }
        }
        report.legacy_names.sort();
        let mut bad: Vec<(SecretName, String)> = self.bad.into_iter().collect();
        bad.sort();
        for (name, reason) in bad {
            match backend.set_aside(&name, &reason) {
                Ok(aside) => tracing::error!(
                    secret = %name, %reason, kept_at = %aside.kept_at,
                    "record cannot be opened; moved to quarantine"
                ),
                Err(e) => tracing::error!(
                    secret = %name, %reason, error = %e,
                    "record cannot be opened, and could not be set aside"
                ),
            }
            report.quarantined.push(Quarantined { name: name.to_string(), reason });
        }
        report.quarantined.extend(self.unnamed);
        report.loaded = self.map.len();
        (self.map, report)
    }
}

/// A record read at start-up: its entry, or its name and why it cannot be opened.
type Opened = Result<Entry, (SecretName, OpenError)>;

/// Opens `names` (with their bytes when the backend gave them already) on all
/// cores. The names are moved into the entries, not copied.
fn open_parallel(
    backend: &dyn Backend,
    keyring: &Keyring,
    budget: &Budget,
    names: Vec<SecretName>,
    bytes: Vec<Option<Vec<u8>>>,
) -> Result<Vec<Opened>, StoreError> {
    let total = names.len();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
    let chunk = total.div_ceil(threads).max(1);
    let mut records = names.into_iter().zip(bytes);
    let parts = std::iter::from_fn(|| Some(records.by_ref().take(chunk).collect::<Vec<_>>()).filter(|p| !p.is_empty()));
    std::thread::scope(|s| {
        let hs: Vec<_> = parts
            .map(|part| {
                let span = match (part.first(), part.last()) {
                    (Some((first, _)), Some((last, _))) => (first.to_string(), last.to_string(), part.len()),
                    _ => (String::new(), String::new(), 0),
                };
                let h = s.spawn(move || {
                    // One read buffer per thread: records do not each leave a
                    // freed buffer of their size between the secrets kept.
                    let mut buf = zeroize::Zeroizing::new(Vec::new());
                    part.into_iter()
                        .map(|(n, b)| open_record(backend, keyring, n, b, budget, &mut buf))
                        .collect::<Vec<_>>()
                });
                (span, h)
            })
            .collect();
        let mut all = Vec::with_capacity(total);
        for (span, h) in hs {
            // A lost chunk would make its secrets vanish unreported: stop instead.
            all.extend(h.join().map_err(|_| loader_failed(span))?);
        }
        Ok::<_, StoreError>(all)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::backend::{GroupError, SealedRecord, SetAside};
    use crate::entry::Stamps;
    use aegis_core::secret::{SecretMeta, SecretValue};
    use aegis_crypto::RootKey;
    use time::macros::datetime;

    fn put(stamps: Option<Stamps>) -> Mutation {
        let meta = SecretMeta::defaults(OffsetDateTime::now_utc());
        Mutation::Put { value: SecretValue::new("v"), meta, cas: None, view: None, stamps }
    }

    #[test]
    fn import_stamps_set_the_times_of_a_new_secret() {
        let name = SecretName::parse("billing").unwrap();
        let s = Stamps { created: datetime!(2024-01-01 0:00 UTC), updated: datetime!(2024-02-01 0:00 UTC) };
        let (doc, _) = apply_one(None, &name, put(Some(s)), 10).unwrap();
        assert_eq!((doc.created, doc.updated), (s.created, s.updated));
        assert_eq!(doc.version(1).unwrap().created, s.updated);
    }

    #[test]
    fn import_stamps_keep_the_creation_time_of_an_existing_secret() {
        let name = SecretName::parse("billing").unwrap();
        let (doc, _) = apply_one(None, &name, put(None), 10).unwrap();
        let created = doc.created;
        let s = Stamps { created: datetime!(2024-01-01 0:00 UTC), updated: datetime!(2024-02-01 0:00 UTC) };
        let (doc, _) = apply_one(Some(doc), &name, put(Some(s)), 10).unwrap();
        assert_eq!((doc.created, doc.updated, doc.current), (created, s.updated, 2));
    }

    /// A backend whose `read` panics for one record, as a bug in a backend might.
    struct PanicsOn(&'static str);

    impl Backend for PanicsOn {
        fn list(&self) -> Result<Listing, StoreError> {
            let names = (0..8).map(|i| SecretName::parse(&format!("s{i}")).unwrap()).collect();
            Ok(Listing { names, unnamed: Vec::new() })
        }
        fn read(&self, name: &SecretName) -> Result<Vec<u8>, StoreError> {
            if name.as_str() == self.0 {
                panic!("test backend: reading {name} fails");
            }
            Err(StoreError::NotFound(name.to_string()))
        }
        fn write_batch(&self, records: &[SealedRecord]) -> Vec<Result<(), StoreError>> {
            records.iter().map(|_| Ok(())).collect()
        }
        fn write_group(&self, _: &[SealedRecord]) -> Result<(), GroupError> {
            Ok(())
        }
        fn set_aside(&self, _: &SecretName, _: &str) -> Result<SetAside, StoreError> {
            Ok(SetAside { kept_at: String::new() })
        }
        fn describe(&self) -> String {
            "panicking test backend".to_owned()
        }
    }

    /// A backend that counts its commits, each taking a few milliseconds as an fsync would.
    #[derive(Default)]
    struct Counting {
        batches: std::sync::atomic::AtomicUsize,
        groups: std::sync::atomic::AtomicUsize,
    }

    impl Backend for Counting {
        fn list(&self) -> Result<Listing, StoreError> {
            Ok(Listing::default())
        }
        fn read(&self, name: &SecretName) -> Result<Vec<u8>, StoreError> {
            Err(StoreError::NotFound(name.to_string()))
        }
        fn write_batch(&self, records: &[SealedRecord]) -> Vec<Result<(), StoreError>> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            records.iter().map(|_| Ok(())).collect()
        }
        fn write_group(&self, _: &[SealedRecord]) -> Result<(), GroupError> {
            self.groups.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok(())
        }
        fn set_aside(&self, _: &SecretName, _: &str) -> Result<SetAside, StoreError> {
            Ok(SetAside { kept_at: String::new() })
        }
        fn describe(&self) -> String {
            "counting test backend".to_owned()
        }
    }

    /// VSecM's upsert of one workload is a group of one change: it must share a
    /// commit with other writers' changes, not take a commit (two fsyncs) of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_of_one_change_share_commits_with_other_writers() {
        let backend = Arc::new(Counting::default());
        let keyring = Keyring::new(Arc::new(RootKey::generate()));
        let (store, _) = crate::Store::open(backend.clone(), keyring, crate::StoreOptions::default()).await.unwrap();
        let store = Arc::new(store);
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let name = SecretName::parse(&format!("w{i}")).unwrap();
                    store.apply_group(vec![(name, put(None))]).await.unwrap().len()
                })
            })
            .collect();
        for w in writers {
            assert_eq!(w.await.unwrap(), 1);
        }
        assert_eq!(store.len(), 64);
        let (batches, groups) = (backend.batches.load(Ordering::SeqCst), backend.groups.load(Ordering::SeqCst));
        assert_eq!(groups, 0, "a group of one change took a commit of its own");
        assert!(batches < 32, "64 concurrent writes took {batches} commits");
        // A group of several changes is still one all-or-nothing commit.
        let two = ["a", "b"].map(|n| (SecretName::parse(n).unwrap(), put(None)));
        assert_eq!(store.apply_group(two.into()).await.unwrap().len(), 2);
        assert_eq!(backend.groups.load(Ordering::SeqCst), 1);
    }

    /// A commit barrier that records when it ran against the backend's commits, and fails when told to.
    #[derive(Debug)]
    struct Barrier {
        backend: Arc<Counting>,
        /// Commits the backend had made each time the barrier ran.
        seen: std::sync::Mutex<Vec<usize>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl std::fmt::Debug for Counting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Counting")
        }
    }

    impl crate::CommitBarrier for Barrier {
        fn before_commit(&self) -> Result<(), String> {
            let commits = self.backend.batches.load(Ordering::SeqCst) + self.backend.groups.load(Ordering::SeqCst);
            self.seen.lock().unwrap().push(commits);
            if self.fail.load(Ordering::SeqCst) {
                return Err("the audit file cannot be written: disk full".to_owned());
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_barrier_runs_before_every_commit_and_its_failure_changes_nothing() {
        let backend = Arc::new(Counting::default());
        let barrier = Arc::new(Barrier {
            backend: backend.clone(),
            seen: std::sync::Mutex::default(),
            fail: std::sync::atomic::AtomicBool::new(false),
        });
        let opts = crate::StoreOptions { barrier: Some(barrier.clone()), ..crate::StoreOptions::default() };
        let keyring = Keyring::new(Arc::new(RootKey::generate()));
        let (store, _) = crate::Store::open(backend.clone(), keyring.clone(), opts).await.unwrap();
        let name = |n: &str| SecretName::parse(n).unwrap();
        store.apply(name("a"), put(None)).await.unwrap();
        store.apply_group(vec![(name("b"), put(None)), (name("c"), put(None))]).await.unwrap();
        store.rotate(Keyring::new(Arc::new(RootKey::generate()))).await.unwrap();
        // Each ran before its commit: none had been made before the first, one before the second, two before the rotation.
        assert_eq!(*barrier.seen.lock().unwrap(), [0, 1, 2]);

        barrier.fail.store(true, Ordering::SeqCst);
        let commits = backend.batches.load(Ordering::SeqCst) + backend.groups.load(Ordering::SeqCst);
        let e = store.apply(name("d"), put(None)).await.unwrap_err();
        assert!(matches!(&e, StoreError::Barrier(w) if w.contains("disk full")), "{e}");
        assert!(e.to_string().contains("nothing was changed"), "{e}");
        let e = store.apply_group(vec![(name("e"), put(None)), (name("f"), put(None))]).await.unwrap_err();
        assert!(matches!(e, StoreError::Barrier(_)), "{e}");
        let e = store.apply(name("a"), Mutation::Delete).await.unwrap_err();
        assert!(matches!(e, StoreError::Barrier(_)), "{e}");
        assert_eq!(backend.batches.load(Ordering::SeqCst) + backend.groups.load(Ordering::SeqCst), commits);
        assert!(store.get(&name("d")).is_none() && store.get(&name("e")).is_none());
        assert!(store.get(&name("a")).is_some_and(|e| e.doc.live().is_some()), "a refused delete changed nothing");
    }

    #[test]
    fn a_failed_loader_thread_fails_the_load_and_names_its_records() {
        let keyring = Keyring::new(Arc::new(RootKey::generate()));
        let err = load_blocking(&PanicsOn("s7"), &keyring, &Budget::default()).err().unwrap();
        let shown = err.to_string();
        assert!(shown.contains("loader thread failed") && shown.contains("'s7'"), "{shown}");
    }
}
