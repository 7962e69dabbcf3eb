//! Cold archive (on-prem): Avro container files with a SHA-256 hash-chained manifest.

pub mod archive;
mod config;
mod sink;
mod union;

pub use config::{ColdSinkConfig, EvictTarget};
pub use sink::ColdSink;

use strata_pipeline::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<ColdSinkConfig> {
    TypedKind {
        name: "cold_archive",
        role: Role::Sink,
        summary:
            "append-only Avro files per partition, rolled by size or interval, named by offset range, in a hash-chained manifest",
        ports: |_| Ports::default(),
        check: ColdSinkConfig::check,
    }
}
