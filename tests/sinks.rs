//! The PostgreSQL stores against the real server: the same stream written twice, or with
//! a key's changes reordered, gives identical tables; a store that refuses connections
//! for 10 s holds the input back and loses nothing.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use apache_avro::types::Value;
use sqlx::{Connection, PgConnection};
use strata_connectors::pg_connection::PgConnection as PgSettings;
use strata_connectors::sinks::pg_store::PgStore;
use strata_pipeline::runtime::SinkRecord;

fn settings(url: &str) -> PgSettings {
    serde_yaml_ng::from_str(&format!("{{url: '{url}', ssl_mode: disable}}")).unwrap()
}

fn decimal(cents: i64) -> Value {
    let bytes = cents.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(6);
    Value::Decimal(apache_avro::Decimal::from(bytes[skip..].to_vec()))
}

fn opt(v: Value) -> Value {
    Value::Union(1, Box::new(v))
}

/// A change envelope of `public.claims` as the processors emit it.
fn claim(op: &str, position: u64, id: i64, status: &str, day: i32) -> SinkRecord {
    let row = Value::Record(vec![
        ("claim_id".into(), Value::Long(id)),
        ("member_id".into(), opt(Value::Long(id % 7))),
        ("status".into(), opt(Value::String(status.into()))),
        ("service_date_from".into(), opt(Value::Date(day))),
        ("billed_amount".into(), opt(decimal(12_345 + id))),
        (
            "diagnosis_codes".into(),
            opt(Value::Array(vec![Value::String("E11.9".into())])),
        ),
    ]);
    let (before, after) = if op == "d" {
        (opt(row), Value::Union(0, Box::new(Value::Null)))
    } else {
        (Value::Union(0, Box::new(Value::Null)), opt(row))
    };
    let source = Value::Record(vec![
        ("schema".into(), Value::String("public".into())),
        ("table".into(), Value::String("claims".into())),
        (
            "position".into(),
            Value::String(format!("{position:016x}-00000000")),
        ),
        ("ts_ms".into(), Value::Long(1_764_000_000_000)),
    ]);
    SinkRecord {
        topic: "t".into(),
        partition: 0,
        offset: position as i64,
        key: Some(Value::Record(vec![("claim_id".into(), Value::Long(id))])),
        value: Some(Value::Record(vec![
            ("before".into(), before),
            ("after".into(), after),
            ("source".into(), source),
            ("op".into(), Value::String(op.into())),
        ])),
        value_schema_id: Some(1),
    }
}

fn stream() -> Vec<SinkRecord> {
    vec![
        claim("r", 1, 1, "SUBMITTED", 20_000),
        claim("r", 2, 2, "SUBMITTED", 20_010),
        claim("u", 3, 1, "ADJUDICATED", 20_000),
        claim("c", 4, 3, "SUBMITTED", 20_100),
        claim("u", 5, 1, "PAID", 20_000),
        claim("d", 6, 2, "SUBMITTED", 20_010),
        // A corrected service date moves the row to another month (partition, in warm).
        claim("u", 7, 3, "SUBMITTED", 20_200),
    ]
}

async fn table(url: &str, schema: &str) -> Vec<(i64, String, String, String)> {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query_as(&format!(
        "SELECT claim_id, status, service_date_from::text, billed_amount::text FROM {schema}.claims ORDER BY claim_id"
    ))
    .fetch_all(&mut c)
    .await
    .unwrap()
}

#[tokio::test]
async fn writing_twice_or_reordered_gives_identical_tables() {
    let (url, _db) = support::fresh_db("sinks_idem").await;
    let expected = vec![
        (
            1,
            "PAID".to_string(),
            "2024-10-04".to_string(),
            "123.46".to_string(),
        ),
        (
            3,
            "SUBMITTED".to_string(),
            "2025-04-22".to_string(),
            "123.48".to_string(),
        ),
    ];
    for (schema, partitioned) in [("hot", false), ("warm", true)] {
        let mut store = PgStore::new(settings(&url), schema.into(), partitioned, 2, None);
        store.open().await.unwrap();
        let records = stream();
        assert!(store.write(&records).await.unwrap().is_empty());
        assert_eq!(table(&url, schema).await, expected, "{schema}: once");
        store.write(&records).await.unwrap();
        assert_eq!(table(&url, schema).await, expected, "{schema}: twice");

        // Each key's upserts in reverse order (deletes stay after what they delete).
        let reordered_schema = format!("{schema}_reordered");
        let mut store = PgStore::new(
            settings(&url),
            reordered_schema.clone(),
            partitioned,
            2,
            None,
        );
        store.open().await.unwrap();
        let mut reordered = stream();
        reordered.reverse();
        let (deletes, upserts): (Vec<_>, Vec<_>) = reordered
            .into_iter()
            .partition(|r| matches!(r.value.as_ref().and_then(|v| strata_pipeline::runtime::processor::record_field(v, "op")), Some(Value::String(op)) if op == "d"));
        store.write(&upserts).await.unwrap();
        store.write(&deletes).await.unwrap();
        assert_eq!(
            table(&url, &reordered_schema).await,
            expected,
            "{schema}: reordered"
        );
    }
    // Warm keeps claims in monthly partitions, created ahead of need.
    let mut c = PgConnection::connect(&url).await.unwrap();
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace
         WHERE n.nspname = 'warm' AND p.relname = 'claims' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(
        partitions.contains(&"claims_y2024m10".to_string()),
        "{partitions:?}"
    );
    assert!(
        partitions.contains(&"claims_y2025m06".to_string()),
        "2 months ahead of 2025-04: {partitions:?}"
    );

    // Partitions that ended before the cutoff are detached; here the cutoff is 2025-01-01.
    let cutoff = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let age_days = (chrono::Utc::now().date_naive() - cutoff).num_days() as u64;
    let mut store = PgStore::new(settings(&url), "warm".into(), true, 2, None)
        .detach_after(Some(Duration::from_secs(age_days * 86_400)));
    store.open().await.unwrap();
    let detached = store.detach_old_partitions().await.unwrap();
    assert!(
        detached.contains(&"claims_y2024m10".to_string()),
        "{detached:?}"
    );
    assert!(
        !detached.contains(&"claims_y2025m06".to_string()),
        "{detached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_for_ten_seconds_is_retried_and_loses_nothing() {
    let (url, _db) = support::fresh_db("sinks_down").await;
    let target = url
        .split('@')
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .to_string();
    let p = support::proxy::proxy(target).await;
    let proxied = url.replacen(
        &url.split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string(),
        &format!("127.0.0.1:{}", p.port),
        1,
    );
    let mut store = PgStore::new(settings(&proxied), "hot".into(), false, 0, None);
    store.open().await.unwrap();
    store.write(&stream()[..2]).await.unwrap();

    p.down.store(true, Ordering::SeqCst);
    let down_since = std::time::Instant::now();
    let live = p.live.clone();
    support::wait_for(
        "the proxy to cut its connections",
        Duration::from_secs(10),
        || {
            let n = live.load(Ordering::SeqCst);
            async move { (n == 0).then_some(()) }
        },
    )
    .await;
    let failed = store.write(&stream()[2..]).await;
    assert!(
        matches!(
            failed,
            Err(strata_pipeline::runtime::SinkError::Transient(_))
        ),
        "a refused connection is transient: {failed:?}"
    );
    let up = p.down.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        up.store(false, Ordering::SeqCst);
    });
    // What the sink loop does: retry with backoff until the store takes the batch.
    let mut tries = 1;
    let mut backoff = Duration::from_millis(200);
    while store.write(&stream()[2..]).await.is_err() {
        tries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        assert!(
            down_since.elapsed() < Duration::from_secs(60),
            "never recovered"
        );
    }
    assert!(
        down_since.elapsed() >= Duration::from_secs(10) && tries > 2,
        "{tries} tries"
    );
    assert_eq!(
        table(&url, "hot").await.len(),
        2,
        "everything written once the store is back"
    );
}

#[tokio::test]
async fn a_record_the_store_refuses_is_returned_and_the_rest_written() {
    let (url, _db) = support::fresh_db("sinks_refuse").await;
    let mut store = PgStore::new(settings(&url), "hot".into(), false, 0, None);
    store.open().await.unwrap();
    let mut records = stream();
    // A table the store has no place for, in the middle of the batch.
    if let Some(Value::Record(fields)) = records[1].value.as_mut() {
        for (name, v) in fields.iter_mut() {
            if let (true, Value::Record(source)) = (name == "source", v) {
                source[1].1 = Value::String("invoices".into());
            }
        }
    }
    let rejected = store.write(&records).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].index, rejected[0].code),
        (1, "store.unknown_table")
    );
    assert_eq!(
        table(&url, "hot").await.len(),
        2,
        "the other records are written"
    );
}

/// `record` with `billed_amount` unsent: NULL in the row and named unavailable, as an
/// unchanged TOAST value arrives when no stage could fill it.
fn without_billed(mut record: SinkRecord) -> SinkRecord {
    let Some(Value::Record(fields)) = record.value.as_mut() else {
        unreachable!()
    };
    for (name, image) in fields.iter_mut() {
        if let (true, Value::Union(1, row)) = (name == "after", image) {
            if let Value::Record(columns) = &mut **row {
                for (c, v) in columns.iter_mut() {
                    if c == "billed_amount" {
                        *v = Value::Union(0, Box::new(Value::Null));
                    }
                }
            }
        }
    }
    fields.push((
        "unavailable_columns".into(),
        Value::Array(vec![Value::String("billed_amount".into())]),
    ));
    record
}

#[tokio::test]
async fn an_unavailable_column_keeps_its_stored_value_in_hot_and_warm() {
    let (url, _db) = support::fresh_db("sinks_toast").await;
    for (schema, partitioned) in [("hot", false), ("warm", true)] {
        let mut store = PgStore::new(settings(&url), schema.into(), partitioned, 2, None);
        store.open().await.unwrap();
        let first = claim("r", 1, 1, "SUBMITTED", 20_000);
        // A status change without the value; then one that also moves the row to another
        // month (another partition, in warm).
        let second = without_billed(claim("u", 2, 1, "ADJUDICATED", 20_000));
        let third = without_billed(claim("u", 3, 1, "PAID", 20_100));
        for records in [vec![first], vec![second], vec![third]] {
            let rejected = store.write(&records).await.unwrap();
            assert!(rejected.is_empty(), "{schema}: {rejected:?}");
        }
        assert_eq!(
            table(&url, schema).await,
            vec![(
                1,
                "PAID".to_string(),
                "2025-01-12".to_string(),
                "123.46".to_string()
            )],
            "{schema}: the unsent value stays as stored"
        );
    }
}
