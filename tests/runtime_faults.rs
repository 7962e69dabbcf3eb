//! The processor runtime under faults, against the real broker: a 100k-event run of the
//! conflict-resolution processor (`strata run`, as its own process) is killed with
//! SIGKILL at 20 seeded points, has its RocksDB directory deleted between some runs, and
//! runs as two instances with a rebalance in the middle of others. Each key's output
//! sequence, deduplicated by input position, must equal that of a run without faults
//! over the same input.
//!
//! The outputs depend on state, not on the input alone: two origins write each claim
//! (the cloud one version in four) under `source_priority` (the cloud owns `status`, on
//! premise `diagnosis`), so every merged row carries the other origin's last write,
//! which only the processor's state (restored from its changelog after a wipe) can
//! supply. Lost or stale state gives different bytes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apache_avro::types::Value;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use strata_pipeline::avro::schemas::table_schemas;
use strata_pipeline::avro::types::{Column, ColumnType};
use strata_pipeline::avro::Codec;
use strata_pipeline::kafka::{client_config, ensure_topics, TopicSpec};
use strata_pipeline::runtime::processor::partition_for;
use strata_pipeline::topology::KafkaSettings;

const EVENTS: usize = 100_000;
const KEYS: i64 = 5_000;
const ROUNDS: u64 = 20;

fn kafka() -> KafkaSettings {
    serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        support::kafka_brokers()
    ))
    .unwrap()
}

/// Writes EVENTS change envelopes of `public.claims` (KEYS claims, each updated in turn).
async fn fill_input(codec: &Codec, topic: &str) {
    let columns = vec![
        Column {
            name: "claim_id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        Column {
            name: "status".into(),
            ty: ColumnType::Text,
            nullable: true,
        },
        Column {
            name: "diagnosis".into(),
            ty: ColumnType::Text,
            nullable: true,
        },
    ];
    let schemas = table_schemas(topic, "public.claims", &columns, &["claim_id".into()]).unwrap();
    let key_writer = codec
        .register(&format!("{topic}-key"), &schemas.key)
        .await
        .unwrap();
    let writer = codec
        .register(&format!("{topic}-value"), &schemas.value)
        .await
        .unwrap();
    let producer: FutureProducer = strata_pipeline::kafka::producer(&kafka()).unwrap();
    let mut pending = Vec::new();
    for i in 0..EVENTS {
        let id = i as i64 % KEYS;
        let version = i as i64 / KEYS;
        // One version in four is the cloud's; every value is new.
        let origin = if version % 4 == 1 { "cloud" } else { "on-prem" };
        let text = |v: String| Value::Union(1, Box::new(Value::String(v)));
        let row = Value::Record(vec![
            ("claim_id".into(), Value::Long(id)),
            ("status".into(), text(format!("{origin} status {version}"))),
            (
                "diagnosis".into(),
                text(format!("{origin} diagnosis {version}")),
            ),
        ]);
        let source = Value::Record(vec![
            ("connector".into(), Value::String("postgres".into())),
            ("region".into(), Value::String("faults".into())),
            ("db".into(), Value::String("claims".into())),
            ("schema".into(), Value::String("public".into())),
            ("table".into(), Value::String("claims".into())),
            (
                "position".into(),
                Value::String(format!("{:016x}-00000000", i + 1)),
            ),
            (
                "lsn".into(),
                Value::Union(1, Box::new(Value::Long(i as i64 + 1))),
            ),
            ("tx_index".into(), Value::Union(1, Box::new(Value::Long(0)))),
            ("commit_lsn".into(), Value::Union(0, Box::new(Value::Null))),
            ("seqval".into(), Value::Union(0, Box::new(Value::Null))),
            ("txid".into(), Value::Union(0, Box::new(Value::Null))),
            ("ts_ms".into(), Value::Long(1_764_000_000_000 + i as i64)),
            ("snapshot".into(), Value::String("false".into())),
        ]);
        let envelope = Value::Record(vec![
            ("before".into(), Value::Union(0, Box::new(Value::Null))),
            ("after".into(), Value::Union(1, Box::new(row))),
            ("source".into(), source),
            (
                "op".into(),
                Value::String(if version == 0 { "c" } else { "u" }.into()),
            ),
            ("ts_ms".into(), Value::Union(0, Box::new(Value::Null))),
            ("unavailable_columns".into(), Value::Array(vec![])),
            ("origin".into(), text(origin.to_string())),
            (
                "hlc".into(),
                Value::Union(1, Box::new(Value::Long((i as i64 + 1) << 16))),
            ),
        ]);
        let key = key_writer
            .encode(&Value::Record(vec![("claim_id".into(), Value::Long(id))]))
            .unwrap();
        let value = writer.encode(&envelope).unwrap();
        let partition = partition_for(&id.to_be_bytes(), 4);
        let producer = producer.clone();
        let topic = topic.to_string();
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key(&key)
                        .payload(&value),
                    Duration::from_secs(60),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        }));
        if pending.len() >= 5_000 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// A topology with only the conflicts processor over `input`, state under `state`.
fn topology(dir: &Path, region: &str, registry: &str, input: &str, state: &Path) -> PathBuf {
    let text = format!(
        "region: {region}\n\
         kafka: {{ bootstrap_servers: '{}' }}\n\
         schema_registry: {{ url: '{registry}' }}\n\
         state: {{ dir: '{}' }}\n\
         topics: {{ partitions: 4 }}\n\
         processors:\n  conflicts:\n    kind: conflict_resolution\n    inputs: ['topic:{input}']\n    origin: on-prem\n\
         \x20   tables:\n      public.claims:\n        policy: source_priority\n\
         \x20       field_groups:\n          clinical: {{ fields: [diagnosis], owner: on-prem }}\n\
         \x20         workflow: {{ fields: [status], owner: cloud }}\n",
        support::kafka_brokers(),
        state.display()
    );
    let file = dir.join(format!("{region}.yaml"));
    std::fs::write(&file, text).unwrap();
    file
}

fn start(file: &Path, log: &Path) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["run"])
        .arg(file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .expect("strata starts")
}

/// A consumer that reads `topic` from the start, in its own group.
fn reader(topic: &str) -> StreamConsumer {
    let c: StreamConsumer = client_config(&kafka())
        .set("group.id", support::unique("faults-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// Distinct (key, value) records read so far, added to `seen`; waits at most `wait`.
async fn drain(consumer: &StreamConsumer, seen: &mut BTreeSet<(Vec<u8>, Vec<u8>)>, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await {
        seen.insert((
            m.key().unwrap_or_default().to_vec(),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
}

async fn run_until(
    consumer: &StreamConsumer,
    seen: &mut BTreeSet<(Vec<u8>, Vec<u8>)>,
    want: usize,
    what: &str,
    log: &Path,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while seen.len() < want {
        if tokio::time::Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{what}: {} of {want} outputs; log tail:\n{}",
                seen.len(),
                tail.join("\n")
            );
        }
        drain(consumer, seen, Duration::from_secs(1)).await;
    }
}

/// Each key's outputs by input position (`source.position` of the output envelope). An
/// input position with two different outputs (a re-emitted output that is not the same
/// record) fails the test.
async fn by_key(
    codec: &Codec,
    seen: &BTreeSet<(Vec<u8>, Vec<u8>)>,
) -> BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>> {
    let mut out: BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for (key, value) in seen {
        let decoded = codec.decode(value).await.expect("an output decodes");
        let position = match support::field(support::field(&decoded.value, "source"), "position") {
            Value::String(p) => p.clone(),
            v => panic!("source.position is {v:?}"),
        };
        let previous = out
            .entry(key.clone())
            .or_default()
            .insert(position.clone(), value.clone());
        if let Some(other) = previous {
            assert_eq!(&other, value, "two outputs for input position {position}");
        }
    }
    out
}

/// A killed instance stays a group member until its session times out (10 s); tansu 0.6.0
/// then moves its partitions only when another member joins, which the runtime's rejoin
/// watchdog (`pipeline/src/kafka/rejoin.rs`) does 30 s after a start with a short
/// assignment. So each round takes about 35 s: the test runs for about 6 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_restarted_and_rebalanced_runs_give_the_fault_free_output() {
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    let codec = support::codec(&registry.url);
    let name = support::unique("faults");
    let input = format!("{name}.in");
    ensure_topics(
        &client_config(&kafka()),
        &[TopicSpec {
            name: input.clone(),
            partitions: 4,
            replication_factor: 1,
            compacted: false,
        }],
    )
    .await
    .unwrap();
    fill_input(&codec, &input).await;
    let log = dir.path().join("strata.log");

    // The reference: one run, no faults. Every input yields one output.
    let clean_region = format!("clean-{}", std::process::id());
    let clean = topology(
        dir.path(),
        &clean_region,
        &registry.url,
        &input,
        &dir.path().join("clean"),
    );
    let mut child = start(&clean, &log);
    let mut expected = BTreeSet::new();
    run_until(
        &reader(&format!("{clean_region}.conflicts")),
        &mut expected,
        EVENTS,
        "fault-free run",
        &log,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    // The same input with faults: SIGKILL at seeded points; state deleted every third
    // round; two instances (a rebalance) every fifth.
    let faulty_region = format!("faulty-{}", std::process::id());
    let state = dir.path().join("faulty");
    let faulty = topology(dir.path(), &faulty_region, &registry.url, &input, &state);
    // A second machine: same deployment (group), its own state directory.
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let second = topology(
        &second_dir,
        &faulty_region,
        &registry.url,
        &input,
        &dir.path().join("faulty-2"),
    );
    let consumer = reader(&format!("{faulty_region}.conflicts"));
    let mut seen = BTreeSet::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let (mut kills, mut wipes, mut rebalances) = (0, 0, 0);
    for round in 0..ROUNDS {
        let mut first = start(&faulty, &log);
        let second_instance = (round % 5 == 4).then(|| start(&second, &log));
        // Kill while it works: after some new output, plus a seeded extra delay.
        let before = seen.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() == before && tokio::time::Instant::now() < deadline {
            drain(&consumer, &mut seen, Duration::from_millis(200)).await;
        }
        let extra = Duration::from_millis(rng.random_range(0..1500));
        drain(&consumer, &mut seen, extra).await;
        if let Some(mut b) = second_instance {
            // The second instance leaves cleanly (a rebalance); then the first is killed.
            Command::new("kill")
                .args(["-TERM", &b.id().to_string()])
                .status()
                .unwrap();
            b.wait().unwrap();
            rebalances += 1;
        }
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        kills += 1;
        if round % 3 == 2 {
            assert!(
                state.exists(),
                "round {round}: no state to wipe at {state:?}"
            );
            std::fs::remove_dir_all(&state).expect("the state directory is wiped");
            assert!(!state.exists());
            wipes += 1;
        }
    }
    let mut last = start(&faulty, &log);
    run_until(
        &consumer,
        &mut seen,
        expected.len(),
        "after the faults",
        &log,
    )
    .await;
    // Anything beyond the expected set would be a wrong or extra record.
    drain(&consumer, &mut seen, Duration::from_secs(2)).await;
    last.kill().unwrap();
    last.wait().unwrap();
    println!(
        "{ROUNDS} rounds: {kills} kills, {wipes} state wipes, {rebalances} rebalances; {} distinct outputs checked",
        seen.len()
    );
    let (got, want) = (by_key(&codec, &seen).await, by_key(&codec, &expected).await);
    assert_eq!(got.len(), want.len(), "keys with outputs");
    for (key, sequence) in &want {
        assert_eq!(
            got.get(key),
            Some(sequence),
            "the outputs of key {key:?} differ from the fault-free run"
        );
    }
    assert_eq!(seen.len(), expected.len(), "distinct outputs");
    registry.shutdown().await;
}
