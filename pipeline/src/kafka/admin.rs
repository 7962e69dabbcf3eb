use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::watch;

use super::KafkaError;

/// A client context that reports librdkafka's first authentication failure (a refused
/// SASL login), which librdkafka itself only logs while it keeps retrying: without it a
/// wrong password looks like a broker that does not answer.
struct AuthenticationWatch {
    refused: watch::Sender<Option<String>>,
}

impl ProducerContext for AuthenticationWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

impl ClientContext for AuthenticationWatch {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            self.refused.send_if_modified(|seen| {
                let first = seen.is_none();
                if first {
                    *seen = Some(reason.to_string());
                }
                first
            });
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// `cleanup.policy=compact`, for changelogs and other latest-value topics.
    pub compacted: bool,
}

/// Creates the topics that do not exist yet; existing topics are left as they are.
/// Credentials the broker refuses end it at once with [`KafkaError::Authentication`].
pub async fn ensure_topics(config: &ClientConfig, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    let brokers = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let client_error = |source| KafkaError::Client {
        brokers: brokers.clone(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(client_error)?;
    // The admin client never reports librdkafka's error events; a producer polled on its
    // own thread does, and the broker refuses its login the same way.
    let (refused, mut refusal) = watch::channel(None);
    let _watch: ThreadedProducer<AuthenticationWatch> = config
        .create_with_context(AuthenticationWatch { refused })
        .map_err(client_error)?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(i32::from(t.replication_factor)),
            );
            if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let seen = refusal.clone();
    let results = tokio::select! {
        results = admin.create_topics(new_topics.iter(), &options) => {
            results.map_err(|source| match seen.borrow().clone() {
                Some(reason) => KafkaError::Authentication { brokers, reason },
                None => KafkaError::Unreachable { brokers, source },
            })?
        }
        Ok(reason) = refusal.wait_for(Option::is_some) => {
            let reason = reason.clone().unwrap_or_default();
            return Err(KafkaError::Authentication { brokers, reason });
        }
    };
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}
