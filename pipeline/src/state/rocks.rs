//! RocksDB [`StateStore`]: one column family per store, one `WriteBatch` per [`Batch`].

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    DB,
};

use super::{Batch, Entry, StateError, StateStore};

pub struct RocksStore {
    db: DB,
}

impl RocksStore {
    /// Opens (or creates) the database at `path` with a column family per store and a
    /// block cache of `cache_bytes` shared by all of them.
    pub fn open(path: &Path, stores: &[&str], cache_bytes: usize) -> Result<Self, StateError> {
        let cache = Cache::new_lru_cache(cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Most reads of the processors are point lookups, many of absent keys (a claim
        // not seen before): once state outgrows the memtable, bloom filters answer those
        // without reading blocks.
        table.set_bloom_filter(10.0, false);
        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&table);
        cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut db_options = Options::default();
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
        Ok(Self { db })
    }
}

impl RocksStore {
    fn cf(&self, store: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db
            .cf_handle(store)
            .ok_or_else(|| StateError::UnknownStore(store.into()))
    }
}

impl StateStore for RocksStore {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let cf = self.cf(store)?;
        self.db.get_cf(&cf, key).map_err(StateError::Io)
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
        self.db.write(wb).map_err(StateError::Io)
    }

    fn scan_prefix(&self, store: &str, prefix: &[u8]) -> Result<Vec<Entry>, StateError> {
        let cf = self.cf(store)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(StateError::Io)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn scan_range(
        &self,
        store: &str,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StateError> {
        let cf = self.cf(store)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(StateError::Io)?;
            if out.len() >= limit || &*k >= end {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}
