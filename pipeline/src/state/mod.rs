//! State stores of stateful processors.
//!
//! Contract of [`StateStore`]:
//! - A store is a named key space (a RocksDB column family); keys and values are bytes.
//! - [`StateStore::write`] applies a whole [`Batch`] atomically: after a crash either every
//!   change of the batch is there or none is. Processors put the input offsets they
//!   consumed into the same batch, which is what makes a restart resume exactly where
//!   the state left off.
//! - Reads see every batch written before them by the same process.
//! - Calls block (RocksDB does disk I/O): async code calls them from a blocking thread.

mod cache;
mod memory;
mod record;
mod rocks;

pub use memory::MemoryStore;
pub use record::{decode_state, encode_state};
pub use rocks::{RocksStore, StateMemory};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot open the state directory {path}: {source}; is another strata process using it?"
    )]
    Open {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("unknown state store `{0}`; stores are declared when the database is opened")]
    UnknownStore(String),
    #[error("state store I/O failed: {0}")]
    Io(#[source] rocksdb::Error),
    #[error(
        "state record {key} of store `{store}` cannot be read ({reason}); it was written in \
         a format this version of strata does not read: rebuild the state with `strata replay`"
    )]
    Unreadable {
        store: String,
        /// The key, hex.
        key: String,
        reason: String,
    },
}

/// Calls `f` with `parts` joined into one key, built on the stack when it is short (as
/// keys of lookups are), so a read allocates nothing for its key.
pub(crate) fn with_joined_key<R>(parts: &[&[u8]], f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 64;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > STACK {
        return f(&parts.concat());
    }
    let mut buf = [0u8; STACK];
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    f(&buf[..len])
}

/// A key and its value, as scans return them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Changes to apply together.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// (store, key, value); `None` deletes the key.
    pub ops: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, store: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops
            .push((store.to_string(), key.into(), Some(value.into())));
    }
    pub fn delete(&mut self, store: &str, key: impl Into<Vec<u8>>) {
        self.ops.push((store.to_string(), key.into(), None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

pub trait StateStore: Send + Sync {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Applies `batch` atomically.
    fn write(&self, batch: Batch) -> Result<(), StateError>;
    /// Every (key, value) of `store` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, store: &str, prefix: &[u8]) -> Result<Vec<Entry>, StateError>;
    /// At most `limit` (key, value) of `store` with `start <= key < end`, in key order.
    fn scan_range(
        &self,
        store: &str,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StateError>;
}

#[cfg(test)]
mod contract_tests {
    use super::*;

    /// The behaviour every implementation must share.
    fn contract(store: &dyn StateStore) {
        let mut b = Batch::default();
        b.put("counts", b"a:1".to_vec(), b"1".to_vec());
        b.put("counts", b"a:2".to_vec(), b"2".to_vec());
        b.put("counts", b"b:1".to_vec(), b"3".to_vec());
        b.put("offsets", b"topic-0".to_vec(), b"42".to_vec());
        store.write(b).unwrap();
        assert_eq!(store.get("counts", b"a:2").unwrap(), Some(b"2".to_vec()));
        assert_eq!(
            store.get("offsets", b"a:2").unwrap(),
            None,
            "stores are separate key spaces"
        );
        let a: Vec<_> = store
            .scan_prefix("counts", b"a:")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(a, vec![b"a:1".to_vec(), b"a:2".to_vec()]);
        let range: Vec<_> = store
            .scan_range("counts", b"a:2", b"b:1", 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(range, vec![b"a:2".to_vec()], "end is exclusive");
        assert_eq!(store.scan_range("counts", b"a", b"z", 2).unwrap().len(), 2);
        let mut d = Batch::default();
        d.delete("counts", b"a:1".to_vec());
        store.write(d).unwrap();
        assert_eq!(store.get("counts", b"a:1").unwrap(), None);
        assert!(matches!(
            store.get("nope", b"x"),
            Err(StateError::UnknownStore(_))
        ));
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        contract(&MemoryStore::new(&["counts", "offsets"]));
    }

    #[test]
    fn rocks_store_keeps_the_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let memory = StateMemory::new(8 << 20, 8 << 20, 64 << 20);
        {
            let store = RocksStore::open(dir.path(), &["counts", "offsets"], &memory).unwrap();
            contract(&store);
        }
        let store = RocksStore::open(dir.path(), &["counts", "offsets"], &memory).unwrap();
        assert_eq!(
            store.get("offsets", b"topic-0").unwrap(),
            Some(b"42".to_vec())
        );
    }
}
