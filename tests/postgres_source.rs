//! The PostgreSQL source against the real PostgreSQL and broker: snapshot rows as
//! `op=r`, then inserts, updates and deletes in commit order with their positions; the
//! slot's confirmed position; and resuming from it after a restart.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use support::field;

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message};
use sqlx::Executor;
use strata_connectors::postgres::source::{self, SourceContext, SourceError};
use strata_connectors::postgres::PostgresSourceConfig;
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::topology::KafkaSettings;

/// A database with the given tables, a schema registry and a source reading them.
struct Fixture {
    url: String,
    conn: sqlx::PgConnection,
    slot: String,
    codec: Arc<Codec>,
    config: Arc<PostgresSourceConfig>,
    ctx: Arc<SourceContext>,
    registry: support::Registry,
    _dir: tempfile::TempDir,
}

async fn fixture(name: &str, setup_sql: &str, tables: &str) -> Fixture {
    let (url, mut conn) = support::fresh_db(name).await;
    conn.execute(setup_sql).await.unwrap();
    let slot = format!("t_{name}_{}", std::process::id());
    let config: PostgresSourceConfig = serde_yaml_ng::from_str(&format!(
        "{{connection: {{url: '{url}', ssl_mode: disable}}, publication: t_pub, slot: {slot}, tables: [{tables}], status_interval: 1s}}"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let codec = Arc::new(support::codec(&registry.url));
    let kafka: KafkaSettings = serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        support::kafka_brokers()
    ))
    .unwrap();
    let ctx = SourceContext {
        component: "postgres".into(),
        region: support::unique(name).replace('_', "-"),
        kafka,
        partitions: 2,
        replication_factor: 1,
        codec: codec.clone(),
        metrics: strata_pipeline::ops::metrics::Metrics::new(),
    };
    Fixture {
        url,
        conn,
        slot,
        codec,
        config: Arc::new(config),
        ctx: Arc::new(ctx),
        registry,
        _dir: dir,
    }
}

impl Fixture {
    fn start(&self, stop: CancellationToken) -> tokio::task::JoinHandle<Result<(), SourceError>> {
        let (config, ctx) = (self.config.clone(), self.ctx.clone());
        tokio::spawn(async move { source::run(&config, &ctx, stop).await })
    }

    async fn wait_slot(&self, active: bool) {
        let (url, slot) = (self.url.clone(), self.slot.clone());
        support::wait_for("the slot's state", Duration::from_secs(60), || {
            support::slot_active(url.clone(), slot.clone(), active)
        })
        .await;
    }

    /// A consumer of the table's topic, from the beginning, once the topic exists.
    async fn subscribe(&self, table: &str) -> StreamConsumer {
        let topic = format!(
            "{}.cdc.{}.public.{table}",
            self.ctx.region,
            self.url.rsplit('/').next().unwrap()
        );
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", support::kafka_brokers())
            .set("group.id", support::unique("pgsrc-check"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
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
        consumer
    }

    /// (op, position, key id, `source.ts_ms`) of one record.
    async fn read(&self, msg: &BorrowedMessage<'_>) -> (String, String, Option<i64>, i64) {
        let decoded = self
            .codec
            .decode(msg.payload().unwrap())
            .await
            .expect("value decodes");
        let op = text(field(&decoded.value, "op"));
        let position = text(field(field(&decoded.value, "source"), "position"));
        let ts_ms = match field(field(&decoded.value, "source"), "ts_ms") {
            Value::Long(ms) => *ms,
            v => panic!("source.ts_ms: {v:?}"),
        };
        let id = match msg.key() {
            Some(key) => match field(
                &self.codec.decode(key).await.expect("key decodes").value,
                "id",
            ) {
                Value::Long(i) => Some(*i),
                v => panic!("{v:?}"),
            },
            None => None,
        };
        (op, position, id, ts_ms)
    }

    async fn finish(mut self) {
        self.conn
            .execute(format!("SELECT pg_drop_replication_slot('{}')", self.slot).as_str())
            .await
            .unwrap();
        self.registry.shutdown().await;
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => panic!("a string: {v:?}"),
    }
}

#[tokio::test]
async fn snapshot_then_changes_reach_kafka_in_order() {
    let mut f = fixture(
        "pgsource",
        "CREATE TABLE wide (id bigint PRIMARY KEY, a text, b text, c text, d text, e text);
         INSERT INTO wide SELECT g, 'a', 'b', 'c', 'd', 'e' FROM generate_series(1, 3) g;
         CREATE TABLE items (id bigint PRIMARY KEY, note text, amount numeric(12,2));
         INSERT INTO items SELECT g, 'row ' || g, g * 1.5 FROM generate_series(1, 100) g;",
        "public.wide, public.items",
    )
    .await;
    let stop = CancellationToken::new();
    let task = f.start(stop.clone());
    // The slot is created before the snapshot is read: changes from now on are streamed.
    f.wait_slot(true).await;
    f.conn
        .execute("INSERT INTO items VALUES (101, 'new', 9.99)")
        .await
        .unwrap();
    f.conn
        .execute("UPDATE items SET note = 'changed' WHERE id = 5")
        .await
        .unwrap();
    f.conn
        .execute("DELETE FROM items WHERE id = 7")
        .await
        .unwrap();
    // A truncate is one keyless `t` event for the table; a row inserted after it follows.
    f.conn.execute("TRUNCATE items").await.unwrap();
    f.conn
        .execute("INSERT INTO items VALUES (102, 'after the truncate', 1.00)")
        .await
        .unwrap();

    let consumer = f.subscribe("items").await;
    let mut by_op: BTreeMap<String, usize> = BTreeMap::new();
    let mut positions: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut truncated_at = None;
    let (mut snapshot_ts, mut streamed_ts) = (Vec::new(), Vec::new());
    let completed = tokio::time::timeout(Duration::from_secs(90), async {
        while by_op.values().sum::<usize>() < 105 {
            let msg = consumer.recv().await.expect("a record");
            let (op, position, id, ts_ms) = f.read(&msg).await;
            if op == "r" {
                snapshot_ts.push(ts_ms)
            } else {
                streamed_ts.push(ts_ms)
            }
            match id {
                Some(id) => positions.entry(id).or_default().push(position),
                None => {
                    assert_eq!(op, "t", "only a truncate has no key");
                    truncated_at = Some(position);
                }
            }
            *by_op.entry(op).or_default() += 1;
        }
    })
    .await;
    if completed.is_err() {
        let source = if task.is_finished() {
            format!("{:?}", task.await)
        } else {
            "still running".into()
        };
        panic!("all events within 90 s; got {by_op:?}; source: {source}");
    }
    assert_eq!(by_op.get("r"), Some(&100), "{by_op:?}");
    let metrics = &f.ctx.metrics;
    let labels = [f.slot.as_str(), "public.items"];
    assert_eq!(
        metrics.snapshot_rows.with_label_values(&labels).get(),
        100,
        "snapshot rows done"
    );
    assert!(
        metrics
            .snapshot_rows_estimated
            .with_label_values(&labels)
            .get()
            >= 100,
        "estimated total, at least what was read"
    );
    assert_eq!(
        (
            by_op.get("c"),
            by_op.get("u"),
            by_op.get("d"),
            by_op.get("t")
        ),
        (Some(&2), Some(&1), Some(&1), Some(&1)),
        "{by_op:?}"
    );
    let truncated_at = truncated_at.expect("the truncate arrived");
    assert!(
        positions[&101][0] < truncated_at && truncated_at < positions[&102][0],
        "the truncate sits between the changes before and after it"
    );
    let five = &positions[&5];
    assert!(
        five.len() == 2 && five[0] < five[1],
        "snapshot before update for id 5: {five:?}"
    );
    // A snapshot row is as old as the slot's consistent point, not its read time: never
    // later than a change committed after that point (the update of id 5 may well have
    // committed before the snapshot read its row).
    assert!(
        snapshot_ts.iter().all(|ts| *ts == snapshot_ts[0]),
        "one time for the snapshot"
    );
    assert!(
        streamed_ts.iter().all(|ts| *ts >= snapshot_ts[0]),
        "snapshot at {}, changes at {streamed_ts:?}",
        snapshot_ts[0]
    );

    stop.cancel();
    task.await.unwrap().expect("the source stops cleanly");
    let confirmed: Option<String> = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&f.slot)
    .fetch_one(&mut f.conn)
    .await
    .unwrap();
    assert!(confirmed.is_some());
    f.finish().await;
}

/// Stops the source, changes rows while it is down, starts it again: every change made
/// while it was down arrives, and nothing already acknowledged is sent again except
/// with the position it had.
#[tokio::test]
async fn resumes_from_the_confirmed_position_after_a_restart() {
    let f = fixture(
        "pgresume",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text)",
        "public.items",
    )
    .await;
    // Writes go through their own connection: `read_until` below borrows the fixture.
    let mut writer = <sqlx::PgConnection as sqlx::Connection>::connect(&f.url)
        .await
        .unwrap();
    let first = CancellationToken::new();
    let task = f.start(first.clone());
    f.wait_slot(true).await;
    writer
        .execute("INSERT INTO items SELECT g, 'first' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let consumer = f.subscribe("items").await;
    let mut seen: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut duplicates = 0;
    let mut read_until = async |ids: usize| {
        tokio::time::timeout(Duration::from_secs(90), async {
            while seen
                .iter()
                .map(|(id, _)| *id)
                .collect::<BTreeSet<_>>()
                .len()
                < ids
            {
                let msg = consumer.recv().await.expect("a record");
                let (_, position, id, _) = f.read(&msg).await;
                if !seen.insert((id.expect("a key"), position)) {
                    duplicates += 1;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{ids} ids within 90 s"));
    };
    read_until(50).await;

    first.cancel();
    task.await.unwrap().expect("stops cleanly");
    f.wait_slot(false).await;
    writer
        .execute("INSERT INTO items SELECT g, 'while down' FROM generate_series(51, 80) g")
        .await
        .unwrap();

    let second = CancellationToken::new();
    let task = f.start(second.clone());
    read_until(80).await;
    second.cancel();
    task.await.unwrap().expect("stops cleanly");

    let ids: BTreeSet<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=80).collect(), "every change arrived");
    assert_eq!(
        seen.len(),
        80,
        "one position per change; re-sent ones ({duplicates}) carry the original position"
    );
    f.finish().await;
}

/// The next `n` values of `consumer`, decoded.
async fn take(f: &Fixture, consumer: &StreamConsumer, n: usize) -> Vec<Value> {
    let mut values = Vec::new();
    tokio::time::timeout(Duration::from_secs(90), async {
        while values.len() < n {
            let msg = consumer.recv().await.expect("a record");
            let decoded = f.codec.decode(msg.payload().unwrap()).await.unwrap();
            values.push(decoded.value);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} events within 90 s, got {}", values.len()));
    values
}

async fn confirmed_reaches(f: &Fixture, target: &str) {
    let (url, slot, target) = (f.url.clone(), f.slot.clone(), target.to_string());
    support::wait_for(
        &format!("confirmed_flush_lsn ≥ {target}"),
        Duration::from_secs(60),
        || {
            let (url, slot, target) = (url.clone(), slot.clone(), target.clone());
            async move {
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .ok()?;
                sqlx::query_scalar::<_, Option<bool>>(
                    "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                )
                .bind(&slot)
                .bind(&target)
                .fetch_one(&mut c)
                .await
                .ok()?
                .filter(|ok| *ok)
                .map(|_| ())
            }
        },
    )
    .await;
}

async fn wal_lsn(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The slot keeps moving while the captured table is idle: past writes to other tables of
/// the same database and past writes in other databases only (keepalives answered with
/// the confirmed position); and the optional heartbeat writes into the slot's database.
#[tokio::test]
async fn an_idle_slot_keeps_advancing() {
    let mut f = fixture(
        "pgidle",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text);
         CREATE TABLE other (id bigserial PRIMARY KEY, note text);",
        "public.items",
    )
    .await;
    let mut config = (*f.config).clone();
    config.heartbeat_interval = Some(strata_pipeline::topology::units::Duration(
        Duration::from_secs(1),
    ));
    f.config = Arc::new(config);
    let stop = CancellationToken::new();
    let task = f.start(stop.clone());
    f.wait_slot(true).await;

    for _ in 0..20 {
        f.conn
            .execute("INSERT INTO other (note) SELECT 'x' FROM generate_series(1, 500)")
            .await
            .unwrap();
    }
    let after_other_tables = wal_lsn(&mut f.conn).await;
    confirmed_reaches(&f, &after_other_tables).await;

    let (_, mut elsewhere) = support::fresh_db("pgidle_elsewhere").await;
    elsewhere
        .execute("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10000)")
        .await
        .unwrap();
    let after_other_database = wal_lsn(&mut elsewhere).await;
    confirmed_reaches(&f, &after_other_database).await;

    let (url, db) = (f.url.clone(), f.url.rsplit('/').next().unwrap().to_string());
    support::wait_for("a heartbeat in the slot's database", Duration::from_secs(30), || {
        let (url, db) = (url.clone(), db.clone());
        async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.ok()?;
            let beats: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE '%strata.heartbeat%' AND pid <> pg_backend_pid()",
            )
            .bind(&db)
            .fetch_one(&mut c)
            .await
            .ok()?;
            (beats > 0).then_some(())
        }
    })
    .await;

    stop.cancel();
    task.await.unwrap().expect("stops cleanly");
    f.finish().await;
}

/// ADD COLUMN, DROP COLUMN and a type change mid-stream: each event carries the table's
/// shape at its commit, and each shape is a new version of the value subject.
#[tokio::test]
async fn schema_changes_mid_stream_register_new_versions() {
    let mut f = fixture(
        "pgddl",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text, qty integer)",
        "public.items",
    )
    .await;
    let stop = CancellationToken::new();
    let task = f.start(stop.clone());
    f.wait_slot(true).await;
    for sql in [
        "INSERT INTO items VALUES (1, 'before', 1)",
        "ALTER TABLE items ADD COLUMN extra text",
        "INSERT INTO items VALUES (2, 'added', 2, 'more')",
        "ALTER TABLE items DROP COLUMN note",
        "INSERT INTO items VALUES (3, 3, 'dropped')",
        "ALTER TABLE items ALTER COLUMN qty TYPE bigint",
        "INSERT INTO items VALUES (4, 5000000000, 'widened')",
    ] {
        f.conn.execute(sql).await.unwrap();
    }
    let consumer = f.subscribe("items").await;
    let mut events = take(&f, &consumer, 4).await;
    events.sort_by_key(|v| match field(field(v, "after"), "id") {
        Value::Long(id) => *id,
        v => panic!("{v:?}"),
    });
    let names = |v: &Value| -> Vec<String> {
        match field(v, "after") {
            Value::Record(fields) => fields.iter().map(|(n, _)| n.clone()).collect(),
            v => panic!("{v:?}"),
        }
    };
    assert_eq!(names(&events[0]), ["id", "note", "qty"]);
    assert_eq!(names(&events[1]), ["id", "note", "qty", "extra"]);
    assert_eq!(text(field(field(&events[1], "after"), "extra")), "more");
    assert_eq!(names(&events[2]), ["id", "qty", "extra"]);
    assert_eq!(field(field(&events[2], "after"), "qty"), &Value::Int(3));
    assert_eq!(
        field(field(&events[3], "after"), "qty"),
        &Value::Long(5_000_000_000),
        "the widened column carries a bigint"
    );
    let subject = format!(
        "{}.cdc.{}.public.items-value",
        f.ctx.region,
        f.url.rsplit('/').next().unwrap()
    );
    let versions: Vec<i64> =
        reqwest::get(format!("{}/subjects/{subject}/versions", f.registry.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(versions.len(), 4, "one version per shape: {versions:?}");
    stop.cancel();
    task.await.unwrap().expect("stops cleanly");
    f.finish().await;
}

/// An update that leaves a TOASTed value unchanged: pgoutput does not send the value; the
/// event says so in `unavailable_columns` instead of passing a NULL off as the value.
#[tokio::test]
async fn unchanged_toast_values_are_marked_unavailable() {
    let mut f = fixture(
        "pgtoast",
        "CREATE TABLE docs (id bigint PRIMARY KEY, status text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
        "public.docs",
    )
    .await;
    let stop = CancellationToken::new();
    let task = f.start(stop.clone());
    f.wait_slot(true).await;
    f.conn
        .execute("INSERT INTO docs SELECT 1, 'new', string_agg(md5(g::text), '') FROM generate_series(1, 400) g")
        .await
        .unwrap();
    f.conn
        .execute("UPDATE docs SET status = 'reviewed' WHERE id = 1")
        .await
        .unwrap();
    let consumer = f.subscribe("docs").await;
    let events = take(&f, &consumer, 2).await;
    let unavailable = |v: &Value| match field(v, "unavailable_columns") {
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>(),
        v => panic!("{v:?}"),
    };
    assert_eq!(text(field(&events[0], "op")), "c");
    assert_eq!(
        text(field(field(&events[0], "after"), "body")).len(),
        12_800
    );
    assert!(unavailable(&events[0]).is_empty());
    assert_eq!(text(field(&events[1], "op")), "u");
    assert_eq!(
        text(field(field(&events[1], "after"), "status")),
        "reviewed"
    );
    assert_eq!(
        unavailable(&events[1]),
        ["body"],
        "the unchanged TOAST value is named"
    );
    stop.cancel();
    task.await.unwrap().expect("stops cleanly");
    f.finish().await;
}

/// A captured table dropped while the source was down: on restart the source warns and
/// streams the other tables (on a first start a missing table is an error, see
/// tests/postgres_prerequisites.rs).
#[tokio::test]
async fn a_table_dropped_while_down_does_not_stop_the_others() {
    let mut f = fixture(
        "pgdropped",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text);
         CREATE TABLE gone (id bigint PRIMARY KEY);",
        "public.items, public.gone",
    )
    .await;
    let first = CancellationToken::new();
    let task = f.start(first.clone());
    f.wait_slot(true).await;
    first.cancel();
    task.await.unwrap().expect("stops cleanly");
    f.wait_slot(false).await;
    f.conn
        .execute("DROP TABLE gone; INSERT INTO items VALUES (1, 'after the drop')")
        .await
        .unwrap();

    let second = CancellationToken::new();
    let task = f.start(second.clone());
    let consumer = f.subscribe("items").await;
    let events = take(&f, &consumer, 1).await;
    assert_eq!(text(field(&events[0], "op")), "c");
    assert_eq!(
        text(field(field(&events[0], "after"), "note")),
        "after the drop"
    );
    second.cancel();
    task.await.unwrap().expect("stops cleanly");
    f.finish().await;
}
