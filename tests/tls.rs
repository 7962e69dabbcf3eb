//! TLS on the connections Strata makes, against real TLS servers: PostgreSQL's own TLS
//! (the replication stream and a store's connection, `verify-full` against the test CA
//! of scripts/services.sh), and Kafka and the schema registry behind a TLS terminator
//! (tansu and Strata's registry serve plain TCP, so a terminator holding the same test
//! certificate fronts them; the broker advertises the terminator). A server whose
//! certificate another CA signed is refused, with an error that says so.
//!
//! SASL/SCRAM to Kafka is tested in `tests/sasl.rs`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::{ConnectOptions, Executor};
use strata_connectors::pg_connection::PgConnection;
use strata_connectors::postgres::source::{self, SourceContext};
use strata_connectors::postgres::PostgresSourceConfig;
use strata_pipeline::avro::Codec;
use strata_pipeline::kafka::client_config;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::topology::{KafkaSettings, RegistrySettings};
use support::broker::MemoryBroker;
use support::proxy::tls_terminator;

/// The test database's URL with `localhost`, the name the server certificate carries.
fn by_name(url: &str) -> String {
    url.replace("127.0.0.1", "localhost")
}

fn pg_connection(url: &str, ca: &Path) -> PgConnection {
    serde_yaml_ng::from_str(&format!(
        "{{url: '{}', ssl_mode: verify-full, ssl_root_cert: '{}'}}",
        by_name(url),
        ca.display()
    ))
    .expect("connection settings")
}

fn kafka_over_tls(port: u16, ca: &Path) -> KafkaSettings {
    serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: 'localhost:{port}', tls: true, tls_ca_file: '{}'}}",
        ca.display()
    ))
    .expect("kafka settings")
}

fn registry_over_tls(port: u16, ca: &Path) -> Codec {
    Codec::new(&RegistrySettings {
        url: format!("https://localhost:{port}"),
        username: None,
        password: None,
        ca_file: Some(ca.to_path_buf()),
        allow_incompatible: false,
    })
    .expect("a codec")
}

/// A private broker and a registry, each behind a TLS terminator holding the test
/// certificate (the broker advertises its terminator).
struct TlsServices {
    kafka_port: u16,
    registry_port: u16,
    registry: support::Registry,
    _broker: MemoryBroker,
    _dir: tempfile::TempDir,
}

impl TlsServices {
    async fn start() -> Self {
        let kafka_port = support::free_port();
        let broker = MemoryBroker::start_advertising(Some(&format!("localhost:{kafka_port}")))
            .expect("tansu starts (scripts/install-deps.sh installs it)");
        tls_terminator(kafka_port, broker.address().to_string()).await;
        let dir = tempfile::tempdir().unwrap();
        let registry = support::start_registry(dir.path()).await;
        let registry_port = support::free_port();
        let plain = registry.url.trim_start_matches("http://").to_string();
        tls_terminator(registry_port, plain).await;
        Self {
            kafka_port,
            registry_port,
            registry,
            _broker: broker,
            _dir: dir,
        }
    }
}

/// Whether the server sees TLS on the backend `pid_sql` selects.
async fn server_sees_tls(conn: &mut sqlx::PgConnection, pid_sql: &str, bind: &str) -> bool {
    sqlx::query_scalar::<_, bool>(&format!(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = ({pid_sql})"
    ))
    .bind(bind)
    .fetch_one(conn)
    .await
    .expect("pg_stat_ssl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_travels_over_tls_from_postgres_through_kafka_and_the_registry() {
    let ca = support::tls_dir().join("ca.pem");
    let (url, mut conn) = support::fresh_db("tls").await;
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
        .await
        .unwrap();

    let services = TlsServices::start().await;
    let slot = format!("t_tls_{}", std::process::id());
    let config: PostgresSourceConfig = serde_yaml_ng::from_str(&format!(
        "{{connection: {{url: '{}', ssl_mode: verify-full, ssl_root_cert: '{}'}}, publication: t_tls_pub, slot: {slot}, tables: [public.notes], status_interval: 1s}}",
        by_name(&url),
        ca.display()
    ))
    .unwrap();
    let kafka = kafka_over_tls(services.kafka_port, &ca);
    let codec = Arc::new(registry_over_tls(services.registry_port, &ca));
    let ctx = SourceContext {
        component: "postgres".into(),
        region: "tls".into(),
        kafka: kafka.clone(),
        partitions: 1,
        replication_factor: 1,
        codec: codec.clone(),
        metrics: strata_pipeline::ops::metrics::Metrics::new(),
    };
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move { source::run(&config, &ctx, stop).await })
    };
    support::wait_for("the source's slot", Duration::from_secs(60), || {
        support::slot_active(url.clone(), slot.clone(), true)
    })
    .await;
    conn.execute("INSERT INTO notes VALUES (1, 'over tls')")
        .await
        .unwrap();

    let consumer: StreamConsumer = client_config(&kafka)
        .set("group.id", support::unique("tls-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let db = url.rsplit('/').next().unwrap();
    let topic = format!("tls.cdc.{db}.public.notes");
    support::wait_for("the topic over TLS", Duration::from_secs(60), || {
        let found = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .is_ok_and(|m| m.topics().iter().any(|t| !t.partitions().is_empty()));
        async move { found.then_some(()) }
    })
    .await;
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("the change arrives within a minute")
        .expect("a record");
    let decoded = codec
        .decode(message.payload().expect("a value"))
        .await
        .expect("decodes with the schema fetched over https");
    let after = support::field(&decoded.value, "after");
    assert_eq!(
        support::field(after, "body"),
        &Value::String("over tls".into())
    );

    // PostgreSQL saw TLS on the replication stream and on a store's connection.
    assert!(
        server_sees_tls(
            &mut conn,
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &slot
        )
        .await,
        "the replication connection is not encrypted"
    );
    let mut store = pg_connection(&url, &ca)
        .options()
        .unwrap()
        .connect()
        .await
        .expect("a store connection verifies the server");
    assert!(
        server_sees_tls(&mut store, "SELECT pg_backend_pid() WHERE $1 <> ''", "x").await,
        "the store connection is not encrypted"
    );

    stop.cancel();
    task.await.unwrap().expect("the source stops cleanly");
    support::wait_for("the slot to be released", Duration::from_secs(30), || {
        support::slot_active(url.clone(), slot.clone(), false)
    })
    .await;
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut conn)
        .await
        .unwrap();
    services.registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_another_ca_signed_are_refused() {
    let other = support::tls_dir().join("other-ca.pem");
    let (url, _conn) = support::fresh_db("tls_refused").await;

    // PostgreSQL, a store's connection and the replication stream.
    let connection = pg_connection(&url, &other);
    let err = connection
        .options()
        .unwrap()
        .connect()
        .await
        .expect_err("a server the CA did not sign");
    assert!(
        err.to_string().contains("certificate"),
        "the error names the certificate: {err}"
    );
    let options = connection.options().unwrap();
    let replication = pgwire_replication::ReplicationConfig::new(
        options.get_host(),
        options.get_username(),
        "",
        options.get_database().unwrap(),
        "t_tls_refused",
        "t_tls_refused",
    )
    .with_port(options.get_port())
    .with_tls(connection.replication_tls().unwrap());
    let mut client = pgwire_replication::ReplicationClient::connect_gated(replication)
        .await
        .expect("the client starts connecting");
    let err = client
        .identify_system()
        .await
        .expect_err("the replication stream refuses the server");
    assert!(
        err.to_string().contains("TLS"),
        "the error says TLS failed: {err}"
    );
    assert!(!err.is_transient(), "a wrong CA is not waited out: {err}");

    // Kafka.
    let services = TlsServices::start().await;
    let consumer: StreamConsumer = client_config(&kafka_over_tls(services.kafka_port, &other))
        .set("group.id", "tls-refused")
        .create()
        .unwrap();
    let metadata =
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(
        metadata.is_err(),
        "a broker behind a certificate the CA did not sign answered"
    );

    // The schema registry.
    let Err(err) = registry_over_tls(services.registry_port, &other)
        .register("tls-refused-value", r#"{"type": "string"}"#)
        .await
    else {
        panic!("the registry's certificate is refused")
    };
    assert!(
        err.to_string().contains("certificate"),
        "the error names the certificate: {err}"
    );
    assert!(!err.is_transient(), "a wrong CA is not waited out: {err}");
    services.registry.shutdown().await;
}
