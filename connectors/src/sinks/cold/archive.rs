//! The archive in an object store: Avro object container files, and per input partition
//! a manifest whose entries form a SHA-256 hash chain.
//!
//! Layout under the archive's root (a local directory, or `s3://bucket/prefix`):
//! ```text
//! date=2026-11-25/p0003-00000000000000001000-00000000000000001999-s17.avro
//! manifest/p0003/00000000000000000042.json
//! ```
//! A file holds the records of one input partition, one writer schema (`s17`), over an
//! offset range; its name is that range, so writing it again after a crash replaces it
//! with the same content. Each manifest entry is its own object (object stores have no
//! append), named by its sequence number; it lists a file with its SHA-256, its ranges
//! and `prev` (the previous entry's hash); the entry's own `hash` covers all of that.
//! Records at or below the manifest's last offset are skipped, so the archive holds each
//! record once.
//!
//! Durability order: the file is put (atomically: a staged upload, or on a local disk a
//! temporary file renamed and then fsynced), then its manifest entry is put. A crash
//! before the entry leaves a file the manifest doesn't list; the next write starts from
//! the same offset and writes the records again.
//!
//! One writer per partition at a time (the consumer group's assignment) is assumed; the
//! last entry of each partition is cached after the first read.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {location}: {source}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("archive I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode an archive file: {0}")]
    Avro(String),
    #[error("manifest entry {location} is not a manifest entry: {detail}")]
    BadManifest { location: String, detail: String },
    #[error("archive location {location}: {detail}")]
    Location { location: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub file: String,
    pub sha256: String,
    pub records: u64,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// Source positions of the first and last record, where they have one.
    pub first_position: Option<String>,
    pub last_position: Option<String>,
    pub prev: String,
    pub hash: String,
}

impl Entry {
    fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.seq.to_string(),
            self.file.clone(),
            self.sha256.clone(),
            self.records.to_string(),
            self.partition.to_string(),
            self.first_offset.to_string(),
            self.last_offset.to_string(),
            self.first_position.clone().unwrap_or_default(),
            self.last_position.clone().unwrap_or_default(),
            self.prev.clone(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash a chain starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn manifest_dir(partition: i32) -> Path {
    Path::from(format!("manifest/p{partition:04}"))
}

fn entry_path(partition: i32, seq: u64) -> Path {
    Path::from(format!("manifest/p{partition:04}/{seq:020}.json"))
}

/// One file's worth of records, already encoded as Avro datums of `schema`.
pub struct FileBatch<'a> {
    pub date: String,
    pub partition: i32,
    pub schema_id: u32,
    pub schema: &'a apache_avro::Schema,
    pub records: Vec<apache_avro::types::Value>,
    pub first_offset: i64,
    pub last_offset: i64,
    pub first_position: Option<String>,
    pub last_position: Option<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub manifests: usize,
    pub files: usize,
    pub records: u64,
    /// The first broken entry: (partition, seq, what is wrong).
    pub broken: Option<(i32, u64, String)>,
}

/// An archive root in an object store.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    /// Set when the archive is a local directory: written files are fsynced there.
    local_root: Option<PathBuf>,
    location: String,
    /// Last manifest entry per partition, once read.
    last: Mutex<HashMap<i32, Option<Entry>>>,
}

impl Archive {
    /// A local directory (created when missing), or a URL: `file:///dir` or
    /// `s3://bucket/prefix`. S3 settings come from the `AWS_*` environment variables
    /// (credentials, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP` …) and then from `options`, whose
    /// keys are object_store's S3 keys (`aws_endpoint`, `aws_region`, `aws_allow_http` …).
    pub fn open(location: &str, options: &BTreeMap<String, String>) -> Result<Self, ArchiveError> {
        let bad = |detail: String| ArchiveError::Location {
            location: location.to_string(),
            detail,
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name (expected s3://bucket/prefix)".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in options {
                let key: AmazonS3ConfigKey = key.parse().map_err(|_| {
                    bad(format!(
                        "unknown S3 option `{key}` (use object_store's keys, e.g. aws_endpoint, aws_region, aws_allow_http)"
                    ))
                })?;
                builder = builder.with_config(key, value);
            }
            let s3 = builder.build().map_err(|source| ArchiveError::Store {
                location: location.to_string(),
                source,
            })?;
            let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix.trim_matches('/')))
            };
            return Ok(Self::with_store(store, None, location));
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(bad(
                "unsupported scheme: use a directory path, file:///dir or s3://bucket/prefix"
                    .into(),
            ));
        }
        if !options.is_empty() {
            return Err(bad("options apply to s3:// archives only".into()));
        }
        let dir = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        std::fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        let store =
            LocalFileSystem::new_with_prefix(&dir).map_err(|source| ArchiveError::Store {
                location: location.to_string(),
                source,
            })?;
        Ok(Self::with_store(Arc::new(store), Some(dir), location))
    }

    /// An archive over any object store (tests use `InMemory`).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        local_root: Option<PathBuf>,
        location: &str,
    ) -> Self {
        Self {
            store,
            local_root,
            location: location.to_string(),
            last: Mutex::new(HashMap::new()),
        }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn store_err(&self, path: &Path) -> impl FnOnce(object_store::Error) -> ArchiveError + '_ {
        let location = format!("{}/{path}", self.location.trim_end_matches('/'));
        move |source| ArchiveError::Store { location, source }
    }

    async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(self.store_err(path))?;
        if let Some(root) = &self.local_root {
            // LocalFileSystem renames a staged file into place but does not fsync.
            let file = root.join(path.as_ref());
            let dir = file.parent().map(|d| d.to_path_buf()).unwrap_or_default();
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&file).and_then(|f| f.sync_all())?;
                std::fs::File::open(&dir).and_then(|d| d.sync_all())
            })
            .await
            .map_err(|e| ArchiveError::Io {
                path: root.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| ArchiveError::Io {
                path: root.clone(),
                source,
            })?;
        }
        Ok(())
    }

    pub async fn read(&self, path: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = Path::from(path);
        let get = self.store.get(&path).await.map_err(self.store_err(&path))?;
        Ok(get.bytes().await.map_err(self.store_err(&path))?.to_vec())
    }

    /// Paths of every object under `prefix` (or the whole archive), sorted.
    pub async fn list(&self, prefix: Option<&str>) -> Result<Vec<String>, ArchiveError> {
        let prefix = prefix.map(Path::from);
        let root = Path::from("");
        let mut paths: Vec<String> = self
            .store
            .list(prefix.as_ref())
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .map_err(self.store_err(prefix.as_ref().unwrap_or(&root)))?;
        paths.sort();
        Ok(paths)
    }

    /// Every entry of `partition`'s manifest, in chain order.
    pub async fn manifest(&self, partition: i32) -> Result<Vec<Entry>, ArchiveError> {
        let mut entries = Vec::new();
        for path in self.list(Some(manifest_dir(partition).as_ref())).await? {
            entries.push(self.read_entry(&path).await?);
        }
        Ok(entries)
    }

    async fn read_entry(&self, path: &str) -> Result<Entry, ArchiveError> {
        serde_json::from_slice(&self.read(path).await?).map_err(|e| ArchiveError::BadManifest {
            location: path.to_string(),
            detail: e.to_string(),
        })
    }

    async fn last_entry(&self, partition: i32) -> Result<Option<Entry>, ArchiveError> {
        if let Some(last) = self.last.lock().await.get(&partition) {
            return Ok(last.clone());
        }
        let paths = self.list(Some(manifest_dir(partition).as_ref())).await?;
        let last = match paths.last() {
            None => None,
            Some(path) => Some(self.read_entry(path).await?),
        };
        self.last.lock().await.insert(partition, last.clone());
        Ok(last)
    }

    /// Partitions that have a manifest.
    pub async fn partitions(&self) -> Result<Vec<i32>, ArchiveError> {
        let listing = self
            .store
            .list_with_delimiter(Some(&Path::from("manifest")))
            .await
            .map_err(self.store_err(&Path::from("manifest")))?;
        let mut out: Vec<i32> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.strip_prefix('p')?.parse().ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Last archived offset of each partition with a manifest.
    pub async fn archived_offsets(&self) -> Result<BTreeMap<i32, i64>, ArchiveError> {
        let mut out = BTreeMap::new();
        for p in self.partitions().await? {
            if let Some(last) = self.last_entry(p).await? {
                out.insert(p, last.last_offset);
            }
        }
        Ok(out)
    }

    /// Writes `batch` as a container file, then its manifest entry.
    pub async fn append(&self, batch: FileBatch<'_>) -> Result<Entry, ArchiveError> {
        let name = format!(
            "date={}/p{:04}-{:020}-{:020}-s{}.avro",
            batch.date, batch.partition, batch.first_offset, batch.last_offset, batch.schema_id
        );
        let count = batch.records.len() as u64;
        let bytes = encode(batch.schema, batch.records)?;
        let sha256 = hex(&Sha256::digest(&bytes));
        self.put(&Path::from(name.as_str()), bytes).await?;

        let previous = self.last_entry(batch.partition).await?;
        let mut entry = Entry {
            seq: previous.as_ref().map_or(0, |e| e.seq + 1),
            file: name,
            sha256,
            records: count,
            partition: batch.partition,
            first_offset: batch.first_offset,
            last_offset: batch.last_offset,
            first_position: batch.first_position,
            last_position: batch.last_position,
            prev: previous.map_or_else(|| GENESIS.to_string(), |e| e.hash),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let json = serde_json::to_vec(&entry).map_err(|e| ArchiveError::Avro(e.to_string()))?;
        self.put(&entry_path(entry.partition, entry.seq), json)
            .await?;
        self.last
            .lock()
            .await
            .insert(entry.partition, Some(entry.clone()));
        Ok(entry)
    }

    /// Recomputes every manifest's chain and every listed file's hash and record count,
    /// and checks that each partition's files cover its offsets without gap or overlap.
    pub async fn verify(&self) -> Result<Verification, ArchiveError> {
        self.check(true).await
    }

    /// Checks every manifest's chain without reading the files: what a writer does
    /// before extending an archive, so that it never appends to a broken chain. (Gaps in
    /// the offsets are `verify`'s to report: they do not stop writes.)
    pub async fn check_chains(&self) -> Result<Verification, ArchiveError> {
        self.check(false).await
    }

    async fn check(&self, files: bool) -> Result<Verification, ArchiveError> {
        let mut report = Verification {
            manifests: 0,
            files: 0,
            records: 0,
            broken: None,
        };
        for partition in self.partitions().await? {
            report.manifests += 1;
            let mut prev = GENESIS.to_string();
            let mut previous: Option<Entry> = None;
            let entries = self.manifest(partition).await?;
            let last = entries.last().cloned();
            for (expected_seq, entry) in entries.into_iter().enumerate() {
                let problem = if entry.seq != expected_seq as u64 {
                    Some(format!(
                        "entry {expected_seq} is missing (the next one found is {})",
                        entry.seq
                    ))
                } else if entry.prev != prev {
                    Some("its `prev` is not the previous entry's hash (an entry was removed or reordered)".to_string())
                } else if entry.compute_hash() != entry.hash {
                    Some("its hash does not match its contents (the entry was edited)".to_string())
                } else if let Some(problem) = files
                    .then(|| discontinuity(previous.as_ref(), &entry))
                    .flatten()
                {
                    Some(problem)
                } else if files {
                    match self.read(&entry.file).await {
                        Err(e) => Some(format!("file {} cannot be read: {e}", entry.file)),
                        Ok(bytes) => check_file(&entry, &bytes),
                    }
                } else {
                    None
                };
                if let Some(problem) = problem {
                    report.broken = Some((partition, expected_seq as u64, problem));
                    return Ok(report);
                }
                report.files += 1;
                report.records += entry.records;
                prev = entry.hash.clone();
                previous = Some(entry);
            }
            // The chain holds: its last entry is where appends continue.
            self.last.lock().await.insert(partition, last);
        }
        Ok(report)
    }
}

/// Files of one partition cover its offsets without a gap or an overlap: each entry
/// starts right after the one before ends. A chain rebuilt without a file (every hash
/// recomputed) is caught here.
fn discontinuity(previous: Option<&Entry>, entry: &Entry) -> Option<String> {
    let range = entry.last_offset.checked_sub(entry.first_offset);
    if range.is_none_or(|r| r < 0 || (entry.records as i64) > r + 1) {
        return Some(format!(
            "it lists offsets {}..={} for {} records",
            entry.first_offset, entry.last_offset, entry.records
        ));
    }
    let previous = previous?;
    let expected = previous.last_offset + 1;
    match entry.first_offset.cmp(&expected) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(format!(
            "offsets {expected}..={} of partition {} are in no file (a gap after {})",
            entry.first_offset - 1,
            entry.partition,
            previous.file
        )),
        std::cmp::Ordering::Less => Some(format!(
            "it starts at offset {}, inside {} (which ends at {}): an overlap",
            entry.first_offset, previous.file, previous.last_offset
        )),
    }
}

fn encode(
    schema: &apache_avro::Schema,
    records: Vec<apache_avro::types::Value>,
) -> Result<Vec<u8>, ArchiveError> {
    let avro = |e: apache_avro::Error| ArchiveError::Avro(e.to_string());
    let mut writer = apache_avro::Writer::with_codec(schema, Vec::new(), apache_avro::Codec::Null)
        .map_err(avro)?;
    for r in records {
        writer.append_value(r).map_err(avro)?;
    }
    writer.into_inner().map_err(avro)
}

fn check_file(entry: &Entry, bytes: &[u8]) -> Option<String> {
    if hex(&Sha256::digest(bytes)) != entry.sha256 {
        return Some(format!(
            "file {} does not match its SHA-256 (it was changed)",
            entry.file
        ));
    }
    match apache_avro::Reader::new(bytes) {
        Err(e) => Some(format!("file {} is not an Avro container: {e}", entry.file)),
        Ok(reader) => {
            let n = reader.count() as u64;
            (n != entry.records).then(|| {
                format!(
                    "file {} holds {n} records, the manifest says {}",
                    entry.file, entry.records
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    fn schema() -> apache_avro::Schema {
        apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#,
        )
        .unwrap()
    }

    fn batch(schema: &apache_avro::Schema, first: i64, n: i64) -> FileBatch<'_> {
        FileBatch {
            date: "2026-11-25".into(),
            partition: 1,
            schema_id: 7,
            schema,
            records: (first..first + n)
                .map(|i| Value::Record(vec![("n".into(), Value::Long(i))]))
                .collect(),
            first_offset: first,
            last_offset: first + n - 1,
            first_position: None,
            last_position: None,
        }
    }

    /// A fresh handle on the same directory, as after a restart.
    fn reopen(dir: &tempfile::TempDir) -> Archive {
        Archive::open(dir.path().to_str().unwrap(), &BTreeMap::new()).unwrap()
    }

    #[tokio::test]
    async fn chain_verifies_and_catches_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema();
        let archive = reopen(&dir);
        archive.append(batch(&schema, 0, 10)).await.unwrap();
        let second = archive.append(batch(&schema, 10, 5)).await.unwrap();
        archive.append(batch(&schema, 15, 5)).await.unwrap();
        let ok = reopen(&dir).verify().await.unwrap();
        assert_eq!((ok.files, ok.records, ok.broken), (3, 20, None));
        assert_eq!(reopen(&dir).archived_offsets().await.unwrap()[&1], 19);

        // Flip one byte of the second file.
        let path = dir.path().join(&second.file);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let bad = reopen(&dir).verify().await.unwrap();
        let (_, seq, why) = bad.broken.expect("tampering caught");
        assert_eq!(seq, 1);
        assert!(why.contains("SHA-256"), "{why}");
    }

    #[tokio::test]
    async fn edited_or_removed_entries_break_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema();
        let archive = reopen(&dir);
        for i in 0..3 {
            archive.append(batch(&schema, i * 10, 10)).await.unwrap();
        }
        let entry = |seq| dir.path().join(entry_path(1, seq).as_ref());
        let first = std::fs::read_to_string(entry(0)).unwrap();
        std::fs::write(entry(0), first.replace("\"records\":10", "\"records\":9")).unwrap();
        let (_, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
        assert_eq!(seq, 0);
        assert!(why.contains("edited"), "{why}");
        std::fs::write(entry(0), first).unwrap();

        std::fs::remove_file(entry(1)).unwrap();
        let (_, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
        assert_eq!(seq, 1);
        assert!(why.contains("missing"), "{why}");
    }

    #[tokio::test]
    async fn a_chain_rebuilt_without_a_file_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema();
        let archive = reopen(&dir);
        for i in 0..3 {
            archive.append(batch(&schema, i * 10, 10)).await.unwrap();
        }
        // Someone who can rewrite the whole manifest drops the middle file's records and
        // recomputes every hash: the chain holds, the offsets do not.
        let manifest = dir.path().join("manifest");
        std::fs::remove_dir_all(&manifest).unwrap();
        let rebuilt = reopen(&dir);
        rebuilt.append(batch(&schema, 0, 10)).await.unwrap();
        rebuilt.append(batch(&schema, 20, 10)).await.unwrap();
        let (partition, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
        assert_eq!((partition, seq), (1, 1));
        assert!(
            why.contains("offsets 10..=19 of partition 1 are in no file"),
            "{why}"
        );

        // An overlap is caught the same way.
        std::fs::remove_dir_all(&manifest).unwrap();
        let overlapping = reopen(&dir);
        overlapping.append(batch(&schema, 0, 10)).await.unwrap();
        overlapping.append(batch(&schema, 5, 10)).await.unwrap();
        let (_, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
        assert_eq!(seq, 1);
        assert!(why.contains("overlap"), "{why}");
    }

    #[tokio::test]
    async fn works_on_any_object_store() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let archive = Archive::with_store(store.clone(), None, "memory://");
        let schema = schema();
        archive.append(batch(&schema, 0, 4)).await.unwrap();
        archive.append(batch(&schema, 4, 4)).await.unwrap();
        let again = Archive::with_store(store, None, "memory://");
        assert_eq!(again.archived_offsets().await.unwrap()[&1], 7);
        let report = again.verify().await.unwrap();
        assert_eq!((report.manifests, report.files, report.records), (1, 2, 8));
    }

    #[test]
    fn bad_locations_say_what_to_use() {
        let none = BTreeMap::new();
        let err = Archive::open("gs://bucket/x", &none)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("s3://bucket/prefix"), "{err}");
        let opts = BTreeMap::from([("aws_endpointt".to_string(), "x".to_string())]);
        let err = Archive::open("s3://b/p", &opts).err().unwrap().to_string();
        assert!(err.contains("unknown S3 option `aws_endpointt`"), "{err}");
    }
}
