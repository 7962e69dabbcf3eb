//! Avro events through a Confluent-compatible registry: round trips, cached schemas,
//! distinct errors for bad bytes, and schema evolution.

mod support;

use apache_avro::types::Value;
use strata_pipeline::avro::schemas::table_schemas;
use strata_pipeline::avro::types::{Column, ColumnType};
use strata_pipeline::avro::{wire, Codec, CodecError};
use strata_pipeline::topology::RegistrySettings;

fn settings(url: &str, allow_incompatible: bool) -> RegistrySettings {
    RegistrySettings {
        url: url.into(),
        username: None,
        password: None,
        ca_file: None,
        allow_incompatible,
    }
}

fn columns(extra: Option<Column>) -> Vec<Column> {
    let mut c = vec![
        Column {
            name: "claim_id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        Column {
            name: "status".into(),
            ty: ColumnType::Text,
            nullable: false,
        },
    ];
    c.extend(extra);
    c
}

fn row(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn envelope(after: Value) -> Value {
    let source = row(vec![
        ("connector", Value::String("postgres".into())),
        ("region", Value::String("test".into())),
        ("db", Value::String("claims".into())),
        ("schema", Value::String("public".into())),
        ("table", Value::String("claims".into())),
        (
            "position",
            Value::String("0000000001000000-00000000".into()),
        ),
        ("lsn", Value::Union(1, Box::new(Value::Long(16_777_216)))),
        ("tx_index", Value::Union(1, Box::new(Value::Long(0)))),
        ("commit_lsn", Value::Union(0, Box::new(Value::Null))),
        ("seqval", Value::Union(0, Box::new(Value::Null))),
        ("txid", Value::Union(1, Box::new(Value::Long(42)))),
        ("ts_ms", Value::Long(1_700_000_000_000)),
        ("snapshot", Value::String("false".into())),
    ]);
    row(vec![
        ("before", Value::Union(0, Box::new(Value::Null))),
        ("after", Value::Union(1, Box::new(after))),
        ("source", source),
        ("op", Value::String("c".into())),
        ("ts_ms", Value::Union(0, Box::new(Value::Null))),
        ("unavailable_columns", Value::Array(vec![])),
        ("origin", Value::Union(0, Box::new(Value::Null))),
        ("hlc", Value::Union(0, Box::new(Value::Null))),
    ])
}

const TOPIC: &str = "test.cdc.claims.public.claims";

#[tokio::test]
async fn round_trip_and_distinct_errors() {
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let codec = Codec::new(&settings(&registry.url, false)).unwrap();
    let schemas =
        table_schemas(TOPIC, "public.claims", &columns(None), &["claim_id".into()]).unwrap();
    let writer = codec
        .register(&format!("{TOPIC}-value"), &schemas.value)
        .await
        .unwrap();
    let value = envelope(row(vec![
        ("claim_id", Value::Long(7)),
        ("status", Value::String("PAID".into())),
    ]));
    let bytes = writer.encode(&value).unwrap();
    assert_eq!(bytes[0], 0);
    assert_eq!(wire::split(&bytes).unwrap().0, writer.id());

    let decoded = codec.decode(&bytes).await.unwrap();
    assert_eq!(decoded.id, writer.id());
    assert_eq!(decoded.value, value);
    assert!(
        codec.decode_cached(&bytes).is_some(),
        "the id is cached after the first decode"
    );

    let truncated = codec.decode(&bytes[..3]).await.unwrap_err();
    assert_eq!(truncated.code(), "wire.truncated");
    let mut bad_magic = bytes.clone();
    bad_magic[0] = 1;
    assert_eq!(
        codec.decode(&bad_magic).await.unwrap_err().code(),
        "wire.bad_magic"
    );
    let mut unknown = bytes.clone();
    unknown[1..5].copy_from_slice(&9999u32.to_be_bytes());
    let err = codec.decode(&unknown).await.unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownSchemaId { id: 9999, .. }),
        "{err}"
    );
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 4);
    assert_eq!(
        codec.decode(&cut).await.unwrap_err().code(),
        "schema.mismatch"
    );
    let mut extra = bytes.clone();
    extra.push(0);
    assert_eq!(
        codec.decode(&extra).await.unwrap_err().code(),
        "schema.mismatch"
    );

    let wrong = envelope(row(vec![
        ("claim_id", Value::String("seven".into())),
        ("status", Value::Null),
    ]));
    assert_eq!(
        writer.encode(&wrong).unwrap_err().code(),
        "encode.value_mismatch"
    );
    registry.shutdown().await;
}

#[tokio::test]
async fn added_nullable_column_flows_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let codec = Codec::new(&settings(&registry.url, false)).unwrap();
    let subject = format!("{TOPIC}-value");
    let v1 = table_schemas(TOPIC, "public.claims", &columns(None), &["claim_id".into()]).unwrap();
    let w1 = codec.register(&subject, &v1.value).await.unwrap();
    let note = Column {
        name: "note".into(),
        ty: ColumnType::Text,
        nullable: true,
    };
    let v2 = table_schemas(
        TOPIC,
        "public.claims",
        &columns(Some(note)),
        &["claim_id".into()],
    )
    .unwrap();
    let w2 = codec.register(&subject, &v2.value).await.unwrap();
    assert_ne!(w1.id(), w2.id(), "a new version");

    let old = w1
        .encode(&envelope(row(vec![
            ("claim_id", Value::Long(1)),
            ("status", Value::String("A".into())),
        ])))
        .unwrap();
    let new_row = row(vec![
        ("claim_id", Value::Long(2)),
        ("status", Value::String("B".into())),
        (
            "note",
            Value::Union(1, Box::new(Value::String("hi".into()))),
        ),
    ]);
    let new = w2.encode(&envelope(new_row)).unwrap();
    assert_eq!(codec.decode(&old).await.unwrap().id, w1.id());
    assert_eq!(codec.decode(&new).await.unwrap().id, w2.id());
    registry.shutdown().await;
}

#[tokio::test]
async fn incompatible_change_names_the_field_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(dir.path()).await;
    let subject = format!("{TOPIC}-value");
    let strict = Codec::new(&settings(&registry.url, false)).unwrap();
    let v1 = table_schemas(TOPIC, "public.claims", &columns(None), &["claim_id".into()]).unwrap();
    strict.register(&subject, &v1.value).await.unwrap();
    let required = Column {
        name: "billed_amount".into(),
        ty: ColumnType::Float64,
        nullable: false,
    };
    let v2 = table_schemas(
        TOPIC,
        "public.claims",
        &columns(Some(required)),
        &["claim_id".into()],
    )
    .unwrap();

    let err = strict.register(&subject, &v2.value).await.unwrap_err();
    assert_eq!(err.code(), "schema.incompatible");
    assert!(
        err.to_string().contains("billed_amount"),
        "names the field: {err}"
    );
    assert!(
        err.to_string().contains("allow_incompatible"),
        "says how to allow it: {err}"
    );

    let lenient = Codec::new(&settings(&registry.url, true)).unwrap();
    lenient
        .register(&subject, &v2.value)
        .await
        .expect("allowed by the topology");
    registry.shutdown().await;
}

#[tokio::test]
async fn registry_down_is_transient() {
    let codec = Codec::new(&settings("http://127.0.0.1:9", false)).unwrap();
    let err = codec
        .register("x-value", r#"{"type":"string"}"#)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
