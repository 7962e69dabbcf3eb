//! PostgreSQL CDC source: snapshot, then logical replication with pgoutput.
//!
//! `pgoutput` and `position` hold the protocol and LSN logic, apart from the adapter
//! that plugs the source into the pipeline.

mod config;
pub mod events;
pub mod pgoutput;
pub mod position;
pub mod prerequisites;
pub mod relations;
mod slot_metrics;
pub mod snapshot_state;
pub mod source;
pub mod values;

pub use config::{PostgresSourceConfig, SnapshotMode};

use strata_pipeline::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<PostgresSourceConfig> {
    TypedKind {
        name: "postgres",
        role: Role::Source,
        summary:
            "captures PostgreSQL tables: consistent snapshot, then pgoutput logical replication",
        ports: |_| Ports::default(),
        check: PostgresSourceConfig::check,
    }
}
