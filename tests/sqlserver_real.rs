//! The SQL Server source against a real SQL Server 2022 with CDC: what neither the TDS
//! stand-in nor the simulation can show — real SQL, SNAPSHOT isolation, binary(10)
//! LSNs, every mapped column type, the capture job, and a second capture instance.
//!
//! SQL Server cannot run on the project's CI machines; this test is built only with
//! `--features sqlserver-it`, and `docker/sqlserver/run-tests.sh` starts SQL Server (and
//! the local broker and registry) and runs it. Settings: `STRATA_SQLSERVER_HOST`
//! (127.0.0.1), `STRATA_SQLSERVER_PORT` (11433), `MSSQL_SA_PASSWORD`.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::field;

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use strata_connectors::emitter::SourceContext;
use strata_connectors::sqlserver::pool::TdsPool;
use strata_connectors::sqlserver::source;
use strata_connectors::sqlserver::SqlServerSourceConfig;
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::topology::KafkaSettings;
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn config(table: &str) -> SqlServerSourceConfig {
    serde_yaml_ng::from_str(&format!(
        "{{host: '{}', port: {}, database: claims, username: sa, password: '{}', tables: [{table}], \
          trust_server_certificate: true, poll_interval: 200ms}}",
        env("STRATA_SQLSERVER_HOST", "127.0.0.1"),
        env("STRATA_SQLSERVER_PORT", "11433"),
        env("MSSQL_SA_PASSWORD", "Strata-Passw0rd"),
    ))
    .expect("a valid config")
}

async fn admin(
    config: &SqlServerSourceConfig,
) -> tiberius::Client<tokio_util::compat::Compat<TcpStream>> {
    let tds = config.client_config();
    let tcp = TcpStream::connect(tds.get_addr())
        .await
        .expect("SQL Server listens");
    tiberius::Client::connect(tds, tcp.compat_write())
        .await
        .expect("log in as sa")
}

async fn exec(client: &mut tiberius::Client<tokio_util::compat::Compat<TcpStream>>, sql: &str) {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Reads `n` events of `topic` from the start, ordered by position.
async fn events(codec: &Codec, topic: &str, n: usize) -> Vec<(u32, Value)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("group.id", support::unique("mssql-it"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while out.len() < n {
        let Ok(msg) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            panic!("{} of {n} events of {topic} after 120 s", out.len());
        };
        let Ok(msg) = msg else { continue };
        let decoded = codec.decode(msg.payload().unwrap()).await.expect("decodes");
        out.push((decoded.id, decoded.value));
    }
    let position = |v: &Value| format!("{:?}", field(field(v, "source"), "position"));
    out.sort_by_key(|(_, v)| position(v));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_snapshot_changes_and_a_second_capture_instance() {
    let name = format!("it_types_{}", std::process::id());
    let table = format!("dbo.{name}");
    let config = config(&table);
    let mut sa = admin(&config).await;
    exec(&mut sa, &format!(
        "CREATE TABLE dbo.{name} (id bigint NOT NULL PRIMARY KEY, t tinyint, s smallint, i int, \
         d decimal(12,2), m money, b bit, c nchar(3), v nvarchar(50), x varchar(max), dt date, \
         ts datetime, ts2 datetime2, tso datetimeoffset, u uniqueidentifier, bin varbinary(16), nul int NULL)"
    )).await;
    exec(&mut sa, &format!(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'{name}', @role_name = NULL, @capture_instance = N'dbo_{name}'"
    )).await;
    let insert = |id: i64| {
        format!(
        "INSERT INTO dbo.{name} VALUES ({id}, 7, -2, 40000, 1234.56, 12.3456, 1, N'abc', N'héllo', 'long', \
         '2026-03-01', '2026-03-01T10:00:00', '2026-03-01T10:00:00.1234567', '2026-03-01T10:00:00+02:00', \
         'b3c1a2d4-0000-4000-8000-000000000001', 0x0102, NULL)"
    )
    };
    exec(&mut sa, &insert(1)).await;
    exec(&mut sa, &insert(2)).await;

    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let codec = Arc::new(support::codec(&registry.url));
    let kafka: KafkaSettings = serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}'}}",
        support::kafka_brokers()
    ))
    .unwrap();
    let ctx = Arc::new(SourceContext {
        component: "legacy".into(),
        region: support::unique("mssql-it"),
        kafka,
        partitions: 1,
        replication_factor: 1,
        codec: codec.clone(),
        metrics: strata_pipeline::ops::metrics::Metrics::new(),
    });
    let pool = TdsPool::new(config.client_config(), "claims", 2, Duration::from_secs(15)).unwrap();
    let stop = CancellationToken::new();
    let task = {
        let (config, ctx, stop) = (config.clone(), ctx.clone(), stop.clone());
        tokio::spawn(async move { source::run(&config, &ctx, &pool, stop).await })
    };
    let topic = format!("{}.cdc.claims.dbo.{name}", ctx.region);

    let snapshot = events(&codec, &topic, 2).await;
    let row = field(&snapshot[0].1, "after");
    assert_eq!(field(&snapshot[0].1, "op"), &Value::String("r".into()));
    assert_eq!(field(row, "t"), &Value::Int(7));
    assert_eq!(field(row, "s"), &Value::Int(-2));
    assert_eq!(field(row, "id"), &Value::Long(1));
    assert!(
        matches!(field(row, "d"), Value::Decimal(_) | Value::Bytes(_)),
        "{row:?}"
    );
    assert_eq!(field(row, "b"), &Value::Boolean(true));
    assert_eq!(field(row, "v"), &Value::String("héllo".into()));
    assert!(
        matches!(field(row, "dt"), Value::Date(_) | Value::Int(_)),
        "{row:?}"
    );
    assert!(
        matches!(
            field(row, "tso"),
            Value::TimestampMicros(_) | Value::Long(_)
        ),
        "{row:?}"
    );
    assert_eq!(field(row, "nul"), &Value::Null);

    exec(&mut sa, &insert(3)).await;
    exec(
        &mut sa,
        &format!("UPDATE dbo.{name} SET v = N'changed' WHERE id = 1"),
    )
    .await;
    exec(&mut sa, &format!("DELETE FROM dbo.{name} WHERE id = 2")).await;
    let all = events(&codec, &topic, 5).await;
    let ops: Vec<_> = all.iter().map(|(_, v)| field(v, "op").clone()).collect();
    assert_eq!(
        ops,
        ["r", "r", "c", "u", "d"]
            .map(|o| Value::String(o.into()))
            .to_vec(),
        "the capture job's changes, in commit order"
    );
    assert_eq!(
        field(field(&all[3].1, "before"), "v"),
        &Value::String("héllo".into())
    );
    assert_eq!(
        field(field(&all[3].1, "after"), "v"),
        &Value::String("changed".into())
    );

    // A schema change: a column added and a second capture instance for it.
    exec(
        &mut sa,
        &format!("ALTER TABLE dbo.{name} ADD note nvarchar(20) NULL"),
    )
    .await;
    exec(&mut sa, &format!(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'{name}', @role_name = NULL, @capture_instance = N'dbo_{name}_v2'"
    )).await;
    exec(
        &mut sa,
        &format!("UPDATE dbo.{name} SET note = N'checked' WHERE id = 1"),
    )
    .await;
    let all = events(&codec, &topic, 6).await;
    let (schema_id, last) = &all[5];
    assert_eq!(
        field(field(last, "after"), "note"),
        &Value::String("checked".into())
    );
    assert_ne!(
        *schema_id, all[4].0,
        "a new schema version for the new instance"
    );

    stop.cancel();
    task.await.unwrap().expect("a clean stop");
    exec(&mut sa, &format!("EXEC sys.sp_cdc_disable_table @source_schema = N'dbo', @source_name = N'{name}', @capture_instance = N'all'")).await;
    exec(&mut sa, &format!("DROP TABLE dbo.{name}")).await;
    registry.shutdown().await;
}
