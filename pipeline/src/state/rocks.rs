//! RocksDB [`StateStore`]: one column family per store, one `WriteBatch` per [`Batch`].
//!
//! Memory: every database a process opens draws on one [`StateMemory`] — one block
//! cache, one memtable budget and one record cache ([`super::cache`]) — so a
//! deployment's state memory is bounded by three topology settings however many
//! processors and stores it runs.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteBufferManager, DB,
};

use super::cache::RecordCache;
use super::{Batch, Entry, StateError, StateStore};

/// Largest memtable of one store before it is flushed; the shared budget flushes sooner.
/// Small on purpose: every read and write searches the memtable's skip list, and one of
/// 4 MiB kept claim analysis 17% faster than one of 16 MiB (`cargo bench --bench
/// analysis`), at the cost of more, smaller flushes.
const MAX_MEMTABLE_BYTES: usize = 4 << 20;

/// The RocksDB memory of one process, shared by every database it opens.
#[derive(Clone)]
pub struct StateMemory {
    cache: Cache,
    write_buffers: WriteBufferManager,
    records: Option<RecordCache>,
}

impl StateMemory {
    /// A block cache of `cache_bytes`, about `memtable_bytes` of memtables across all
    /// databases opened with it (past the budget, the database being written flushes) and
    /// a record cache of `record_cache_bytes` (none if 0).
    ///
    /// Writers never stall on the budget: with RocksDB's stalling on, writes to several
    /// databases sharing it blocked for good (seen in a soak: every processor's commit
    /// waiting in `WriteBufferManagerStallWrites`, the memory held by the others).
    pub fn new(cache_bytes: usize, memtable_bytes: usize, record_cache_bytes: usize) -> Self {
        Self {
            cache: Cache::new_lru_cache(cache_bytes),
            write_buffers: WriteBufferManager::new_write_buffer_manager(memtable_bytes, false),
            records: RecordCache::new(record_cache_bytes),
        }
    }

    /// The budget a topology's `state` section sets.
    pub fn from_settings(settings: &crate::topology::StateSettings) -> Self {
        Self::new(
            settings.cache_size.0 as usize,
            settings.memtable_size.0 as usize,
            settings.record_cache_size.0 as usize,
        )
    }

    /// Bytes of memtables held now, across every database sharing this budget.
    pub fn memtable_usage(&self) -> usize {
        self.write_buffers.get_usage()
    }

    /// Bytes of blocks held in the shared cache now.
    pub fn cache_usage(&self) -> usize {
        self.cache.get_usage()
    }

    /// Bytes of records held now in the record cache.
    pub fn record_cache_usage(&self) -> usize {
        self.records.as_ref().map_or(0, |r| r.usage() as usize)
    }
}

pub struct RocksStore {
    db: DB,
    /// This database's entries in the process's record cache, if it has one.
    records: Option<(RecordCache, u32)>,
    /// Held while a write is applied to RocksDB and then to the record cache; counts the
    /// writes applied (see [`super::cache`] for why reads compare it).
    writes: Mutex<u64>,
    /// Called by a read between RocksDB's answer and the cache fill, to test the race.
    #[cfg(test)]
    after_read: Option<fn(&RocksStore)>,
}

impl RocksStore {
    /// Opens (or creates) the database at `path` with a column family per store, drawing
    /// on `memory` for its block cache and memtables.
    pub fn open(path: &Path, stores: &[&str], memory: &StateMemory) -> Result<Self, StateError> {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&memory.cache);
        // Most reads of the processors are point lookups, many of absent keys (a claim
        // not seen before): once state outgrows the memtable, bloom filters answer those
        // without reading blocks.
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks count against the cache too, so memory stays bounded as
        // state grows; level 0's stay pinned, as every read consults them.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&table);
        cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Most point reads miss (a claim, duplicate key or day not seen before): a bloom
        // filter over the memtable answers them without searching its skip list.
        cf_options.set_memtable_whole_key_filtering(true);
        cf_options.set_memtable_prefix_bloom_ratio(0.1);
        cf_options.set_write_buffer_size(
            (memory.write_buffers.get_buffer_size() / 4).clamp(1 << 20, MAX_MEMTABLE_BYTES),
        );
        let mut db_options = Options::default();
        db_options.set_write_buffer_manager(&memory.write_buffers);
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        let families = stores
            .iter()
            .map(|s| ColumnFamilyDescriptor::new(*s, cf_options.clone()));
        let db = DB::open_cf_descriptors(&db_options, path, families).map_err(|source| {
            StateError::Open {
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok(Self {
            db,
            records: memory
                .records
                .clone()
                .map(|r| (r, RecordCache::database_id())),
            writes: Mutex::new(0),
            #[cfg(test)]
            after_read: None,
        })
    }
}

impl RocksStore {
    fn cf(&self, store: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db
            .cf_handle(store)
            .ok_or_else(|| StateError::UnknownStore(store.into()))
    }

    /// The write lock; a write that panicked leaves nothing half-done in the cache
    /// that matters (the process stops), so a poisoned lock is taken as it is.
    fn writes(&self) -> MutexGuard<'_, u64> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for RocksStore {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let Some((records, database)) = &self.records else {
            return self
                .db
                .get_cf(&self.cf(store)?, key)
                .map_err(StateError::Io);
        };
        // Only known stores' records are cached, so a hit needs no column family.
        if let Some(value) = records.get(*database, store, key) {
            return Ok(Some(value));
        }
        let cf = self.cf(store)?;
        let writes_before = *self.writes();
        let value = self.db.get_cf(&cf, key).map_err(StateError::Io)?;
        #[cfg(test)]
        if let Some(after_read) = self.after_read {
            after_read(self);
        }
        if let Some(value) = &value {
            let writes = self.writes();
            if *writes == writes_before {
                records.insert(*database, store, key, value.clone());
            }
        }
        Ok(value)
    }

    fn write(&self, batch: Batch) -> Result<(), StateError> {
        let mut wb = WriteBatch::default();
        for (store, key, value) in &batch.ops {
            let cf = self.cf(store)?;
            match value {
                Some(v) => wb.put_cf(&cf, key, v),
                None => wb.delete_cf(&cf, key),
            }
        }
        let mut writes = self.writes();
        self.db.write(wb).map_err(StateError::Io)?;
        *writes += 1;
        if let Some((records, database)) = &self.records {
            for (store, key, value) in batch.ops {
                match value {
                    Some(value) => records.update(*database, &store, &key, value),
                    None => records.remove(*database, &store, &key),
                }
            }
        }
        Ok(())
    }

    fn scan_prefix(&self, store: &str, prefix: &[u8]) -> Result<Vec<Entry>, StateError> {
        match prefix_end(prefix) {
            Some(end) => self.scan_range(store, prefix, &end, usize::MAX),
            None => self.scan_from(store, prefix, None, usize::MAX, |k| k.starts_with(prefix)),
        }
    }

    fn scan_range(
        &self,
        store: &str,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StateError> {
        self.scan_from(store, start, Some(end), limit, |_| true)
    }
}

impl RocksStore {
    /// Up to `limit` entries from `start` on, below `end`, while `keep` holds.
    ///
    /// `end` is RocksDB's iterate upper bound, not only a check on each key: deleted
    /// keys stay in memtables and files as tombstones until compaction, and a seek skips
    /// every tombstone it meets until a live key. Without the bound a scan that finds
    /// nothing live in its range (a claim's waiting lines, all released; timers, all
    /// fired) walks on through the tombstones of every key after it, which made each
    /// such scan cost more the longer a deployment ran.
    fn scan_from(
        &self,
        store: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Entry>, StateError> {
        let cf = self.cf(store)?;
        let mut options = ReadOptions::default();
        if let Some(end) = end {
            options.set_iterate_upper_bound(end);
        }
        let mut out = Vec::new();
        for item in
            self.db
                .iterator_cf_opt(&cf, options, IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(StateError::Io)?;
            if out.len() >= limit || !keep(&k) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

/// The least key after every key that starts with `prefix`, or `None` when there is
/// none (the prefix is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"\x00\x01"), Some(b"\x00\x02".to_vec()));
        assert_eq!(prefix_end(b"\x01\xff\xff"), Some(b"\x02".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn scans_of_prefixes_ending_in_0xff_and_of_ranges_keep_to_their_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let memory = StateMemory::new(1 << 20, 1 << 20, 1 << 20);
        let store = RocksStore::open(dir.path(), &["s"], &memory).unwrap();
        let mut batch = Batch::default();
        for key in [
            &b"\x01\xfe"[..],
            b"\x01\xff",
            b"\x01\xff\x00",
            b"\x02",
            b"\xff\xff\x01",
        ] {
            batch.put("s", key.to_vec(), b"v".to_vec());
        }
        store.write(batch).unwrap();
        let keys = |entries: Vec<Entry>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(store.scan_prefix("s", b"\x01\xff").unwrap()),
            vec![b"\x01\xff".to_vec(), b"\x01\xff\x00".to_vec()]
        );
        assert_eq!(
            keys(store.scan_prefix("s", b"\xff\xff").unwrap()),
            vec![b"\xff\xff\x01".to_vec()]
        );
        assert_eq!(
            keys(store.scan_range("s", b"\x01\xff", b"\x02", 10).unwrap()),
            vec![b"\x01\xff".to_vec(), b"\x01\xff\x00".to_vec()]
        );
    }

    #[test]
    fn databases_sharing_a_budget_flush_before_their_own_memtables_fill() {
        // Six stores in two databases, each memtable 1 MiB before it flushes by itself:
        // filled to about 0.8 MiB each they hold 4.8 MiB, past the 4 MiB budget, which
        // must flush some of them.
        let budget = 4 << 20;
        let memory = StateMemory::new(1 << 20, budget, 64 << 20);
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let names = ["a", "b", "c"];
        let stores: Vec<RocksStore> = dirs
            .iter()
            .map(|d| RocksStore::open(d.path(), &names, &memory).unwrap())
            .collect();
        let value = vec![7u8; 1024];
        for round in 0..800u32 {
            for store in &stores {
                let mut batch = Batch::default();
                for name in names {
                    batch.put(name, round.to_be_bytes().to_vec(), value.clone());
                }
                store.write(batch).unwrap();
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while memory.memtable_usage() > budget {
            assert!(
                std::time::Instant::now() < deadline,
                "memtables hold {} bytes on a budget of {budget}",
                memory.memtable_usage()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            memory.memtable_usage() > 0,
            "memtables are charged to the budget"
        );
    }

    /// Two databases share a record cache too small for their keys (entries are evicted
    /// all the time); whatever the interleaving of puts, deletes and reads, each reads
    /// back exactly what a map given the same changes holds.
    #[test]
    fn reads_through_the_record_cache_match_the_writes() {
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        let op = (0usize..2, 0u8..2, 0u8..24, proptest::option::of(0u16..1000));
        proptest!(ProptestConfig::with_cases(32), |(ops in proptest::collection::vec(op, 1..300))| {
            let memory = StateMemory::new(1 << 20, 8 << 20, 2 << 10);
            let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
            let names = ["a", "b"];
            let stores: Vec<RocksStore> = dirs
                .iter()
                .map(|d| RocksStore::open(d.path(), &names, &memory).unwrap())
                .collect();
            let mut model: BTreeMap<(usize, &str, u8), Vec<u8>> = BTreeMap::new();
            for (database, store, key, value) in ops {
                let name = names[store as usize];
                let mut batch = Batch::default();
                match value {
                    Some(v) => {
                        let bytes = v.to_be_bytes().repeat(1 + v as usize % 40);
                        batch.put(name, vec![key], bytes.clone());
                        model.insert((database, name, key), bytes);
                    }
                    None => {
                        batch.delete(name, vec![key]);
                        model.remove(&(database, name, key));
                    }
                }
                stores[database].write(batch).unwrap();
                for other in 0u8..24 {
                    for (d, store) in stores.iter().enumerate() {
                        prop_assert_eq!(
                            store.get(name, &[other]).unwrap(),
                            model.get(&(d, name, other)).cloned()
                        );
                    }
                }
            }
            prop_assert!(memory.record_cache_usage() <= 2 << 10);
        });
    }

    /// A write lands between a read's miss in RocksDB and its filling of the cache: the
    /// read may return the old value (it read before the write), but must not cache it.
    #[test]
    fn a_read_racing_a_write_does_not_cache_the_value_the_write_replaced() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static FIRED: AtomicBool = AtomicBool::new(false);
        let memory = StateMemory::new(1 << 20, 8 << 20, 1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksStore::open(dir.path(), &["a"], &memory).unwrap();
        let mut batch = Batch::default();
        batch.put("a", b"k".to_vec(), b"old".to_vec());
        store.write(batch).unwrap();
        store.after_read = Some(|store| {
            if !FIRED.swap(true, Ordering::SeqCst) {
                let mut batch = Batch::default();
                batch.put("a", b"k".to_vec(), b"new".to_vec());
                store.write(batch).unwrap();
            }
        });
        assert_eq!(store.get("a", b"k").unwrap(), Some(b"old".to_vec()));
        assert!(
            FIRED.load(Ordering::SeqCst),
            "the write ran inside the read"
        );
        assert_eq!(store.get("a", b"k").unwrap(), Some(b"new".to_vec()));
    }
}
