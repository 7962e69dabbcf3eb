//! A counting processor on RocksDB state alone: events/s per core through the runtime's
//! context (reads see the batch's own writes, one `WriteBatch` per 1000 events), no Kafka.
//!
//! cargo bench --bench state
//! Goal: ≥ 200k events/s per core.

/// Decoded events are trees of small allocations, which mimalloc serves faster than the
/// system allocator; benchmarks use the allocator the binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use apache_avro::types::Value;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata_pipeline::runtime::harness::{store_names, Harness};
use strata_pipeline::runtime::{Context, Event, ProcessError, Processor};
use strata_pipeline::state::{RocksStore, StateMemory};

/// Counts events per key, guarded by position like the domain processors.
struct Count;

impl Processor for Count {
    fn stores(&self) -> Vec<&'static str> {
        vec!["counts"]
    }
    fn event_time(&self, event: &Event<'_>) -> i64 {
        event.timestamp_ms
    }
    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(Value::Long(key)) = event.key else {
            return Ok(());
        };
        let key = key.to_be_bytes();
        if !ctx.is_newer(&key, &format!("{:016x}", event.offset))? {
            return Ok(());
        }
        let n = ctx
            .get("counts", &key)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        ctx.put("counts", &key, (n + 1).to_be_bytes().to_vec());
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(
        dir.path(),
        &store_names(&Count),
        &StateMemory::new(64 << 20, 64 << 20, 32 << 20),
    )
    .unwrap();
    let mut harness = Harness::with_store(Count, Box::new(store));
    const BATCH: usize = 1000;
    let keys: Vec<Value> = (0..BATCH as i64)
        .map(|i| Value::Long((i * 7919) % 100_000))
        .collect();
    let mut offset = 0i64;
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("count_per_key_rocksdb_batch_of_1000", |b| {
        b.iter(|| {
            let events: Vec<Event<'_>> = keys
                .iter()
                .map(|k| {
                    offset += 1;
                    Event {
                        topic: "in",
                        partition: 0,
                        offset,
                        timestamp_ms: offset,
                        key: Some(k),
                        key_schema_id: None,
                        value: None,
                        value_schema_id: None,
                    }
                })
                .collect();
            harness.feed_batch(&events).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
