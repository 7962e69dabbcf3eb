//! The archive in an object store: Avro object container files, and per input partition
//! a manifest whose entries form a SHA-256 hash chain.
//!
//! Layout under the archive's root (a local directory, or `s3://bucket/prefix`):
//! ```text
//! archived=2026-11-25/p0003-00000000000000001000-00000000000000001999-s17_18_21.avro
//! manifest/p0003/00000000000000000042.json
//! ```
//! A file holds the records of one input partition over an offset range, rolled by size
//! or by the sink's roll interval; its schema is the writer schema of its records, or the
//! union of several (`s17_18_21`, see [`super::union`]). Its name is that range, so
//! writing it again after a crash replaces it with the same content. Files are grouped
//! by the UTC day they were archived, not by a date inside the records: a day's prefix
//! is complete once the day is over (what retention, legal holds and object locks are
//! set on), and a batch of old claims does not scatter over hundreds of prefixes; the
//! records keep their own dates, and the manifests say where each offset is. (Archives
//! written with the older `date=` prefixes stay readable: the manifests name every file.)
//! Each manifest entry is its own object (object stores have no
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

/// Records for one file, as Avro values of `schema`, in offset order. The file takes
/// them until it reaches `roll_bytes`; [`Archive::append`] says how many it took.
pub struct FileBatch<'a> {
    /// The UTC day of archiving, `YYYY-MM-DD`.
    pub day: String,
    pub partition: i32,
    /// The writer schema ids, `_`-joined: part of the file's name.
    pub schema_ids: String,
    pub schema: &'a apache_avro::Schema,
    pub records: Vec<apache_avro::types::Value>,
    /// Each record's offset and source position.
    pub offsets: Vec<i64>,
    pub positions: Vec<Option<String>>,
    /// The first offset the file covers (after the previous file's last).
    pub first_offset: i64,
    /// The last offset covered when the file takes every record.
    pub last_offset: i64,
    pub roll_bytes: u64,
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

    /// Writes the records of `batch` that fit in one file as a container file, then its
    /// manifest entry. The entry's `records` is how many it took (at least one).
    pub async fn append(&self, batch: FileBatch<'_>) -> Result<Entry, ArchiveError> {
        let total = batch.records.len();
        let (bytes, taken) = encode(batch.schema, batch.records, batch.roll_bytes)?;
        let last_offset = if taken == total {
            batch.last_offset
        } else {
            batch.offsets[taken] - 1
        };
        let name = format!(
            "archived={}/p{:04}-{:020}-{:020}-s{}.avro",
            batch.day, batch.partition, batch.first_offset, last_offset, batch.schema_ids
        );
        let count = taken as u64;
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
            last_offset,
            first_position: batch.positions.first().cloned().flatten(),
            last_position: batch
                .positions
                .get(taken.wrapping_sub(1))
                .cloned()
                .flatten(),
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

/// Records per Avro block: how often a file's size is checked against its roll size.
const BLOCK: usize = 1_000;

/// Encodes `records` into one container file until it holds `roll_bytes` (checked at
/// each block, so a file ends within one block of it); returns the file and how many
/// records it took.
fn encode(
    schema: &apache_avro::Schema,
    records: Vec<apache_avro::types::Value>,
    roll_bytes: u64,
) -> Result<(Vec<u8>, usize), ArchiveError> {
    let avro = |e: apache_avro::Error| ArchiveError::Avro(e.to_string());
    let mut writer = apache_avro::Writer::with_codec(schema, Vec::new(), apache_avro::Codec::Null)
        .map_err(avro)?;
    let mut taken = 0;
    for r in records {
        writer.append_value(r).map_err(avro)?;
        taken += 1;
        if taken % BLOCK == 0 {
            writer.flush().map_err(avro)?;
            if writer.get_ref().len() as u64 >= roll_bytes {
                break;
            }
        }
    }
    Ok((writer.into_inner().map_err(avro)?, taken))
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
#[path = "archive_tests.rs"]
mod tests;
