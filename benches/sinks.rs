//! The stores' write rates: claim change events into the hot store and into the cold
//! archive from memory, and from a topic into the hot store through the sink runtime,
//! beside a raw consumer reading the same topic. Needs the local services
//! (`eval "$(scripts/services.sh start)"`).
//!
//! cargo bench --bench sinks          (STRATA_BENCH_ROWS, default 100000)
//! Goal: ≥ 50k rows/s into PostgreSQL.

/// Decoded events are trees of small allocations, which mimalloc serves faster than the
/// system allocator; benchmarks use the allocator the binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use sqlx::Connection;
use strata_connectors::pg_connection::PgConnection as PgSettings;
use strata_connectors::sinks::cold::{ColdSink, ColdSinkConfig};
use strata_connectors::sinks::pg_store::PgStore;
use strata_pipeline::avro::Codec;
use strata_pipeline::kafka::{client_config, ensure_topics, producer, TopicSpec};
use strata_pipeline::ops::metrics::Metrics;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::runtime::{run_sink, Sink, SinkRecord, SinkSpec};
use support::{env, Sender};

mod support;

const ENVELOPE: &str = r#"{"type":"record","name":"Envelope","namespace":"strata.bench.claims","fields":[
 {"name":"before","type":["null",{"type":"record","name":"Row","fields":[
   {"name":"claim_id","type":"long"},
   {"name":"member_id","type":["null","long"]},
   {"name":"provider_id","type":["null","long"]},
   {"name":"policy_id","type":["null","long"]},
   {"name":"claim_type","type":["null","string"]},
   {"name":"status","type":["null","string"]},
   {"name":"service_date_from","type":["null",{"type":"int","logicalType":"date"}]},
   {"name":"service_date_to","type":["null",{"type":"int","logicalType":"date"}]},
   {"name":"billed_amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}]},
   {"name":"allowed_amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}]},
   {"name":"diagnosis_codes","type":["null",{"type":"array","items":"string"}]},
   {"name":"place_of_service","type":["null","string"]}]}]},
 {"name":"after","type":["null","Row"]},
 {"name":"source","type":{"type":"record","name":"Source","fields":[
   {"name":"schema","type":"string"},{"name":"table","type":"string"},
   {"name":"position","type":"string"},{"name":"ts_ms","type":"long"}]}},
 {"name":"op","type":"string"}]}"#;

fn opt(v: Value) -> Value {
    Value::Union(1, Box::new(v))
}

fn decimal(cents: i64) -> Value {
    let bytes = cents.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(6);
    Value::Decimal(apache_avro::Decimal::from(bytes[skip..].to_vec()))
}

/// The change event of claim `i` (an insert), at position `i`.
fn claim(i: i64) -> Value {
    let day = 20_000 + (i % 300) as i32;
    let row = Value::Record(vec![
        ("claim_id".into(), Value::Long(i)),
        ("member_id".into(), opt(Value::Long(i % 20_000))),
        ("provider_id".into(), opt(Value::Long(i % 1_000))),
        ("policy_id".into(), opt(Value::Long(i % 20_000))),
        (
            "claim_type".into(),
            opt(Value::String("professional".into())),
        ),
        ("status".into(), opt(Value::String("SUBMITTED".into()))),
        ("service_date_from".into(), opt(Value::Date(day))),
        ("service_date_to".into(), opt(Value::Date(day + 1))),
        ("billed_amount".into(), opt(decimal(10_000 + i % 90_000))),
        ("allowed_amount".into(), opt(decimal(8_000 + i % 70_000))),
        (
            "diagnosis_codes".into(),
            opt(Value::Array(vec![
                Value::String("E11.9".into()),
                Value::String("I10".into()),
            ])),
        ),
        ("place_of_service".into(), opt(Value::String("11".into()))),
    ]);
    Value::Record(vec![
        ("before".into(), Value::Union(0, Box::new(Value::Null))),
        ("after".into(), Value::Union(1, Box::new(row))),
        (
            "source".into(),
            Value::Record(vec![
                ("schema".into(), Value::String("public".into())),
                ("table".into(), Value::String("claims".into())),
                (
                    "position".into(),
                    Value::String(format!("{i:016x}-00000000")),
                ),
                ("ts_ms".into(), Value::Long(1_764_000_000_000 + i)),
            ]),
        ),
        ("op".into(), Value::String("c".into())),
    ])
}

fn rate(rows: usize, seconds: f64) -> String {
    format!("{seconds:>7.2} s  {:>9.0} rows/s", rows as f64 / seconds)
}

fn admin_url() -> String {
    env(
        "STRATA_PG_ADMIN_URL",
        "postgres://postgres@127.0.0.1:15432/postgres",
    )
}

async fn drop_database(name: &str) {
    let mut c = sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("is PostgreSQL up? (scripts/services.sh start)");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut c)
        .await
        .unwrap();
}

/// A new database on the local cluster; returns its URL.
async fn fresh_database(name: &str) -> String {
    drop_database(name).await;
    let mut c = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    admin_url().rsplit_once('/').unwrap().0.to_string() + "/" + name
}

async fn count(url: &str) -> usize {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM hot.claims")
        .fetch_one(&mut c)
        .await
        .unwrap_or(0) as usize
}

#[tokio::main]
async fn main() {
    // `cargo test` runs benches without `--bench`: then a small smoke run proves it works.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rows: usize = if smoke {
        2_000
    } else {
        env("STRATA_BENCH_ROWS", "100000")
            .parse()
            .expect("a number")
    };
    let batch = 5_000;
    let run = format!("bench_sinks_{}", std::process::id());
    let codec = Arc::new(
        Codec::new(
            &serde_json::from_value(serde_json::json!({
                "url": env("STRATA_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081")
            }))
            .unwrap(),
        )
        .unwrap(),
    );
    let topic = format!("{run}.claims");
    let writer = codec
        .register(&format!("{topic}-value"), ENVELOPE)
        .await
        .expect("is the registry up? (scripts/services.sh start)");
    let key_writer = codec
        .register(
            &format!("{topic}-key"),
            r#"{"type":"record","name":"Key","namespace":"strata.bench.claims","fields":[{"name":"claim_id","type":"long"}]}"#,
        )
        .await
        .expect("registry");
    let key = |i: i64| Value::Record(vec![("claim_id".into(), Value::Long(i))]);
    let records: Vec<SinkRecord> = (0..rows as i64)
        .map(|i| SinkRecord {
            topic: topic.clone(),
            partition: (i % 4) as i32,
            offset: i / 4,
            key: Some(key(i)),
            value: Some(claim(i)),
            value_schema_id: Some(writer.id()),
        })
        .collect();

    eprintln!("[bench] hot store from memory");
    // Hot store from memory: batches of `batch` rows, position-guarded upserts.
    let url = fresh_database(&format!("{run}_mem")).await;
    let settings: PgSettings =
        serde_yaml_ng::from_str(&format!("{{url: '{url}', ssl_mode: disable}}")).unwrap();
    let mut hot = PgStore::new(settings, "hot".into(), false, 0, None);
    hot.open().await.expect("store opens");
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        hot.write(chunk).await.expect("written");
    }
    let hot_mem = started.elapsed().as_secs_f64();
    assert_eq!(count(&url).await, rows);
    // The same stream again: every upsert is refused by the position guard.
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        hot.write(chunk).await.expect("written");
    }
    let hot_again = started.elapsed().as_secs_f64();

    eprintln!("[bench] cold archive from memory");
    // Cold archive from memory, on a local directory.
    let dir = tempfile::tempdir().unwrap();
    let config: ColdSinkConfig =
        serde_json::from_value(serde_json::json!({ "path": dir.path().to_str().unwrap() }))
            .unwrap();
    let mut cold = ColdSink::new(&config, codec.clone());
    cold.open().await.expect("archive opens");
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        cold.write(chunk).await.expect("archived");
    }
    let cold_mem = started.elapsed().as_secs_f64();

    eprintln!("[bench] producing the topic");
    // Topic → hot store through the sink runtime, beside a raw consumer of the same topic.
    let kafka = support::kafka();
    let topics: Vec<TopicSpec> = [topic.clone(), format!("{run}.dead-letter")]
        .into_iter()
        .map(|name| TopicSpec {
            name,
            partitions: 4,
            replication_factor: 1,
            compacted: false,
        })
        .collect();
    ensure_topics(&client_config(&kafka), &topics)
        .await
        .expect("is the broker up? (scripts/services.sh start)");
    let p: FutureProducer = producer(&kafka).unwrap();
    let mut sender = Sender::new(p);
    for i in 0..rows as i64 {
        let value = writer.encode(&claim(i)).unwrap();
        let key = key_writer.encode(&key(i)).unwrap();
        sender.send(&topic, Some(key), Some(value)).await;
    }
    sender.finish().await;

    eprintln!("[bench] raw consumer");
    // Rates are timed from the first record on, leaving out the consumer group's join.
    let consumer: StreamConsumer = client_config(&kafka)
        .set("group.id", format!("{run}.raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    consumer.recv().await.expect("record");
    let started = Instant::now();
    for i in 1..rows {
        consumer.recv().await.expect("record");
        if i % 10_000 == 0 {
            eprintln!("[bench] raw consumer: {i} records");
        }
    }
    let raw_consume = started.elapsed().as_secs_f64();

    eprintln!("[bench] topic → hot store");
    let url = fresh_database(&format!("{run}_e2e")).await;
    let settings: PgSettings =
        serde_yaml_ng::from_str(&format!("{{url: '{url}', ssl_mode: disable}}")).unwrap();
    let spec = SinkSpec {
        component: "hot".into(),
        group_id: format!("{run}.hot"),
        inputs: vec![topic.clone()],
        dead_letter: format!("{run}.dead-letter"),
        audit: format!("{run}.audit"),
        max_rows: batch,
        max_wait: Duration::from_millis(200),
        window: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_sink(
        spec,
        kafka.clone(),
        codec.clone(),
        Metrics::new(),
        Box::new(PgStore::new(settings, "hot".into(), false, 0, None)),
        stop.clone(),
    ));
    let mut first = None;
    loop {
        let n = count(&url).await;
        if n > 0 && first.is_none() {
            first = Some((n, Instant::now()));
        }
        if n >= rows {
            break;
        }
        assert!(!task.is_finished(), "the sink stopped early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first_rows, started) = first.expect("rows arrived");
    let e2e_rows = rows - first_rows;
    let e2e = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().expect("drained");

    println!("rows: {rows} claim inserts (12 columns), batches of {batch}, PostgreSQL 15 and tansu (sqlite) on this machine");
    println!("hot store from memory        : {}", rate(rows, hot_mem));
    println!(
        "hot store, same rows again   : {}  (all refused by the position guard)",
        rate(rows, hot_again)
    );
    println!(
        "cold archive from memory     : {}  (local directory, fsynced files)",
        rate(rows, cold_mem)
    );
    println!("raw consumer of the topic    : {}", rate(rows, raw_consume));
    println!(
        "topic → hot store (run_sink) : {}  (after the first batch landed)",
        rate(e2e_rows, e2e)
    );
    println!(
        "ratio topic→hot / raw consume: {:.2}",
        (e2e_rows as f64 / e2e) / (rows as f64 / raw_consume)
    );
    println!("goal: ≥ 50k rows/s into PostgreSQL");
    for suffix in ["mem", "e2e"] {
        drop_database(&format!("{run}_{suffix}")).await;
    }
}
