use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_pipeline::topology::units::{Duration, Size};
use strata_pipeline::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdSinkConfig {
    /// Root directory of the archive.
    pub path: PathBuf,
    /// A file is closed when it reaches this size…
    #[serde(default = "default_file_size")]
    pub max_file_size: Size,
    /// …or when it has been open this long.
    #[serde(default = "default_roll")]
    pub roll_interval: Duration,
    /// PostgreSQL stores that claims move out of: each claim row archived here is then
    /// deleted from them.
    #[serde(default)]
    pub evict_from: Vec<EvictTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvictTarget {
    pub connection: crate::pg_connection::PgConnection,
    pub schema: String,
}

fn default_file_size() -> Size {
    Size(64 << 20)
}
fn default_roll() -> Duration {
    Duration(std::time::Duration::from_secs(60))
}

impl ColdSinkConfig {
    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "path".into(),
                message: "the archive path is empty".into(),
                hint: Some("e.g. ./.strata/archive/${region}".into()),
            });
        }
        if self.max_file_size.0 < 4096 {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "max_file_size".into(),
                message: "max_file_size must be at least 4KiB".into(),
                hint: Some("64MiB is usual".into()),
            });
        }
        errors
    }
}
