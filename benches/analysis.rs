//! Claim analysis on RocksDB state: claims/s per core, each claim a header and two lines
//! (validation, classification, duplicate, velocity, amount, procedure and upcoding
//! features), batches of 1,000 claims committed with one `WriteBatch`, no Kafka.
//!
//! cargo bench --bench analysis
//! Goal: ≥ 100k claims/s.
//!
//! Before measuring, it analyses `STRATA_BENCH_HISTORY_CLAIMS` claims (default 300,000),
//! so that state is past the caches, as in a deployment that has run a while. The figure
//! still falls as state grows: compare runs of the same length.
//!
//! `STRATA_BENCH_RECORD_CACHE_MIB` sets the record cache (`state.record_cache_size`,
//! default 32; 0 turns it off) to compare runs with and without it.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use apache_avro::types::Value;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use strata_pipeline::processors::claim_analysis::{ClaimAnalysis, ClaimAnalysisConfig};
use strata_pipeline::processors::testing;
use strata_pipeline::runtime::harness::{store_names, Harness};
use strata_pipeline::runtime::Event;
use strata_pipeline::state::{RocksStore, StateMemory};

const CLAIMS_PER_BATCH: usize = 1000;
const MEMBERS: i64 = 20_000;
const DAY: i32 = 20_400;
const NOW_MS: i64 = (DAY as i64 + 10) * 86_400_000;

/// A snapshot-read change of `public.<table>`.
fn change(table: &str, position: u64, row: Vec<(&str, Value)>) -> Value {
    testing::change(table, "r", position, NOW_MS, None, Some(row))
}

/// Claim `id` with its two lines: (key, value) per event.
fn claim_events(id: i64) -> Vec<(Value, Value)> {
    let member = id * 7919 % MEMBERS;
    let provider = id % 400;
    let level = ["99212", "99213", "99213", "99214", "99215"][id as usize % 5];
    // Each batch of claims is served on one day, the next batch a day earlier (300 days
    // round), so a member (one claim in 20,000) has its claims on different days, as
    // members do; with `id % 300` every member's claims fell on three days, and the
    // member-velocity burst of each of those days grew without end.
    let day = DAY - (id / CLAIMS_PER_BATCH as i64 % 300) as i32;
    let position = id as u64 * 4;
    let key = Value::Long(id);
    let mut events = vec![(
        key.clone(),
        change(
            "claims",
            position,
            vec![
                ("claim_id", Value::Long(id)),
                ("member_id", Value::Long(member)),
                ("provider_id", Value::Long(provider)),
                ("claim_type", Value::String("PROFESSIONAL".into())),
                ("form_type", Value::String("CMS1500".into())),
                ("service_date_from", Value::Date(day)),
                ("service_date_to", Value::Date(day)),
                ("submitted_date", Value::Date(DAY)),
                ("billed_amount", Value::Double(160.0 + (id % 13) as f64)),
                (
                    "diagnosis_codes",
                    Value::Array(vec![Value::String("J06.9".into())]),
                ),
            ],
        ),
    )];
    for (n, (code, charge)) in [(level, 125.0), ("80053", 35.0 + (id % 13) as f64)]
        .into_iter()
        .enumerate()
    {
        events.push((
            key.clone(),
            change(
                "claim_lines",
                position + 1 + n as u64,
                vec![
                    ("claim_id", Value::Long(id)),
                    ("line_number", Value::Int(n as i32 + 1)),
                    ("procedure_code", Value::String(code.into())),
                    ("charge_amount", Value::Double(charge)),
                ],
            ),
        ));
    }
    events
}

fn event<'a>(key: &'a Value, value: &'a Value, offset: i64) -> Event<'a> {
    Event {
        topic: "assembly",
        partition: 0,
        offset,
        timestamp_ms: NOW_MS,
        key: Some(key),
        key_schema_id: Some(1),
        value: Some(value),
        value_schema_id: Some(2),
    }
}

/// The whole number in environment variable `name`, else `default`.
fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("{name} is a whole number, not {n:?}")),
        Err(_) => default,
    }
}

/// The next [`CLAIMS_PER_BATCH`] claims from `next_claim` on, which it moves past.
fn claim_batch(next_claim: &mut i64) -> Vec<(Value, Value)> {
    let events = (0..CLAIMS_PER_BATCH as i64)
        .flat_map(|i| claim_events(*next_claim + i))
        .collect();
    *next_claim += CLAIMS_PER_BATCH as i64;
    events
}

/// `pairs` as the events of one input batch.
fn batch_of(pairs: &[(Value, Value)]) -> Vec<Event<'_>> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| event(k, v, i as i64))
        .collect()
}

fn bench(c: &mut Criterion) {
    let config: ClaimAnalysisConfig = serde_yaml_ng::from_str("{}").unwrap();
    let analysis = ClaimAnalysis::new(config);
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(
        dir.path(),
        &store_names(&analysis),
        &StateMemory::new(
            64 << 20,
            64 << 20,
            env_number("STRATA_BENCH_RECORD_CACHE_MIB", 32) << 20,
        ),
    )
    .unwrap();
    let mut harness = Harness::with_store(analysis, Box::new(store));
    // Every member covered.
    let policies: Vec<(Value, Value)> = (0..MEMBERS)
        .map(|m| {
            (
                Value::Long(m),
                change(
                    "policies",
                    m as u64,
                    vec![
                        ("policy_id", Value::Long(m)),
                        ("member_id", Value::Long(m)),
                        ("coverage_start", Value::Date(DAY - 1000)),
                    ],
                ),
            )
        })
        .collect();
    for chunk in policies.chunks(CLAIMS_PER_BATCH) {
        harness.feed_batch(&batch_of(chunk)).unwrap();
    }

    // History before the measurement: reads slow down as state outgrows the caches.
    let mut next_claim = 1_000_000i64;
    let history = env_number("STRATA_BENCH_HISTORY_CLAIMS", 300_000);
    for _ in 0..history / CLAIMS_PER_BATCH {
        harness
            .feed_batch(&batch_of(&claim_batch(&mut next_claim)))
            .unwrap();
    }
    let mut group = c.benchmark_group("claim_analysis");
    group.throughput(Throughput::Elements(CLAIMS_PER_BATCH as u64));
    group.bench_function("claims_with_two_lines_rocksdb_batch_of_1000", |b| {
        // The events are built and dropped outside the timed routine: decoding records
        // is the consumer's work, not analysis'.
        b.iter_batched_ref(
            || claim_batch(&mut next_claim),
            |events| harness.feed_batch(&batch_of(events)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
