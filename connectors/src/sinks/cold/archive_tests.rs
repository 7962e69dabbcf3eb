//! The archive's chain, offsets and files: what `verify` proves and what it catches.

use super::*;
use apache_avro::types::Value;

fn schema() -> apache_avro::Schema {
    apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#,
    )
    .unwrap()
}

fn batch(schema: &apache_avro::Schema, first: i64, n: i64) -> FileBatch<'_> {
    FileBatch {
        day: "2026-11-25".into(),
        partition: 1,
        schema_ids: "7".into(),
        schema,
        records: (first..first + n)
            .map(|i| Value::Record(vec![("n".into(), Value::Long(i))]))
            .collect(),
        offsets: (first..first + n).collect(),
        positions: vec![None; n as usize],
        first_offset: first,
        last_offset: first + n - 1,
        roll_bytes: u64::MAX,
    }
}

/// A fresh handle on the same directory, as after a restart.
fn reopen(dir: &tempfile::TempDir) -> Archive {
    Archive::open(dir.path().to_str().unwrap(), &BTreeMap::new()).unwrap()
}

#[tokio::test]
async fn chain_verifies_and_catches_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema();
    let archive = reopen(&dir);
    archive.append(batch(&schema, 0, 10)).await.unwrap();
    let second = archive.append(batch(&schema, 10, 5)).await.unwrap();
    archive.append(batch(&schema, 15, 5)).await.unwrap();
    let ok = reopen(&dir).verify().await.unwrap();
    assert_eq!((ok.files, ok.records, ok.broken), (3, 20, None));
    assert_eq!(reopen(&dir).archived_offsets().await.unwrap()[&1], 19);

    // Flip one byte of the second file.
    let path = dir.path().join(&second.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let bad = reopen(&dir).verify().await.unwrap();
    let (_, seq, why) = bad.broken.expect("tampering caught");
    assert_eq!(seq, 1);
    assert!(why.contains("SHA-256"), "{why}");
}

#[tokio::test]
async fn edited_or_removed_entries_break_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema();
    let archive = reopen(&dir);
    for i in 0..3 {
        archive.append(batch(&schema, i * 10, 10)).await.unwrap();
    }
    let entry = |seq| dir.path().join(entry_path(1, seq).as_ref());
    let first = std::fs::read_to_string(entry(0)).unwrap();
    std::fs::write(entry(0), first.replace("\"records\":10", "\"records\":9")).unwrap();
    let (_, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
    assert_eq!(seq, 0);
    assert!(why.contains("edited"), "{why}");
    std::fs::write(entry(0), first).unwrap();

    std::fs::remove_file(entry(1)).unwrap();
    let (_, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
    assert_eq!(seq, 1);
    assert!(why.contains("missing"), "{why}");
}

#[tokio::test]
async fn a_chain_rebuilt_without_a_file_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema();
    let archive = reopen(&dir);
    for i in 0..3 {
        archive.append(batch(&schema, i * 10, 10)).await.unwrap();
    }
    // Someone who can rewrite the whole manifest drops the middle file's records and
    // recomputes every hash: the chain holds, the offsets do not.
    let manifest = dir.path().join("manifest");
    std::fs::remove_dir_all(&manifest).unwrap();
    let rebuilt = reopen(&dir);
    rebuilt.append(batch(&schema, 0, 10)).await.unwrap();
    rebuilt.append(batch(&schema, 20, 10)).await.unwrap();
    let (partition, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
    assert_eq!((partition, seq), (1, 1));
    assert!(
        why.contains("offsets 10..=19 of partition 1 are in no file"),
        "{why}"
    );

    // An overlap is caught the same way.
    std::fs::remove_dir_all(&manifest).unwrap();
    let overlapping = reopen(&dir);
    overlapping.append(batch(&schema, 0, 10)).await.unwrap();
    overlapping.append(batch(&schema, 5, 10)).await.unwrap();
    let (_, seq, why) = reopen(&dir).verify().await.unwrap().broken.unwrap();
    assert_eq!(seq, 1);
    assert!(why.contains("overlap"), "{why}");
}

#[tokio::test]
async fn works_on_any_object_store() {
    let store = Arc::new(object_store::memory::InMemory::new());
    let archive = Archive::with_store(store.clone(), None, "memory://");
    let schema = schema();
    archive.append(batch(&schema, 0, 4)).await.unwrap();
    archive.append(batch(&schema, 4, 4)).await.unwrap();
    let again = Archive::with_store(store, None, "memory://");
    assert_eq!(again.archived_offsets().await.unwrap()[&1], 7);
    let report = again.verify().await.unwrap();
    assert_eq!((report.manifests, report.files, report.records), (1, 2, 8));
}

#[test]
fn bad_locations_say_what_to_use() {
    let none = BTreeMap::new();
    let err = Archive::open("gs://bucket/x", &none)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("s3://bucket/prefix"), "{err}");
    let opts = BTreeMap::from([("aws_endpointt".to_string(), "x".to_string())]);
    let err = Archive::open("s3://b/p", &opts).err().unwrap().to_string();
    assert!(err.contains("unknown S3 option `aws_endpointt`"), "{err}");
}

#[tokio::test]
async fn a_file_rolls_at_its_size_and_the_rest_follows_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema();
    let archive = reopen(&dir);
    let mut rest = batch(&schema, 0, 5_000);
    rest.roll_bytes = 1;
    let first = archive.append(rest).await.unwrap();
    assert_eq!(
        (first.records, first.first_offset, first.last_offset),
        (BLOCK as u64, 0, BLOCK as i64 - 1),
        "a file ends at the first block past its roll size"
    );
    archive
        .append(batch(&schema, BLOCK as i64, 5_000 - BLOCK as i64))
        .await
        .unwrap();
    let ok = reopen(&dir).verify().await.unwrap();
    assert_eq!((ok.files, ok.records, ok.broken), (2, 5_000, None));
}
