//! Kafka plumbing: client settings from the topology, and topic administration.

pub mod acks;
mod admin;
mod config;
pub mod liveness;
mod producer;
pub mod rejoin;

pub use admin::{ensure_topics, TopicSpec};
pub use config::{client_config, consumer_config};
pub use producer::producer;

/// Errors talking to Kafka. Transient ones are worth a retry; the rest need a fix.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create a Kafka client for {brokers}: {source}; check `kafka` in the topology")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka at {brokers} did not answer: {source}; is the broker running? (scripts/services.sh start)")]
    Unreachable {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "Kafka at {brokers} refused Strata's credentials: {reason}; check `kafka.sasl_mechanism`, \
         `kafka.sasl_username` and `kafka.sasl_password` in the topology"
    )]
    Authentication { brokers: String, reason: String },
    #[error("cannot create topic `{topic}`: {code}")]
    CreateTopic {
        topic: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
}

impl KafkaError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, KafkaError::Unreachable { .. })
    }
}
