//! Sending a source's change events to Kafka, shared by the PostgreSQL and SQL Server
//! sources.
//!
//! Invariants:
//! - Each captured table has its topic `<region>.cdc.<db>.<schema>.<table>` and its key
//!   and value schemas registered (subjects `<topic>-key`, `<topic>-value`) before its
//!   first event is sent; a changed table shape registers a new version first.
//! - Events are handed to the producer in the order they are sent, each counted against
//!   its transaction in the [`AckTracker`]; [`AckTracker::confirmed`] is the position a
//!   source may acknowledge upstream. At most `max_in_flight` events wait for Kafka
//!   (back-pressure on the source).

use std::collections::HashMap;

use apache_avro::types::Value;
use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_pipeline::avro::schemas::{table_schemas, SchemaError};
use strata_pipeline::avro::types::Column;
use strata_pipeline::avro::{Codec, CodecError, Writer};
use strata_pipeline::kafka::acks::{AckTracker, TxId};
use strata_pipeline::kafka::{ensure_topics, KafkaError, TopicSpec};
use strata_pipeline::topology::KafkaSettings;

/// Everything a source needs from the deployment around it.
pub struct SourceContext {
    /// The component's name in the topology (metric label).
    pub component: String,
    pub region: String,
    pub kafka: KafkaSettings,
    pub partitions: i32,
    pub replication_factor: i16,
    pub codec: std::sync::Arc<Codec>,
    /// Snapshot progress (`strata_snapshot_rows`, `strata_snapshot_rows_estimated`),
    /// restarts and readiness.
    pub metrics: strata_pipeline::ops::metrics::Metrics,
}

/// A captured table as the events describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
    pub key: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("schema: {0}")]
    Schema(#[from] SchemaError),
    #[error("Kafka did not accept an event: {0}")]
    Delivery(#[source] rdkafka::error::KafkaError),
}

impl EmitError {
    /// The broker or the registry away for a while (worth a retry from the acknowledged
    /// position), as opposed to a schema that cannot be made.
    pub fn is_transient(&self) -> bool {
        match self {
            EmitError::Kafka(e) => e.is_transient(),
            EmitError::Codec(e) => e.is_transient(),
            EmitError::Delivery(_) => true,
            EmitError::Schema(_) => false,
        }
    }
}

/// Milliseconds since the epoch, now (the envelope's processing time).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The topic of one captured table: `<region>.cdc.<db>.<schema>.<table>`.
pub fn topic_name(region: &str, db: &str, schema: &str, table: &str) -> String {
    format!("{region}.cdc.{db}.{schema}.{table}")
}

struct TableWriters {
    topic: String,
    key: Writer,
    value: Writer,
}

type Delivery = std::pin::Pin<
    Box<dyn std::future::Future<Output = (TxId, Result<(), rdkafka::error::KafkaError>)> + Send>,
>;

/// Sends events and tracks which source position Kafka has acknowledged.
pub struct Emitter<'a, P> {
    pub ctx: &'a SourceContext,
    /// The source database's name, in topic names and the envelope.
    pub db: String,
    pub producer: FutureProducer,
    writers: HashMap<(String, String), TableWriters>,
    pub tracker: AckTracker<P>,
    deliveries: FuturesOrdered<Delivery>,
    max_in_flight: usize,
    /// `strata_events_out_total` of the source: events Kafka acknowledged.
    events_out: prometheus::IntCounter,
}

impl<'a, P: Copy + Ord> Emitter<'a, P> {
    pub fn new(
        ctx: &'a SourceContext,
        db: String,
        confirmed: Option<P>,
        max_in_flight: usize,
    ) -> Result<Self, EmitError> {
        Ok(Self {
            ctx,
            db,
            producer: strata_pipeline::kafka::producer(&ctx.kafka)?,
            writers: HashMap::new(),
            tracker: AckTracker::new(confirmed),
            deliveries: FuturesOrdered::new(),
            max_in_flight: max_in_flight.max(1),
            events_out: ctx.metrics.events_out.with_label_values(&[&ctx.component]),
        })
    }

    /// Creates the table's topic and registers its schemas, once per shape (`refresh`
    /// registers the shape again: a new schema version after a change upstream).
    pub async fn prepare(&mut self, shape: &TableShape, refresh: bool) -> Result<(), EmitError> {
        self.writers_for(shape, refresh).await.map(|_| ())
    }

    /// The table's writers, made (topic created, schemas registered) when missing or
    /// `refresh`ed; one lookup per event on the hot path.
    async fn writers_for(
        &mut self,
        shape: &TableShape,
        refresh: bool,
    ) -> Result<&TableWriters, EmitError> {
        let id = (shape.schema.clone(), shape.table.clone());
        if refresh || !self.writers.contains_key(&id) {
            let writers = make_writers(self.ctx, &self.db, shape).await?;
            self.writers.insert(id.clone(), writers);
        }
        Ok(&self.writers[&id])
    }

    /// Sends one event of transaction `tx` (a truncate has no key); waits for
    /// deliveries first when too many are in flight.
    pub async fn send(
        &mut self,
        tx: TxId,
        shape: &TableShape,
        key: Option<&Value>,
        value: &Value,
    ) -> Result<(), EmitError> {
        while self.deliveries.len() >= self.max_in_flight {
            self.settle_one().await?;
        }
        let w = self.writers_for(shape, false).await?;
        let key_bytes = key.map(|k| w.key.encode(k)).transpose()?;
        let (value_bytes, topic) = (w.value.encode(value)?, w.topic.clone());
        let producer = self.producer.clone();
        self.tracker.sent(tx);
        self.deliveries.push_back(Box::pin(async move {
            let mut record = FutureRecord::to(&topic).payload(&value_bytes);
            if let Some(k) = &key_bytes {
                record = record.key(k);
            }
            let result = producer
                .send(record, rdkafka::util::Timeout::Never)
                .await
                .map(|_| ())
                .map_err(|(e, _)| e);
            (tx, result)
        }));
        Ok(())
    }

    /// Whether events are waiting for Kafka.
    pub fn in_flight(&self) -> bool {
        !self.deliveries.is_empty()
    }

    /// Waits for the oldest event in flight; `Ok(false)` when none is.
    pub async fn settle_one(&mut self) -> Result<bool, EmitError> {
        match self.deliveries.next().await {
            Some((tx, result)) => {
                result.map_err(EmitError::Delivery)?;
                self.tracker.acked(tx);
                self.events_out.inc();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Waits until Kafka acknowledged every event sent.
    pub async fn drain(&mut self) -> Result<(), EmitError> {
        while self.settle_one().await? {}
        Ok(())
    }
}

/// Creates the table's topic and registers its key and value schemas.
async fn make_writers(
    ctx: &SourceContext,
    db: &str,
    shape: &TableShape,
) -> Result<TableWriters, EmitError> {
    let topic = topic_name(&ctx.region, db, &shape.schema, &shape.table);
    ensure_topics(
        &strata_pipeline::kafka::client_config(&ctx.kafka),
        &[TopicSpec {
            name: topic.clone(),
            partitions: ctx.partitions,
            replication_factor: ctx.replication_factor,
            compacted: false,
        }],
    )
    .await?;
    let schemas = table_schemas(
        &topic,
        &format!("{}.{}", shape.schema, shape.table),
        &shape.columns,
        &shape.key,
    )?;
    let codec = &ctx.codec;
    let key = codec
        .register(&format!("{topic}-key"), &schemas.key)
        .await?;
    let value = codec
        .register(&format!("{topic}-value"), &schemas.value)
        .await?;
    Ok(TableWriters { topic, key, value })
}
