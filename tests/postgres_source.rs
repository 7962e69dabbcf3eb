//! The PostgreSQL source against the real PostgreSQL and broker: snapshot rows as
//! `op=r`, then inserts, updates and deletes in commit order with their positions, and
//! the slot's confirmed position moving once Kafka has the events.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use sqlx::Executor;
use strata_connectors::postgres::source::{self, SourceContext};
use strata_connectors::postgres::PostgresSourceConfig;
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::topology::{KafkaSettings, RegistrySettings};

fn field<'a>(record: &'a Value, name: &str) -> &'a Value {
    let Value::Record(fields) = record else {
        panic!("a record: {record:?}")
    };
    let v = &fields
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("field {name}"))
        .1;
    match v {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

#[tokio::test]
async fn snapshot_then_changes_reach_kafka_in_order() {
    let (url, mut conn) = support::fresh_db("pgsource").await;
    conn.execute(
        "CREATE TABLE wide (id bigint PRIMARY KEY, a text, b text, c text, d text, e text);
         INSERT INTO wide SELECT g, 'a', 'b', 'c', 'd', 'e' FROM generate_series(1, 3) g;
         CREATE TABLE items (id bigint PRIMARY KEY, note text, amount numeric(12,2));
         INSERT INTO items SELECT g, 'row ' || g, g * 1.5 FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let slot = format!("t_slot_{}", std::process::id());
    let region = support::unique("pgsrc").replace('_', "-");
    let config: PostgresSourceConfig = serde_yaml_ng::from_str(&format!(
        "{{connection: {{url: '{url}', ssl_mode: disable}}, publication: t_pub, slot: {slot}, tables: [public.wide, public.items], status_interval: 1s}}"
    ))
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let codec = Arc::new(
        Codec::new(&RegistrySettings {
            url: registry.url.clone(),
            username: None,
            password: None,
            ca_file: None,
            allow_incompatible: false,
        })
        .unwrap(),
    );
    let kafka: KafkaSettings = serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        support::kafka_brokers()
    ))
    .unwrap();
    let ctx = SourceContext {
        name: "db".into(),
        region: region.clone(),
        kafka,
        partitions: 2,
        replication_factor: 1,
        codec: codec.clone(),
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { source::run(&config, &ctx, token).await });

    // Wait for the slot (created before the snapshot is read), then change rows.
    support::wait_for("the replication slot", Duration::from_secs(60), || {
        let url = url.clone();
        let slot = slot.clone();
        async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .ok()?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(&slot)
            .fetch_one(&mut c)
            .await
            .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    conn.execute("INSERT INTO items VALUES (101, 'new', 9.99)")
        .await
        .unwrap();
    conn.execute("UPDATE items SET note = 'changed' WHERE id = 5")
        .await
        .unwrap();
    conn.execute("DELETE FROM items WHERE id = 7")
        .await
        .unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("group.id", support::unique("pgsrc-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topic = format!(
        "{region}.cdc.{}.public.items",
        url.rsplit('/').next().unwrap()
    );
    support::wait_for("the topic", Duration::from_secs(60), || {
        let found = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .ok()
            .is_some_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && !t.partitions().is_empty())
            });
        async move { found.then_some(()) }
    })
    .await;
    consumer.subscribe(&[&topic]).unwrap();

    let mut by_op: BTreeMap<String, usize> = BTreeMap::new();
    let mut positions: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let completed = tokio::time::timeout(Duration::from_secs(90), async {
        while by_op.values().sum::<usize>() < 103 {
            let msg = consumer.recv().await.expect("a record");
            let decoded = codec.decode(msg.payload().unwrap()).await.expect("decodes");
            let op = match field(&decoded.value, "op") {
                Value::String(s) => s.clone(),
                v => panic!("{v:?}"),
            };
            let source = field(&decoded.value, "source");
            let position = match field(source, "position") {
                Value::String(s) => s.clone(),
                v => panic!("{v:?}"),
            };
            if let Some(key) = msg.key() {
                let key = codec.decode(key).await.expect("key decodes");
                let id = match field(&key.value, "id") {
                    Value::Long(i) => *i,
                    v => panic!("{v:?}"),
                };
                positions.entry(id).or_default().push(position);
            } else {
                assert_eq!(op, "t", "only truncates have no key");
            }
            *by_op.entry(op).or_default() += 1;
        }
    })
    .await;
    if completed.is_err() {
        let source = if task.is_finished() {
            format!("{:?}", task.await)
        } else {
            "still running".into()
        };
        panic!("all events within 90 s; got {by_op:?}; source: {source}");
    }
    assert_eq!(by_op.get("r"), Some(&100), "{by_op:?}");
    assert_eq!(
        (by_op.get("c"), by_op.get("u"), by_op.get("d")),
        (Some(&1), Some(&1), Some(&1)),
        "{by_op:?}"
    );
    let five = &positions[&5];
    assert!(
        five.len() == 2 && five[0] < five[1],
        "snapshot before update for id 5: {five:?}"
    );

    stop.cancel();
    task.await.unwrap().expect("the source stops cleanly");
    let confirmed: Option<String> = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let current: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    println!("confirmed {confirmed:?}, current {current}");
    assert!(confirmed.is_some());
    conn.execute(format!("SELECT pg_drop_replication_slot('{slot}')").as_str())
        .await
        .unwrap();
    registry.shutdown().await;
}

/// Stops the source, changes rows while it is down, starts it again: every change made
/// while it was down arrives, and nothing already acknowledged is sent again except
/// with the position it had.
#[tokio::test]
async fn resumes_from_the_confirmed_position_after_a_restart() {
    let (url, mut conn) = support::fresh_db("pgresume").await;
    conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, note text)")
        .await
        .unwrap();
    let slot = format!("t_resume_{}", std::process::id());
    let region = support::unique("pgres").replace('_', "-");
    let config: PostgresSourceConfig = serde_yaml_ng::from_str(&format!(
        "{{connection: {{url: '{url}', ssl_mode: disable}}, publication: t_pub, slot: {slot}, tables: [public.items], status_interval: 1s}}"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let codec = Arc::new(
        Codec::new(&RegistrySettings {
            url: registry.url.clone(),
            username: None,
            password: None,
            ca_file: None,
            allow_incompatible: false,
        })
        .unwrap(),
    );
    let kafka: KafkaSettings = serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        support::kafka_brokers()
    ))
    .unwrap();
    let ctx = Arc::new(SourceContext {
        name: "db".into(),
        region: region.clone(),
        kafka,
        partitions: 1,
        replication_factor: 1,
        codec: codec.clone(),
    });
    let config = Arc::new(config);
    let start = |stop: CancellationToken| {
        let (config, ctx) = (config.clone(), ctx.clone());
        tokio::spawn(async move { source::run(&config, &ctx, stop).await })
    };
    let slot_active = |want: bool| {
        let (url, slot) = (url.clone(), slot.clone());
        move || {
            let (url, slot) = (url.clone(), slot.clone());
            async move {
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .ok()?;
                let active: Option<bool> = sqlx::query_scalar(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                )
                .bind(&slot)
                .fetch_optional(&mut c)
                .await
                .ok()?;
                (active == Some(want)).then_some(())
            }
        }
    };

    let first = CancellationToken::new();
    let task = start(first.clone());
    support::wait_for(
        "the slot in use",
        Duration::from_secs(60),
        slot_active(true),
    )
    .await;
    conn.execute("INSERT INTO items SELECT g, 'first' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let topic = format!(
        "{region}.cdc.{}.public.items",
        url.rsplit('/').next().unwrap()
    );
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("group.id", support::unique("pgres-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    support::wait_for("the topic", Duration::from_secs(60), || {
        let found = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .ok()
            .is_some_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && !t.partitions().is_empty())
            });
        async move { found.then_some(()) }
    })
    .await;
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen: BTreeMap<(i64, String), usize> = BTreeMap::new();
    let read_until = async |seen: &mut BTreeMap<(i64, String), usize>, ids: usize| {
        tokio::time::timeout(Duration::from_secs(90), async {
            while seen
                .keys()
                .map(|(id, _)| *id)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                < ids
            {
                let msg = consumer.recv().await.expect("a record");
                let decoded = codec.decode(msg.payload().unwrap()).await.expect("decodes");
                let position = match field(field(&decoded.value, "source"), "position") {
                    Value::String(s) => s.clone(),
                    v => panic!("{v:?}"),
                };
                let key = codec.decode(msg.key().unwrap()).await.expect("key");
                let id = match field(&key.value, "id") {
                    Value::Long(i) => *i,
                    v => panic!("{v:?}"),
                };
                *seen.entry((id, position)).or_default() += 1;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{ids} ids within 90 s, saw {}", seen.len()));
    };
    read_until(&mut seen, 50).await;

    first.cancel();
    task.await.unwrap().expect("stops cleanly");
    support::wait_for(
        "the slot released",
        Duration::from_secs(30),
        slot_active(false),
    )
    .await;
    conn.execute("INSERT INTO items SELECT g, 'while down' FROM generate_series(51, 80) g")
        .await
        .unwrap();

    let second = CancellationToken::new();
    let task = start(second.clone());
    read_until(&mut seen, 80).await;
    second.cancel();
    task.await.unwrap().expect("stops cleanly");

    let ids: std::collections::BTreeSet<i64> = seen.keys().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=80).collect(), "every change arrived");
    let per_id: BTreeMap<i64, usize> = seen.keys().fold(BTreeMap::new(), |mut m, (id, _)| {
        *m.entry(*id).or_default() += 1;
        m
    });
    assert!(
        per_id.values().all(|n| *n == 1),
        "a re-sent change carries its original position: {per_id:?}"
    );
    conn.execute(format!("SELECT pg_drop_replication_slot('{slot}')").as_str())
        .await
        .unwrap();
    registry.shutdown().await;
}
