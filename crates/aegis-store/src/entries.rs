//! The store's secrets in memory: a set of entries found by name.
//!
//! A map from name to entry would hold every name twice (the key and the
//! entry's own document) and a 32-byte slot per bucket. The set holds only the
//! entry's pointer and finds it by the name inside it: at a million secrets
//! that is about 90 bytes a secret less.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;

use aegis_core::SecretName;

use crate::entry::Entry;

/// An entry, hashed and compared by its secret's name.
#[derive(Clone)]
struct ByName(Arc<Entry>);

impl ByName {
    fn name(&self) -> &str {
        self.0.doc.name.as_str()
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for ByName {}

/// Hashes exactly as the name's `str` does, so that the set can be searched with a `&str`.
impl Hash for ByName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        self.name()
    }
}

/// The entries, at most one per name; on a replication source, also in the
/// order of their last change (change number, then name: records written
/// before change numbers existed all have 0 and are ordered by name).
#[derive(Default)]
pub(crate) struct Entries {
    set: HashSet<ByName>,
    by_change: Option<BTreeSet<(u64, SecretName)>>,
}

impl Entries {
    /// The entry of `name`.
    pub(crate) fn get(&self, name: &SecretName) -> Option<&Arc<Entry>> {
        self.set.get(name.as_str()).map(|e| &e.0)
    }

    /// Puts `entry` in, in place of the entry of the same name, if any.
    pub(crate) fn insert(&mut self, entry: Arc<Entry>) {
        let key = self.by_change.is_some().then(|| (entry.doc.seq, entry.doc.name.clone()));
        let old = self.set.replace(ByName(entry));
        if let (Some(index), Some(key)) = (self.by_change.as_mut(), key) {
            if let Some(old) = old {
                index.remove(&(old.0.doc.seq, old.0.doc.name.clone()));
            }
            index.insert(key);
        }
    }

    /// Takes the entry of `name` out.
    pub(crate) fn remove(&mut self, name: &SecretName) {
        if let (Some(old), Some(index)) = (self.set.take(name.as_str()), self.by_change.as_mut()) {
            index.remove(&(old.0.doc.seq, old.0.doc.name.clone()));
        }
    }

    /// Keeps the entries in the order of their last change from now on
    /// (about 60 bytes a secret; only a replication source needs it).
    pub(crate) fn index_changes(&mut self) {
        if self.by_change.is_none() {
            self.by_change = Some(self.set.iter().map(|e| (e.0.doc.seq, e.0.doc.name.clone())).collect());
        }
    }

    /// Up to `limit` entries changed after `(seq, name)` in change order, and
    /// whether more follow; `None` when the changes are not indexed.
    pub(crate) fn changed_after(
        &self,
        after: Bound<&(u64, SecretName)>,
        limit: usize,
    ) -> Option<(Vec<Arc<Entry>>, bool)> {
        let index = self.by_change.as_ref()?;
        let mut keys = index.range((after, Bound::Unbounded));
        let found: Vec<Arc<Entry>> =
            keys.by_ref().take(limit).filter_map(|(_, name)| self.get(name).cloned()).collect();
        Some((found, keys.next().is_some()))
    }

    /// The highest change number held.
    pub(crate) fn last_change(&self) -> u64 {
        match &self.by_change {
            Some(index) => index.last().map_or(0, |(seq, _)| *seq),
            None => self.values().map(|e| e.doc.seq).max().unwrap_or(0),
        }
    }

    /// Every entry, in no order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.set.iter().map(|e| &e.0)
    }

    /// How many secrets there are.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aegis_core::secret::SecretDoc;
    use aegis_core::transform::Budget;
    use time::OffsetDateTime;

    fn entry(name: &str, revision: u64) -> Arc<Entry> {
        let mut doc = SecretDoc::empty(SecretName::parse(name).unwrap(), OffsetDateTime::now_utc());
        doc.revision = revision;
        Arc::new(Entry::new(doc, None, &Budget::default()))
    }

    #[test]
    fn entries_are_found_replaced_and_removed_by_name() {
        let mut set = Entries::default();
        set.insert(entry("billing", 1));
        set.insert(entry("orders", 1));
        set.insert(entry("billing", 2));
        assert_eq!(set.len(), 2, "a second entry of a name replaces the first");
        let billing = SecretName::parse("billing").unwrap();
        assert_eq!(set.get(&billing).unwrap().doc.revision, 2);
        assert!(set.get(&SecretName::parse("payments").unwrap()).is_none());
        set.remove(&billing);
        assert!(set.get(&billing).is_none());
        let left: Vec<&str> = set.values().map(|e| e.doc.name.as_str()).collect();
        assert_eq!(left, ["orders"]);
    }

    #[test]
    fn the_change_index_follows_every_replacement_and_pages_in_order() {
        let with_seq = |name: &str, seq: u64| {
            let mut doc = SecretDoc::empty(SecretName::parse(name).unwrap(), OffsetDateTime::now_utc());
            doc.seq = seq;
            Arc::new(Entry::new(doc, None, &Budget::default()))
        };
        let mut set = Entries::default();
        set.insert(with_seq("old-b", 0));
        set.insert(with_seq("old-a", 0));
        set.insert(with_seq("c", 5));
        set.index_changes();
        set.insert(with_seq("d", 6));
        set.insert(with_seq("old-a", 7));
        let names = |after: (u64, &str), limit| {
            let key = (after.0, SecretName::parse_stored(after.1).unwrap());
            let (found, more) = set.changed_after(Bound::Excluded(&key), limit).unwrap();
            (found.iter().map(|e| e.doc.name.to_string()).collect::<Vec<_>>(), more)
        };
        assert_eq!(names((0, "a"), 10), (vec!["old-b".into(), "c".into(), "d".into(), "old-a".into()], false));
        assert_eq!(names((0, "old-b"), 2), (vec!["c".into(), "d".into()], true), "old-a moved to its new change");
        assert_eq!(names((7, "old-a"), 2), (vec![], false));
        assert_eq!(set.last_change(), 7);
        set.remove(&SecretName::parse("old-a").unwrap());
        assert_eq!(set.last_change(), 6);
    }
}
