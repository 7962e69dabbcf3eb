//! A source's durable state in Kafka, beside its events: one JSON record per key in the
//! compacted topic `<region>.strata.source-state`.
//!
//! The PostgreSQL source keeps whether a slot's snapshot finished there; the SQL Server
//! source keeps its offset (the position up to which Kafka acknowledged every event).
//! Invariant: a record is written only after Kafka acknowledged the events it vouches
//! for, and [`SourceState::write`] returns only once Kafka acknowledged the record
//! itself; the latest record of a key wins on [`SourceState::read`].

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::Serialize;
use strata_pipeline::kafka::{ensure_topics, KafkaError, TopicSpec};
use strata_pipeline::topology::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum SourceStateError {
    #[error(transparent)]
    Topic(#[from] KafkaError),
    #[error("reading {topic}: {source}")]
    Read {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("writing the state `{key}` to {topic}: {source}")]
    Write {
        topic: String,
        key: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// The state record of one source under one key.
pub struct SourceState {
    topic: String,
    key: String,
    /// Set once the topic is known to exist: it is created (or checked) once, not on
    /// every read and write.
    topic_ready: tokio::sync::OnceCell<()>,
}

impl SourceState {
    pub fn new(region: &str, key: &str) -> Self {
        Self {
            topic: format!("{region}.strata.source-state"),
            key: key.into(),
            topic_ready: tokio::sync::OnceCell::new(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    async fn ensure_topic(&self, kafka: &KafkaSettings) -> Result<(), SourceStateError> {
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

    /// The latest record under this key, if any. An unreadable record counts as none.
    pub async fn read<T: DeserializeOwned + Send + 'static>(
        &self,
        kafka: &KafkaSettings,
    ) -> Result<Option<T>, SourceStateError> {
        self.ensure_topic(kafka).await?;
        let (topic, key) = (self.topic.clone(), self.key.clone());
        let mut config = strata_pipeline::kafka::client_config(kafka);
        config
            .set("group.id", "strata-source-state-reader")
            .set("enable.auto.commit", "false");
        let read = move || -> Result<Option<T>, rdkafka::error::KafkaError> {
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
                latest = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<T>(p).ok());
            }
            Ok(latest)
        };
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(read)
            .await
            .expect("the state reader does not panic")
            .map_err(|source| SourceStateError::Read { topic, source })
    }

    /// Writes `record` under this key and waits for Kafka's acknowledgement.
    pub async fn write<T: Serialize>(
        &self,
        kafka: &KafkaSettings,
        producer: &FutureProducer,
        record: &T,
    ) -> Result<(), SourceStateError> {
        self.ensure_topic(kafka).await?;
        let payload = serde_json::to_vec(record).expect("a plain struct serialises");
        producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&self.key)
                    .payload(&payload),
                rdkafka::util::Timeout::Never,
            )
            .await
            .map_err(|(source, _)| SourceStateError::Write {
                topic: self.topic.clone(),
                key: self.key.clone(),
                source,
            })?;
        Ok(())
    }
}
