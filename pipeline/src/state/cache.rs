//! A cache of state records in front of RocksDB, shared by every database of a process
//! and bounded in bytes (`state.record_cache_size`), in the spirit of Kafka Streams'
//! record caches: a processor reads the same few keys again and again (a member's
//! policies, a provider's statistics), and a hit costs a hash lookup where RocksDB
//! searches its memtables' skip lists and then its files.
//!
//! Invariant: a cached value is the value its database holds for the key. [`RocksStore`]
//! keeps it so:
//! - a write applies its batch to RocksDB, then to the cache (a put replaces the value
//!   of a key the cache holds, a delete drops the key), while holding the database's
//!   write lock, so concurrent writes reach the cache in the order RocksDB applied them;
//! - a read that misses fills the cache only if no write went through the cache since
//!   the read began (the write sequence it saw before reading RocksDB is unchanged), so
//!   a read racing a write cannot put back the value the write replaced.
//!
//! Only reads fill the cache: a key written but never read (a claim analysed once) does
//! not push out the keys read all the time, and absent keys are not cached (most are
//! keys read once, before their first write). Caching every write as well measured no
//! faster on `cargo bench --bench analysis`: the copies cost what the extra hits saved.
//! Entries are keyed by database as well, and every database opened gets a new id, so
//! a database reopened (or rebuilt by `strata replay`) never sees another's entries.
//!
//! [`RocksStore`]: super::RocksStore

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use super::with_joined_key;

/// Bytes an entry is charged beyond its key and value: the cache's own bookkeeping and
/// the two allocations.
const ENTRY_OVERHEAD: u64 = 64;

/// The typical entry the cache sizes its table for.
const TYPICAL_ENTRY_BYTES: u64 = 256;

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<Vec<u8>, Vec<u8>> for ByteWeighter {
    fn weight(&self, key: &Vec<u8>, value: &Vec<u8>) -> u64 {
        key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
    }
}

/// A cache key, in parts: the database, the store and the key. Store names hold no 0
/// byte, so the name's end is unambiguous.
fn key_parts<'a>(database: &'a [u8; 4], store: &'a str, key: &'a [u8]) -> [&'a [u8]; 4] {
    [database, store.as_bytes(), &[0], key]
}

/// The records of every database opened with one [`super::StateMemory`].
#[derive(Clone)]
pub(super) struct RecordCache {
    entries: Arc<Cache<Vec<u8>, Vec<u8>, ByteWeighter>>,
}

impl RecordCache {
    /// A cache holding up to `bytes` of records, or `None` for no cache.
    pub(super) fn new(bytes: usize) -> Option<Self> {
        let bytes = bytes as u64;
        (bytes > 0).then(|| Self {
            entries: Arc::new(Cache::with_weighter(
                (bytes / TYPICAL_ENTRY_BYTES).max(16) as usize,
                bytes,
                ByteWeighter,
            )),
        })
    }

    /// A new database's id: its entries' key prefix.
    pub(super) fn database_id() -> u32 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// The cache key of `key` in `store` of database `database`.
    fn key(database: u32, store: &str, key: &[u8]) -> Vec<u8> {
        key_parts(&database.to_be_bytes(), store, key).concat()
    }

    /// The value cached for `key` in `store` of database `database`.
    pub(super) fn get(&self, database: u32, store: &str, key: &[u8]) -> Option<Vec<u8>> {
        with_joined_key(
            &key_parts(&database.to_be_bytes(), store, key),
            |cache_key| self.entries.get(cache_key),
        )
    }

    pub(super) fn insert(&self, database: u32, store: &str, key: &[u8], value: Vec<u8>) {
        self.entries.insert(Self::key(database, store, key), value);
    }

    /// Replaces the value cached for `key` in `store` of database `database`; does nothing
    /// if none is (most keys written are never read, so the cache key is built only for a
    /// key the cache holds).
    pub(super) fn update(&self, database: u32, store: &str, key: &[u8], value: Vec<u8>) {
        let database = database.to_be_bytes();
        let parts = key_parts(&database, store, key);
        if with_joined_key(&parts, |cache_key| self.entries.contains_key(cache_key)) {
            let _absent = self.entries.replace(parts.concat(), value, true);
        }
    }

    pub(super) fn remove(&self, database: u32, store: &str, key: &[u8]) {
        with_joined_key(
            &key_parts(&database.to_be_bytes(), store, key),
            |cache_key| self.entries.remove(cache_key),
        );
    }

    /// Bytes of records held now.
    pub(super) fn usage(&self) -> u64 {
        self.entries.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_databases_and_stores_differ() {
        let a = RecordCache::key(1, "claims", b"\x01");
        assert_ne!(a, RecordCache::key(2, "claims", b"\x01"));
        assert_ne!(a, RecordCache::key(1, "claim", b"s\x01"));
        assert_eq!(a, RecordCache::key(1, "claims", b"\x01"));
    }

    #[test]
    fn the_cache_holds_no_more_than_its_budget() {
        let cache = RecordCache::new(64 << 10).unwrap();
        for i in 0u32..10_000 {
            cache.insert(0, "s", &i.to_be_bytes(), vec![0; 100]);
        }
        assert!(cache.usage() <= 64 << 10, "{} bytes held", cache.usage());
        assert!(RecordCache::new(0).is_none());
    }
}
