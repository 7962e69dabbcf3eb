//! SASL/SCRAM to Kafka against a broker that requires it: tansu with `--authentication`,
//! its SCRAM credentials created with `tansu user create` (support::broker). Strata's
//! Kafka settings — the client configuration every source, processor and sink builds
//! from the topology's `kafka` section — authenticate with SCRAM-SHA-256 and -512 and
//! carry records both ways; a wrong password or an unknown user is refused, with an
//! error that says authentication failed rather than a timeout.

mod support;

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use strata_pipeline::kafka::{client_config, consumer_config, ensure_topics, TopicSpec};
use strata_pipeline::topology::KafkaSettings;
use support::broker::{MemoryBroker, ScramUser};

const USERS: [ScramUser<'static>; 2] = [
    ScramUser {
        name: "strata-256",
        password: "pass-256-Ω",
        mechanism: "SCRAM-SHA-256",
    },
    ScramUser {
        name: "strata-512",
        password: "pass-512",
        mechanism: "SCRAM-SHA-512",
    },
];

/// The `kafka` section of a topology with these SASL settings.
fn kafka(broker: &MemoryBroker, mechanism: &str, user: &str, password: &str) -> KafkaSettings {
    serde_yaml_ng::from_str(&format!(
        "{{bootstrap_servers: '{}', sasl_mechanism: {mechanism}, sasl_username: '{user}', \
         sasl_password: '{password}'}}",
        broker.address()
    ))
    .expect("kafka settings")
}

fn topic(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions: 1,
        replication_factor: 1,
        compacted: false,
    }
}

fn scram_broker() -> MemoryBroker {
    MemoryBroker::start_with_scram_users(&USERS)
        .expect("tansu starts with authentication (scripts/install-deps.sh installs it)")
}

#[tokio::test]
async fn scram_users_from_the_topology_authenticate_and_carry_records() {
    let broker = scram_broker();
    for user in &USERS {
        let settings = kafka(&broker, user.mechanism, user.name, user.password);
        let name = format!("sasl-{}", user.name);
        ensure_topics(&client_config(&settings), &[topic(&name)])
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", user.mechanism));
        let producer: FutureProducer = client_config(&settings).create().unwrap();
        producer
            .send(
                FutureRecord::to(&name).key("k").payload(user.mechanism),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{}: {e}", user.mechanism));
        let consumer: StreamConsumer = consumer_config(&settings)
            .set("group.id", format!("sasl-test-{}", user.name))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&name]).unwrap();
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the record is read back within 30 s")
            .expect("a record");
        assert_eq!(message.payload(), Some(user.mechanism.as_bytes()));
    }
}

#[tokio::test]
async fn a_wrong_password_or_an_unknown_user_is_refused() {
    let broker = scram_broker();
    let [sha256, _] = &USERS;
    for (user, password) in [
        (sha256.name, "not-the-password-7731"),
        ("nobody", sha256.password),
    ] {
        let settings = kafka(&broker, sha256.mechanism, user, password);
        let error = ensure_topics(&client_config(&settings), &[topic("sasl-refused")])
            .await
            .expect_err("a client with bad credentials creates no topic");
        let message = format!("{error:#}").to_lowercase();
        assert!(
            message.contains("authentication"),
            "{user}: the error should say authentication failed: {message}"
        );
        assert!(
            !message.contains(&password.to_lowercase()),
            "the password is not in the error: {message}"
        );
    }
}

#[tokio::test]
async fn strata_run_with_a_refused_password_exits_one_saying_so() {
    let broker = scram_broker();
    let dir = tempfile::tempdir().unwrap();
    let minimal = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/topologies/minimal.yaml");
    let text = std::fs::read_to_string(minimal).unwrap().replace(
        "kafka: { bootstrap_servers: \"127.0.0.1:19092\" }",
        &format!(
            "kafka: {{ bootstrap_servers: \"{}\", sasl_mechanism: SCRAM-SHA-256, \
             sasl_username: strata-256, sasl_password: \"${{STRATA_TEST_KAFKA_PASSWORD}}\" }}",
            broker.address()
        ),
    );
    let file = dir.path().join("topology.yaml");
    std::fs::write(&file, text).unwrap();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let password = "not-the-password-9313";
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("run")
            .arg(&file)
            .args(["--listen", &listen])
            .env("STRATA_TEST_KAFKA_PASSWORD", password)
            .output(),
    )
    .await
    .expect("strata run stops within 60 s")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused Strata's credentials"), "{err}");
    assert!(
        !err.contains(password),
        "the password is not in the logs: {err}"
    );
}
