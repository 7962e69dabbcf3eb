//! Uncommitted state changes: what the events since the last commit wrote, read by the
//! events after them until the commit writes it to the state store.
//!
//! Invariants:
//! - One entry per (store, key): a later change of a key replaces the earlier one, so a
//!   commit writes each key once, with its last value (`None`: deleted).
//! - Keys start with their partition ([`super::processor::partition_key`]), so a
//!   partition's changes can be dropped alone when it is revoked.
//! - Within a store, keys iterate in byte order, as the store's own keys do, so a scan can
//!   merge the two in one pass.
//!
//! Changes are kept per store, so a lookup compares key bytes only, and takes a borrowed
//! key: reading allocates nothing.

use std::collections::BTreeMap;
use std::ops::Bound::{Included, Unbounded};

/// A key's uncommitted value: `None` deletes it.
pub(crate) type Change = Option<Vec<u8>>;

#[derive(Debug, Default, Clone)]
pub(crate) struct Overlay {
    /// Sorted by store name.
    stores: Vec<(&'static str, BTreeMap<Vec<u8>, Change>)>,
}

impl Overlay {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Where `store` is in `stores`, or where it would go.
    fn index(&self, store: &str) -> Result<usize, usize> {
        self.stores.binary_search_by(|(name, _)| (*name).cmp(store))
    }

    fn changes(&self, store: &str) -> Option<&BTreeMap<Vec<u8>, Change>> {
        self.index(store).ok().map(|at| &self.stores[at].1)
    }

    fn changes_mut(&mut self, store: &'static str) -> &mut BTreeMap<Vec<u8>, Change> {
        let at = match self.index(store) {
            Ok(at) => at,
            Err(at) => {
                self.stores.insert(at, (store, BTreeMap::new()));
                at
            }
        };
        &mut self.stores[at].1
    }

    /// The uncommitted change of `key` in `store`, if there is one.
    pub(crate) fn get(&self, store: &str, key: &[u8]) -> Option<&Change> {
        self.changes(store)?.get(key)
    }

    pub(crate) fn insert(&mut self, store: &'static str, key: Vec<u8>, value: Change) {
        self.changes_mut(store).insert(key, value);
    }

    /// Takes in `later`'s changes, which replace this overlay's for the same keys.
    pub(crate) fn extend(&mut self, later: Overlay) {
        for (store, changes) in later.stores {
            let mine = self.changes_mut(store);
            if mine.is_empty() {
                *mine = changes;
            } else {
                mine.extend(changes);
            }
        }
    }

    /// Changes of `store` from `from` on, in key order.
    pub(crate) fn range_from<'a>(
        &'a self,
        store: &str,
        from: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Change)> + 'a {
        self.changes(store)
            .into_iter()
            .flat_map(move |changes| changes.range::<[u8], _>((Included(from), Unbounded)))
    }

    /// Keeps only the changes whose key `keep` accepts.
    pub(crate) fn retain_keys(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        for (_, changes) in &mut self.stores {
            changes.retain(|key, _| keep(key));
        }
    }

    /// Every change, store by store (in name order), each store's in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &Vec<u8>, &Change)> {
        self.stores.iter().flat_map(|(store, changes)| {
            changes.iter().map(move |(key, value)| (*store, key, value))
        })
    }

    pub(crate) fn into_changes(self) -> impl Iterator<Item = (&'static str, Vec<u8>, Change)> {
        self.stores.into_iter().flat_map(|(store, changes)| {
            changes
                .into_iter()
                .map(move |(key, value)| (store, key, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_change_replaces_an_earlier_one_of_the_same_key_only() {
        let mut earlier = Overlay::new();
        earlier.insert("b", b"k".to_vec(), Some(b"1".to_vec()));
        earlier.insert("a", b"k".to_vec(), Some(b"1".to_vec()));
        let mut later = Overlay::new();
        later.insert("b", b"k".to_vec(), None);
        later.insert("b", b"j".to_vec(), Some(b"2".to_vec()));
        earlier.extend(later);
        assert_eq!(earlier.get("b", b"k"), Some(&None));
        assert_eq!(earlier.get("a", b"k"), Some(&Some(b"1".to_vec())));
        assert_eq!(earlier.get("c", b"k"), None);
        let all: Vec<_> = earlier.iter().map(|(s, k, _)| (s, k.clone())).collect();
        assert_eq!(
            all,
            [
                ("a", b"k".to_vec()),
                ("b", b"j".to_vec()),
                ("b", b"k".to_vec())
            ]
        );
    }

    #[test]
    fn a_range_stays_in_its_store_and_starts_at_its_key() {
        let mut overlay = Overlay::new();
        for (store, key) in [("a", "k2"), ("b", "k1"), ("b", "k3"), ("c", "k0")] {
            overlay.insert(store, key.as_bytes().to_vec(), None);
        }
        let keys: Vec<_> = overlay
            .range_from("b", b"k2")
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(keys, [b"k3".to_vec()]);
        assert_eq!(overlay.range_from("d", b"").count(), 0);
    }
}
