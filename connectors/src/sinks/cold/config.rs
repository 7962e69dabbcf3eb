use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_pipeline::secret::Secret;
use strata_pipeline::topology::units::{Duration, Size};
use strata_pipeline::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdSinkConfig {
    /// Root of the archive: a local directory, `file:///dir`, or `s3://bucket/prefix`
    /// for an S3-compatible object store.
    pub path: String,
    /// S3 settings, with object_store's keys (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, `aws_virtual_hosted_style_request` …). Unset ones come from the
    /// `AWS_*` environment variables.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// S3 credentials, when not in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// A file is closed when it reaches this size (within one block of 1,000 records)…
    #[serde(default = "default_roll_size", alias = "max_file_size")]
    pub roll_size: Size,
    /// …or when its first record has waited this long (the sink's batch interval).
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

fn default_roll_size() -> Size {
    Size(64 << 20)
}
fn default_roll() -> Duration {
    Duration(std::time::Duration::from_secs(60))
}

impl ColdSinkConfig {
    /// The object-store options with the credentials added.
    pub fn store_options(&self) -> BTreeMap<String, String> {
        let mut options = self.options.clone();
        if let Some(id) = &self.access_key_id {
            options.insert("aws_access_key_id".into(), id.clone());
        }
        if let Some(secret) = &self.secret_access_key {
            options.insert("aws_secret_access_key".into(), secret.expose().to_string());
        }
        options
    }

    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        if self.options.keys().any(|k| k.contains("secret")) {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "options".into(),
                message: "secrets do not belong in options, which may be printed".into(),
                hint: Some("use secret_access_key: ${AWS_SECRET_ACCESS_KEY}".into()),
            });
        }
        if self.path.is_empty() {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "path".into(),
                message: "the archive path is empty".into(),
                hint: Some("e.g. ./.strata/archive/${region}".into()),
            });
        }
        if self.roll_size.0 < 4096 {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "roll_size".into(),
                message: "roll_size must be at least 4KiB: a file must hold a block of records"
                    .into(),
                hint: Some("64MiB, the default, suits object stores".into()),
            });
        }
        if self.roll_interval.0.is_zero() {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "roll_interval".into(),
                message: "roll_interval must be longer than zero: every record would be a file".into(),
                hint: Some("60s, the default; longer for fewer files, shorter for a quicker eviction from warm and hot".into()),
            });
        }
        errors
    }
}
