//! The SQL Server source against the real broker and schema registry, reading a CDC
//! database simulated in memory (`sqlserver::simulated`: SQL Server cannot run on these
//! machines; the TDS path is tested in tests/sqlserver_wire, a real server by
//! docker/sqlserver/run-tests.sh). Snapshot then changes in commit order, the offset
//! stored only after Kafka's acknowledgement and resumed from after a kill, a capture
//! instance switch registering a new schema version, retention, CDC disabled, and a
//! hung server opening the circuit without losing a change.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::field;

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use strata_connectors::emitter::SourceContext;
use strata_connectors::source_state::SourceState;
use strata_connectors::sqlserver::lsn::Offset;
use strata_connectors::sqlserver::simulated::{Change, SimulatedCdc};
use strata_connectors::sqlserver::source::{self, OffsetRecord, SqlServerSourceError};
use strata_connectors::sqlserver::stream::{CapturedColumn, CdcError};
use strata_connectors::sqlserver::SqlServerSourceConfig;
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::topology::KafkaSettings;
use tiberius::ColumnData;

const CLAIMS: &str = "dbo.claims";

fn column(name: &str, type_name: &str, key: bool) -> CapturedColumn {
    CapturedColumn {
        name: name.into(),
        type_name: type_name.into(),
        key,
    }
}

fn claim_columns() -> Vec<CapturedColumn> {
    vec![
        column("claim_id", "bigint", true),
        column("status", "nvarchar", false),
        column("billed_amount", "decimal(12,2)", false),
    ]
}

fn claim(id: i64, status: &str) -> Change {
    Change::Upsert {
        table: CLAIMS.into(),
        row: vec![
            ("claim_id".into(), ColumnData::I64(Some(id))),
            (
                "status".into(),
                ColumnData::String(Some(status.to_string().into())),
            ),
            (
                "billed_amount".into(),
                ColumnData::Numeric(Some(tiberius::numeric::Numeric::new_with_scale(
                    i128::from(id * 100 + 25),
                    2,
                ))),
            ),
        ],
    }
}

struct Fixture {
    db: SimulatedCdc,
    codec: Arc<Codec>,
    ctx: Arc<SourceContext>,
    registry: support::Registry,
    _dir: tempfile::TempDir,
}

/// A simulated database holding claims 1..=`claims`, and the services around it.
async fn fixture(name: &str, claims: i64) -> Fixture {
    let db = SimulatedCdc::default();
    db.create_table(CLAIMS, claim_columns());
    for id in 1..=claims {
        db.commit(vec![claim(id, "SUBMITTED")]);
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let codec = Arc::new(support::codec(&registry.url));
    let kafka: KafkaSettings = serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        support::kafka_brokers()
    ))
    .unwrap();
    let ctx = SourceContext {
        component: "legacy".into(),
        region: support::unique(name).replace('_', "-"),
        kafka,
        partitions: 2,
        replication_factor: 1,
        codec: codec.clone(),
        metrics: strata_pipeline::ops::metrics::Metrics::new(),
    };
    Fixture {
        db,
        codec,
        ctx: Arc::new(ctx),
        registry,
        _dir: dir,
    }
}

fn config(extra: &str) -> SqlServerSourceConfig {
    serde_yaml_ng::from_str(&format!(
        "{{host: 127.0.0.1, database: claims, username: strata, password: unused, tables: [{CLAIMS}], \
          poll_interval: 50ms, batch_size: 7, query_timeout: 1s, max_backoff: 1s, \
          circuit_failures: 3, circuit_open_for: 1s{extra}}}"
    ))
    .expect("a valid source config")
}

/// One event as the test reads it back.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    op: String,
    position: String,
    snapshot: String,
    /// `source.ts_ms`: the commit time (the snapshot's start for a snapshot row).
    ts_ms: i64,
    id: i64,
    status: Option<String>,
    schema_id: u32,
    fields: Vec<String>,
}

impl Fixture {
    fn start(
        &self,
        config: SqlServerSourceConfig,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), SqlServerSourceError>> {
        let (ctx, db) = (self.ctx.clone(), self.db.clone());
        tokio::spawn(async move { source::run(&config, &ctx, &db, stop).await })
    }

    fn topic(&self) -> String {
        format!("{}.cdc.claims.dbo.claims", self.ctx.region)
    }

    /// Reads the claims topic from the start until at least `n` events arrived and every
    /// partition is read to its end; ordered by position (each key's events are in
    /// order in its partition, and positions order all of them).
    async fn events(&self, n: usize) -> Vec<Event> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", support::kafka_brokers())
            .set("group.id", support::unique("mssql-check"))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let topic = self.topic();
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
        let mut out = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if out.len() >= n {
                let ends: Vec<i64> = (0..2)
                    .map(|p| {
                        consumer
                            .fetch_watermarks(&topic, p, Duration::from_secs(5))
                            .map(|(_, high)| high)
                            .unwrap_or(0)
                    })
                    .collect();
                if ends
                    .iter()
                    .enumerate()
                    .all(|(p, &end)| next.get(&(p as i32)).copied().unwrap_or(0) >= end)
                {
                    break;
                }
            }
            let msg = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} events after 60 s: {out:#?}", out.len()))
                .unwrap();
            next.insert(msg.partition(), msg.offset() + 1);
            let payload = msg.payload().unwrap();
            let decoded = self.codec.decode(payload).await.expect("value decodes");
            let source = field(&decoded.value, "source");
            let image = match field(&decoded.value, "after") {
                Value::Null => field(&decoded.value, "before"),
                after => after,
            };
            let Value::Record(image_fields) = image else {
                panic!("{image:?}")
            };
            out.push(Event {
                op: text(field(&decoded.value, "op")).unwrap(),
                position: text(field(source, "position")).unwrap(),
                snapshot: text(field(source, "snapshot")).unwrap(),
                ts_ms: match field(source, "ts_ms") {
                    Value::Long(ms) => *ms,
                    v => panic!("source.ts_ms is {v:?}"),
                },
                id: match field(image, "claim_id") {
                    Value::Long(i) => *i,
                    v => panic!("{v:?}"),
                },
                status: text(field(image, "status")),
                schema_id: decoded.id,
                fields: image_fields.iter().map(|(n, _)| n.clone()).collect(),
            });
        }
        out.sort_by(|a, b| a.position.cmp(&b.position));
        out
    }

    async fn stored_offset(&self) -> Option<String> {
        let state = SourceState::new(&self.ctx.region, &source::state_key("claims", "legacy"));
        let record: Option<OffsetRecord> = state.read(&self.ctx.kafka).await.unwrap();
        record.map(|r| r.offset)
    }

    fn metric(&self, name: &str) -> i64 {
        let m = &self.ctx.metrics;
        match name {
            "restarts" => m.source_restarts.with_label_values(&["legacy"]).get() as i64,
            "circuit_open" => m.circuit_open.with_label_values(&["legacy"]).get(),
            _ => unreachable!(),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The last image of each claim in the events (deletes remove it).
fn latest(events: &[Event]) -> BTreeMap<i64, Option<String>> {
    let mut rows = BTreeMap::new();
    for e in events {
        if e.op == "d" {
            rows.remove(&e.id);
        } else {
            rows.insert(e.id, e.status.clone());
        }
    }
    rows
}

fn statuses(db: &SimulatedCdc) -> BTreeMap<i64, Option<String>> {
    db.rows(CLAIMS)
        .into_iter()
        .map(|(k, row)| {
            let status = row
                .iter()
                .find(|(n, _)| n == "status")
                .and_then(|(_, d)| match d {
                    ColumnData::String(s) => s.as_ref().map(|s| s.to_string()),
                    _ => None,
                });
            (k, status)
        })
        .collect()
}

#[tokio::test]
async fn snapshot_then_changes_in_commit_order_with_the_offset_stored_after_acks() {
    let f = fixture("mssql-order", 10).await;
    let stop = CancellationToken::new();
    let task = f.start(config(""), stop.clone());
    let snapshot = f.events(10).await;
    assert!(
        snapshot.iter().all(|e| e.op == "r" && e.snapshot == "true"),
        "{snapshot:#?}"
    );
    let snapshot_lsn = &snapshot[0].position[..20];
    assert!(snapshot.iter().all(|e| &e.position[..20] == snapshot_lsn));

    f.db.commit(vec![claim(11, "SUBMITTED"), claim(3, "PAID")]);
    f.db.commit(vec![Change::Delete {
        table: CLAIMS.into(),
        key: 4,
    }]);
    f.db.commit(vec![claim(3, "DENIED")]);
    let all = f.events(14).await;
    let changes: Vec<_> = all[10..]
        .iter()
        .map(|e| (e.op.as_str(), e.id, e.status.as_deref()))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("c", 11, Some("SUBMITTED")),
            ("u", 3, Some("PAID")),
            ("d", 4, Some("SUBMITTED")),
            ("u", 3, Some("DENIED")),
        ],
        "commit order, updates as one event, deletes with their before-image"
    );
    assert!(all[10..]
        .iter()
        .all(|e| e.snapshot == "false" && e.position[..20] > *snapshot_lsn));
    // Snapshot rows are as old as the snapshot's start, never later than a change that
    // follows them (ranked by time, a late-read row would otherwise revert it).
    assert!(snapshot.iter().all(|e| e.ts_ms == snapshot[0].ts_ms));
    assert!(all[10..].iter().all(|e| e.ts_ms >= snapshot[0].ts_ms));
    assert_eq!(latest(&all), statuses(&f.db));

    // The stored offset reaches the last change once Kafka acknowledged it.
    let last = &all[13].position;
    let want = Offset::decode(&last.replace('-', ":"))
        .expect("a position")
        .encode();
    support::wait_for(
        "the offset of the last change",
        Duration::from_secs(30),
        || {
            let want = want.clone();
            async { (f.stored_offset().await == Some(want)).then_some(()) }
        },
    )
    .await;
    stop.cancel();
    task.await.unwrap().expect("a clean stop");
    f.registry.shutdown().await;
}

#[tokio::test]
async fn a_killed_source_resumes_from_its_offset_and_loses_nothing_through_failures() {
    let f = fixture("mssql-resume", 30).await;
    let stop = CancellationToken::new();
    let task = f.start(config(""), stop.clone());
    f.events(30).await;
    support::wait_for("the snapshot's offset", Duration::from_secs(30), || async {
        f.stored_offset().await
    })
    .await;
    for round in 0..3i64 {
        for n in 0..10 {
            let status = format!("R{round}");
            f.db.commit(vec![
                claim(100 + round * 10 + n, "SUBMITTED"),
                claim(n + 1, &status),
            ]);
        }
    }
    // Killed mid-stream (the task dropped wherever it was), then a flaky server.
    task.abort();
    let _ = task.await;
    for n in 0..5 {
        f.db.commit(vec![Change::Delete {
            table: CLAIMS.into(),
            key: 100 + n,
        }]);
    }
    f.db.fail_next(4);
    let task = f.start(config(""), stop.clone());
    // 30 snapshot rows, 60 changes, 5 deletes and the last insert; a repeat is the same
    // event again.
    f.db.commit(vec![claim(999, "LAST")]);
    let mut all = support::wait_for("the last change", Duration::from_secs(60), || {
        let f = &f;
        async move {
            let events = f.events(96).await;
            events.iter().any(|e| e.id == 999).then_some(events)
        }
    })
    .await;
    assert_eq!(
        latest(&all),
        statuses(&f.db),
        "the events replay to the table"
    );
    all.dedup();
    let mut positions: Vec<_> = all.iter().map(|e| e.position.clone()).collect();
    positions.dedup();
    assert_eq!(
        positions.len(),
        all.len(),
        "a repeated event carries its original position and image"
    );
    assert_eq!(positions.len(), 96, "each change once, none lost");
    assert!(
        f.metric("restarts") >= 1,
        "the injected failures were retried"
    );
    stop.cancel();
    task.await.unwrap().expect("a clean stop");
    f.registry.shutdown().await;
}

#[tokio::test]
async fn a_new_capture_instance_is_read_from_its_start_with_a_new_schema_version() {
    let f = fixture("mssql-schema", 3).await;
    let stop = CancellationToken::new();
    let task = f.start(config(""), stop.clone());
    f.events(3).await;
    f.db.commit(vec![claim(1, "PAID")]);
    let mut columns = claim_columns();
    columns.push(column("note", "nvarchar", false));
    f.db.add_instance(CLAIMS, "dbo_claims_v2", columns);
    let mut change = claim(2, "PAID");
    if let Change::Upsert { row, .. } = &mut change {
        row.push(("note".into(), ColumnData::String(Some("checked".into()))));
    }
    f.db.commit(vec![change]);
    let events = f.events(5).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.op.as_str(), e.id))
            .collect::<Vec<_>>(),
        vec![("r", 1), ("r", 2), ("r", 3), ("u", 1), ("u", 2)],
        "each change once across the switch"
    );
    assert!(
        !events[3].fields.contains(&"note".to_string()),
        "the old instance's columns"
    );
    assert!(
        events[4].fields.contains(&"note".to_string()),
        "the new instance's columns"
    );
    assert_ne!(
        events[3].schema_id, events[4].schema_id,
        "a new schema version"
    );
    stop.cancel();
    task.await.unwrap().expect("a clean stop");
    f.registry.shutdown().await;
}

#[tokio::test]
async fn an_offset_past_retention_stops_with_a_resnapshot_hint_or_snapshots_again() {
    let f = fixture("mssql-retention", 4).await;
    let stop = CancellationToken::new();
    let task = f.start(config(""), stop.clone());
    f.events(4).await;
    support::wait_for("the snapshot's offset", Duration::from_secs(30), || async {
        f.stored_offset().await
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();

    // While the source is down, changes are made and the cleanup job removes them.
    f.db.commit(vec![claim(2, "PAID")]);
    let last = f.db.commit(vec![claim(5, "SUBMITTED")]);
    f.db.cleanup(last);
    let err = f
        .start(config(""), CancellationToken::new())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SqlServerSourceError::Cdc(CdcError::BeyondRetention { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("A new snapshot is needed")
            && err.to_string().contains("nothing was skipped"),
        "{err}"
    );

    // `snapshot: when_needed` takes the new snapshot instead.
    let stop = CancellationToken::new();
    let task = f.start(config(", snapshot: when_needed"), stop.clone());
    let events = f.events(9).await;
    let resnapshot: Vec<_> = events[4..]
        .iter()
        .map(|e| (e.op.as_str(), e.id, e.status.as_deref()))
        .collect();
    assert_eq!(
        resnapshot,
        vec![
            ("r", 1, Some("SUBMITTED")),
            ("r", 2, Some("PAID")),
            ("r", 3, Some("SUBMITTED")),
            ("r", 4, Some("SUBMITTED")),
            ("r", 5, Some("SUBMITTED")),
        ]
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    f.registry.shutdown().await;
}

#[tokio::test]
async fn cdc_disabled_stops_at_once_and_a_hung_server_opens_the_circuit() {
    let f = fixture("mssql-circuit", 2).await;
    f.db.set_cdc_enabled(false);
    let err = f
        .start(config(""), CancellationToken::new())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("sp_cdc_enable_db"), "{err}");
    assert_eq!(f.metric("restarts"), 0, "a definite error is not retried");

    f.db.set_cdc_enabled(true);
    let stop = CancellationToken::new();
    let task = f.start(config(""), stop.clone());
    f.events(2).await;
    f.db.set_stalled(true);
    support::wait_for("the circuit to open", Duration::from_secs(30), || async {
        (f.metric("circuit_open") == 1).then_some(())
    })
    .await;
    assert!(f.metric("restarts") >= 3);
    f.db.commit(vec![claim(3, "SUBMITTED")]);
    f.db.set_stalled(false);
    let events = f.events(3).await;
    assert_eq!(events[2].id, 3, "the change made while the server hung");
    support::wait_for("the circuit to close", Duration::from_secs(30), || async {
        (f.metric("circuit_open") == 0).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    f.registry.shutdown().await;
}
