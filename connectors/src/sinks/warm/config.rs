use serde::{Deserialize, Serialize};
use strata_pipeline::topology::{DiagnosticKind, SettingsError};

use crate::pg_connection::PgConnection;
use crate::sinks::batching::Batching;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmSinkConfig {
    pub connection: PgConnection,
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Monthly partitions created ahead of the newest service date seen.
    #[serde(default = "default_ahead")]
    pub partitions_ahead: u32,
    #[serde(default)]
    pub batching: Batching,
    /// Schema (same database) of the hotter store that claims move out of: each claim row
    /// written here is then deleted there, in the same transaction.
    #[serde(default)]
    pub evict_from: Option<String>,
    /// Detach monthly partitions that ended longer ago than this (their claims have aged
    /// into the cold tier); off when unset.
    #[serde(default)]
    pub detach_after: Option<strata_pipeline::topology::units::Duration>,
}

fn default_schema() -> String {
    WarmSinkConfig::DEFAULT_SCHEMA.into()
}
fn default_ahead() -> u32 {
    3
}

impl WarmSinkConfig {
    /// The schema of the tables when the topology names none.
    pub const DEFAULT_SCHEMA: &'static str = "warm";

    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors: Vec<_> = self.connection.check("connection").into_iter().collect();
        errors.extend(self.batching.check());
        if self.partitions_ahead > 120 {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "partitions_ahead".into(),
                message: "more than 120 monthly partitions ahead is surely a mistake".into(),
                hint: Some("3 months ahead is usual".into()),
            });
        }
        errors
    }
}
