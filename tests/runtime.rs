//! The processor runtime against the real broker: state survives restarts on the same
//! machine and moves to another through the changelog, inputs are applied once, timers
//! fire from the watermark exactly once, and bad records become dead letters.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use futures::future::BoxFuture;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use strata_pipeline::avro::Codec;
use strata_pipeline::kafka::{client_config, ensure_topics, TopicSpec};
use strata_pipeline::ops::metrics::Metrics;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::runtime::{
    run_processor, run_sink, Context, Event, Output, OutputSchema, ProcessError, Processor,
    ProcessorEnv, ProcessorSpec, Rejected, Rejection, Sink, SinkError, SinkRecord, SinkSpec, Timer,
};
use strata_pipeline::state::StateMemory;
use strata_pipeline::topology::KafkaSettings;
use support::{kafka_brokers, start_registry, unique};

const KEY: &str = r#"{"type":"string"}"#;
const TICK: &str = r#"{"type":"record","name":"Tick","namespace":"strata.test","fields":[
  {"name":"member","type":"string"},{"name":"ts","type":"long"},{"name":"poison","type":"boolean"}]}"#;
const COUNT: &str = r#"{"type":"record","name":"Count","namespace":"strata.test","fields":[
  {"name":"member","type":"string"},{"name":"count","type":"long"},{"name":"id","type":"string"}]}"#;

/// Counts ticks per member, and for each tick sets a timer one second of event time later.
struct Counter;

fn string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

fn long(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Long(n)) => *n,
        other => panic!("not a long: {other:?}"),
    }
}

fn count_record(member: &str, count: i64, id: String) -> Value {
    Value::Record(vec![
        ("member".into(), Value::String(member.into())),
        ("count".into(), Value::Long(count)),
        ("id".into(), Value::String(id)),
    ])
}

impl Processor for Counter {
    fn stores(&self) -> Vec<&'static str> {
        vec!["counts"]
    }

    fn event_time(&self, event: &Event<'_>) -> i64 {
        event.field("ts").map(|v| long(Some(v))).unwrap_or(0)
    }

    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let member = string(event.field("member"));
        if event.field("poison") == Some(&Value::Boolean(true)) {
            // A rejected call's writes are discarded; if this survived, the next count
            // of the member would not parse.
            ctx.put("counts", member.as_bytes(), b"garbage".to_vec());
            return Err(Rejection::new("test.poison", format!("{member} sent poison")).into());
        }
        let count = ctx
            .get("counts", member.as_bytes())?
            .map(|v| i64::from_be_bytes(v.try_into().expect("8 bytes")))
            .unwrap_or(0)
            + 1;
        ctx.put("counts", member.as_bytes(), count.to_be_bytes().to_vec());
        let ts = self.event_time(event);
        ctx.set_timer(ts + 1000, format!("{member}@{ts}").as_bytes());
        ctx.emit(Output {
            port: None,
            key: Some(Value::String(member.clone())),
            key_schema: OutputSchema::Text(KEY.into()),
            value: Some(count_record(
                &member,
                count,
                format!("{}/{}/{}", event.topic, event.partition, event.offset),
            )),
            value_schema: OutputSchema::Text(COUNT.into()),
            partition_by: None,
        });
        Ok(())
    }

    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let name = String::from_utf8_lossy(&timer.name).to_string();
        ctx.emit(Output {
            port: Some("timers".into()),
            key: Some(Value::String(name.clone())),
            key_schema: OutputSchema::Text(KEY.into()),
            value: Some(count_record(&name, timer.due_ms, format!("timer:{name}"))),
            value_schema: OutputSchema::Text(COUNT.into()),
            partition_by: None,
        });
        Ok(())
    }
}

struct Fixture {
    kafka: KafkaSettings,
    codec: Arc<Codec>,
    input: String,
    output: String,
    timers: String,
    dead_letter: String,
    audit: String,
    group: String,
    changelog: String,
    producer: FutureProducer,
}

impl Fixture {
    async fn new(registry_url: &str) -> Self {
        let name = unique("rt");
        let kafka = KafkaSettings {
            bootstrap_servers: kafka_brokers(),
            acks: "all".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            tls: false,
            tls_ca_file: None,
            properties: Default::default(),
        };
        let codec = Arc::new(support::codec(registry_url));
        let f = Fixture {
            input: format!("{name}.in"),
            output: format!("{name}.out"),
            timers: format!("{name}.out.timers"),
            dead_letter: format!("{name}.dead-letter"),
            audit: format!("{name}.audit"),
            group: format!("{name}.group"),
            changelog: format!("{name}.changelog"),
            producer: strata_pipeline::kafka::producer(&kafka).expect("producer"),
            kafka,
            codec,
        };
        let topics: Vec<_> = [&f.input, &f.output, &f.timers, &f.dead_letter, &f.audit]
            .into_iter()
            .map(|t| TopicSpec {
                name: t.clone(),
                partitions: 2,
                replication_factor: 1,
                compacted: false,
            })
            .collect();
        ensure_topics(&client_config(&f.kafka), &topics)
            .await
            .expect("topics");
        f
    }

    fn spec(&self, state_dir: &Path) -> ProcessorSpec {
        let mut outputs = HashMap::new();
        outputs.insert(None, self.output.clone());
        outputs.insert(Some("timers".to_string()), self.timers.clone());
        ProcessorSpec {
            component: "counter".into(),
            group_id: self.group.clone(),
            inputs: vec![self.input.clone()],
            outputs,
            changelog: self.changelog.clone(),
            dead_letter: self.dead_letter.clone(),
            audit: self.audit.clone(),
            state_dir: state_dir.to_path_buf(),
            partitions: 2,
            changelog_replication_factor: 1,
            max_batch: 7,
            max_batch_wait: Duration::from_millis(10),
            // Several cycles of 7 records between commits: crashes lose uncommitted work.
            commit_interval: Duration::from_millis(200),
            window: None,
        }
    }

    fn start(
        &self,
        state_dir: &Path,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), strata_pipeline::runtime::RunError>>,
    ) {
        let stop = CancellationToken::new();
        let env = ProcessorEnv {
            kafka: self.kafka.clone(),
            codec: self.codec.clone(),
            metrics: Metrics::new(),
            state_memory: StateMemory::new(8 << 20, 8 << 20, 64 << 20),
        };
        let task = tokio::spawn(run_processor(
            self.spec(state_dir),
            env,
            Box::new(Counter),
            stop.clone(),
        ));
        (stop, task)
    }

    async fn send_raw(&self, partition: i32, key: Option<Vec<u8>>, value: Vec<u8>) {
        let mut record = FutureRecord::to(&self.input)
            .partition(partition)
            .payload(&value);
        if let Some(k) = &key {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produced");
    }

    /// Ticks for `members` on `partition` with the given event times, in order.
    async fn send_ticks(&self, partition: i32, ticks: &[(&str, i64, bool)]) {
        let key_writer = self
            .codec
            .register(&format!("{}-key", self.input), KEY)
            .await
            .expect("key schema");
        let writer = self
            .codec
            .register(&format!("{}-value", self.input), TICK)
            .await
            .expect("value schema");
        for (member, ts, poison) in ticks {
            let value = Value::Record(vec![
                ("member".into(), Value::String(member.to_string())),
                ("ts".into(), Value::Long(*ts)),
                ("poison".into(), Value::Boolean(*poison)),
            ]);
            let key = key_writer
                .encode(&Value::String(member.to_string()))
                .unwrap();
            self.send_raw(partition, Some(key), writer.encode(&value).unwrap())
                .await;
        }
    }
}

/// The tests of this file run one at a time. Run side by side, one test once read another
/// test's records from its own, differently named output topic (seen once in CI with
/// tansu 0.6.0 while both were creating topics); each test's results must be its own.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A record read back: its decoded value (if Avro), raw payload and headers.
type Read = (Option<Value>, Vec<u8>, BTreeMap<String, String>);

/// Every record of `topic` once at least `n` are there.
async fn read_at_least(codec: &Codec, brokers: &str, topic: &str, n: usize) -> Vec<Read> {
    read_until(codec, brokers, topic, |out| out.len() >= n).await
}

/// Every record of `topic` once `done` accepts what was read so far.
async fn read_until(
    codec: &Codec,
    brokers: &str,
    topic: &str,
    done: impl Fn(&[Read]) -> bool,
) -> Vec<Read> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&out) {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out: {} records in {topic}: {out:?}", out.len()))
            .expect("record");
        let payload = m.payload().unwrap_or_default().to_vec();
        let value = codec.decode(&payload).await.ok().map(|d| d.value);
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((value, payload, headers));
    }
    out
}

fn output_id(record: &Read) -> String {
    string(record_field(
        record.0.as_ref().expect("an Avro record"),
        "id",
    ))
}

/// The outputs once `n` distinct ones are there, each once. While partitions move between
/// instances, the one losing a partition may finish its last cycle as the new owner re-runs
/// the same inputs (the runtime's documented at-least-once output): an output may come
/// twice, and then it must be the same bytes.
async fn read_distinct_outputs(f: &Fixture, n: usize) -> Vec<Read> {
    let out = read_until(&f.codec, &kafka_brokers(), &f.output, |out| {
        out.iter().map(output_id).collect::<HashSet<_>>().len() >= n
    })
    .await;
    let mut payloads: HashMap<String, Vec<u8>> = HashMap::new();
    let mut once = Vec::new();
    for record in out {
        let id = output_id(&record);
        match payloads.get(&id) {
            Some(earlier) => assert_eq!(
                *earlier, record.1,
                "output {id} written twice with different contents"
            ),
            None => {
                payloads.insert(id, record.1.clone());
                once.push(record);
            }
        }
    }
    once
}

fn counts(records: &[Read]) -> BTreeMap<String, i64> {
    let mut last = BTreeMap::new();
    let mut ids = HashSet::new();
    for (v, _, _) in records {
        let v = v.as_ref().expect("an Avro record");
        let id = string(record_field(v, "id"));
        assert!(ids.insert(id.clone()), "output {id} written twice");
        let member = string(record_field(v, "member"));
        let n = long(record_field(v, "count"));
        let e = last.entry(member).or_insert(0);
        *e = (*e).max(n);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restarts_and_moves_through_the_changelog() {
    let _serial = one_at_a_time().await;
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = start_registry(registry_dir.path()).await;
    let f = Fixture::new(&registry.url).await;
    let brokers = kafka_brokers();

    // Partition 0 carries members a and b, partition 1 carries c and d; event times
    // 0, 500, … 4500 on each partition.
    for (p, members) in [(0, ["a", "b"]), (1, ["c", "d"])] {
        let ticks: Vec<_> = (0..10)
            .map(|i| (members[i % 2], i as i64 * 500, false))
            .collect();
        f.send_ticks(p, &ticks).await;
    }
    f.send_raw(0, None, b"not avro at all".to_vec()).await;
    f.send_ticks(1, &[("c", 4500, true)]).await;

    let machine_a = tempfile::tempdir().unwrap();
    let (stop, task) = f.start(machine_a.path());
    let out = read_at_least(&f.codec, &brokers, &f.output, 20).await;
    let expected: BTreeMap<String, i64> = ["a", "b", "c", "d"]
        .iter()
        .map(|m| (m.to_string(), 5))
        .collect();
    assert_eq!(counts(&out), expected);

    let dead = read_at_least(&f.codec, &brokers, &f.dead_letter, 2).await;
    let codes: HashSet<_> = dead
        .iter()
        .map(|(_, _, h)| h["strata.error.code"].clone())
        .collect();
    assert_eq!(
        codes,
        HashSet::from(["wire.bad_magic".to_string(), "test.poison".to_string()])
    );
    let raw = dead
        .iter()
        .find(|(_, _, h)| h["strata.error.code"] == "wire.bad_magic")
        .unwrap();
    assert_eq!(raw.1, b"not avro at all", "original bytes kept");
    assert_eq!(raw.2["strata.component"], "counter");
    assert_eq!(raw.2["strata.input.topic"], f.input);
    assert_eq!(raw.2["strata.input.partition"], "0");
    // Each dead letter has a notice on the audit topic: the same facts in Avro, without
    // the bytes.
    let notices = read_at_least(&f.codec, &brokers, &f.audit, 2).await;
    let noticed = notice_facts(&notices, "counter");
    assert_eq!(
        noticed,
        [
            ("test.poison".to_string(), "PROCESS".to_string()),
            ("wire.bad_magic".to_string(), "DECODE".to_string())
        ]
    );

    // Timers due at ts + 1000 fire once the partition's watermark (4500) reaches them:
    // the ticks at 0 … 3500, 8 per partition.
    let fired = read_at_least(&f.codec, &brokers, &f.timers, 16).await;
    stop.cancel();
    task.await.unwrap().expect("drains cleanly");

    // Machine B starts empty: its state comes from the changelog, and inputs already
    // applied are not applied again.
    let machine_b = tempfile::tempdir().unwrap();
    f.send_ticks(0, &[("a", 5000, false), ("b", 5000, false)])
        .await;
    f.send_ticks(1, &[("c", 5000, false), ("d", 5000, false)])
        .await;
    let (stop, task) = f.start(machine_b.path());
    let out = read_at_least(&f.codec, &brokers, &f.output, 24).await;
    let expected: BTreeMap<String, i64> = ["a", "b", "c", "d"]
        .iter()
        .map(|m| (m.to_string(), 6))
        .collect();
    assert_eq!(
        counts(&out),
        expected,
        "counts continue from restored state"
    );
    // The watermark moved to 5000: the ticks at 4000 fire; none fired before fires again.
    let fired_again = read_at_least(&f.codec, &brokers, &f.timers, 18).await;
    stop.cancel();
    task.await.unwrap().expect("drains cleanly");

    // Back on machine A, whose local state is now stale: it catches up first.
    f.send_ticks(0, &[("a", 5500, false)]).await;
    let (stop, task) = f.start(machine_a.path());
    let out = read_at_least(&f.codec, &brokers, &f.output, 25).await;
    assert_eq!(counts(&out)["a"], 7);
    stop.cancel();
    task.await.unwrap().expect("drains cleanly");

    let names = |records: &[Read]| {
        records
            .iter()
            .map(|(v, _, _)| string(record_field(v.as_ref().unwrap(), "member")))
            .collect::<Vec<_>>()
    };
    let first: HashSet<_> = names(&fired).into_iter().collect();
    assert_eq!(first.len(), 16, "each timer fired once: {first:?}");
    assert!(first.contains("b@3500") && !first.contains("a@4000"));
    let all = names(&fired_again);
    let distinct: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(distinct.len(), all.len(), "a timer fired twice: {all:?}");
    assert!(distinct.contains("a@4000") && distinct.contains("c@4000"));
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_shares_the_work_and_takes_over_its_state() {
    let _serial = one_at_a_time().await;
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = start_registry(registry_dir.path()).await;
    let f = Fixture::new(&registry.url).await;
    let ticks = |member: &'static str, from: i64| -> Vec<(&'static str, i64, bool)> {
        (0..5).map(|i| (member, (from + i) * 100, false)).collect()
    };
    f.send_ticks(0, &ticks("a", 0)).await;
    f.send_ticks(1, &ticks("c", 0)).await;

    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (stop_a, task_a) = f.start(dir_a.path());
    read_distinct_outputs(&f, 10).await;

    // B joins the group: the partitions are shared, and the results stay those of one instance.
    let (stop_b, task_b) = f.start(dir_b.path());
    f.send_ticks(0, &ticks("a", 5)).await;
    f.send_ticks(1, &ticks("c", 5)).await;
    let out = read_distinct_outputs(&f, 20).await;
    assert_eq!(
        counts(&out),
        BTreeMap::from([("a".into(), 10), ("c".into(), 10)])
    );

    // A leaves: B owns both partitions, with the state A built, restored from the changelog.
    stop_a.cancel();
    task_a.await.unwrap().expect("A drains");
    f.send_ticks(0, &ticks("a", 10)).await;
    f.send_ticks(1, &ticks("c", 10)).await;
    let out = read_distinct_outputs(&f, 30).await;
    assert_eq!(
        counts(&out),
        BTreeMap::from([("a".into(), 15), ("c".into(), 15)])
    );
    stop_b.cancel();
    task_b.await.unwrap().expect("B drains");
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_jump_fires_every_timer_it_passes() {
    let _serial = one_at_a_time().await;
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = start_registry(registry_dir.path()).await;
    let f = Fixture::new(&registry.url).await;
    // 300 timers due at 1000 … 1299, then one event far later passes them all at once.
    let members: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let ticks: Vec<(&str, i64, bool)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i as i64, false))
        .collect();
    f.send_ticks(0, &ticks).await;
    f.send_ticks(0, &[("late", 1_000_000, false)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, task) = f.start(dir.path());
    let fired = read_at_least(&f.codec, &kafka_brokers(), &f.timers, 300).await;
    stop.cancel();
    task.await.unwrap().expect("drains cleanly");
    let names: HashSet<String> = fired
        .iter()
        .map(|(v, _, _)| string(record_field(v.as_ref().unwrap(), "member")))
        .collect();
    assert_eq!(names.len(), 300, "each passed timer fired once");
    registry.shutdown().await;
}

/// The (error code, stage) of each dead-letter notice read from the audit topic, sorted;
/// each must decode, name `component` and carry none of the input's bytes.
fn notice_facts(notices: &[Read], component: &str) -> Vec<(String, String)> {
    let mut facts: Vec<(String, String)> = notices
        .iter()
        .map(|(value, _, _)| {
            let notice = value
                .as_ref()
                .expect("a notice decodes with its registered schema");
            let field = |name: &str| match record_field(notice, name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Enum(_, s)) => s.clone(),
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(field("component"), component);
            assert_eq!(
                record_field(notice, "value"),
                Some(&Value::Union(0, Box::new(Value::Null))),
                "no bytes in a notice"
            );
            (field("error_kind"), field("stage"))
        })
        .collect();
    facts.sort();
    facts
}

/// A sink that refuses ticks marked poison and keeps the members of the others.
struct RefusingSink(Arc<std::sync::Mutex<Vec<String>>>);

impl Sink for RefusingSink {
    fn open(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    fn write<'a>(
        &'a mut self,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, SinkError>> {
        Box::pin(async move {
            let mut rejected = Vec::new();
            for (index, record) in records.iter().enumerate() {
                let value = record.value.as_ref();
                if value.and_then(|v| record_field(v, "poison")) == Some(&Value::Boolean(true)) {
                    rejected.push(Rejected {
                        index,
                        code: "test.refused",
                        message: "the store refuses poison".into(),
                    });
                } else if let Some(Value::String(member)) =
                    value.and_then(|v| record_field(v, "member"))
                {
                    self.0.lock().unwrap().push(member.clone());
                }
            }
            Ok(rejected)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_dead_letters_what_it_cannot_decode_or_store_with_a_notice_of_each() {
    let _serial = one_at_a_time().await;
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = start_registry(registry_dir.path()).await;
    let f = Fixture::new(&registry.url).await;
    let brokers = kafka_brokers();
    f.send_raw(0, None, b"not avro either".to_vec()).await;
    f.send_ticks(0, &[("a", 0, false), ("b", 1, true)]).await;

    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let spec = SinkSpec {
        component: "refusing".into(),
        group_id: f.group.clone(),
        inputs: vec![f.input.clone()],
        dead_letter: f.dead_letter.clone(),
        audit: f.audit.clone(),
        max_rows: 100,
        max_wait: Duration::from_millis(50),
        window: None,
    };
    let task = tokio::spawn(run_sink(
        spec,
        f.kafka.clone(),
        f.codec.clone(),
        Metrics::new(),
        Box::new(RefusingSink(written.clone())),
        stop.clone(),
    ));
    let dead = read_at_least(&f.codec, &brokers, &f.dead_letter, 2).await;
    let notices = read_at_least(&f.codec, &brokers, &f.audit, 2).await;
    stop.cancel();
    task.await.unwrap().expect("drains cleanly");

    assert_eq!(
        *written.lock().unwrap(),
        ["a"],
        "the rest of the batch is written"
    );
    let mut codes: Vec<_> = dead
        .iter()
        .map(|(_, _, h)| {
            (
                h["strata.error.code"].clone(),
                h["strata.component"].clone(),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("test.refused".to_string(), "refusing".to_string()),
            ("wire.bad_magic".to_string(), "refusing".to_string())
        ]
    );
    assert!(
        dead.iter().any(|(_, raw, _)| raw == b"not avro either"),
        "bytes kept whole"
    );
    let noticed = notice_facts(&notices, "refusing");
    assert_eq!(
        noticed,
        [
            ("test.refused".to_string(), "STORE".to_string()),
            ("wire.bad_magic".to_string(), "DECODE".to_string())
        ]
    );
    registry.shutdown().await;
}
