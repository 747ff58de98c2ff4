//! The store's secrets in memory: a set of entries found by name.
//!
//! A map from name to entry would hold every name twice (the key and the
//! entry's own document) and a 32-byte slot per bucket. The set holds only the
//! entry's pointer and finds it by the name inside it: at a million secrets
//! that is about 90 bytes a secret less.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
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

/// The entries, at most one per name.
#[derive(Default)]
pub(crate) struct Entries(HashSet<ByName>);

impl Entries {
    /// The entry of `name`.
    pub(crate) fn get(&self, name: &SecretName) -> Option<&Arc<Entry>> {
        self.0.get(name.as_str()).map(|e| &e.0)
    }

    /// Puts `entry` in, in place of the entry of the same name, if any.
    pub(crate) fn insert(&mut self, entry: Arc<Entry>) {
        self.0.replace(ByName(entry));
    }

    /// Takes the entry of `name` out.
    pub(crate) fn remove(&mut self, name: &SecretName) {
        self.0.remove(name.as_str());
    }

    /// Every entry, in no order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.0.iter().map(|e| &e.0)
    }

    /// How many secrets there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
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
}
