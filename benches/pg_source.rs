//! The PostgreSQL source's rate, beside the raw limits measured on the same machine in
//! the same run:
//!
//! - single-row and 1,000-row transactions: changes/s from WAL to events acknowledged by
//!   Kafka (the slot's `confirmed_flush_lsn` reaching the WAL end), beside `pg_recvlogical`
//!   decoding the same WAL with pgoutput into /dev/null (two slots created before the
//!   workload, so both read the same changes);
//! - the initial snapshot in rows/s;
//! - a raw rdkafka producer sending as many records of the same size to the same broker.
//!
//! Each scenario runs twice: against the durable broker of scripts/services.sh (tansu's
//! sqlite engine, which caps what any producer reaches on this machine) and against a
//! private tansu with the memory engine, which shows the source's own limit.
//!
//! cargo bench --bench pg_source      (STRATA_BENCH_CHANGES, default 100000)
//!
//! Needs scripts/services.sh (PostgreSQL, broker, registry). Without `--bench` (as
//! `cargo test` runs it) it is a 2,000-change smoke run.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};
use strata_connectors::postgres::snapshot_state::{Progress, SnapshotState};
use strata_connectors::postgres::source::{self, SourceContext};
use strata_connectors::postgres::PostgresSourceConfig;
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::topology::{KafkaSettings, RegistrySettings};

const SCHEMA: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, member_id bigint NOT NULL, code text NOT NULL,
                    amount numeric(12,2) NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL);
CREATE PUBLICATION bench_pub FOR TABLE items;
CREATE PROCEDURE load(first bigint, n bigint, per_tx int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 0 .. n - 1 LOOP
    INSERT INTO items VALUES (first + i, (first + i) % 5000, 'D' || ((first + i) % 900),
                              ((first + i) % 10000) * 1.25, 'submitted', now());
    IF (i + 1) % per_tx = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
";

fn pg_url() -> String {
    support::env(
        "STRATA_PG_URL",
        "postgres://postgres@127.0.0.1:15432/claims",
    )
}

/// The server's address without a database, and a connection to its `postgres` database.
async fn admin() -> (String, PgConnection) {
    let url = pg_url();
    let base = url.rsplit_once('/').expect("a database URL").0.to_string();
    let admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL is running (scripts/services.sh start)");
    (base, admin)
}

/// A fresh database for one scenario, with the table, publication and load procedure.
async fn fresh_db(name: &str) -> (String, PgConnection) {
    drop_db(name).await;
    let (base, mut admin) = admin().await;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create");
    let url = format!("{base}/{name}");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    conn.execute(SCHEMA).await.expect("schema");
    conn.execute("SET synchronous_commit = off")
        .await
        .expect("set");
    (url, conn)
}

async fn drop_db(name: &str) {
    admin()
        .await
        .1
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .expect("drop");
}

/// The WAL position after the workload. A WAL record is written after it, so that a
/// reader that has decoded everything sees the server's WAL end pass it (pg_recvlogical
/// otherwise waits for a keepalive that may not come).
async fn wal_end(conn: &mut PgConnection) -> String {
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut *conn)
        .await
        .expect("wal lsn");
    conn.execute("SELECT pg_logical_emit_message(false, 'strata-bench', 'end')")
        .await
        .expect("a WAL record past the end");
    end
}

/// Seconds `pg_recvlogical` takes to decode `slot` up to `end` into /dev/null.
fn recvlogical(url: &str, slot: &str, end: &str) -> f64 {
    let bin = support::env("PG_BIN", "/usr/lib/postgresql/15/bin");
    strata::bench::recvlogical(std::path::Path::new(&bin), url, slot, "bench_pub", end)
        .expect("pg_recvlogical decodes the slot")
}

struct Source {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), source::SourceError>>,
    started: Instant,
}

fn start_source(
    kafka: &KafkaSettings,
    url: &str,
    slot: &str,
    snapshot: &str,
    region: &str,
) -> Source {
    let config: PostgresSourceConfig = serde_yaml_ng::from_str(&format!(
        "{{connection: {{url: '{url}', ssl_mode: disable}}, publication: bench_pub, slot: {slot}, \
          tables: [public.items], snapshot: {snapshot}, status_interval: 100ms}}"
    ))
    .expect("source config");
    let codec = Codec::new(&RegistrySettings {
        url: support::env("STRATA_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081"),
        username: None,
        password: None,
        ca_file: None,
        allow_incompatible: false,
    })
    .expect("codec");
    let ctx = SourceContext {
        component: "bench".into(),
        region: region.into(),
        kafka: kafka.clone(),
        partitions: 4,
        replication_factor: 1,
        codec: Arc::new(codec),
        metrics: strata_pipeline::ops::metrics::Metrics::new(),
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let started = Instant::now();
    let task = tokio::spawn(async move { source::run(&config, &ctx, token).await });
    Source {
        stop,
        task,
        started,
    }
}

impl Source {
    async fn stop(self) -> f64 {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.stop.cancel();
        self.task
            .await
            .expect("source task")
            .expect("source stops cleanly");
        elapsed
    }
}

/// Polls until the slot confirms `end`.
async fn wait_confirmed(url: &str, slot: &str, end: &str, source: &Source) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    loop {
        assert!(!source.task.is_finished(), "the source stopped early");
        let done: Option<bool> = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .bind(end)
        .fetch_one(&mut conn)
        .await
        .expect("slot");
        if done == Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Row {
    scenario: String,
    strata: f64,
    /// pg_recvlogical's rate on the same WAL.
    reference: Option<f64>,
}

/// `changes` inserts in transactions of `per_tx`, read by both pg_recvlogical and Strata.
async fn streaming(kafka: &KafkaSettings, changes: u64, per_tx: u64, run: &str) -> Row {
    let name = format!("bench_pgsrc_{run}_{per_tx}");
    let (url, mut conn) = fresh_db(&name).await;
    for slot in ["recv", "strata"] {
        conn.execute(
            format!("SELECT pg_create_logical_replication_slot('{name}_{slot}', 'pgoutput')")
                .as_str(),
        )
        .await
        .expect("slot");
    }
    let load = Instant::now();
    conn.execute(format!("CALL load(1, {changes}, {per_tx})").as_str())
        .await
        .expect("load");
    let end = wal_end(&mut conn).await;
    eprintln!(
        "[bench] {changes} changes in transactions of {per_tx} written in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    let recv = recvlogical(&url, &format!("{name}_recv"), &end);
    let source = start_source(
        kafka,
        &url,
        &format!("{name}_strata"),
        "never",
        &format!("bench-{run}-{per_tx}"),
    );
    wait_confirmed(&url, &format!("{name}_strata"), &end, &source).await;
    let strata = source.stop().await;
    drop(conn);
    drop_db(&name).await;
    Row {
        scenario: format!("stream, {per_tx}-row transactions"),
        strata: changes as f64 / strata,
        reference: Some(changes as f64 / recv),
    }
}

/// The initial snapshot of `rows` rows, until the source records it as finished.
async fn snapshot(kafka: &KafkaSettings, rows: u64, run: &str) -> Row {
    let name = format!("bench_pgsrc_{run}_snap");
    let (url, mut conn) = fresh_db(&name).await;
    conn.execute(format!("CALL load(1, {rows}, 10000)").as_str())
        .await
        .expect("load");
    let region = format!("bench-{run}-snap");
    let slot = format!("{name}_strata");
    let source = start_source(kafka, &url, &slot, "initial", &region);
    let state = SnapshotState::new(&region, &name, &slot);
    loop {
        assert!(!source.task.is_finished(), "the source stopped early");
        if let Ok(Some(record)) = state.read(kafka).await {
            if record.progress == Progress::Done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = source.stop().await;
    drop(conn);
    drop_db(&name).await;
    Row {
        scenario: "initial snapshot".into(),
        strata: rows as f64 / elapsed,
        reference: None,
    }
}

/// A raw producer sending `records` of `bytes` each: the broker's own limit.
async fn raw_producer(kafka: &KafkaSettings, records: u64, bytes: usize, run: &str) -> f64 {
    let topic = format!("bench-{run}-raw");
    strata_pipeline::kafka::ensure_topics(
        &strata_pipeline::kafka::client_config(kafka),
        &[strata_pipeline::kafka::TopicSpec {
            name: topic.clone(),
            partitions: 4,
            replication_factor: 1,
            compacted: false,
        }],
    )
    .await
    .expect("topic");
    let producer = strata_pipeline::kafka::producer(kafka).expect("producer");
    let mut sender = support::Sender::new(producer);
    let started = Instant::now();
    for i in 0..records {
        sender
            .send(
                &topic,
                Some(i.to_be_bytes().to_vec()),
                Some(vec![7u8; bytes]),
            )
            .await;
    }
    sender.finish().await;
    records as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        strata_pipeline::ops::logging::init(strata_pipeline::ops::logging::LogFormat::Text);
    }
    let smoke = !std::env::args().any(|a| a == "--bench");
    let changes: u64 = if smoke {
        2_000
    } else {
        support::env("STRATA_BENCH_CHANGES", "100000")
            .parse()
            .expect("STRATA_BENCH_CHANGES is a number")
    };
    let mut brokers = vec![(
        "tansu, sqlite engine (scripts/services.sh)".to_string(),
        support::kafka(),
        None,
    )];
    match support::MemoryBroker::start() {
        Some(broker) => brokers.push((
            "tansu, memory engine (private)".to_string(),
            broker.settings(),
            Some(broker),
        )),
        None => eprintln!("[bench] no `tansu` on PATH: the memory-engine run is skipped"),
    }
    for (i, (label, kafka, _broker)) in brokers.iter().enumerate() {
        let run = format!("{}_{i}", std::process::id());
        let rows = vec![
            streaming(kafka, changes, 1, &run).await,
            streaming(kafka, changes, 1000, &run).await,
            snapshot(kafka, changes, &run).await,
        ];
        // An event of `items` is about 330 bytes framed (envelope, source block, position).
        let raw = raw_producer(kafka, changes, 330, &run).await;
        print_table(label, changes, &rows, raw);
    }
}

fn print_table(broker: &str, changes: u64, rows: &[Row], raw: f64) {
    println!("\nPostgreSQL source, {changes} changes per scenario; broker: {broker}");
    println!(
        "{:<34} {:>12} {:>16} {:>8} {:>12}",
        "scenario", "strata /s", "pg_recvlogical /s", "ratio", "vs raw prod."
    );
    for row in rows {
        let (reference, ratio) = match row.reference {
            Some(r) => (format!("{r:.0}"), format!("{:.2}", row.strata / r)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<34} {:>12.0} {:>16} {:>8} {:>12.2}",
            row.scenario,
            row.strata,
            reference,
            ratio,
            row.strata / raw
        );
    }
    println!("{:<34} {:>12.0}", "raw rdkafka producer, 330 B", raw);
}
