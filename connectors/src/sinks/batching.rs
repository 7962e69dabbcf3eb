//! Batch and back-pressure settings shared by every sink.

use serde::{Deserialize, Serialize};
use strata_pipeline::topology::units::Duration;
use strata_pipeline::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// A batch is written when it holds this many rows…
    #[serde(default = "default_max_rows")]
    pub max_rows: u32,
    /// …or when its oldest row has waited this long.
    #[serde(default = "default_max_wait")]
    pub max_wait: Duration,
    /// Batches being written at once; more input waits (back-pressure).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_rows: default_max_rows(),
            max_wait: default_max_wait(),
            max_in_flight: default_in_flight(),
        }
    }
}

fn default_max_rows() -> u32 {
    2_000
}
fn default_max_wait() -> Duration {
    Duration(std::time::Duration::from_millis(50))
}
fn default_in_flight() -> u32 {
    2
}

impl Batching {
    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        if self.max_rows == 0 {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "batching.max_rows".into(),
                message: "max_rows must be at least 1".into(),
                hint: None,
            });
        }
        if self.max_in_flight == 0 {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "batching.max_in_flight".into(),
                message: "max_in_flight must be at least 1".into(),
                hint: None,
            });
        }
        errors
    }
}
