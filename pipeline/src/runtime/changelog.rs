//! Changelog topics: every change to a processor's state is also a record in a compacted
//! topic, so that state can be rebuilt on any machine.
//!
//! Layout: one changelog topic per processor, partition `p` holding the state of input
//! partition `p`. Record key = `len(store) (u8) ‖ store ‖ key`, value = the new value,
//! or a tombstone for a delete; compaction keeps the latest value per key.
//!
//! Invariant: replaying any suffix of a partition's changelog that starts at or before
//! the local checkpoint, in offset order, over the local state gives the state the
//! changelog describes, because each record overwrites its key. So a restore from a
//! checkpoint that is too old is merely slower, never wrong.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::processor::{partition_key, LOCAL};
use super::RuntimeError;
use crate::state::{Batch, StateStore};

/// Changelog record key of `key` (already stripped of its partition prefix) in `store`.
pub(crate) fn record_key(store: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + store.len() + key.len());
    out.push(store.len() as u8);
    out.extend_from_slice(store.as_bytes());
    out.extend_from_slice(key);
    out
}

pub(crate) fn parse_record_key(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(*bytes.first()?);
    let store = std::str::from_utf8(bytes.get(1..1 + len)?).ok()?;
    Some((store, &bytes[1 + len..]))
}

/// Key in the local store holding the next changelog offset a partition's state includes.
pub(crate) fn checkpoint_key(partition: i32) -> Vec<u8> {
    partition_key(partition, b"changelog")
}

pub(crate) fn read_checkpoint(store: &dyn StateStore, partition: i32) -> Result<i64, RuntimeError> {
    Ok(store
        .get(LOCAL, &checkpoint_key(partition))?
        .and_then(|v| v.try_into().ok().map(i64::from_be_bytes))
        .unwrap_or(0))
}

/// Restores partition `partition` of `topic` into `store`, from the local checkpoint up
/// to the end of the changelog as it is now. Blocking: call it from a blocking thread.
/// Returns the number of records applied.
pub(crate) fn restore(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    store: &dyn StateStore,
    progress: &dyn Fn(u64),
) -> Result<u64, RuntimeError> {
    let from = read_checkpoint(store, partition)?;
    let kafka = |source| RuntimeError::KafkaIo {
        what: format!("restoring {topic} partition {partition}"),
        source,
    };
    let consumer: BaseConsumer = config.create().map_err(kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map_err(kafka)?;
    let start = from.max(low);
    if start >= high {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let mut applied = 0u64;
    let mut batch = Batch::default();
    let mut last_log = Instant::now();
    let idle_deadline = Duration::from_secs(60);
    let mut last_record = Instant::now();
    let mut next = start;
    while next < high {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            if last_record.elapsed() > idle_deadline {
                return Err(RuntimeError::RestoreStalled {
                    topic: topic.into(),
                    partition,
                    at: next,
                    end: high,
                });
            }
            continue;
        };
        let message = message.map_err(kafka)?;
        last_record = Instant::now();
        next = message.offset() + 1;
        let Some((store_name, key)) = message.key().and_then(parse_record_key) else {
            tracing::warn!(%topic, partition, offset = message.offset(), "skipping a changelog record whose key is not a Strata state key");
            continue;
        };
        let full = partition_key(partition, key);
        match message.payload() {
            Some(value) => batch.put(store_name, full, value.to_vec()),
            None => batch.delete(store_name, full),
        }
        applied += 1;
        if batch.ops.len() >= 1000 || next >= high {
            batch.put(
                LOCAL,
                checkpoint_key(partition),
                next.to_be_bytes().to_vec(),
            );
            store.write(std::mem::take(&mut batch))?;
            progress(applied);
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            tracing::info!(%topic, partition, done = next - start, total = high - start, "restoring state");
            last_log = Instant::now();
        }
    }
    if !batch.is_empty() {
        batch.put(
            LOCAL,
            checkpoint_key(partition),
            next.to_be_bytes().to_vec(),
        );
        store.write(batch)?;
        progress(applied);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_round_trip() {
        let k = record_key("counts", b"\x00member-1");
        assert_eq!(parse_record_key(&k), Some(("counts", &b"\x00member-1"[..])));
        assert_eq!(parse_record_key(b""), None);
        assert_eq!(parse_record_key(b"\x09ab"), None, "length past the end");
    }
}
