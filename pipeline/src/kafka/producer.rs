//! The producer every source and processor writes with: idempotent, `acks=all`, so an
//! acknowledged record is durable and a retried send never duplicates or reorders it.

use rdkafka::producer::FutureProducer;

use super::config::set_defaults;
use super::{client_config, KafkaError};
use crate::topology::KafkaSettings;

pub fn producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    let mut config = client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", &settings.acks);
    set_defaults(
        &mut config,
        settings,
        &[
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("message.timeout.ms", "300000"),
        ],
    );
    config.create().map_err(|source| KafkaError::Client {
        brokers: settings.bootstrap_servers.clone(),
        source,
    })
}
