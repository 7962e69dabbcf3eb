//! The cold archive sink against the local schema registry, on a local directory and on an
//! S3-compatible object store (moto's server, started by scripts/services.sh): redelivered
//! and reordered records are archived once, a restarted sink goes on where the manifest
//! ends, and `strata archive verify` catches a changed file in either store.

mod support;

use std::process::Command;
use std::sync::Arc;

use apache_avro::types::Value;
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStoreExt;
use serde_json::json;
use strata_connectors::sinks::cold::archive::Archive;
use strata_connectors::sinks::cold::{ColdSink, ColdSinkConfig};
use strata_pipeline::avro::Codec;
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::runtime::{Sink, SinkRecord};

const SCHEMA: &str = r#"{"type":"record","name":"Event","namespace":"strata.test.archive","fields":[
  {"name":"after","type":{"type":"record","name":"Row","fields":[{"name":"claim_id","type":"long"}]}},
  {"name":"source","type":{"type":"record","name":"Source","namespace":"strata.test.shared","fields":[
    {"name":"position","type":"string"},{"name":"ts_ms","type":"long"}]}},
  {"name":"op","type":"string"}]}"#;

async fn codec_and_schema() -> (Arc<Codec>, u32) {
    let settings = serde_json::from_value(json!({ "url": support::registry_url() })).unwrap();
    let codec = Arc::new(Codec::new(&settings).unwrap());
    let id = register(&codec, SCHEMA).await;
    (codec, id)
}

async fn register(codec: &Codec, schema: &str) -> u32 {
    codec
        .registry()
        .register(&support::unique("strata-test-archive"), schema)
        .await
        .expect("the registry from scripts/services.sh is running")
}

fn record(schema_id: u32, partition: i32, offset: i64) -> SinkRecord {
    let day_ms = 1_764_000_000_000 + offset * 3_600_000;
    SinkRecord {
        topic: "archive-test".into(),
        partition,
        offset,
        key: None,
        value: Some(Value::Record(vec![
            (
                "after".into(),
                Value::Record(vec![("claim_id".into(), Value::Long(offset))]),
            ),
            (
                "source".into(),
                Value::Record(vec![
                    ("position".into(), Value::String(format!("{offset:016x}"))),
                    ("ts_ms".into(), Value::Long(day_ms)),
                ]),
            ),
            ("op".into(), Value::String("c".into())),
        ])),
        value_schema_id: Some(schema_id),
    }
}

fn records(schema_id: u32, offsets: impl IntoIterator<Item = i64>) -> Vec<SinkRecord> {
    offsets
        .into_iter()
        .map(|o| record(schema_id, (o % 2) as i32, o))
        .collect()
}

/// Claim ids of every record in every archived file, sorted, duplicates kept.
async fn archived_ids(archive: &Archive) -> Vec<i64> {
    let mut ids = Vec::new();
    for path in archive.list(None).await.unwrap() {
        if !path.ends_with(".avro") {
            continue;
        }
        let bytes = archive.read(&path).await.unwrap();
        for value in apache_avro::Reader::new(&bytes[..]).unwrap() {
            let value = match value.unwrap() {
                Value::Union(_, record) => *record,
                record => record,
            };
            let after = record_field(&value, "after").unwrap();
            match record_field(after, "claim_id") {
                Some(Value::Long(id)) => ids.push(*id),
                other => panic!("unexpected claim_id {other:?}"),
            }
        }
    }
    ids.sort();
    ids
}

/// Writes twice-delivered, reordered batches through two sink lifetimes and checks the
/// archive holds each record once and verifies.
async fn archive_once_across_redelivery_and_restart(config: ColdSinkConfig) -> Archive {
    let (codec, id) = codec_and_schema().await;
    let mut sink = ColdSink::new(&config, codec.clone());
    sink.open().await.unwrap();
    sink.write(&records(id, 0..40)).await.unwrap();
    // Redelivered overlap, out of order within the batch.
    let mut again = records(id, 20..60);
    again.reverse();
    sink.write(&again).await.unwrap();
    drop(sink);

    // A restarted sink reads the manifests and skips what they hold.
    let mut sink = ColdSink::new(&config, codec);
    sink.open().await.unwrap();
    sink.write(&records(id, 0..100)).await.unwrap();

    let archive = Archive::open(&config.path, &config.store_options()).unwrap();
    assert_eq!(archived_ids(&archive).await, (0..100).collect::<Vec<_>>());
    let report = archive.verify().await.unwrap();
    assert_eq!(
        (report.manifests, report.records, report.broken),
        (2, 100, None)
    );
    archive
}

#[tokio::test]
async fn interleaved_tables_share_one_file_per_partition_and_roll() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let config: ColdSinkConfig =
        serde_json::from_value(json!({ "path": root.to_str().unwrap() })).unwrap();
    let (codec, claims) = codec_and_schema().await;
    // Another table: its own names, the same shared `Source` type.
    let lines = register(
        &codec,
        &SCHEMA.replace("strata.test.archive", "strata.test.lines"),
    )
    .await;
    let mut sink = ColdSink::new(&config, codec.clone());
    sink.open().await.unwrap();
    let batch: Vec<SinkRecord> = (0..40)
        .map(|o| record(if o % 4 < 2 { claims } else { lines }, (o % 2) as i32, o))
        .collect();
    sink.write(&batch).await.unwrap();
    let archive = Archive::open(&config.path, &config.store_options()).unwrap();
    for partition in [0, 1] {
        let entries = archive.manifest(partition).await.unwrap();
        assert_eq!(
            entries.len(),
            1,
            "one file for partition {partition}: {entries:?}"
        );
        assert_eq!(entries[0].records, 20);
        assert!(
            entries[0].file.starts_with("archived=")
                && entries[0]
                    .file
                    .ends_with(&format!("-s{claims}_{lines}.avro")),
            "{}",
            entries[0].file
        );
    }
    assert_eq!(archived_ids(&archive).await, (0..40).collect::<Vec<_>>());
    let report = archive.verify().await.unwrap();
    assert_eq!((report.files, report.records, report.broken), (2, 40, None));
}

/// The path of one archived data file.
async fn some_file(archive: &Archive) -> String {
    archive
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.ends_with(".avro"))
        .expect("an archived file")
}

fn flip_middle_byte(bytes: &mut [u8]) {
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
}

/// Runs `strata archive verify LOCATION` and checks it fails naming `victim`'s SHA-256;
/// returns its stderr.
fn verify_catches(location: &str, env: &[(&str, &str)], victim: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["archive", "verify", location])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "tampering went unnoticed");
    assert!(
        stderr.contains("SHA-256") && stderr.contains(victim),
        "{stderr}"
    );
    stderr
}

#[tokio::test]
async fn local_archive_holds_each_record_once_and_catches_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let config: ColdSinkConfig =
        serde_json::from_value(json!({ "path": root.to_str().unwrap() })).unwrap();
    let archive = archive_once_across_redelivery_and_restart(config).await;

    let victim = some_file(&archive).await;
    let path = root.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    flip_middle_byte(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    verify_catches(root.to_str().unwrap(), &[], &victim);
}

#[tokio::test]
async fn a_broken_manifest_stops_writes_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let config: ColdSinkConfig =
        serde_json::from_value(json!({ "path": root.to_str().unwrap() })).unwrap();
    let (codec, id) = codec_and_schema().await;
    let mut sink = ColdSink::new(&config, codec.clone());
    sink.open().await.unwrap();
    sink.write(&records(id, 0..10)).await.unwrap();
    sink.write(&records(id, 10..20)).await.unwrap();
    // Remove the first entry of partition 0's manifest.
    std::fs::remove_file(root.join("manifest/p0000/00000000000000000000.json")).unwrap();

    let mut sink = ColdSink::new(&config, codec);
    let err = sink.open().await.expect_err("a broken chain is refused");
    let message = err.to_string();
    assert!(
        matches!(err, strata_pipeline::runtime::SinkError::Fatal(_)),
        "{message}"
    );
    assert!(
        message.contains("partition 0, entry 0") && message.contains("strata archive verify"),
        "{message}"
    );
}

/// moto's server, or `None` (test skipped with a note) when scripts/services.sh found no
/// moto to start; under `CI=true` a missing server fails the test instead.
fn s3_endpoint() -> Option<String> {
    let endpoint = std::env::var("STRATA_S3_ENDPOINT").ok();
    assert!(
        endpoint.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "no S3 stand-in (STRATA_S3_ENDPOINT): scripts/services.sh start did not start moto"
    );
    if endpoint.is_none() {
        eprintln!(
            "skipped: no S3 stand-in (run scripts/install-deps.sh, then scripts/services.sh start)"
        );
    }
    endpoint
}

#[tokio::test]
async fn s3_archive_holds_each_record_once_and_catches_tampering() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = support::unique("strata-archive").to_lowercase();
    let http = reqwest::Client::new();
    let created = http
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{created:?}");

    let location = format!("s3://{bucket}/claims/us-east");
    let config: ColdSinkConfig = serde_json::from_value(json!({
        "path": location,
        "options": { "aws_endpoint": endpoint, "aws_allow_http": "true", "aws_region": "us-east-1" },
        "access_key_id": "strata-test",
        "secret_access_key": "strata-test-secret",
    }))
    .unwrap();
    let archive = archive_once_across_redelivery_and_restart(config).await;

    // The objects are where a stock S3 client would look for them.
    let victim = some_file(&archive).await;
    // Tamper with the file through a separate S3 client, as an intruder would.
    let s3 = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("strata-test")
        .with_secret_access_key("strata-test-secret")
        .build()
        .unwrap();
    let key = object_store::path::Path::from(format!("claims/us-east/{victim}"));
    let mut bytes = s3.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
    flip_middle_byte(&mut bytes);
    s3.put(&key, bytes.into()).await.unwrap();

    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "strata-test"),
        ("AWS_SECRET_ACCESS_KEY", "strata-test-secret"),
    ];
    let stderr = verify_catches(&location, &env, &victim);
    assert!(!stderr.contains("strata-test-secret"), "{stderr}");
}
