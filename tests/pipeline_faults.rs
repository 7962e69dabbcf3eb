//! The whole pipeline under crashes while claims keep changing: the quickstart topology
//! (PostgreSQL source → conflict resolution → assembly → analysis → tiering → hot, warm
//! and cold stores) run by `strata run`, against the real PostgreSQL of
//! `scripts/services.sh` and a durable tansu broker of the test's own (reached through a
//! proxy, so its connections can be cut; killed and restarted on the same data).
//!
//! Each seeded round lets a writer insert, update and delete rows of every captured table
//! (`support::writer`: no update repeats a value), injects two faults while it writes —
//! `kill -9` of `strata run`, `kill -9` of the broker, the broker's connections cut,
//! PostgreSQL stopped `-m immediate`, the hot store refusing connections (to the hot sink
//! and to the cold sink's evictions there), the archive's disk full — and in some rounds
//! plants bytes that are not Avro in the claims topic. Then it heals the faults, stops
//! the writer and waits until every store equals the source in every row and column
//! (`support::oracle`; a column added to `claims` in the second round included), without
//! restarting `strata run` unless the round killed it: a
//! stage that stalled must resume by itself. The dead-letter topic must hold exactly the
//! planted records, with their headers and bytes. While the hot store refuses, the hot
//! sink's `strata_consumer_lag` must read above 0.
//!
//! A fresh seed each run, printed; `STRATA_FAULT_SEED` reruns one, `STRATA_FAULT_ROUNDS`
//! runs longer. A fault that cannot be set up fails the test under `CI=true`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use support::durable_broker::DurableBroker;
use support::writer::writer;
use support::{oracle, Lcg};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");
/// How long the stores may take to equal the source once a round's faults healed: a
/// stalled stage restarts itself within a minute, then catches up.
const CONVERGE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill9,
    BrokerKill9,
    BrokerCut,
    PostgresCrash,
    HotStoreRefuses,
    ArchiveDiskFull,
}

const FAULTS: [Fault; 6] = [
    Fault::Kill9,
    Fault::BrokerKill9,
    Fault::BrokerCut,
    Fault::PostgresCrash,
    Fault::HotStoreRefuses,
    Fault::ArchiveDiskFull,
];

/// `strata run` of the quickstart topology, its hot store behind a proxy.
struct Pipeline {
    topology: PathBuf,
    home: PathBuf,
    log: PathBuf,
    env: Vec<(&'static str, String)>,
    child: Option<Child>,
}

impl Pipeline {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(STRATA);
        command
            .arg("run")
            .arg(&self.topology)
            .env("STRATA_HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("strata starts"));
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("strata exited ({status}) {when}:\n{}", self.logs());
        }
    }

    fn metrics_url(&self) -> String {
        let listen = self
            .env
            .iter()
            .find(|(k, _)| *k == "STRATA_METRICS_LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        format!("http://{listen}/metrics")
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A small tmpfs for the archive, so its disk can be filled; unmounted when dropped.
struct Tmpfs(PathBuf);

fn mount_tmpfs(dir: &Path) -> Option<Tmpfs> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| Tmpfs(dir.to_path_buf()))
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with a ballast file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    ballast
}

/// Waits until the stores equal the source, the process running throughout; returns
/// the rows compared per table.
async fn converge(
    pipeline: &mut Pipeline,
    url: &str,
    archive: &Path,
    what: &str,
) -> BTreeMap<&'static str, usize> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        pipeline.assert_running(what);
        let last = match oracle::compare(url, archive).await {
            Ok(compared) => return compared.rows,
            Err(difference) => difference,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: the stores did not equal the source within {CONVERGE:?}; last difference: {last}\n{}",
            pipeline.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The sum of `strata_consumer_lag` of `component` on `/metrics`, if it is served.
async fn lag(metrics_url: &str, component: &str) -> Option<i64> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    let prefix = format!("strata_consumer_lag{{component=\"{component}\"");
    let values: Vec<i64> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn env_or<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_equal_the_source_in_every_column_after_every_round_of_crashes() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let seed: u64 = env_or("STRATA_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(2026)
    });
    println!("fault seed {seed} (STRATA_FAULT_SEED={seed} reruns it)");
    let rounds: usize = env_or("STRATA_FAULT_ROUNDS").unwrap_or(10);
    let Some(mut broker) = DurableBroker::start().await else {
        assert!(!ci, "tansu did not start: the fault suite cannot run");
        eprintln!("skipped: tansu did not start (scripts/install-deps.sh installs it)");
        return;
    };
    let (url, db) = support::fresh_db("faults").await;
    drop(db);
    support::generate(&url, 120, 20, 400, 11);

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let region = format!("faults{}", std::process::id());
    let archive_root = home.join("archive");
    let mounted = mount_tmpfs(&archive_root);
    assert!(
        mounted.is_some() || !ci,
        "cannot mount a tmpfs for the disk-full fault (run as root)"
    );
    let archive = archive_root.join(&region);
    let registry = support::start_registry(&home.join("registry")).await;

    let db_name = url.rsplit('/').next().unwrap().to_string();
    let pg_addr = url
        .trim_start_matches("postgres://")
        .split('/')
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_string();
    let hot_proxy = support::proxy::proxy(pg_addr).await;
    let hot_url = format!("postgres://postgres@127.0.0.1:{}/{db_name}", hot_proxy.port);
    let topology = home.join("topology.yaml");
    std::fs::write(&topology, through_proxy(&quickstart())).unwrap();
    let slot = format!("strata_{region}");
    let brokers = broker.address();
    let mut pipeline = Pipeline {
        topology,
        home: home.clone(),
        log: home.join("strata.log"),
        env: vec![
            ("STRATA_PG_URL", url.clone()),
            ("STRATA_HOT_URL", hot_url),
            ("STRATA_REGION", region.clone()),
            ("STRATA_SLOT", slot.clone()),
            ("STRATA_SCHEMA_REGISTRY_URL", registry.url.clone()),
            ("STRATA_KAFKA_BROKERS", brokers.clone()),
            (
                "STRATA_METRICS_LISTEN",
                format!("127.0.0.1:{}", support::free_port()),
            ),
        ],
        child: None,
    };
    // The writer starts with the pipeline: changes race the snapshot from the start.
    pipeline.start();
    let writer = writer(url.clone(), seed);
    writer.write(30, Duration::from_secs(60)).await;
    writer.pause();
    converge(&mut pipeline, &url, &archive, "after the snapshot").await;
    // A stall provoked on purpose: the hot store refuses, records wait for its sink.
    hot_proxy.down.store(true, Ordering::SeqCst);
    hot_lag_probe(&pipeline, &url, 0).await;
    hot_proxy.down.store(false, Ordering::SeqCst);

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let claims_topic = format!("{region}.cdc.{db_name}.public.claims");
    let dead_letters = format!("{region}.dead-letter");
    let mut planted: Vec<Vec<u8>> = Vec::new();

    let mut rng = Lcg(seed);
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut compared: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut lag_seen = 1usize;
    let started = Instant::now();
    for round in 1..=rounds {
        let first = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let mut second = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        while second == first {
            second = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        }
        let faults = [first, second];
        if round == 2 {
            // A column added upstream mid-run: from here on the oracle compares it too.
            let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            for sql in [
                "ALTER TABLE public.claims ADD COLUMN note text",
                "UPDATE public.claims SET note = 'note of ' || claim_id, updated_at = now() WHERE claim_id % 5 = 0",
            ] {
                sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
            }
        }
        writer.write(10, Duration::from_secs(60)).await;
        let mut ballast = None;
        for fault in faults {
            *injected.entry(fault).or_default() += 1;
            match fault {
                // While the writer streams, commits are in flight (one every 100 ms).
                Fault::Kill9 => pipeline.kill9(),
                Fault::BrokerKill9 => assert!(broker.crash_and_restart(), "tansu restarts"),
                Fault::BrokerCut => broker.proxy.down.store(true, Ordering::SeqCst),
                Fault::PostgresCrash => support::services("crash-postgres"),
                Fault::HotStoreRefuses => hot_proxy.down.store(true, Ordering::SeqCst),
                Fault::ArchiveDiskFull => ballast = Some(fill(&archive_root)),
            }
            writer.write(5, Duration::from_secs(120)).await;
        }
        writer.write(10, Duration::from_secs(120)).await;
        // With the broker reachable, records wait for the hot sink while its store
        // refuses (a member's change goes to every tier): its lag must say so.
        if faults.contains(&Fault::HotStoreRefuses)
            && !faults.contains(&Fault::BrokerCut)
            && pipeline.child.is_some()
        {
            hot_lag_probe(&pipeline, &url, round).await;
            lag_seen += 1;
        }
        broker.proxy.down.store(false, Ordering::SeqCst);
        hot_proxy.down.store(false, Ordering::SeqCst);
        if let Some(ballast) = ballast {
            std::fs::remove_file(ballast).unwrap();
        }
        if pipeline.child.is_none() {
            pipeline.start();
        }
        // Planted once the broker is reachable again, while the writer still writes.
        if round % 4 == 0 {
            let bytes = format!("not avro: planted in round {round}").into_bytes();
            producer
                .send(
                    BaseRecord::to(&claims_topic)
                        .key(&b"not avro"[..])
                        .payload(&bytes),
                )
                .map_err(|(e, _)| e)
                .expect("a planted record is sent");
            producer.flush(Duration::from_secs(30)).expect("flushed");
            planted.push(bytes);
        }
        writer.pause();
        let what = format!("round {round} (seed {seed}, faults {faults:?})");
        for (table, rows) in converge(&mut pipeline, &url, &archive, &what).await {
            *compared.entry(table).or_default() += rows;
        }
        check_dead_letters(&brokers, &dead_letters, &planted, &what);
        writer.assert_no_errors();
    }
    let faults: usize = injected.values().sum();
    let counts = writer.counts.summary();
    writer.stop().await;
    let report = format!(
        "{rounds} rounds (seed {seed}): {faults} faults {injected:?}; changes: {counts}; \
         {} planted records dead-lettered; rows compared in every column, per table over all rounds: {compared:?}; \
         hot sink lag seen above 0 in {lag_seen} hot-store outages; {:.0} s",
        planted.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    // CI prints it after the tests (a passing test's output is not shown).
    if let Ok(home) = std::env::var("STRATA_HOME") {
        let _ = std::fs::write(Path::new(&home).join("pipeline-faults.txt"), &report);
    }
    assert!(faults >= 20, "at least 20 faults a run: {report}");

    pipeline.kill9();
    let verify = Command::new(STRATA)
        .args(["archive", "verify"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    drop(pipeline);
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    support::drop_slot_when_released(&mut db, &url, &slot).await;
    drop(mounted);
    registry.shutdown().await;
}

/// While the hot store refuses: a member's change (it goes to every tier) must show as
/// the hot sink's lag above 0 within a minute.
async fn hot_lag_probe(pipeline: &Pipeline, url: &str, round: usize) {
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "UPDATE public.members SET address_line = '{round} Lag Probe Road', updated_at = now() \
         WHERE member_id = (SELECT min(member_id) FROM public.members)"
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let url = pipeline.metrics_url();
    support::wait_for(
        "the hot sink's lag above 0",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move { lag(&url, "hot").await.filter(|l| *l > 0) }
        },
    )
    .await;
}

fn quickstart() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topologies/quickstart.yaml"
    ))
    .unwrap()
}

/// The quickstart with the hot store reached through the proxy: by the hot sink, and by
/// the cold sink's evictions there.
fn through_proxy(quickstart: &str) -> String {
    let pg = "url: ${STRATA_PG_URL:-postgres://postgres@127.0.0.1:15432/claims}";
    let hot_sink =
        format!("kind: hot_store\n    inputs: [tiering.hot]\n    connection:\n      {pg}");
    let pg_quoted = "url: \"${STRATA_PG_URL:-postgres://postgres@127.0.0.1:15432/claims}\"";
    let cold_evicts_hot =
        format!("- connection: {{ {pg_quoted}, ssl_mode: disable }}\n        schema: hot");
    assert!(
        quickstart.contains(&hot_sink),
        "the quickstart's hot sink moved"
    );
    assert!(
        quickstart.contains(&cold_evicts_hot),
        "the quickstart's cold evictions from hot moved"
    );
    quickstart
        .replace(
            &hot_sink,
            "kind: hot_store\n    inputs: [tiering.hot]\n    connection:\n      url: ${STRATA_HOT_URL}",
        )
        .replace(
            &cold_evicts_hot,
            "- connection: { url: \"${STRATA_HOT_URL}\", ssl_mode: disable }\n        schema: hot",
        )
}

/// The dead-letter topic holds exactly the planted records, each with its headers and
/// its original bytes.
fn check_dead_letters(brokers: &str, topic: &str, planted: &[Vec<u8>], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let letters = support::read_records(brokers, topic);
        let payloads: Vec<&Vec<u8>> = letters.iter().map(|r| &r.payload).collect();
        let mut distinct = payloads.clone();
        distinct.sort();
        distinct.dedup(); // at-least-once: a letter may come twice, as the same bytes
        let expected: Vec<&Vec<u8>> = {
            let mut e: Vec<&Vec<u8>> = planted.iter().collect();
            e.sort();
            e
        };
        if distinct == expected {
            for r in &letters {
                assert_eq!(
                    r.headers.get("strata.error.code").map(String::as_str),
                    Some("wire.bad_magic"),
                    "{what}: a dead letter's headers: {:?}",
                    r.headers
                );
                assert!(
                    r.headers.contains_key("strata.input.offset"),
                    "{:?}",
                    r.headers
                );
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the dead-letter topic holds {} distinct records, {} were planted: {:?}",
            distinct.len(),
            planted.len(),
            distinct
                .iter()
                .map(|p| String::from_utf8_lossy(p))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
