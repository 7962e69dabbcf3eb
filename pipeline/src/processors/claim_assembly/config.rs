use serde::{Deserialize, Serialize};

use crate::topology::units::Duration;
use crate::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimAssemblyConfig {
    /// Table of claim headers, `schema.table`.
    #[serde(default = "default_claims")]
    pub claims_table: String,
    /// Table of claim lines, `schema.table`.
    #[serde(default = "default_lines")]
    pub lines_table: String,
    /// Column of both tables naming the claim.
    #[serde(default = "default_claim_column")]
    pub claim_column: String,
    /// Column that picks the output partition: of the header for claims and their lines,
    /// of the row itself for every other table (rows without it keep their partition).
    #[serde(default = "default_partition_by")]
    pub partition_by: String,
    /// How long (in event time) a line waits for its claim. After that it is sent on in
    /// its own partition, where claim analysis rejects it to the dead-letter topic with
    /// the reason: a line must not wait forever in silence (its claim may sit in another
    /// partition when the input is not partitioned by claim).
    #[serde(default = "default_line_wait")]
    pub line_wait: Duration,
}

fn default_line_wait() -> Duration {
    Duration(std::time::Duration::from_secs(86_400))
}

fn default_claims() -> String {
    "public.claims".into()
}
fn default_lines() -> String {
    "public.claim_lines".into()
}
fn default_claim_column() -> String {
    "claim_id".into()
}
fn default_partition_by() -> String {
    "member_id".into()
}

impl ClaimAssemblyConfig {
    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        for (path, table) in [
            ("claims_table", &self.claims_table),
            ("lines_table", &self.lines_table),
        ] {
            if table
                .split_once('.')
                .is_none_or(|(s, t)| s.is_empty() || t.is_empty())
            {
                errors.push(SettingsError {
                    kind: DiagnosticKind::InvalidValue,
                    path: path.into(),
                    message: format!("`{table}` is not `schema.table`"),
                    hint: Some("e.g. public.claim_lines".into()),
                });
            }
        }
        if self.claims_table == self.lines_table {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "lines_table".into(),
                message: "the lines table is the claims table".into(),
                hint: Some("name the table of claim lines".into()),
            });
        }
        errors
    }
}
