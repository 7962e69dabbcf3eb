//! The registry's state and its durable log.
//!
//! Invariants:
//! - Schema ids are global, assigned once and never reused; the same schema text (after
//!   JSON normalisation) always maps to the same id, whichever subject registers it.
//! - Versions of a subject are numbered from 1 and never renumbered; a soft-deleted
//!   version keeps its number, and new versions continue after the highest one.
//! - Every change is appended to `registry.log` (one JSON object per line) and fsynced
//!   before it is acknowledged; on start the log is replayed, so a restart serves the same
//!   ids and versions. A torn last line (crash mid-write) is dropped with a warning.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::compat::{self, Level};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the registry log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry log {path}, line {line}: {message}; the log is corrupt — restore it from a backup")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write the registry log: {0}")]
    Write(#[source] std::io::Error),
}

/// One durable change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Register {
        subject: String,
        version: u32,
        id: u32,
        schema: String,
    },
    DeleteVersion {
        subject: String,
        version: u32,
        permanent: bool,
    },
    Config {
        subject: Option<String>,
        level: Option<Level>,
    },
}

#[derive(Debug, Clone)]
pub struct VersionEntry {
    pub version: u32,
    pub id: u32,
    pub deleted: bool,
}

#[derive(Debug, Default)]
pub struct Subject {
    pub versions: Vec<VersionEntry>,
    pub level: Option<Level>,
}

impl Subject {
    pub fn live(&self) -> impl Iterator<Item = &VersionEntry> {
        self.versions.iter().filter(|v| !v.deleted)
    }
    pub fn is_live(&self) -> bool {
        self.live().next().is_some()
    }
}

pub struct StoredSchema {
    pub text: String,
    pub parsed: Schema,
}

/// Why a registration was refused.
#[derive(Debug)]
pub enum RegisterError {
    Invalid(String),
    Incompatible(Vec<String>),
    Store(StoreError),
}

pub struct Store {
    log_path: PathBuf,
    log: File,
    pub global_level: Level,
    pub schemas: BTreeMap<u32, StoredSchema>,
    by_text: HashMap<String, u32>,
    pub subjects: BTreeMap<String, Subject>,
}

/// Parses and normalises schema text: compact JSON with sorted object keys.
pub fn parse_schema(text: &str) -> Result<(String, Schema), String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("Invalid schema: not JSON: {e}"))?;
    let normalized = serde_json::to_string(&json).map_err(|e| format!("Invalid schema: {e}"))?;
    let parsed = Schema::parse_str(&normalized).map_err(|e| format!("Invalid schema: {e}"))?;
    Ok((normalized, parsed))
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let log_path = dir.join("registry.log");
        let open_err = |source| StoreError::Open {
            path: log_path.clone(),
            source,
        };
        let mut records = Vec::new();
        let mut valid_len = 0u64;
        if log_path.exists() {
            let reader = BufReader::new(File::open(&log_path).map_err(open_err)?);
            let lines: Vec<std::io::Result<String>> = reader.lines().collect();
            let count = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                let line = line.map_err(open_err)?;
                match serde_json::from_str::<Record>(&line) {
                    Ok(r) => {
                        valid_len += line.len() as u64 + 1;
                        records.push(r);
                    }
                    Err(_) if i + 1 == count => {
                        tracing::warn!(
                            line = i + 1,
                            "dropping a torn last record of the registry log"
                        );
                    }
                    Err(e) => {
                        return Err(StoreError::Corrupt {
                            path: log_path.clone(),
                            line: i + 1,
                            message: e.to_string(),
                        })
                    }
                }
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(open_err)?;
        log.set_len(valid_len).map_err(open_err)?;
        let mut store = Store {
            log_path,
            log,
            global_level: Level::Backward,
            schemas: BTreeMap::new(),
            by_text: HashMap::new(),
            subjects: BTreeMap::new(),
        };
        for (i, record) in records.into_iter().enumerate() {
            store.apply(record).map_err(|message| StoreError::Corrupt {
                path: store.log_path.clone(),
                line: i + 1,
                message,
            })?;
        }
        Ok(store)
    }

    fn append(&mut self, record: Record) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(&record).map_err(|e| StoreError::Write(e.into()))?;
        line.push(b'\n');
        self.log.write_all(&line).map_err(StoreError::Write)?;
        self.log.sync_data().map_err(StoreError::Write)?;
        self.apply(record)
            .map_err(|m| StoreError::Write(std::io::Error::other(m)))
    }

    fn apply(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Register {
                subject,
                version,
                id,
                schema,
            } => {
                if !self.schemas.contains_key(&id) {
                    let (text, parsed) = parse_schema(&schema)?;
                    self.by_text.insert(text.clone(), id);
                    self.schemas.insert(id, StoredSchema { text, parsed });
                }
                self.subjects
                    .entry(subject)
                    .or_default()
                    .versions
                    .push(VersionEntry {
                        version,
                        id,
                        deleted: false,
                    });
            }
            Record::DeleteVersion {
                subject,
                version,
                permanent,
            } => {
                let s = self.subjects.get_mut(&subject).ok_or("unknown subject")?;
                if permanent {
                    s.versions.retain(|v| v.version != version);
                    if s.versions.is_empty() && s.level.is_none() {
                        self.subjects.remove(&subject);
                    }
                } else if let Some(v) = s.versions.iter_mut().find(|v| v.version == version) {
                    v.deleted = true;
                }
            }
            Record::Config {
                subject: None,
                level,
            } => {
                self.global_level = level.unwrap_or(Level::Backward);
            }
            Record::Config {
                subject: Some(subject),
                level,
            } => {
                self.subjects.entry(subject).or_default().level = level;
            }
        }
        Ok(())
    }

    pub fn level_of(&self, subject: &str) -> Level {
        self.subjects
            .get(subject)
            .and_then(|s| s.level)
            .unwrap_or(self.global_level)
    }

    /// Finds `text` among the live versions of `subject`.
    pub fn lookup(&self, subject: &str, normalized: &str) -> Option<&VersionEntry> {
        let id = *self.by_text.get(normalized)?;
        self.subjects.get(subject)?.live().find(|v| v.id == id)
    }

    /// Checks `schema` against the live versions of `subject` under its level.
    pub fn compatibility_problems(
        &self,
        subject: &str,
        schema: &Schema,
        only: Option<u32>,
    ) -> Vec<String> {
        let level = self.level_of(subject);
        let existing: Vec<&Schema> = self
            .subjects
            .get(subject)
            .map(|s| {
                s.live()
                    .filter(|v| only.is_none_or(|o| o == v.version))
                    .filter_map(|v| self.schemas.get(&v.id).map(|s| &s.parsed))
                    .collect()
            })
            .unwrap_or_default();
        compat::check(level, schema, &existing)
    }

    /// Registers `text` under `subject`; returns its global id. Idempotent.
    pub fn register(&mut self, subject: &str, text: &str) -> Result<u32, RegisterError> {
        let (normalized, parsed) = parse_schema(text).map_err(RegisterError::Invalid)?;
        if let Some(existing) = self.lookup(subject, &normalized) {
            return Ok(existing.id);
        }
        let problems = self.compatibility_problems(subject, &parsed, None);
        if !problems.is_empty() {
            return Err(RegisterError::Incompatible(problems));
        }
        let id = match self.by_text.get(&normalized) {
            Some(id) => *id,
            None => self.schemas.keys().next_back().map_or(1, |m| m + 1),
        };
        let version = self
            .subjects
            .get(subject)
            .and_then(|s| s.versions.iter().map(|v| v.version).max())
            .map_or(1, |m| m + 1);
        self.append(Record::Register {
            subject: subject.to_string(),
            version,
            id,
            schema: normalized,
        })
        .map_err(RegisterError::Store)?;
        Ok(id)
    }

    pub fn delete_version(
        &mut self,
        subject: &str,
        version: u32,
        permanent: bool,
    ) -> Result<(), StoreError> {
        self.append(Record::DeleteVersion {
            subject: subject.to_string(),
            version,
            permanent,
        })
    }

    pub fn set_level(
        &mut self,
        subject: Option<&str>,
        level: Option<Level>,
    ) -> Result<(), StoreError> {
        self.append(Record::Config {
            subject: subject.map(str::to_string),
            level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"claim","fields":[{"name":"id","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"claim","fields":[{"name":"id","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;

    #[test]
    fn ids_are_global_stable_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let a = store.register("a-value", V1).unwrap();
        assert_eq!(
            store.register("a-value", V1).unwrap(),
            a,
            "re-registering is idempotent"
        );
        assert_eq!(
            store.register("b-value", V1).unwrap(),
            a,
            "same schema, same id in another subject"
        );
        let v2 = store.register("a-value", V2).unwrap();
        assert_ne!(v2, a);
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let versions: Vec<u32> = store.subjects["a-value"]
            .live()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, vec![1, 2]);
        assert_eq!(store.subjects["a-value"].versions[1].id, v2);
    }

    #[test]
    fn torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.register("a-value", V1).unwrap();
        drop(store);
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join("registry.log"))
            .unwrap();
        log.write_all(b"{\"op\":\"regis").unwrap();
        drop(log);
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.register("a-value", V2).unwrap(), 2);
        drop(store);
        assert!(
            Store::open(dir.path()).is_ok(),
            "the log is whole again after the repair"
        );
    }

    #[test]
    fn incompatible_change_is_refused_under_backward() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.register("a-value", V1).unwrap();
        let required = r#"{"type":"record","name":"claim","fields":[{"name":"id","type":"long"},{"name":"x","type":"int"}]}"#;
        assert!(matches!(
            store.register("a-value", required),
            Err(RegisterError::Incompatible(_))
        ));
        store.set_level(Some("a-value"), Some(Level::None)).unwrap();
        assert!(store.register("a-value", required).is_ok());
    }
}
