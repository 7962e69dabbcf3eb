//! The processor runtime end to end through the broker, beside the raw limit on the same
//! broker in the same run: a plain rdkafka consume-and-produce loop over the same input.
//! Needs the local services (`eval "$(scripts/services.sh start)"`).
//!
//! cargo bench --bench runtime_e2e            (STRATA_BENCH_EVENTS, default 100000)
//! Goal: the runtime at ≥ 0.6 of the raw loop's rate.

/// Decoded events are trees of small allocations, which mimalloc serves faster than the
/// system allocator; benchmarks use the allocator the binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use strata_pipeline::avro::Codec;
use strata_pipeline::kafka::{client_config, ensure_topics, producer, TopicSpec};
use strata_pipeline::ops::metrics::Metrics;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::runtime::{
    run_processor, Context, Event, Output, OutputSchema, ProcessError, Processor, ProcessorEnv,
    ProcessorSpec,
};
use strata_pipeline::state::StateMemory;
use strata_pipeline::topology::{KafkaSettings, RegistrySettings};
use support::{env, Sender};

mod support;

const VALUE: &str = r#"{"type":"record","name":"Tick","namespace":"strata.bench","fields":[{"name":"n","type":"long"}]}"#;
const KEY: &str = r#""long""#;

/// Counts events per key in RocksDB and emits the running count: one state change and
/// one output per input.
struct Count;

impl Processor for Count {
    fn stores(&self) -> Vec<&'static str> {
        vec!["counts"]
    }
    fn event_time(&self, event: &Event<'_>) -> i64 {
        event.timestamp_ms
    }
    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(Value::Long(k)) = event.key else {
            return Ok(());
        };
        let key = k.to_be_bytes();
        let n = ctx
            .get("counts", &key)?
            .and_then(|v| v.try_into().ok().map(i64::from_be_bytes))
            .unwrap_or(0)
            + 1;
        ctx.put("counts", &key, n.to_be_bytes().to_vec());
        ctx.emit(Output {
            port: None,
            key: Some(Value::Long(*k)),
            key_schema: OutputSchema::Text(KEY.into()),
            value: Some(Value::Record(vec![("n".into(), Value::Long(n))])),
            value_schema: OutputSchema::Text(VALUE.into()),
            partition_by: None,
        });
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    // `cargo test` runs benches without `--bench`: then a small smoke run proves it works.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let events: usize = if smoke {
        2_000
    } else {
        env("STRATA_BENCH_EVENTS", "100000")
            .parse()
            .expect("a number")
    };
    let codec = Arc::new(
        Codec::new(&RegistrySettings {
            url: env("STRATA_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081"),
            username: None,
            password: None,
            ca_file: None,
            allow_incompatible: false,
        })
        .expect("codec"),
    );
    let mut brokers = vec![(
        "tansu, sqlite engine (scripts/services.sh)",
        support::kafka(),
        None,
    )];
    match support::MemoryBroker::start() {
        Some(broker) => brokers.push((
            "tansu, memory engine (private)",
            broker.settings(),
            Some(broker),
        )),
        None => eprintln!("[bench] no `tansu` on PATH: the memory-engine run is skipped"),
    }
    for (i, (label, kafka, _broker)) in brokers.iter().enumerate() {
        let run = format!("bench-{}-{i}", std::process::id());
        let (raw, strata) = measure(kafka, &codec, events, &run).await;
        println!("\nevents: {events} (10,000 keys, 4 partitions); broker: {label}");
        println!(
            "raw consume+produce : {raw:>7.2} s  {:>9.0} events/s",
            events as f64 / raw
        );
        println!(
            "strata runtime      : {strata:>7.2} s  {:>9.0} events/s  (state + changelog + output)",
            events as f64 / strata
        );
        println!("ratio strata/raw    : {:.2}  (goal ≥ 0.6)", raw / strata);
    }
}

/// Seconds for the raw loop and for the runtime to carry `events` records over `kafka`.
async fn measure(
    kafka: &KafkaSettings,
    codec: &Arc<Codec>,
    events: usize,
    run: &str,
) -> (f64, f64) {
    let (input, raw_out, out) = (
        format!("{run}.in"),
        format!("{run}.raw"),
        format!("{run}.out"),
    );
    let topics: Vec<_> = [&input, &raw_out, &out, &format!("{run}.dead-letter")]
        .into_iter()
        .map(|t| TopicSpec {
            name: t.clone(),
            partitions: 4,
            replication_factor: 1,
            compacted: false,
        })
        .collect();
    ensure_topics(&client_config(kafka), &topics)
        .await
        .expect("is the broker up? (scripts/services.sh start)");

    // Input: `events` records over 10,000 keys.
    let key_writer = codec
        .register(&format!("{input}-key"), KEY)
        .await
        .expect("registry up?");
    let writer = codec
        .register(&format!("{input}-value"), VALUE)
        .await
        .expect("registry");
    let p: FutureProducer = producer(kafka).expect("producer");
    let mut sender = Sender::new(p.clone());
    for i in 0..events as i64 {
        let key = key_writer.encode(&Value::Long(i % 10_000)).unwrap();
        let value = writer
            .encode(&Value::Record(vec![("n".into(), Value::Long(i))]))
            .unwrap();
        sender.send(&input, Some(key), Some(value)).await;
    }
    sender.finish().await;

    // Raw limit: consume the input and produce each record to another topic, acks awaited.
    let started = Instant::now();
    let consumer: StreamConsumer = client_config(kafka)
        .set("group.id", format!("{run}.raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&input]).unwrap();
    let mut sender = Sender::new(p.clone());
    for _ in 0..events {
        let m = consumer.recv().await.expect("record");
        let (key, value) = (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
        sender.send(&raw_out, key, value).await;
    }
    sender.finish().await;
    let raw = started.elapsed().as_secs_f64();

    // The runtime: decode, RocksDB state, output, changelog, offsets.
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    let spec = ProcessorSpec {
        component: "count".into(),
        group_id: format!("{run}.strata"),
        inputs: vec![input.clone()],
        outputs: HashMap::from([(None, out.clone())]),
        changelog: format!("{run}.changelog"),
        dead_letter: format!("{run}.dead-letter"),
        audit: format!("{run}.audit"),
        state_dir: state.path().to_path_buf(),
        partitions: 4,
        changelog_replication_factor: 1,
        max_batch: 5000,
        max_batch_wait: Duration::from_millis(strata_pipeline::topology::DEFAULT_BATCH_WAIT_MS),
        commit_interval: Duration::from_millis(
            strata_pipeline::topology::DEFAULT_COMMIT_INTERVAL_MS,
        ),
        window: None,
    };
    let env = ProcessorEnv {
        kafka: kafka.clone(),
        codec: codec.clone(),
        metrics: metrics.clone(),
        state_memory: StateMemory::new(64 << 20, 64 << 20, 32 << 20),
    };
    let started = Instant::now();
    let task = tokio::spawn(run_processor(spec, env, Box::new(Count), stop.clone()));
    let done = metrics.events_out.with_label_values(&["count"]);
    while (done.get() as usize) < events {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "the processor stopped early");
    }
    let strata = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().expect("drained");
    (raw, strata)
}
