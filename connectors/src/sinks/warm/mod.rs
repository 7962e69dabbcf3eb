//! Warm store (both tiers): PostgreSQL partitioned by month of service date.

mod config;

pub use config::WarmSinkConfig;

use strata_pipeline::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<WarmSinkConfig> {
    TypedKind {
        name: "warm_store",
        role: Role::Sink,
        summary: "PostgreSQL, partitioned by month; partitions created ahead, detached as they age",
        ports: |_| Ports::default(),
        check: WarmSinkConfig::check,
    }
}

/// The warm store: claims and lines partitioned by month of their service date.
pub fn store(
    config: &WarmSinkConfig,
    codec: std::sync::Arc<strata_pipeline::avro::Codec>,
) -> crate::sinks::pg_store::PgStore {
    crate::sinks::pg_store::PgStore::new(
        config.connection.clone(),
        config.schema.clone(),
        true,
        config.partitions_ahead,
        config.evict_from.clone(),
    )
    .detach_after(config.detach_after.as_ref().map(|d| d.0))
    .following(codec)
}
