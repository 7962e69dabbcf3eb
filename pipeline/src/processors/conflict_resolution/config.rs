use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictConfig {
    /// The site this deployment writes as (e.g. `on-prem`, `cloud`); part of every HLC stamp.
    pub origin: String,
    /// Policy for tables and fields not listed in `tables`.
    #[serde(default)]
    pub default_policy: Policy,
    /// Per-table policies, keyed by `schema.table`.
    #[serde(default)]
    pub tables: BTreeMap<String, TablePolicy>,
    /// Columns that choose the output partition, first one a row has wins; rows with none
    /// keep their input partition. The default co-locates a member's claims, policies and
    /// member record for claim analysis.
    #[serde(default = "default_partition_by")]
    pub partition_by: Vec<String>,
}

fn default_partition_by() -> Vec<String> {
    vec!["member_id".into()]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The change with the greater (HLC, origin) wins.
    #[default]
    LastWriterWins,
    /// The owner site of a field group wins over others for those fields.
    SourcePriority,
    /// Fields changed by only one side are merged; the rest falls back to last-writer-wins.
    FieldMerge,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablePolicy {
    #[serde(default)]
    pub policy: Policy,
    /// Named groups of fields with their own owner.
    #[serde(default)]
    pub field_groups: BTreeMap<String, FieldGroup>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldGroup {
    pub fields: Vec<String>,
    /// The site that owns these fields under `source_priority`.
    pub owner: String,
}

impl ConflictConfig {
    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        if self.origin.trim().is_empty() {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "origin".into(),
                message: "origin must name this site".into(),
                hint: Some("e.g. on-prem or cloud".into()),
            });
        }
        for (table, policy) in &self.tables {
            if policy.policy == Policy::SourcePriority && policy.field_groups.is_empty() {
                errors.push(SettingsError {
                    kind: DiagnosticKind::MissingField,
                    path: format!("tables.{table}.field_groups"),
                    message: "`source_priority` needs field groups with an owner".into(),
                    hint: Some("e.g. field_groups: { clinical: { fields: [diagnosis_codes], owner: on-prem } }".into()),
                });
            }
            let mut seen = BTreeMap::new();
            for (group, g) in &policy.field_groups {
                for field in &g.fields {
                    if let Some(other) = seen.insert(field.as_str(), group.as_str()) {
                        errors.push(SettingsError {
                            kind: DiagnosticKind::InvalidValue,
                            path: format!("tables.{table}.field_groups.{group}"),
                            message: format!(
                                "field `{field}` is in two groups (`{other}` and `{group}`)"
                            ),
                            hint: Some("a field belongs to at most one group".into()),
                        });
                    }
                }
            }
        }
        errors
    }
}
