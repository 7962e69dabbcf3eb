//! In-memory [`StateStore`] for unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use super::{Batch, Entry, StateError, StateStore};

type KeySpace = BTreeMap<Vec<u8>, Vec<u8>>;

pub struct MemoryStore {
    stores: RwLock<HashMap<String, KeySpace>>,
}

impl MemoryStore {
    pub fn new(stores: &[&str]) -> Self {
        Self {
            stores: RwLock::new(
                stores
                    .iter()
                    .map(|s| (s.to_string(), KeySpace::new()))
                    .collect(),
            ),
        }
    }
}

impl StateStore for MemoryStore {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        let space = stores
            .get(store)
            .ok_or_else(|| StateError::UnknownStore(store.into()))?;
        Ok(space.get(key).cloned())
    }

    fn write(&self, batch: Batch) -> Result<(), StateError> {
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        if let Some((name, _, _)) = batch.ops.iter().find(|(s, _, _)| !stores.contains_key(s)) {
            return Err(StateError::UnknownStore(name.clone()));
        }
        for (store, key, value) in batch.ops {
            let space = stores
                .get_mut(&store)
                .ok_or_else(|| StateError::UnknownStore(store.clone()))?;
            match value {
                Some(v) => space.insert(key, v),
                None => space.remove(&key),
            };
        }
        Ok(())
    }

    fn scan_prefix(&self, store: &str, prefix: &[u8]) -> Result<Vec<Entry>, StateError> {
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        let space = stores
            .get(store)
            .ok_or_else(|| StateError::UnknownStore(store.into()))?;
        Ok(space
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_range(
        &self,
        store: &str,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StateError> {
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        let space = stores
            .get(store)
            .ok_or_else(|| StateError::UnknownStore(store.into()))?;
        Ok(space
            .range(start.to_vec()..end.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
