use serde::{Deserialize, Serialize};
use strata_pipeline::topology::units::{Duration, Size};
use strata_pipeline::topology::{DiagnosticKind, SettingsError};

use crate::pg_connection::PgConnection;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    pub connection: PgConnection,
    /// Publication to read; created for `tables` when missing.
    pub publication: String,
    /// Logical replication slot; created when missing, never recreated past unread changes.
    pub slot: String,
    /// Captured tables as `schema.table`.
    pub tables: Vec<String>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk; bounds the memory a snapshot uses.
    #[serde(default = "default_chunk_rows")]
    pub snapshot_chunk_rows: u32,
    /// How often the confirmed flush LSN is reported, also while idle.
    #[serde(default = "default_status_interval")]
    pub status_interval: Duration,
    /// Write a heartbeat through the slot this often, so idle tables never pin WAL.
    #[serde(default)]
    pub heartbeat_interval: Option<Duration>,
    /// Upper bound of events buffered between the replication stream and Kafka.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_bytes: Size,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot existing rows when the slot is created, then stream.
    #[default]
    Initial,
    /// Stream only changes made after the slot was created.
    Never,
}

fn default_chunk_rows() -> u32 {
    10_000
}
fn default_status_interval() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}
fn default_max_in_flight() -> Size {
    Size(64 << 20)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PostgresSourceConfig {
    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors: Vec<SettingsError> =
            self.connection.check("connection").into_iter().collect();
        let invalid = |path: String, message: String, hint: &str| SettingsError {
            kind: DiagnosticKind::InvalidValue,
            path,
            message,
            hint: Some(hint.into()),
        };
        if !is_identifier(&self.slot) {
            errors.push(invalid(
                "slot".into(),
                format!("`{}` is not a valid replication slot name", self.slot),
                "slot names are lower-case letters, digits and `_`, at most 63 characters",
            ));
        }
        if !is_identifier(&self.publication) {
            errors.push(invalid(
                "publication".into(),
                format!("`{}` is not a valid publication name", self.publication),
                "use lower-case letters, digits and `_`",
            ));
        }
        if self.tables.is_empty() {
            errors.push(invalid(
                "tables".into(),
                "no tables to capture".into(),
                "list tables as schema.table",
            ));
        }
        for (i, table) in self.tables.iter().enumerate() {
            let ok = matches!(table.split_once('.'), Some((s, t)) if is_identifier(s) && is_identifier(t));
            if !ok {
                errors.push(invalid(
                    format!("tables[{i}]"),
                    format!("`{table}` is not `schema.table`"),
                    "e.g. public.claims",
                ));
            }
        }
        if self.snapshot_chunk_rows == 0 {
            errors.push(invalid(
                "snapshot_chunk_rows".into(),
                "must be at least 1".into(),
                "10000 is a good start",
            ));
        }
        errors
    }
}
