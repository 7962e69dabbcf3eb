//! The local services work: the broker carries records through a consumer group and the
//! PostgreSQL cluster is ready for logical replication. Needs scripts/services.sh start.

mod support;

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use sqlx::Connection;
use strata_pipeline::kafka::{ensure_topics, TopicSpec};

#[tokio::test]
async fn broker_carries_records_through_a_consumer_group() {
    let brokers = support::kafka_brokers();
    let topic = support::unique("services-test");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &brokers);
    ensure_topics(
        &config,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 2,
            replication_factor: 1,
            compacted: false,
        }],
    )
    .await
    .expect("topic created");

    let producer: FutureProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..10 {
        let key = format!("k{i}");
        let value = format!("v{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acknowledged");
    }

    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", support::unique("services-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < 10 {
            let msg = consumer.recv().await.expect("a record");
            seen.insert(String::from_utf8(msg.payload().unwrap().to_vec()).unwrap());
            consumer
                .commit_message(&msg, CommitMode::Sync)
                .expect("offset committed");
        }
    })
    .await
    .expect("all ten records within a minute");
    assert_eq!(seen.len(), 10);
    assert!(seen.contains("v0") && seen.contains("v9"));
}

#[tokio::test]
async fn postgres_is_ready_for_logical_replication() {
    let mut conn = sqlx::PgConnection::connect(&support::pg_url())
        .await
        .expect("connect");
    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(wal_level, "logical");
    let slots: String = sqlx::query_scalar("SHOW max_replication_slots")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(slots.parse::<u32>().unwrap() >= 10);
}
