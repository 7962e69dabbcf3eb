use serde::{Deserialize, Serialize};
use strata_pipeline::topology::SettingsError;

use crate::pg_connection::PgConnection;
use crate::sinks::batching::Batching;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotSinkConfig {
    pub connection: PgConnection,
    /// Schema holding the hot tables; created by the sink's migrations.
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default)]
    pub batching: Batching,
}

fn default_schema() -> String {
    HotSinkConfig::DEFAULT_SCHEMA.into()
}

impl HotSinkConfig {
    /// The schema of the tables when the topology names none.
    pub const DEFAULT_SCHEMA: &'static str = "hot";

    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors: Vec<_> = self.connection.check("connection").into_iter().collect();
        errors.extend(self.batching.check());
        errors
    }
}
