//! Encode and decode of a 30-column claim change event in the Confluent wire format,
//! through the cached codec (no HTTP in the measured loop).
//!
//! cargo bench --bench avro
//! Goal: ≥ 500k encodes/s and ≥ 500k decodes/s per core.

/// Decoded events are trees of small allocations, which mimalloc serves faster than the
/// system allocator; benchmarks use the allocator the binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use apache_avro::types::Value;
use apache_avro::Decimal;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_pipeline::avro::schemas::table_schemas;
use strata_pipeline::avro::types::{Column, ColumnType};
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::topology::RegistrySettings;

fn claim_columns() -> Vec<(Column, Value)> {
    let money = |cents: i64| Value::Decimal(Decimal::from(cents.to_be_bytes().to_vec()));
    let text = |s: &str| Value::String(s.into());
    let opt = |v: Value| Value::Union(1, Box::new(v));
    let col = |name: &str, ty: ColumnType, nullable: bool| Column {
        name: name.into(),
        ty,
        nullable,
    };
    let dec = ColumnType::Decimal {
        precision: 12,
        scale: 2,
    };
    vec![
        (
            col("claim_id", ColumnType::Int64, false),
            Value::Long(1_234_567),
        ),
        (
            col("member_id", ColumnType::Int64, false),
            Value::Long(99_001),
        ),
        (
            col("provider_id", ColumnType::Int64, false),
            Value::Long(5_001),
        ),
        (
            col("policy_id", ColumnType::Int64, false),
            Value::Long(77_001),
        ),
        (
            col("claim_type", ColumnType::Text, false),
            text("PROFESSIONAL"),
        ),
        (col("form_type", ColumnType::Text, false), text("CMS1500")),
        (col("status", ColumnType::Text, false), text("ADJUDICATED")),
        (
            col("service_date_from", ColumnType::Date, false),
            Value::Date(19_700),
        ),
        (
            col("service_date_to", ColumnType::Date, false),
            Value::Date(19_701),
        ),
        (
            col("submitted_at", ColumnType::Timestamp, false),
            Value::TimestampMicros(1_700_000_000_000_000),
        ),
        (
            col("adjudicated_at", ColumnType::Timestamp, true),
            opt(Value::TimestampMicros(1_700_100_000_000_000)),
        ),
        (
            col("paid_at", ColumnType::Timestamp, true),
            Value::Union(0, Box::new(Value::Null)),
        ),
        (col("billed_amount", dec.clone(), false), money(125_000)),
        (col("allowed_amount", dec.clone(), true), opt(money(98_000))),
        (col("paid_amount", dec.clone(), true), opt(money(88_000))),
        (
            col("member_liability", dec.clone(), true),
            opt(money(10_000)),
        ),
        (
            col(
                "diagnosis_codes",
                ColumnType::Array(Box::new(ColumnType::Text)),
                false,
            ),
            Value::Array(vec![opt(text("E11.9")), opt(text("I10"))]),
        ),
        (
            col("principal_procedure", ColumnType::Text, true),
            opt(text("99214")),
        ),
        (
            col("place_of_service", ColumnType::Text, true),
            opt(text("11")),
        ),
        (
            col("facility_npi", ColumnType::Text, true),
            opt(text("1234567893")),
        ),
        (
            col("rendering_npi", ColumnType::Text, true),
            opt(text("1987654321")),
        ),
        (
            col("billing_tin", ColumnType::Text, true),
            opt(text("123456789")),
        ),
        (
            col("claim_frequency", ColumnType::Int32, false),
            Value::Int(1),
        ),
        (
            col("original_claim_id", ColumnType::Int64, true),
            Value::Union(0, Box::new(Value::Null)),
        ),
        (col("line_count", ColumnType::Int32, false), Value::Int(3)),
        (
            col("is_emergency", ColumnType::Bool, false),
            Value::Boolean(false),
        ),
        (
            col("external_ref", ColumnType::Uuid, false),
            text("6f1c2a52-3e0b-4a5e-9a57-0c1d2e3f4a5b"),
        ),
        (
            col("notes", ColumnType::Text, true),
            opt(text("resubmitted with corrected modifier")),
        ),
        (
            col("created_at", ColumnType::Timestamp, false),
            Value::TimestampMicros(1_700_000_000_000_000),
        ),
        (
            col("updated_at", ColumnType::Timestamp, false),
            Value::TimestampMicros(1_700_200_000_000_000),
        ),
    ]
}

fn event(after: Value) -> Value {
    let record = |fields: Vec<(&str, Value)>| {
        Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    };
    let none = || Value::Union(0, Box::new(Value::Null));
    let some = |v| Value::Union(1, Box::new(v));
    let source = record(vec![
        ("connector", Value::String("postgres".into())),
        ("region", Value::String("bench".into())),
        ("db", Value::String("claims".into())),
        ("schema", Value::String("public".into())),
        ("table", Value::String("claims".into())),
        (
            "position",
            Value::String("00000000016b3a28-00000003".into()),
        ),
        ("lsn", some(Value::Long(23_804_456))),
        ("tx_index", some(Value::Long(3))),
        ("commit_lsn", none()),
        ("seqval", none()),
        ("txid", some(Value::Long(7_771))),
        ("ts_ms", Value::Long(1_700_000_000_000)),
        ("snapshot", Value::String("false".into())),
    ]);
    record(vec![
        ("before", none()),
        ("after", some(after)),
        ("source", source),
        ("op", Value::String("u".into())),
        ("ts_ms", some(Value::Long(1_700_000_000_100))),
        ("unavailable_columns", Value::Array(vec![])),
        ("origin", some(Value::String("on-prem".into()))),
        ("hlc", some(Value::Long(1_700_000_000_000 << 16))),
    ])
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("port");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
        tokio::spawn(async move { strata::registry::serve_on(listener, dir, None, stop).await });
        url
    });
    let settings = RegistrySettings {
        url,
        username: None,
        password: None,
        ca_file: None,
        allow_incompatible: false,
    };
    let codec = Codec::new(&settings).expect("codec");
    let (columns, values): (Vec<Column>, Vec<Value>) = claim_columns().into_iter().unzip();
    assert_eq!(columns.len(), 30);
    let topic = "bench.cdc.claims.public.claims";
    let schemas =
        table_schemas(topic, "public.claims", &columns, &["claim_id".into()]).expect("schemas");
    let writer = runtime
        .block_on(codec.register(&format!("{topic}-value"), &schemas.value))
        .expect("registered");
    let row = Value::Record(columns.iter().map(|c| c.name.clone()).zip(values).collect());
    let value = event(row);
    let bytes = writer.encode(&value).expect("encodes");
    runtime
        .block_on(codec.decode(&bytes))
        .expect("decodes once, caching the schema");

    let mut group = c.benchmark_group("avro_claim_event_30_columns");
    group.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(512);
    group.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            writer.encode_into(&value, &mut buf).expect("encodes");
            buf.len()
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            codec
                .decode_cached(&bytes)
                .expect("cached")
                .expect("decodes")
        })
    });
    group.finish();
    println!("encoded event: {} bytes", bytes.len());
    stop.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
