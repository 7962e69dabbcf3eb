//! The cold archive as a [`Sink`]: each batch (the sink's roll interval, or its row
//! limit) becomes, per input partition, one container file in offset order — more only
//! where the file reaches its roll size or two versions of one table's schema meet —
//! then moved claims are evicted from the warmer stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::types::Value;
use futures::future::BoxFuture;
use strata_pipeline::avro::Codec;
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::runtime::{Rejected, Sink, SinkError, SinkRecord};

use super::archive::{Archive, ArchiveError, FileBatch};
use super::config::ColdSinkConfig;
use super::union::Union;
use crate::sinks::pg_store::PgStore;

pub struct ColdSink {
    location: String,
    options: BTreeMap<String, String>,
    /// Opened by `open`.
    archive: Option<Archive>,
    codec: Arc<Codec>,
    /// Writer schemas' JSON by id, fetched once.
    schemas: HashMap<u32, String>,
    roll_bytes: u64,
    /// Last archived offset per input partition (from the manifests).
    archived: BTreeMap<i32, i64>,
    evict: Vec<PgStore>,
}

impl ColdSink {
    pub fn new(config: &ColdSinkConfig, codec: Arc<Codec>) -> Self {
        Self {
            location: config.path.clone(),
            options: config.store_options(),
            archive: None,
            codec,
            schemas: HashMap::new(),
            roll_bytes: config.roll_size.0,
            archived: BTreeMap::new(),
            evict: config
                .evict_from
                .iter()
                .map(|t| {
                    PgStore::new(
                        t.connection.clone(),
                        t.schema.clone(),
                        t.schema.contains("warm"),
                        0,
                        None,
                    )
                })
                .collect(),
        }
    }

    async fn schema_text(&mut self, id: u32) -> Result<&str, SinkError> {
        if !self.schemas.contains_key(&id) {
            let text = self
                .codec
                .registry()
                .fetch(id)
                .await
                .map_err(|e| SinkError::Transient(e.to_string()))?;
            self.schemas.insert(id, text);
        }
        Ok(&self.schemas[&id])
    }

    /// The file schema for the longest prefix of `run` whose writer schemas can share a
    /// file, and that prefix's length (at least one record).
    async fn union_of(&mut self, run: &[&SinkRecord]) -> Result<(Union, usize), SinkError> {
        let mut union = Union::default();
        for (n, r) in run.iter().enumerate() {
            let id = r.value_schema_id.unwrap_or_default();
            if union.branch(id).is_some() {
                continue;
            }
            let text = self.schema_text(id).await?.to_string();
            if !union.add(id, &text) {
                if union.is_empty() {
                    return Err(SinkError::Fatal(format!(
                        "writer schema {id} (partition {}, offset {}) is not an Avro schema in JSON",
                        r.partition, r.offset
                    )));
                }
                return Ok((union, n));
            }
        }
        Ok((union, run.len()))
    }

    async fn write_batch(&mut self, records: &[SinkRecord]) -> Result<Vec<Rejected>, SinkError> {
        let mut by_partition: BTreeMap<i32, Vec<&SinkRecord>> = BTreeMap::new();
        // The offsets each partition's files cover: from right after the last archived
        // one (records between that were dead-lettered or had no value) to the batch's
        // last, so that a partition's files follow each other without a gap; `archive
        // verify` then flags any gap as a file missing from a rebuilt manifest.
        let mut covered: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for r in records {
            if self
                .archived
                .get(&r.partition)
                .is_some_and(|last| r.offset <= *last)
            {
                continue;
            }
            let span = covered.entry(r.partition).or_insert((r.offset, r.offset));
            *span = (span.0.min(r.offset), span.1.max(r.offset));
            if r.value.is_some() {
                by_partition.entry(r.partition).or_default().push(r);
            }
        }
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        for (partition, mut list) in by_partition {
            list.sort_by_key(|r| r.offset);
            let (first, to) = covered[&partition];
            let mut from = self.archived.get(&partition).map_or(first, |last| last + 1);
            let mut start = 0;
            while start < list.len() {
                let (union, end) = self.union_of(&list[start..]).await?;
                let end = start + end;
                let run = &list[start..end];
                let mut records = Vec::with_capacity(run.len());
                for r in run {
                    let branch = union
                        .branch(r.value_schema_id.unwrap_or_default())
                        .unwrap_or_default();
                    let value = r.value.clone().unwrap_or(Value::Null);
                    records.push(if union.len() > 1 {
                        Value::Union(branch as u32, Box::new(value))
                    } else {
                        value
                    });
                }
                let schema = union.schema().map_err(|e| {
                    SinkError::Fatal(format!(
                        "the writer schemas of partition {partition} do not form a file schema: {e}"
                    ))
                })?;
                let batch = FileBatch {
                    day: day.clone(),
                    partition,
                    schema_ids: union.ids(),
                    schema: &schema,
                    records,
                    offsets: run.iter().map(|r| r.offset).collect(),
                    positions: run.iter().map(|r| position(r)).collect(),
                    first_offset: from,
                    last_offset: if end == list.len() {
                        to
                    } else {
                        list[end].offset - 1
                    },
                    roll_bytes: self.roll_bytes,
                };
                let archive = self
                    .archive
                    .as_ref()
                    .ok_or_else(|| SinkError::Fatal("the archive was not opened".into()))?;
                let entry = archive.append(batch).await.map_err(transient)?;
                self.archived.insert(partition, entry.last_offset);
                from = entry.last_offset + 1;
                start += entry.records as usize;
            }
        }
        for store in &mut self.evict {
            store.evict(records).await?;
        }
        Ok(Vec::new())
    }
}

impl Sink for ColdSink {
    fn open(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let archive = match Archive::open(&self.location, &self.options) {
                Err(e @ ArchiveError::Location { .. }) => {
                    return Err(SinkError::Fatal(e.to_string()))
                }
                other => other.map_err(transient)?,
            };
            // Never extend a broken chain: the archive must be repaired or moved first.
            let chains = archive.check_chains().await.map_err(transient)?;
            if let Some((partition, seq, problem)) = chains.broken {
                return Err(SinkError::Fatal(format!(
                    "the archive at {} is broken (manifest of partition {partition}, entry {seq}: {problem}); \
                     writes stop here. Run `strata archive verify {}`, restore the archive from a copy, \
                     or point `path` at a new location",
                    self.location, self.location
                )));
            }
            self.archived = archive.archived_offsets().await.map_err(|e| match e {
                ArchiveError::BadManifest { .. } => SinkError::Fatal(e.to_string()),
                e => transient(e),
            })?;
            self.archive = Some(archive);
            for store in &mut self.evict {
                store.open().await?;
            }
            Ok(())
        })
    }

    fn write<'a>(
        &'a mut self,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, SinkError>> {
        Box::pin(self.write_batch(records))
    }
}

/// A change's source position, where it has one.
fn position(r: &SinkRecord) -> Option<String> {
    let source = record_field(r.value.as_ref()?, "source")?;
    match record_field(source, "position")? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Store and disk errors are retried; the sink's backoff bounds how often.
fn transient(e: ArchiveError) -> SinkError {
    SinkError::Transient(e.to_string())
}
