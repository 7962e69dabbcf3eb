//! The broker's own limits, measured in the same run: a raw rdkafka producer (idempotent,
//! `acks=all`, like Strata's) and a raw consumer over the same records.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use strata_pipeline::kafka::{client_config, ensure_topics, producer, TopicSpec};
use strata_pipeline::topology::KafkaSettings;

use super::BenchOptions;

/// Records/s produced and consumed: `records` of `bytes` each into a fresh 4-partition topic.
pub async fn producer_and_consumer(
    options: &BenchOptions,
    records: u64,
    bytes: usize,
) -> Result<(f64, f64), String> {
    let kafka: KafkaSettings = serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        options.kafka_brokers
    ))
    .map_err(|e| e.to_string())?;
    let topic = format!("strata-bench-raw-{}", std::process::id());
    ensure_topics(
        &client_config(&kafka),
        &[TopicSpec {
            name: topic.clone(),
            partitions: 4,
            replication_factor: 1,
            compacted: false,
        }],
    )
    .await
    .map_err(|e| e.to_string())?;
    let producer = producer(&kafka).map_err(|e| e.to_string())?;
    let payload = vec![7u8; bytes];
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..records {
        let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
        acks.push(async move {
            let key = i.to_be_bytes();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key[..]).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        });
        // At most 10,000 records unacknowledged.
        if acks.len() >= 10_000 {
            if let Some(ack) = acks.next().await {
                ack?;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let produced = records as f64 / started.elapsed().as_secs_f64();

    let consumer: StreamConsumer = client_config(&kafka)
        .set("group.id", format!("{topic}.reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[&topic]).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for _ in 0..records {
        tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| "the raw consumer got nothing for 60 s".to_string())?
            .map_err(|e| e.to_string())?;
    }
    let consumed = records as f64 / started.elapsed().as_secs_f64();
    Ok((produced, consumed))
}
