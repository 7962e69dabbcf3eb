//! The cold archive as a [`Sink`]: each batch becomes container files in offset order
//! (a new file whenever the writer schema changes), then moved claims are evicted from
//! the warmer stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::types::Value;
use futures::future::BoxFuture;
use strata_pipeline::avro::Codec;
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::runtime::{Rejected, Sink, SinkError, SinkRecord};

use super::archive::{Archive, ArchiveError, FileBatch};
use super::config::ColdSinkConfig;
use crate::sinks::pg_store::PgStore;

pub struct ColdSink {
    location: String,
    options: BTreeMap<String, String>,
    /// Opened by `open`.
    archive: Option<Archive>,
    codec: Arc<Codec>,
    schemas: HashMap<u32, &'static apache_avro::Schema>,
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

    async fn schema(&mut self, id: u32) -> Result<&'static apache_avro::Schema, SinkError> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(s);
        }
        let text = self
            .codec
            .registry()
            .fetch(id)
            .await
            .map_err(|e| SinkError::Transient(e.to_string()))?;
        let schema = apache_avro::Schema::parse_str(&text)
            .map_err(|e| SinkError::Fatal(format!("schema {id} is not valid Avro: {e}")))?;
        // A handful per deployment, kept for the process's life like the codec's.
        let schema: &'static apache_avro::Schema = Box::leak(Box::new(schema));
        self.schemas.insert(id, schema);
        Ok(schema)
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
        for (partition, mut list) in by_partition {
            list.sort_by_key(|r| r.offset);
            let (first, to) = covered[&partition];
            let mut from = self.archived.get(&partition).map_or(first, |last| last + 1);
            // Runs of one schema, in offset order.
            let mut start = 0;
            while start < list.len() {
                let id = list[start].value_schema_id.unwrap_or_default();
                let end = list[start..]
                    .iter()
                    .position(|r| r.value_schema_id.unwrap_or_default() != id)
                    .map_or(list.len(), |n| start + n);
                let run = &list[start..end];
                let schema = self.schema(id).await?;
                let position = |r: &SinkRecord| {
                    let v = r.value.as_ref()?;
                    let source = record_field(v, "source")?;
                    match record_field(source, "position")? {
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    }
                };
                let ts = run
                    .first()
                    .and_then(|r| r.value.as_ref())
                    .and_then(|v| record_field(v, "source"))
                    .and_then(|s| match record_field(s, "ts_ms") {
                        Some(Value::Long(ms)) => Some(*ms),
                        _ => None,
                    })
                    .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
                let date = chrono::DateTime::from_timestamp_millis(ts)
                    .unwrap_or_default()
                    .format("%Y-%m-%d")
                    .to_string();
                let batch = FileBatch {
                    date,
                    partition,
                    schema_id: id,
                    schema,
                    records: run.iter().filter_map(|r| r.value.clone()).collect(),
                    first_offset: from,
                    last_offset: if end == list.len() {
                        to
                    } else {
                        list[end].offset - 1
                    },
                    first_position: position(run[0]),
                    last_position: position(run[run.len() - 1]),
                };
                let archive = self
                    .archive
                    .as_ref()
                    .ok_or_else(|| SinkError::Fatal("the archive was not opened".into()))?;
                let entry = archive.append(batch).await.map_err(transient)?;
                self.archived.insert(partition, entry.last_offset);
                from = entry.last_offset + 1;
                start = end;
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

/// Store and disk errors are retried; the sink's backoff bounds how often.
fn transient(e: ArchiveError) -> SinkError {
    SinkError::Transient(e.to_string())
}
