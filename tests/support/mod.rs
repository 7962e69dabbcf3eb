//! Shared test helpers: service addresses and waiting for conditions with a deadline.
#![allow(dead_code)]

pub mod broker;
pub mod durable_broker;
pub mod oracle;
pub mod proxy;
pub mod stores;
pub mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_pipeline::ops::shutdown::CancellationToken;

/// Address of the broker started by scripts/services.sh.
pub fn kafka_brokers() -> String {
    std::env::var("STRATA_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// The claims database of the private PostgreSQL cluster.
pub fn pg_url() -> String {
    std::env::var("STRATA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432/claims".into())
}

/// The schema registry started by scripts/services.sh.
pub fn registry_url() -> String {
    std::env::var("STRATA_SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:18081".into())
}

/// The test CA and server certificate of scripts/services.sh (`ca.pem`, `other-ca.pem`,
/// `server.crt`, `server.key`).
pub fn tls_dir() -> std::path::PathBuf {
    std::env::var_os("STRATA_TLS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("STRATA_HOME").map(|h| Path::new(&h).join("tls")))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".strata/tls"))
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A schema registry served in-process on a free port, with its state in `dir`.
pub struct Registry {
    pub url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub async fn start_registry(dir: &Path) -> Registry {
    start_registry_with_auth(dir, None).await
}

/// A registry whose write endpoints need `auth`'s credentials.
pub async fn start_registry_with_auth(
    dir: &Path,
    auth: Option<strata::registry::auth::WriteAuth>,
) -> Registry {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let stop = CancellationToken::new();
    let token = stop.clone();
    let dir = dir.to_path_buf();
    let task = tokio::spawn(async move {
        strata::registry::serve_on(listener, dir, auth, token)
            .await
            .expect("registry serves");
    });
    Registry { url, stop, task }
}

/// A codec talking to the registry at `url`, no credentials.
pub fn codec(url: &str) -> strata_pipeline::avro::Codec {
    strata_pipeline::avro::Codec::new(&strata_pipeline::topology::RegistrySettings {
        url: url.into(),
        username: None,
        password: None,
        ca_file: None,
        allow_incompatible: false,
    })
    .expect("a codec for the test registry")
}

impl Registry {
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.expect("registry task ends");
    }
}

/// tests/topologies/minimal.yaml pointed at the given services, written into `dir`.
pub fn minimal_topology(dir: &Path, registry: &str, pg_url: &str, slot: &str) -> PathBuf {
    let minimal = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/topologies/minimal.yaml");
    let text = std::fs::read_to_string(minimal)
        .unwrap()
        // Each run its own region, so its topics and consumer groups: deployments of
        // tests running side by side in one group would take each other's partitions.
        .replace(
            "region: test",
            &format!("region: {}", unique("run").replace('_', "-")),
        )
        .replace("127.0.0.1:19092", &kafka_brokers())
        .replace("http://127.0.0.1:18081", registry)
        .replace("postgres://postgres@127.0.0.1:15432/claims", pg_url)
        .replace("slot: slot", &format!("slot: {slot}"))
        // Each run its own state directory: two processes cannot share a RocksDB.
        .replace("/tmp/strata-test", &dir.join("state").display().to_string());
    let file = dir.join("topology.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A fresh, empty database for one test (dropped and recreated on every run).
pub async fn fresh_db(name: &str) -> (String, sqlx::PgConnection) {
    use sqlx::{Connection, Executor};
    let base = pg_url()
        .rsplit_once('/')
        .map(|(base, _)| base.to_string())
        .expect("a database URL");
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("admin connection");
    let db = format!("t_{name}_{}", std::process::id());
    // Slots an interrupted earlier run left on it would block the drop (and hold WAL).
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
         WHERE database = $1 AND NOT active",
    )
    .bind(&db)
    .execute(&mut admin)
    .await
    .expect("drop leftover slots");
    admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await
        .expect("drop");
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .expect("create");
    let url = format!("{base}/{db}");
    let conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to the fresh database");
    (url, conn)
}

/// The `active` flag of replication slot `slot` (`Some(None)` when there is no such
/// slot); `None` when the database cannot be asked.
async fn slot_activity(url: &str, slot: &str) -> Option<Option<bool>> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.ok()?;
    let active = sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .fetch_optional(&mut c)
        .await
        .ok()?;
    let _ = c.close().await;
    Some(active)
}

/// `Some` when replication slot `slot` exists and its `active` flag is `want`.
pub async fn slot_active(url: String, slot: String, want: bool) -> Option<()> {
    (slot_activity(&url, &slot).await? == Some(want)).then_some(())
}

/// `Some` when no process holds replication slot `slot`: it is inactive, or gone (a
/// process stopped while it was still creating the slot leaves none).
pub async fn slot_released(url: String, slot: String) -> Option<()> {
    (slot_activity(&url, &slot).await? != Some(true)).then_some(())
}

/// Waits (60 s at most) until no process holds replication slot `slot`, then drops it if
/// it exists; returns the number of slots dropped. The walsender of a stopped
/// deployment lets go of its slot a moment after the process is gone, and dropping an
/// active slot fails.
pub async fn drop_slot_when_released(db: &mut sqlx::PgConnection, url: &str, slot: &str) -> u64 {
    wait_for("the slot to be released", Duration::from_secs(60), || {
        slot_released(url.to_string(), slot.to_string())
    })
    .await;
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .execute(db)
    .await
    .expect("drop the replication slot")
    .rows_affected()
}

/// A child process killed (and reaped) when dropped, so a failing test leaves no
/// `strata` running behind it.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `strata generate` of a claims workload into the database at `url`, deterministic for
/// `seed`; a failure fails the test.
pub fn generate(url: &str, members: u32, providers: u32, claims: u32, seed: u32) {
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["generate", "--url", url])
        .args(["--members", &members.to_string()])
        .args(["--providers", &providers.to_string()])
        .args(["--claims", &claims.to_string(), "--seed", &seed.to_string()])
        .output()
        .expect("strata generate runs");
    assert!(generated.status.success(), "{generated:?}");
}

/// A tiny deterministic generator, so a failing seed can be rerun.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Runs `scripts/services.sh <command>` (restart-broker, restart-postgres …).
pub fn services(command: &str) {
    let out =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
            .arg(command)
            .output()
            .expect("scripts/services.sh runs");
    assert!(
        out.status.success(),
        "scripts/services.sh {command} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every record of `topic` up to its current end: (key, payload).
pub fn read_topic(topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    read_records(&kafka_brokers(), topic)
        .into_iter()
        .map(|r| (r.key, r.payload))
        .collect()
}

/// One record read back, with its headers.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Every record of `topic` on `brokers` up to its current end; none if the topic does
/// not exist. A read that fails or stalls fails the test.
pub fn read_records(brokers: &str, topic: &str) -> Vec<Record> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("faults-check"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut records = Vec::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut next = low;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while next < high {
            assert!(
                std::time::Instant::now() < deadline,
                "reading {topic}/{p} stalled at {next} of {high}"
            );
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                let m = m.unwrap_or_else(|e| panic!("reading {topic}/{p}: {e}"));
                next = m.offset() + 1;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value = h.value.map(String::from_utf8_lossy);
                                (h.key.to_string(), value.unwrap_or_default().into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                });
            }
        }
    }
    records
}

/// Field `name` of an Avro record, its union unwrapped.
pub fn field<'a>(
    record: &'a apache_avro::types::Value,
    name: &str,
) -> &'a apache_avro::types::Value {
    use apache_avro::types::Value;
    let Value::Record(fields) = record else {
        panic!("a record: {record:?}")
    };
    match &fields
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("field {name} in {record:?}"))
        .1
    {
        Value::Union(_, inner) => inner,
        other => other,
    }
}
