//! Whether a slot's initial snapshot finished, recorded in Kafka beside the events.
//!
//! PostgreSQL creates a slot (with its exported snapshot) before the snapshot is read. If
//! the source stops in between — kill -9, a lost connection, shutdown — the slot exists
//! but rows are missing from the topics, and streaming from that slot would skip them for
//! good. So the source keeps one record per slot in the compacted topic
//! `<region>.strata.source-state`, keyed `postgres/<database>/<slot>`:
//!
//! - `started`, acknowledged by Kafka before the first snapshot row is read;
//! - `done`, written once Kafka acknowledged every snapshot row.
//!
//! Invariant: the source streams from an existing slot only when the latest record for it
//! is `done` (or the source was told not to snapshot). Otherwise it drops the slot and
//! snapshots again from a new one: rows already sent are sent again with the new slot's
//! position, which position-guarded sinks apply as the same row image.

use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use strata_pipeline::topology::KafkaSettings;

use crate::source_state::{SourceState, SourceStateError};

use super::position::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    Started,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub progress: Progress,
    /// The slot's consistent point: the position of every snapshot row.
    pub consistent_lsn: String,
}

/// The snapshot record of one slot in one database.
pub struct SnapshotState {
    state: SourceState,
}

pub type SnapshotStateError = SourceStateError;

impl SnapshotState {
    pub fn new(region: &str, database: &str, slot: &str) -> Self {
        Self {
            state: SourceState::new(region, &format!("postgres/{database}/{slot}")),
        }
    }

    pub fn topic(&self) -> &str {
        self.state.topic()
    }

    /// The latest record for this slot, if any.
    pub async fn read(
        &self,
        kafka: &KafkaSettings,
    ) -> Result<Option<SnapshotRecord>, SnapshotStateError> {
        self.state.read(kafka).await
    }

    /// Records `progress` for the snapshot at `consistent` and waits for Kafka's ack.
    pub async fn write(
        &self,
        kafka: &KafkaSettings,
        producer: &FutureProducer,
        progress: Progress,
        consistent: Lsn,
    ) -> Result<(), SnapshotStateError> {
        let record = SnapshotRecord {
            progress,
            consistent_lsn: consistent.to_string(),
        };
        self.state.write(kafka, producer, &record).await
    }
}
