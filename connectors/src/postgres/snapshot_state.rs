//! Whether a slot's initial snapshot finished, recorded in Kafka beside the events.
//!
//! PostgreSQL creates a slot (with its exported snapshot) before the snapshot is read. If
//! the source stops in between — kill -9, a lost connection, shutdown — the slot exists
//! but rows are missing from the topics, and streaming from that slot would skip them for
//! good. So the source keeps one record per slot in the compacted topic
//! `<region>.strata.source-state`, keyed `postgres/<database>/<slot>`:
//!
//! - `started`, acknowledged by Kafka before the first snapshot row is read;
//! - `done`, written once Kafka acknowledged every snapshot row.
//!
//! Invariant: the source streams from an existing slot only when the latest record for it
//! is `done` (or the source was told not to snapshot). Otherwise it drops the slot and
//! snapshots again from a new one: rows already sent are sent again with the new slot's
//! position, which position-guarded sinks apply as the same row image.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use strata_pipeline::kafka::{ensure_topics, KafkaError, TopicSpec};
use strata_pipeline::topology::KafkaSettings;

use super::position::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    Started,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub progress: Progress,
    /// The slot's consistent point: the position of every snapshot row.
    pub consistent_lsn: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotStateError {
    #[error(transparent)]
    Topic(#[from] KafkaError),
    #[error("reading {topic}: {source}")]
    Read {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("writing the snapshot state of slot `{slot}` to {topic}: {source}")]
    Write {
        topic: String,
        slot: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// The snapshot record of one slot in one database.
pub struct SnapshotState {
    topic: String,
    key: String,
    slot: String,
    /// Set once the topic is known to exist: it is created (or checked) once, not on
    /// every read and write.
    topic_ready: tokio::sync::OnceCell<()>,
}

impl SnapshotState {
    pub fn new(region: &str, database: &str, slot: &str) -> Self {
        Self {
            topic: format!("{region}.strata.source-state"),
            key: format!("postgres/{database}/{slot}"),
            slot: slot.into(),
            topic_ready: tokio::sync::OnceCell::new(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    async fn ensure_topic(&self, kafka: &KafkaSettings) -> Result<(), SnapshotStateError> {
        self.topic_ready
            .get_or_try_init(|| async {
                let spec = TopicSpec {
                    name: self.topic.clone(),
                    partitions: 1,
                    replication_factor: 1,
                    compacted: true,
                };
                ensure_topics(&strata_pipeline::kafka::client_config(kafka), &[spec]).await
            })
            .await?;
        Ok(())
    }

    /// The latest record for this slot, if any.
    pub async fn read(
        &self,
        kafka: &KafkaSettings,
    ) -> Result<Option<SnapshotRecord>, SnapshotStateError> {
        self.ensure_topic(kafka).await?;
        let (topic, key) = (self.topic.clone(), self.key.clone());
        let mut config = strata_pipeline::kafka::client_config(kafka);
        config
            .set("group.id", "strata-source-state-reader")
            .set("enable.auto.commit", "false");
        let read = move || -> Result<Option<SnapshotRecord>, rdkafka::error::KafkaError> {
            let consumer: BaseConsumer = config.create()?;
            let (low, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(30))?;
            if high <= low {
                return Ok(None);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let mut latest = None;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut next = low;
            while next < high {
                if std::time::Instant::now() > deadline {
                    return Err(rdkafka::error::KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    ));
                }
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let message = message?;
                next = message.offset() + 1;
                if message.key() != Some(key.as_bytes()) {
                    continue;
                }
                // An unreadable record counts as no record: the snapshot is read again.
                latest = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<SnapshotRecord>(p).ok());
            }
            Ok(latest)
        };
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(read)
            .await
            .expect("the state reader does not panic")
            .map_err(|source| SnapshotStateError::Read { topic, source })
    }

    /// Records `progress` for the snapshot at `consistent` and waits for Kafka's ack.
    pub async fn write(
        &self,
        kafka: &KafkaSettings,
        producer: &FutureProducer,
        progress: Progress,
        consistent: Lsn,
    ) -> Result<(), SnapshotStateError> {
        self.ensure_topic(kafka).await?;
        let record = SnapshotRecord {
            progress,
            consistent_lsn: consistent.to_string(),
        };
        let payload = serde_json::to_vec(&record).expect("a plain struct serialises");
        producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&self.key)
                    .payload(&payload),
                rdkafka::util::Timeout::Never,
            )
            .await
            .map_err(|(source, _)| SnapshotStateError::Write {
                topic: self.topic.clone(),
                slot: self.slot.clone(),
                source,
            })?;
        Ok(())
    }
}
