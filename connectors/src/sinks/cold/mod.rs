//! Cold archive (on-prem): Avro container files with a SHA-256 hash-chained manifest.

mod config;

pub use config::ColdSinkConfig;

use strata_pipeline::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<ColdSinkConfig> {
    TypedKind {
        name: "cold_archive",
        role: Role::Sink,
        summary:
            "append-only Avro files by date, named by position range, in a hash-chained manifest",
        ports: |_| Ports::default(),
        check: ColdSinkConfig::check,
    }
}
