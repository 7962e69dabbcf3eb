//! Hot store (cloud tier): latest state of each claim with its analysis, in PostgreSQL.

mod config;

pub use config::HotSinkConfig;

use strata_pipeline::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<HotSinkConfig> {
    TypedKind {
        name: "hot_store",
        role: Role::Sink,
        summary: "PostgreSQL tables with the latest state per claim, position-guarded upserts",
        ports: |_| Ports::default(),
        check: HotSinkConfig::check,
    }
}

/// The hot store: plain tables, upserts guarded by position.
pub fn store(
    config: &HotSinkConfig,
    codec: std::sync::Arc<strata_pipeline::avro::Codec>,
) -> crate::sinks::pg_store::PgStore {
    crate::sinks::pg_store::PgStore::new(
        config.connection.clone(),
        config.schema.clone(),
        false,
        0,
        None,
    )
    .following(codec)
}
