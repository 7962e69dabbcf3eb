//! Confluent's own Python client (`confluent-kafka` from PyPI, installed by
//! scripts/install-deps.sh) against Strata: its `SchemaRegistryClient` drives
//! `strata registry` (register, lookup, versions, compatibility, config, delete, with
//! the query parameters it sends, such as `?normalize=False`), and its `AvroDeserializer`
//! reads the change topic `strata run` wrote, every column as the source holds it.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

/// The Python of the venv scripts/install-deps.sh fills, or `None` (skipped with a
/// note); under `CI=true` a missing client fails the test instead.
fn python() -> Option<PathBuf> {
    let venv = std::env::var("STRATA_PY_CLIENTS_VENV").map_or_else(
        |_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/strata/pyclients")
        },
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    let found = python.exists();
    assert!(
        found || std::env::var("CI").as_deref() != Ok("true"),
        "no Confluent Python client in {}: run scripts/install-deps.sh",
        venv.display()
    );
    if !found {
        eprintln!("skipped: no Confluent Python client (run scripts/install-deps.sh)");
    }
    found.then_some(python)
}

/// A topic whose name starts with `prefix` and ends with `suffix`, with its record count
/// (the sum of its partitions' high watermarks); `None` while there is none or the
/// broker cannot say yet (a topic just created).
fn topic_records(prefix: &str, suffix: &str) -> Option<(String, i64)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .ok()?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name().starts_with(prefix) && t.name().ends_with(suffix))?;
    let mut records = 0;
    for p in topic.partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic.name(), p.id(), Duration::from_secs(5))
            .ok()?;
        records += high;
    }
    Some((topic.name().to_string(), records))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_uses_the_registry_and_reads_the_change_topic() {
    let Some(python) = python() else {
        return;
    };
    let (db_url, mut db) = support::fresh_db("confluent_client").await;
    sqlx::Executor::execute(
        &mut db,
        "CREATE TABLE claims (claim_id bigint PRIMARY KEY, status text, billed numeric(10,2), \
         service_date date, detail jsonb);
         INSERT INTO claims VALUES
           (1, 'SUBMITTED', 120.50, '2026-01-02', '{\"lines\": 2}'),
           (2, NULL, 0.01, '1999-12-31', NULL),
           (3, 'PAID', 99999999.99, '2026-11-30', '[1, \"two\"]');",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    let slot = format!("confluent_client_slot_{}", std::process::id());
    let file = support::minimal_topology(dir.path(), &registry.url, &db_url, &slot);
    let region = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("region: ").map(str::to_string))
        .expect("the topology names its region");
    let log = dir.path().join("strata.log");
    let strata = support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("run")
            .arg(&file)
            .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("strata starts"),
    );
    let cdc = format!("{region}.cdc.");
    let topic = support::wait_for("the change topic", Duration::from_secs(90), || {
        let found = topic_records(&cdc, ".claims");
        async move { found.filter(|(_, n)| *n >= 3).map(|(t, _)| t) }
    })
    .await;
    drop(strata);

    let (url, brokers, topic2) = (
        registry.url.clone(),
        support::kafka_brokers(),
        topic.clone(),
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/confluent_client.py"
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([script, &url, &brokers, &topic2, "3"])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "Confluent's client failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let mut rows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    rows.sort_by_key(|r| r["key"]["claim_id"].as_i64());
    let after: Vec<(Value, Value, Value, Value, Value)> = rows
        .iter()
        .map(|r| {
            let a = &r["value"]["after"];
            (
                r["key"]["claim_id"].clone(),
                a["status"].clone(),
                a["billed"].clone(),
                a["service_date"].clone(),
                a["detail"].clone(),
            )
        })
        .collect();
    let s = |t: &str| Value::String(t.into());
    assert_eq!(
        after,
        [
            (
                1.into(),
                s("SUBMITTED"),
                s("120.50"),
                s("2026-01-02"),
                s("{\"lines\": 2}")
            ),
            (
                2.into(),
                Value::Null,
                s("0.01"),
                s("1999-12-31"),
                Value::Null
            ),
            (
                3.into(),
                s("PAID"),
                s("99999999.99"),
                s("2026-11-30"),
                s("[1, \"two\"]")
            ),
        ],
        "the rows as Confluent's deserializer reads them; its output:\n{rows:#?}"
    );
    assert!(
        rows.iter().all(|r| r["value"]["op"] == "r"),
        "snapshot rows: {rows:#?}"
    );
    support::drop_slot_when_released(&mut db, &db_url, &slot).await;
    registry.shutdown().await;
}
