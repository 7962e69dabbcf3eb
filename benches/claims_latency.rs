//! Latency of one claim through the three processors, end to end through the broker.
//!
//! The generator commits new claims (a header and its lines in one transaction) into a
//! fresh PostgreSQL database at a fixed rate; `strata run topologies/quickstart.yaml`
//! captures them, and conflict resolution → assembly → claim analysis → tiering carry each
//! one to the hot tier's topic, where this bench reads the claim's analysis. Per claim,
//! from its insert until the last analysis of that insert is in the hot-tier topic:
//! - **processors**: from the claim's change event in its CDC topic (the record's Kafka
//!   timestamp, set when the source produced it) — the processors and the broker alone;
//! - **commit**: from the commit in PostgreSQL (`event_time_ms`, the commit time the
//!   source carries) — adds the source's share.
//!
//! Per stage, the bench also prints how long the claim's header took from one topic to
//! the next (each record's Kafka timestamp, set when the stage before produced it): that
//! shows which hop the time goes to.
//!
//! Claims of members without a policy wait up to `coverage_wait` (1 day) for the policy by
//! design; they are counted as not measured. The first `STRATA_BENCH_WARMUP` seconds
//! (snapshot, start-up) are left out.
//!
//! Needs the local services (`eval "$(scripts/services.sh start)"`) for PostgreSQL and
//! the registry; the broker is a private tansu with the memory engine (the services'
//! sqlite engine cannot take the ~100k records/s the pipeline writes at this rate), or
//! the services' broker with `STRATA_BENCH_BROKER=services`.
//!
//! cargo bench --bench claims_latency   (STRATA_BENCH_RATE=5000 claims/s, STRATA_BENCH_SECONDS=40)
//! Goal: p99 < 50 ms through the processors at 5k claims/s.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::{Connection, PgConnection};
use strata::bench::Scrape;
use strata_pipeline::avro::Codec;
use strata_pipeline::kafka::client_config;
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::topology::{KafkaSettings, RegistrySettings};
use support::env;

mod support;

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A fresh database `name` next to the services' claims database; returns its URL.
async fn fresh_db(name: &str) -> String {
    let admin = env(
        "STRATA_PG_ADMIN_URL",
        "postgres://postgres@127.0.0.1:15432/postgres",
    );
    strata::bench::fresh_db(&admin, name)
        .await
        .unwrap_or_else(|e| panic!("{e}; is PostgreSQL up? (scripts/services.sh start)"))
}

fn generate(url: &str, extra: &[&str], log: &Path) -> Command {
    let mut c = Command::new(STRATA);
    c.args([
        "generate",
        "--url",
        url,
        "--members",
        "5000",
        "--providers",
        "500",
    ])
    .args(["--claims", "5000", "--seed", "5"])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(log_file(log));
    c
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// Milliseconds at quantile `q` of sorted `values`.
fn quantile(values: &[i64], q: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn long(value: &Value, name: &str) -> Option<i64> {
    match record_field(value, name)? {
        Value::Long(v) | Value::TimestampMillis(v) => Some(*v),
        _ => None,
    }
}

/// The topics a claim's header passes through after its CDC topic, each with the Kafka
/// timestamp the stage before gave it: (label, topic suffix after the run name, whether
/// the record to time is the claim's analysis rather than its change).
const HOPS: [(&str, &str, bool); 4] = [
    ("CDC → conflicts", "conflicts", false),
    ("conflicts → assembly", "assembly", false),
    ("assembly → analysis", "analysis", true),
    ("analysis → tiering.hot", "tiering.hot", true),
];

/// Per claim: its insert's commit time, when its change reached the CDC topic, and when
/// the last analysis of that insert reached the hot-tier topic.
#[derive(Default)]
struct Claim {
    cdc_ms: Option<i64>,
    commit_ms: Option<i64>,
    analysed_ms: Option<i64>,
    /// Kafka timestamp of the header's first record in each of [`HOPS`]' topics.
    hops_ms: [Option<i64>; 4],
}

impl Claim {
    /// Milliseconds of each hop, once the claim reached every topic.
    fn hops(&self) -> Option<[i64; 4]> {
        let mut previous = self.cdc_ms?;
        let mut out = [0; 4];
        for (i, at) in self.hops_ms.iter().enumerate() {
            let at = (*at)?;
            out[i] = at - previous;
            previous = at;
        }
        Some(out)
    }
}

struct Report {
    rate: f64,
    seconds: u64,
    sent: usize,
    processors: Vec<i64>,
    commit: Vec<i64>,
    /// Sorted milliseconds of each of [`HOPS`].
    hops: [Vec<i64>; 4],
    /// Per processor, from its metrics at the end: (batches, mean ms processing and
    /// committing a batch).
    batches: Vec<(String, f64, f64)>,
}

impl Report {
    fn print(&self, broker: &str) {
        println!(
            "\nclaims through conflict resolution → assembly → analysis → tiering at {:.0} claims/s for {} s; broker: {broker}",
            self.rate, self.seconds
        );
        println!(
            "claims measured: {} of {} committed after the warm-up",
            self.processors.len(),
            self.sent
        );
        println!(
            "{:<34} {:>7} {:>7} {:>7} {:>7}",
            "latency (ms)", "p50", "p95", "p99", "max"
        );
        let hops = HOPS
            .iter()
            .zip(&self.hops)
            .map(|((label, _, _), values)| (*label, values));
        for (label, values) in [
            ("CDC topic → hot-tier analysis", &self.processors),
            ("PG commit → hot-tier analysis", &self.commit),
        ]
        .into_iter()
        .chain(hops)
        {
            println!(
                "{label:<34} {:>7} {:>7} {:>7} {:>7}",
                quantile(values, 0.5),
                quantile(values, 0.95),
                quantile(values, 0.99),
                values.last().copied().unwrap_or(0)
            );
        }
        println!("(hops: the header's first record in each topic, by Kafka timestamps)");
        println!(
            "{:<34} {:>7} {:>13}",
            "per batch, whole run", "batches", "cycle (ms)"
        );
        for (component, batches, process) in &self.batches {
            println!("{component:<34} {batches:>7.0} {process:>13.1}");
        }
        println!("goal: p99 < 50 ms through the processors");
    }
}

async fn measure(
    kafka: &KafkaSettings,
    registry: &str,
    rate: f64,
    seconds: u64,
    warm_up_s: i64,
) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = format!("lat{}", std::process::id());
    // Outside the temporary directory, so it outlives an interrupted run.
    let log = std::env::temp_dir().join(format!("strata-{run}.log"));
    eprintln!("[bench] log: {}", log.display());
    let url = fresh_db(&run).await;
    let backfill = generate(&url, &[], &log).status().expect("generator runs");
    assert!(backfill.success(), "backfill failed; see {}", log.display());

    let listen = format!("127.0.0.1:{}", free_port());
    let mut strata: Child = Command::new(STRATA)
        .args(["run", "topologies/quickstart.yaml", "--listen", &listen])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("STRATA_PG_URL", &url)
        .env("STRATA_REGION", &run)
        .env("STRATA_SLOT", format!("strata_{run}"))
        .env("STRATA_HOME", dir.path())
        .env("STRATA_SCHEMA_REGISTRY_URL", registry)
        .env("STRATA_KAFKA_BROKERS", &kafka.bootstrap_servers)
        .stdout(Stdio::null())
        .stderr(log_file(&log))
        .spawn()
        .expect("strata starts");

    let codec = Codec::new(&RegistrySettings {
        url: registry.to_string(),
        username: None,
        password: None,
        ca_file: None,
        allow_incompatible: false,
    })
    .expect("codec");
    let (cdc_topic, hot_topic) = (
        format!("{run}.cdc.{run}.public.claims"),
        format!("{run}.tiering.hot"),
    );
    let consumer: StreamConsumer = client_config(kafka)
        .set("group.id", format!("{run}.latency"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let hop_topics: Vec<String> = HOPS.iter().map(|(_, t, _)| format!("{run}.{t}")).collect();
    let mut topics: Vec<&str> = hop_topics.iter().map(String::as_str).collect();
    topics.push(&cdc_topic);
    consumer.subscribe(&topics).expect("subscribe");

    // Stream once the deployment is ready (snapshot started, components running).
    let ready = format!("http://{listen}/ready");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline && strata.try_wait().ok().flatten().is_none(),
            "strata run never became ready; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = (rate * seconds as f64) as u32;
    let mut generator = generate(
        &url,
        &[
            "--resume",
            "--stream-claims",
            &total.to_string(),
            "--rate",
            &rate.to_string(),
        ],
        &log,
    )
    .spawn()
    .expect("generator starts");
    let warm_up_ms = now_ms() + 1000 * warm_up_s;

    let mut claims: HashMap<i64, Claim> = HashMap::new();
    let mut quiet_since = None::<Instant>;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            Ok(Ok(m)) => {
                let arrived = now_ms();
                quiet_since = None;
                let Some(Ok(decoded)) = (match m.payload() {
                    Some(bytes) => Some(codec.decode(bytes).await),
                    None => None,
                }) else {
                    continue;
                };
                let value = &decoded.value;
                let timestamp = m.timestamp().to_millis();
                if let Some(hop) = hop_topics.iter().position(|t| t == m.topic()) {
                    if let Some(id) = header_of(value, HOPS[hop].2) {
                        let at = &mut claims.entry(id).or_default().hops_ms[hop];
                        at.get_or_insert(timestamp.unwrap_or(arrived));
                    }
                }
                if m.topic() == cdc_topic {
                    let insert = record_field(value, "op") == Some(&Value::String("c".into()));
                    let id = record_field(value, "after").and_then(|a| long(a, "claim_id"));
                    if let (true, Some(id)) = (insert, id) {
                        claims.entry(id).or_default().cdc_ms = timestamp;
                    }
                } else if let (true, Some(id), Some(event_ms)) = (
                    m.topic() == hot_topic,
                    long(value, "claim_id"),
                    long(value, "event_time_ms"),
                ) {
                    let claim = claims.entry(id).or_default();
                    // Analyses of the insert share its commit time; later ones (status
                    // updates) are not this claim's first way through.
                    if claim.commit_ms.is_none_or(|c| c == event_ms) {
                        claim.commit_ms = Some(event_ms);
                        claim.analysed_ms = Some(arrived);
                    }
                }
            }
            Ok(Err(e)) => eprintln!("[bench] consumer: {e}"),
            Err(_) => {}
        }
        if generator.try_wait().ok().flatten().is_some() {
            // Drain: stop once nothing arrived for 3 s.
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        if let Some(status) = strata.try_wait().ok().flatten() {
            panic!("strata run stopped ({status}); see {}", log.display());
        }
    }
    let batches = batch_times(&listen).await;
    let _ = Command::new("kill")
        .args(["-TERM", &strata.id().to_string()])
        .status();
    let _ = strata.wait();

    let measured: Vec<&Claim> = claims
        .values()
        .filter(|c| c.cdc_ms.is_some() && c.commit_ms.is_some_and(|t| t >= warm_up_ms))
        .collect();
    let sent = claims
        .values()
        .filter(|c| c.cdc_ms.is_some_and(|t| t >= warm_up_ms))
        .count();
    let mut processors: Vec<i64> = measured
        .iter()
        .filter_map(|c| Some(c.analysed_ms? - c.cdc_ms?))
        .collect();
    let mut commit: Vec<i64> = measured
        .iter()
        .filter_map(|c| Some(c.analysed_ms? - c.commit_ms?))
        .collect();
    processors.sort_unstable();
    commit.sort_unstable();
    let mut hops: [Vec<i64>; 4] = Default::default();
    for claim in &measured {
        for (i, ms) in claim.hops().into_iter().flatten().enumerate() {
            hops[i].push(ms);
        }
    }
    for values in &mut hops {
        values.sort_unstable();
    }
    if let Ok(mut c) = PgConnection::connect(&url).await {
        let _ = sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
            .bind(format!("strata_{run}"))
            .execute(&mut c)
            .await;
    }
    Report {
        rate,
        seconds,
        sent,
        processors,
        commit,
        hops,
        batches,
    }
}

/// Per processor: batches, and mean ms processing and committing one, from the
/// `processing_seconds` histogram of the deployment listening on `listen`.
async fn batch_times(listen: &str) -> Vec<(String, f64, f64)> {
    let scrape = match Scrape::fetch(listen).await {
        Ok(scrape) => scrape,
        Err(e) => {
            eprintln!("[bench] no batch times: {e}");
            return Vec::new();
        }
    };
    ["conflicts", "assembly", "analysis", "tiering"]
        .iter()
        .filter_map(|c| {
            let n = scrape.sum("strata_processing_seconds_count", Some(c));
            let seconds = scrape.sum("strata_processing_seconds_sum", Some(c));
            (n > 0.0).then(|| (c.to_string(), n, seconds / n * 1e3))
        })
        .collect()
}

/// The claim id of a claim's analysis (`analysis`) or of a change of the claims table (not
/// of its lines).
fn header_of(value: &Value, analysis: bool) -> Option<i64> {
    match (record_field(value, "source"), analysis) {
        (None, true) => long(value, "claim_id"),
        (Some(source), false) => {
            let table = record_field(source, "table")?;
            let after = record_field(value, "after")?;
            (matches!(table, Value::String(t) if t == "claims")).then(|| long(after, "claim_id"))?
        }
        _ => None,
    }
}

#[tokio::main]
async fn main() {
    // `cargo test` runs benches without `--bench`: then a short, slow smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (rate, seconds, warm_up_s): (f64, u64, i64) = if smoke {
        (200.0, 3, 0)
    } else {
        (
            env("STRATA_BENCH_RATE", "5000").parse().expect("a number"),
            env("STRATA_BENCH_SECONDS", "40").parse().expect("a number"),
            env("STRATA_BENCH_WARMUP", "10").parse().expect("a number"),
        )
    };
    let registry = env("STRATA_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081");
    let private = (env("STRATA_BENCH_BROKER", "memory") != "services")
        .then(support::MemoryBroker::start)
        .flatten();
    let (label, kafka) = match &private {
        Some(b) => ("tansu, memory engine (private)", b.settings()),
        None => (
            "tansu, sqlite engine (scripts/services.sh)",
            support::kafka(),
        ),
    };
    let report = measure(&kafka, &registry, rate, seconds, warm_up_s).await;
    if smoke {
        assert!(!report.processors.is_empty(), "no claim made it through");
    }
    report.print(label);
}
