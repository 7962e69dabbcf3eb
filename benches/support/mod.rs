//! What the end-to-end benches share: settings from the environment, a producer that
//! keeps a bounded number of records in flight, and a private memory-engine broker.
#![allow(dead_code)]

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_pipeline::topology::KafkaSettings;

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// The broker of scripts/services.sh, or `STRATA_KAFKA_BROKERS`.
pub fn kafka() -> KafkaSettings {
    serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        env("STRATA_KAFKA_BROKERS", "127.0.0.1:19092")
    ))
    .expect("kafka settings")
}

/// Sends records with at most 10,000 unacknowledged; `finish` waits for every ack.
pub struct Sender {
    producer: FutureProducer,
    acks: FuturesUnordered<BoxFuture<'static, Result<(), KafkaError>>>,
}

impl Sender {
    pub fn new(producer: FutureProducer) -> Self {
        Self {
            producer,
            acks: FuturesUnordered::new(),
        }
    }

    pub async fn send(&mut self, topic: &str, key: Option<Vec<u8>>, value: Option<Vec<u8>>) {
        let (producer, topic) = (self.producer.clone(), topic.to_string());
        self.acks.push(Box::pin(async move {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
            if let Some(k) = &key {
                record = record.key(k);
            }
            if let Some(v) = &value {
                record = record.payload(v);
            }
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }));
        if self.acks.len() >= 10_000 {
            if let Some(ack) = self.acks.next().await {
                ack.expect("produced");
            }
        }
    }

    pub async fn finish(mut self) {
        while let Some(ack) = self.acks.next().await {
            ack.expect("produced");
        }
    }
}

#[path = "../../tests/support/broker.rs"]
mod broker;
#[allow(unused_imports)] // not every bench starts one
pub use broker::MemoryBroker;
