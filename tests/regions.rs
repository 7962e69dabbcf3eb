//! topologies/us-east.yaml and topologies/eu-west.yaml side by side, each region with its
//! own Kafka cluster (a private tansu broker), database, state and stores, sharing one
//! schema registry. Until the regions' conflict-resolution topics are mirrored, each
//! region's stores hold exactly its own database's claims and its broker only its own
//! topics; a claim changed in both regions then differs. The test then mirrors each
//! region's `<region>.conflicts` topic to the other (MirrorMaker 2's job in production,
//! docker/mirrormaker2.properties) and both regions converge on the later write.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use sqlx::PgConnection;
use strata_pipeline::ops::shutdown::CancellationToken;
use support::broker::MemoryBroker;
use support::stores::{claims, mismatch};
use support::KillOnDrop;

const STRATA: &str = env!("CARGO_BIN_EXE_strata");
const TODAY: &str = "2026-11-20";

struct Region {
    name: &'static str,
    broker: MemoryBroker,
    url: String,
    db: PgConnection,
}

impl Region {
    fn env_prefix(&self) -> String {
        format!("STRATA_{}", self.name.to_uppercase().replace('-', "_"))
    }

    fn slot(&self) -> String {
        format!("strata_{}", self.name.replace('-', "_"))
    }

    fn start(&self, home: &std::path::Path, registry: &str) -> KillOnDrop {
        let listen = format!("127.0.0.1:{}", support::free_port());
        Command::new(STRATA)
            .args(["run", &format!("topologies/{}.yaml", self.name)])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(format!("{}_PG_URL", self.env_prefix()), &self.url)
            .env(format!("{}_METRICS_LISTEN", self.env_prefix()), &listen)
            .env("STRATA_KAFKA_BROKERS", self.broker.address())
            .env("STRATA_SCHEMA_REGISTRY_URL", registry)
            .env("STRATA_HOME", home)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join(format!("{}.log", self.name))).unwrap())
            .spawn()
            .map(KillOnDrop)
            .expect("strata starts")
    }

    fn archive(&self, home: &std::path::Path) -> std::path::PathBuf {
        home.join("archive").join(self.name)
    }

    /// Topics on this region's broker.
    fn topics(&self) -> Vec<String> {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.address())
            .create()
            .unwrap();
        consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap()
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    }
}

async fn setup(name: &'static str) -> Region {
    let broker =
        MemoryBroker::start().expect("a private tansu broker starts (is tansu installed?)");
    let (url, mut db) = support::fresh_db(&name.replace('-', "_")).await;
    let slot = format!("strata_{}", name.replace('-', "_"));
    // A slot left by an interrupted earlier run would hold the name.
    sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active")
        .bind(&slot)
        .execute(&mut db)
        .await
        .unwrap();
    // Both regions start from the same replicated claims.
    let generated = Command::new(STRATA)
        .args([
            "generate",
            "--url",
            &url,
            "--members",
            "100",
            "--providers",
            "20",
        ])
        .args(["--claims", "600", "--seed", "3", "--today", TODAY])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    Region {
        name,
        broker,
        url,
        db,
    }
}

/// Copies `topic` from one broker to another, partition for partition, until `stop`;
/// creates it on the destination first, as MirrorMaker 2 does.
async fn mirror(
    topic: String,
    from: &str,
    to: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut admin = ClientConfig::new();
    admin.set("bootstrap.servers", to);
    strata_pipeline::kafka::ensure_topics(
        &admin,
        &[strata_pipeline::kafka::TopicSpec {
            name: topic.clone(),
            partitions: 4,
            replication_factor: 1,
            compacted: false,
        }],
    )
    .await
    .expect("the mirrored topic exists on the destination");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", from)
        .set("group.id", "mirror")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", to)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = consumer.recv() => m,
                _ = stop.cancelled() => return,
            };
            let Ok(m) = message else { continue };
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).partition(m.partition());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            if let Some(ts) = m.timestamp().to_millis() {
                record = record.timestamp(ts);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .expect("mirrored");
        }
    })
}

async fn hot_status(region: &Region, claim: i64) -> Option<String> {
    claims(&region.url, "hot").await.get(&claim).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_run_side_by_side_and_converge_once_mirrored() {
    let home = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&home.path().join("registry")).await;
    let mut us = setup("us-east").await;
    let mut eu = setup("eu-west").await;
    let mut children = [
        us.start(home.path(), &registry.url),
        eu.start(home.path(), &registry.url),
    ];
    let logs = |name: &str| {
        std::fs::read_to_string(home.path().join(format!("{name}.log"))).unwrap_or_default()
    };

    // Each region's stores hold its own source, nothing else.
    for region in [&us, &eu] {
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        while let Some(problem) = mismatch(&region.url, &region.archive(home.path())).await {
            assert!(
                std::time::Instant::now() < deadline,
                "{} stores never matched its database: {problem}\n{}",
                region.name,
                logs(region.name)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            home.path().join("state").join(region.name).is_dir(),
            "{} keeps its own state directory",
            region.name
        );
    }
    for (region, other) in [(&us, "eu-west."), (&eu, "us-east.")] {
        let foreign: Vec<_> = region
            .topics()
            .into_iter()
            .filter(|t| t.starts_with(other) && t != &format!("{other}conflicts"))
            .collect();
        assert!(
            foreign.is_empty(),
            "{} broker holds {foreign:?}",
            region.name
        );
        assert!(
            region
                .topics()
                .iter()
                .any(|t| t == &format!("{}.conflicts", region.name)),
            "{} writes topics named by its region",
            region.name
        );
    }

    // The same claim changed in both regions, eu-west's change later.
    let claim = *claims(&us.url, "hot")
        .await
        .keys()
        .next()
        .expect("hot claims");
    for (region, status) in [(&mut us, "DENIED"), (&mut eu, "PAID")] {
        sqlx::query("UPDATE public.claims SET status = $1, updated_at = now() WHERE claim_id = $2")
            .bind(status)
            .bind(claim)
            .execute(&mut region.db)
            .await
            .unwrap();
        support::wait_for(
            "the local change reaches the region's hot store",
            Duration::from_secs(120),
            || async { (hot_status(region, claim).await.as_deref() == Some(status)).then_some(()) },
        )
        .await;
    }
    assert_eq!(
        hot_status(&us, claim).await.as_deref(),
        Some("DENIED"),
        "not mirrored yet"
    );

    // Mirrored both ways: both regions end on the later write, and agree on every claim.
    let stop = CancellationToken::new();
    let mirrors = [
        mirror(
            "us-east.conflicts".into(),
            us.broker.address(),
            eu.broker.address(),
            stop.clone(),
        )
        .await,
        mirror(
            "eu-west.conflicts".into(),
            eu.broker.address(),
            us.broker.address(),
            stop.clone(),
        )
        .await,
    ];
    support::wait_for(
        "both regions converge",
        Duration::from_secs(240),
        || async {
            let (a, b): (BTreeMap<i64, String>, BTreeMap<i64, String>) =
                (claims(&us.url, "hot").await, claims(&eu.url, "hot").await);
            (a.get(&claim).map(String::as_str) == Some("PAID") && a == b).then_some(())
        },
    )
    .await;
    for (child, name) in children.iter_mut().zip(["us-east", "eu-west"]) {
        assert!(
            child.try_wait().is_none(),
            "{name} still runs:\n{}",
            logs(name)
        );
    }

    stop.cancel();
    for m in mirrors {
        let _ = m.await;
    }
    drop(children);
    for region in [&mut us, &mut eu] {
        // The killed process's walsender lets go of the slot a moment later.
        let (url, slot) = (region.url.clone(), region.slot());
        support::wait_for("the slot to be released", Duration::from_secs(30), || {
            support::slot_active(url.clone(), slot.clone(), false)
        })
        .await;
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(region.slot())
            .execute(&mut region.db)
            .await
            .unwrap();
    }
    registry.shutdown().await;
}
