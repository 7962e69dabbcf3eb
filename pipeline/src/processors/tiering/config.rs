use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::topology::units::Duration;
use crate::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TieringConfig {
    /// Column of the claim whose age decides its tier.
    #[serde(default = "default_age_field")]
    pub age_field: String,
    /// Claims younger than this are hot.
    #[serde(default = "default_hot")]
    pub hot_max_age: Duration,
    /// Claims younger than this (and not hot) are warm; older ones are cold.
    #[serde(default = "default_warm")]
    pub warm_max_age: Duration,
    /// What happens to sensitive columns on their way to the cloud tiers.
    #[serde(default)]
    pub pii: PiiPolicy,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiPolicy {
    #[serde(default)]
    pub mode: PiiMode,
    /// Key id written into encrypted events (`encrypt` mode).
    #[serde(default)]
    pub key_id: Option<String>,
    /// File holding the 32-byte AES-256-GCM key (`encrypt` mode), or the tokenisation secret.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Or the environment variable holding it (64 hex digits), instead of `key_file`.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Keys rotated out: they no longer encrypt, but values written under their id still
    /// decrypt (`strata pii decrypt`).
    #[serde(default)]
    pub retired_keys: Vec<RetiredKey>,
}

/// A key that encrypted earlier values, by its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredKey {
    pub id: String,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub key_env: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiMode {
    /// Sensitive columns are removed before the cloud tiers.
    #[default]
    Drop,
    /// Replaced by a keyed hash, so joins still work.
    Tokenize,
    /// Encrypted with AES-256-GCM; the key id travels with the event.
    Encrypt,
}

fn default_age_field() -> String {
    "service_date_from".into()
}
fn default_hot() -> Duration {
    Duration(std::time::Duration::from_secs(90 * 86_400))
}
fn default_warm() -> Duration {
    Duration(std::time::Duration::from_secs(365 * 86_400))
}

impl TieringConfig {
    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        if self.hot_max_age >= self.warm_max_age {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "warm_max_age".into(),
                message: format!(
                    "warm_max_age ({}) must be longer than hot_max_age ({})",
                    self.warm_max_age, self.hot_max_age
                ),
                hint: Some("the defaults are 90d and 365d".into()),
            });
        }
        let sources = |file: &Option<PathBuf>, env: &Option<String>| {
            usize::from(file.is_some()) + usize::from(env.is_some())
        };
        match sources(&self.pii.key_file, &self.pii.key_env) {
            0 if self.pii.mode != PiiMode::Drop => errors.push(SettingsError {
                kind: DiagnosticKind::MissingField,
                path: "pii.key_file".into(),
                message: "pii modes `tokenize` and `encrypt` need a `key_file` or a `key_env`"
                    .into(),
                hint: Some(
                    "point key_file at a file with 32 random bytes, readable only by Strata".into(),
                ),
            }),
            2 => errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "pii.key_env".into(),
                message: "give the key as `key_file` or as `key_env`, not both".into(),
                hint: None,
            }),
            _ => {}
        }
        for (i, retired) in self.pii.retired_keys.iter().enumerate() {
            if sources(&retired.key_file, &retired.key_env) != 1 {
                errors.push(SettingsError {
                    kind: DiagnosticKind::InvalidValue,
                    path: format!("pii.retired_keys[{i}]"),
                    message: format!(
                        "retired key `{}` needs exactly one of `key_file` and `key_env`",
                        retired.id
                    ),
                    hint: None,
                });
            }
            if Some(&retired.id) == self.pii.key_id.as_ref() {
                errors.push(SettingsError {
                    kind: DiagnosticKind::InvalidValue,
                    path: format!("pii.retired_keys[{i}].id"),
                    message: format!(
                        "`{}` is the active key_id; a retired key needs its own id",
                        retired.id
                    ),
                    hint: Some("give the new key a new key_id and list the old one here".into()),
                });
            }
        }
        if self.pii.mode == PiiMode::Encrypt && self.pii.key_id.is_none() {
            errors.push(SettingsError {
                kind: DiagnosticKind::MissingField,
                path: "pii.key_id".into(),
                message: "pii mode `encrypt` needs a `key_id` to write into events".into(),
                hint: None,
            });
        }
        errors
    }
}
