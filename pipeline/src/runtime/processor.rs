//! The [`Processor`] trait: what a stateful stage implements, and the [`Context`] the
//! runtime hands it for each event.
//!
//! Contract (the runtime relies on it; processors must keep it):
//! - **Deterministic.** Outputs, state changes and timers are a pure function of the
//!   event and the state the context shows. No clocks, no randomness, no I/O: time is
//!   the event's time ([`Processor::event_time`]) or the watermark.
//! - **Per partition.** State is partitioned like the input: a processor sees only the
//!   state of the partition the event came from, and events of one partition arrive in
//!   offset order. Inputs are co-partitioned (same key → same partition number).
//! - **Idempotent.** An event may be delivered more than once (after a crash or a
//!   rebalance). [`Context::is_newer`] is the position guard: apply a change to a key
//!   only when its position is newer than the one stored for the key, and derive output
//!   ids from input positions, so a redelivery re-emits identical records.
//! - **All or nothing.** When [`Processor::process`] returns a [`Rejection`], the state
//!   changes, outputs and timers of that call are discarded and the original record goes
//!   to the dead-letter topic.

use std::collections::BTreeMap;
use std::sync::Arc;

use apache_avro::types::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::{decode_state, encode_state, with_joined_key, Entry, StateError, StateStore};

/// One decoded input record.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Kafka record timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    pub key: Option<&'a Value>,
    pub key_schema_id: Option<u32>,
    /// `None` for a tombstone.
    pub value: Option<&'a Value>,
    /// Schema id of `value`, so pass-through outputs can reuse the writer's schema.
    pub value_schema_id: Option<u32>,
}

impl Event<'_> {
    /// A top-level field of the value record.
    pub fn field(&self, name: &str) -> Option<&Value> {
        record_field(self.value?, name)
    }
}

/// A field of an Avro record (unions are looked through).
pub fn record_field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    match value {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        Value::Union(_, inner) => record_field(inner, name),
        _ => None,
    }
}

/// Why a processor refused an event; the event goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Stable code for headers and metrics, e.g. `claim.missing_field`.
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Errors of a processor call that are not the event's fault.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The schema an output is written with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OutputSchema {
    /// A schema already in the registry (e.g. the input's, for pass-through outputs).
    Id(u32),
    /// Schema text from `schemas/`.
    Text(Arc<str>),
}

/// A record to write to one of the processor's outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `None` for the default output, else a named port.
    pub port: Option<String>,
    /// `None` writes a record without a key (a truncate, say).
    pub key: Option<Value>,
    pub key_schema: OutputSchema,
    /// `None` writes a tombstone.
    pub value: Option<Value>,
    pub value_schema: OutputSchema,
    /// Bytes that choose the output partition (a stable hash of them); `None` keeps the
    /// input's partition. Records with equal bytes land in the same partition.
    pub partition_by: Option<Vec<u8>>,
}

/// The partition `bytes` map to among `partitions` (FNV-1a: stable across versions and
/// machines, unlike std's hasher).
pub fn partition_for(bytes: &[u8], partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % partitions.max(1) as u64) as i32
}

/// A timer that came due: its name and due time (event time, ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub due_ms: i64,
    pub name: Vec<u8>,
}

pub trait Processor: Send + Sync {
    /// The state stores this processor keeps, each backed by the changelog.
    fn stores(&self) -> Vec<&'static str>;

    /// Event time of `event`, ms; drives the watermark and timers. The default takes the
    /// change envelope's `source.ts_ms` (commit time), else the record timestamp.
    fn event_time(&self, event: &Event<'_>) -> i64 {
        event
            .field("source")
            .and_then(|s| record_field(s, "ts_ms"))
            .and_then(|v| match v {
                Value::Long(ms) => Some(*ms),
                _ => None,
            })
            .unwrap_or(event.timestamp_ms)
    }

    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError>;

    /// A timer set with [`Context::set_timer`] whose due time the watermark has passed.
    fn on_timer(&mut self, _timer: &Timer, _ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

pub(crate) use super::overlay::Overlay;

/// Runtime-owned stores, changelogged like the processor's own.
pub(crate) const POSITIONS: &str = "_positions";
pub(crate) const TIMERS: &str = "_timers";
pub(crate) const PROGRESS: &str = "_progress";
/// Local bookkeeping that is *not* changelogged (the changelog checkpoint).
pub(crate) const LOCAL: &str = "_local";

pub(crate) fn partition_key(partition: i32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The partition a [`partition_key`] names; `None` for a key too short to be one.
pub(crate) fn key_partition(key: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(key.get(..4)?.try_into().ok()?))
}

pub(crate) fn timer_key(partition: i32, due_ms: i64, name: &[u8]) -> Vec<u8> {
    // Sign bit flipped so that negative times sort before positive ones.
    let due = (due_ms as u64) ^ (1 << 63);
    let mut k = partition_key(partition, &due.to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub(crate) fn parse_timer_key(key: &[u8]) -> Option<Timer> {
    let due: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some(Timer {
        due_ms: (u64::from_be_bytes(due) ^ (1 << 63)) as i64,
        name: key[12..].to_vec(),
    })
}

/// What a processor may read and change while it handles one event of one partition.
pub struct Context<'a> {
    pub(crate) partition: i32,
    pub(crate) store: &'a dyn StateStore,
    /// Changes of earlier events of the current batch.
    pub(crate) batch: &'a Overlay,
    /// Changes of this call; merged into the batch only when the call succeeds.
    pub(crate) scratch: Overlay,
    pub(crate) outputs: Vec<Output>,
    pub(crate) watermark_ms: i64,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        partition: i32,
        store: &'a dyn StateStore,
        batch: &'a Overlay,
        watermark_ms: i64,
    ) -> Self {
        Self {
            partition,
            store,
            batch,
            scratch: Overlay::new(),
            outputs: Vec::new(),
            watermark_ms,
        }
    }

    /// The partition whose state this context shows.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The highest event time seen on this partition so far, ms.
    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    pub fn get(&self, store: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.read(store, key, |value| Ok(value.map(<[u8]>::to_vec)))
    }

    /// The record of `key` in `store`, as [`Context::put_state`] wrote it. A record that
    /// does not read is an error (the run stops), never `None`.
    pub fn get_state<T: DeserializeOwned>(
        &self,
        store: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        self.read(store, key, |value| {
            value
                .map(|bytes| decode_state(store, key, bytes))
                .transpose()
        })
    }

    /// `read` of the value of `key` in `store`: this call's change, else the batch's,
    /// else the store's. An uncommitted value is lent, not copied.
    fn read<T>(
        &self,
        store: &'static str,
        key: &[u8],
        read: impl FnOnce(Option<&[u8]>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        with_joined_key(&[&self.partition.to_be_bytes(), key], |full| {
            match self
                .scratch
                .get(store, full)
                .or_else(|| self.batch.get(store, full))
            {
                Some(value) => read(value.as_deref()),
                None => read(self.store.get(store, full)?.as_deref()),
            }
        })
    }

    pub fn put_state<T: Serialize>(&mut self, store: &'static str, key: &[u8], value: &T) {
        self.put(store, key, encode_state(value));
    }

    pub fn put(&mut self, store: &'static str, key: &[u8], value: Vec<u8>) {
        self.scratch
            .insert(store, partition_key(self.partition, key), Some(value));
    }

    pub fn delete(&mut self, store: &'static str, key: &[u8]) {
        self.scratch
            .insert(store, partition_key(self.partition, key), None);
    }

    /// Entries of `store` whose key starts with `prefix`, including this batch's changes,
    /// in key order; keys are returned without the partition prefix.
    pub fn scan_prefix(
        &self,
        store: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<Entry>, StateError> {
        let start = partition_key(self.partition, prefix);
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .store
            .scan_prefix(store, &start)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for overlay in [self.batch, &self.scratch] {
            for (k, v) in overlay.range_from(store, &start) {
                if !k.starts_with(&start) {
                    break;
                }
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k[4..].to_vec(), v)))
            .collect())
    }

    /// [`Context::scan_prefix`] of records [`Context::put_state`] wrote, decoded.
    pub fn scan_state<T: DeserializeOwned>(
        &self,
        store: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, StateError> {
        self.scan_prefix(store, prefix)?
            .into_iter()
            .map(|(key, bytes)| {
                let value = decode_state(store, &key, &bytes)?;
                Ok((key, value))
            })
            .collect()
    }

    /// The position guard: true (and `position` recorded for `key`) when `position` is
    /// newer than the last one applied for `key`; false for a redelivery or a stale event.
    /// Positions compare as strings (every source makes them fixed-width).
    pub fn is_newer(&mut self, key: &[u8], position: &str) -> Result<bool, StateError> {
        if let Some(seen) = self.get(POSITIONS, key)? {
            if seen.as_slice() >= position.as_bytes() {
                return Ok(false);
            }
        }
        self.put(POSITIONS, key, position.as_bytes().to_vec());
        Ok(true)
    }

    /// Calls [`Processor::on_timer`] with `name` once the watermark reaches `due_ms`.
    /// Setting the same (due, name) twice keeps one timer.
    pub fn set_timer(&mut self, due_ms: i64, name: &[u8]) {
        self.scratch.insert(
            TIMERS,
            timer_key(self.partition, due_ms, name),
            Some(Vec::new()),
        );
    }

    pub fn cancel_timer(&mut self, due_ms: i64, name: &[u8]) {
        self.scratch
            .insert(TIMERS, timer_key(self.partition, due_ms, name), None);
    }

    pub fn emit(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// The call's state changes and outputs, once it succeeded.
    pub(crate) fn into_parts(self) -> (Overlay, Vec<Output>) {
        (self.scratch, self.outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Batch, MemoryStore};

    #[test]
    fn timer_keys_sort_by_due_time_including_negative_times() {
        let a = timer_key(1, -5, b"x");
        let b = timer_key(1, 3, b"a");
        let c = timer_key(1, 1 << 40, b"a");
        assert!(a < b && b < c);
        assert_eq!(
            parse_timer_key(&a),
            Some(Timer {
                due_ms: -5,
                name: b"x".to_vec()
            })
        );
    }

    #[test]
    fn context_reads_its_own_writes_over_batch_and_store() {
        let store = MemoryStore::new(&["s", POSITIONS, TIMERS]);
        let mut stored = Batch::default();
        stored.put("s", partition_key(2, b"k1"), b"stored".to_vec());
        stored.put("s", partition_key(2, b"k2"), b"stored".to_vec());
        stored.put("s", partition_key(3, b"k1"), b"other partition".to_vec());
        store.write(stored).unwrap();
        let mut batch = Overlay::new();
        batch.insert("s", partition_key(2, b"k2"), None);
        let mut ctx = Context::new(2, &store, &batch, 0);
        ctx.put("s", b"k3", b"scratch".to_vec());
        assert_eq!(ctx.get("s", b"k1").unwrap(), Some(b"stored".to_vec()));
        assert_eq!(ctx.get("s", b"k2").unwrap(), None, "batch delete hides it");
        let keys: Vec<_> = ctx
            .scan_prefix("s", b"k")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k3".to_vec()]);
    }

    #[test]
    fn a_state_record_that_does_not_read_is_an_error_not_empty_state() {
        let store = MemoryStore::new(&["s"]);
        let mut stored = Batch::default();
        stored.put("s", partition_key(0, b"bad"), vec![0x01, 0xff, 0xff]);
        store.write(stored).unwrap();
        let batch = Overlay::new();
        let mut ctx = Context::new(0, &store, &batch, 0);
        ctx.put_state("s", b"good", &vec![1i64, 2]);
        assert_eq!(
            ctx.get_state::<Vec<i64>>("s", b"good").unwrap(),
            Some(vec![1, 2])
        );
        assert_eq!(ctx.get_state::<Vec<i64>>("s", b"none").unwrap(), None);
        for err in [
            ctx.get_state::<Vec<i64>>("s", b"bad").unwrap_err(),
            ctx.scan_state::<Vec<i64>>("s", b"").unwrap_err(),
        ] {
            assert!(
                matches!(&err, StateError::Unreadable { store, key, .. } if store == "s" && key == "626164"),
                "{err:?}"
            );
        }
    }

    #[test]
    fn position_guard_applies_each_position_once() {
        let store = MemoryStore::new(&[POSITIONS]);
        let batch = Overlay::new();
        let mut ctx = Context::new(0, &store, &batch, 0);
        assert!(ctx
            .is_newer(b"claim-1", "0000000000000010-00000000")
            .unwrap());
        assert!(!ctx
            .is_newer(b"claim-1", "0000000000000010-00000000")
            .unwrap());
        assert!(!ctx
            .is_newer(b"claim-1", "0000000000000009-00000005")
            .unwrap());
        assert!(ctx
            .is_newer(b"claim-1", "0000000000000010-00000001")
            .unwrap());
        assert!(ctx
            .is_newer(b"claim-2", "0000000000000001-00000000")
            .unwrap());
    }
}
