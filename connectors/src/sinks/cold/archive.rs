//! The archive on disk: Avro object container files, and per input partition a manifest
//! whose entries form a SHA-256 hash chain.
//!
//! Layout under the root:
//! ```text
//! date=2026-11-25/p0003-00000000000000001000-00000000000000001999-s17.avro
//! manifest-p0003.jsonl
//! ```
//! A file holds the records of one input partition, one writer schema (`s17`), over an
//! offset range; its name is that range, so writing it again after a crash replaces it
//! with the same content. Each manifest line lists a file with its SHA-256, its ranges and
//! `prev` (the previous line's hash); the line's own `hash` covers all of that. Records at
//! or below the manifest's last offset are skipped, so the archive holds each record once.
//!
//! Durability order: file written to a temporary name, fsynced, renamed, directory
//! fsynced; then the manifest line appended and fsynced. A crash before the manifest line
//! leaves a file the manifest doesn't list, which the next write replaces.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode an archive file: {0}")]
    Avro(String),
    #[error("manifest {path} line {line} is not a manifest entry: {detail}")]
    BadManifest {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
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

pub fn manifest_path(root: &Path, partition: i32) -> PathBuf {
    root.join(format!("manifest-p{partition:04}.jsonl"))
}

pub fn read_manifest(path: &Path) -> Result<Vec<Entry>, ArchiveError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let mut entries = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(e) => entries.push(e),
            // A torn last line (crash mid-append) is not part of the chain.
            Err(_) if i + 1 == count_lines(path) => break,
            Err(e) => {
                return Err(ArchiveError::BadManifest {
                    path: path.into(),
                    line: i + 1,
                    detail: e.to_string(),
                })
            }
        }
    }
    Ok(entries)
}

fn count_lines(path: &Path) -> usize {
    fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
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

/// Writes `batch` as a container file and appends it to its partition's manifest.
pub fn append(root: &Path, batch: FileBatch<'_>) -> Result<Entry, ArchiveError> {
    let dir = root.join(format!("date={}", batch.date));
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let name = format!(
        "date={}/p{:04}-{:020}-{:020}-s{}.avro",
        batch.date, batch.partition, batch.first_offset, batch.last_offset, batch.schema_id
    );
    let path = root.join(&name);
    let mut writer =
        apache_avro::Writer::with_codec(batch.schema, Vec::new(), apache_avro::Codec::Null)
            .map_err(|e| ArchiveError::Avro(e.to_string()))?;
    let count = batch.records.len() as u64;
    for r in batch.records {
        writer
            .append_value(r)
            .map_err(|e| ArchiveError::Avro(e.to_string()))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| ArchiveError::Avro(e.to_string()))?;
    let tmp = path.with_extension("avro.tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;

    let manifest = manifest_path(root, batch.partition);
    let previous = read_manifest(&manifest)?;
    let mut entry = Entry {
        seq: previous.last().map_or(0, |e| e.seq + 1),
        file: name,
        sha256: hex(&Sha256::digest(&bytes)),
        records: count,
        partition: batch.partition,
        first_offset: batch.first_offset,
        last_offset: batch.last_offset,
        first_position: batch.first_position,
        last_position: batch.last_position,
        prev: previous
            .last()
            .map_or_else(|| GENESIS.to_string(), |e| e.hash.clone()),
        hash: String::new(),
    };
    entry.hash = entry.compute_hash();
    let mut line = serde_json::to_string(&entry).map_err(|e| ArchiveError::Avro(e.to_string()))?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&manifest)
        .map_err(io(&manifest))?;
    f.write_all(line.as_bytes()).map_err(io(&manifest))?;
    f.sync_all().map_err(io(&manifest))?;
    Ok(entry)
}

/// Last archived offset of each partition with a manifest under `root`.
pub fn archived_offsets(root: &Path) -> Result<BTreeMap<i32, i64>, ArchiveError> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(root) else {
        return Ok(out);
    };
    for item in dir.flatten() {
        let name = item.file_name().to_string_lossy().to_string();
        if let Some(p) = name
            .strip_prefix("manifest-p")
            .and_then(|s| s.strip_suffix(".jsonl"))
        {
            if let (Ok(p), Some(last)) = (p.parse::<i32>(), read_manifest(&item.path())?.last()) {
                out.insert(p, last.last_offset);
            }
        }
    }
    Ok(out)
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub manifests: usize,
    pub files: usize,
    pub records: u64,
    /// The first broken entry: (manifest, seq, what is wrong).
    pub broken: Option<(PathBuf, u64, String)>,
}

/// Recomputes every manifest's chain and every listed file's hash and record count.
pub fn verify(root: &Path) -> Result<Verification, ArchiveError> {
    let mut report = Verification {
        manifests: 0,
        files: 0,
        records: 0,
        broken: None,
    };
    let mut manifests: Vec<PathBuf> = fs::read_dir(root)
        .map_err(io(root))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("manifest-p"))
        })
        .collect();
    manifests.sort();
    for manifest in manifests {
        report.manifests += 1;
        let mut prev = GENESIS.to_string();
        for entry in read_manifest(&manifest)? {
            let problem = if entry.prev != prev {
                Some("its `prev` is not the previous entry's hash (an entry was removed or reordered)".to_string())
            } else if entry.compute_hash() != entry.hash {
                Some("its hash does not match its contents (the entry was edited)".to_string())
            } else {
                match fs::read(root.join(&entry.file)) {
                    Err(e) => Some(format!("file {} cannot be read: {e}", entry.file)),
                    Ok(bytes) if hex(&Sha256::digest(&bytes)) != entry.sha256 => Some(format!(
                        "file {} does not match its SHA-256 (it was changed)",
                        entry.file
                    )),
                    Ok(bytes) => match apache_avro::Reader::new(&bytes[..]) {
                        Err(e) => {
                            Some(format!("file {} is not an Avro container: {e}", entry.file))
                        }
                        Ok(reader) => {
                            let n = reader.count() as u64;
                            (n != entry.records).then(|| {
                                format!(
                                    "file {} holds {n} records, the manifest says {}",
                                    entry.file, entry.records
                                )
                            })
                        }
                    },
                }
            };
            if let Some(problem) = problem {
                report.broken = Some((manifest.clone(), entry.seq, problem));
                return Ok(report);
            }
            report.files += 1;
            report.records += entry.records;
            prev = entry.hash.clone();
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    fn batch<'a>(schema: &'a apache_avro::Schema, first: i64, n: i64) -> FileBatch<'a> {
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

    #[test]
    fn chain_verifies_and_catches_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#,
        )
        .unwrap();
        append(dir.path(), batch(&schema, 0, 10)).unwrap();
        let second = append(dir.path(), batch(&schema, 10, 5)).unwrap();
        append(dir.path(), batch(&schema, 15, 5)).unwrap();
        let ok = verify(dir.path()).unwrap();
        assert_eq!((ok.files, ok.records, ok.broken), (3, 20, None));
        assert_eq!(archived_offsets(dir.path()).unwrap()[&1], 19);

        // Flip one byte of the second file.
        let path = dir.path().join(&second.file);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        let bad = verify(dir.path()).unwrap();
        let (_, seq, why) = bad.broken.expect("tampering caught");
        assert_eq!(seq, 1);
        assert!(why.contains("SHA-256"), "{why}");
    }

    #[test]
    fn edited_or_removed_entries_break_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#,
        )
        .unwrap();
        for i in 0..3 {
            append(dir.path(), batch(&schema, i * 10, 10)).unwrap();
        }
        let manifest = manifest_path(dir.path(), 1);
        let text = fs::read_to_string(&manifest).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        fs::write(&manifest, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let (_, seq, why) = verify(dir.path()).unwrap().broken.unwrap();
        assert_eq!(seq, 2);
        assert!(why.contains("prev"), "{why}");
        fs::write(&manifest, text.replace("\"records\":10", "\"records\":9")).unwrap();
        let (_, seq, why) = verify(dir.path()).unwrap().broken.unwrap();
        assert_eq!(seq, 0);
        assert!(why.contains("edited"), "{why}");
    }
}
