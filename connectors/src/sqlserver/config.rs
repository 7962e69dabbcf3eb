use serde::{Deserialize, Serialize};
use strata_pipeline::secret::Secret;
use strata_pipeline::topology::units::Duration;
use strata_pipeline::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlServerSourceConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: Secret,
    /// Captured tables as `schema.table`; each must have CDC enabled.
    pub tables: Vec<String>,
    /// Pause between polls of the change tables when the last poll found nothing.
    #[serde(default = "default_poll")]
    pub poll_interval: Duration,
    /// Most change events read per poll (an update's two images count once).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// What to do when no offset is stored, or the stored one is older than the changes
    /// SQL Server still keeps.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Require TLS to the server (tiberius encrypts by default; `false` only for servers
    /// that cannot do TLS).
    #[serde(default = "default_true")]
    pub encrypt: bool,
    /// Accept the server's certificate without checking it (test servers only).
    #[serde(default)]
    pub trust_server_certificate: bool,
    /// A PEM/DER CA certificate to check the server's certificate against, instead of
    /// the system's roots.
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// Connections kept to the server; one serves the polls, a second a snapshot.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a connection (TCP, TLS and login).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Longest wait for one query; a slower server counts as failing.
    #[serde(default = "default_query_timeout")]
    pub query_timeout: Duration,
    /// Retries after a failure wait 0.5 s, doubling up to this.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// Failures in a row after which the circuit opens: no connection is tried for
    /// `circuit_open_for`, then one trial decides.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    #[serde(default = "default_circuit_open_for")]
    pub circuit_open_for: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot the tables when no offset is stored; a stored offset older than the
    /// retained changes stops the source with an error.
    #[default]
    Initial,
    /// As `initial`, and snapshot again when the stored offset is older than the
    /// retained changes (the cleanup job ran past it).
    WhenNeeded,
    /// Never snapshot: start from the newest change when no offset is stored.
    Never,
}

fn default_port() -> u16 {
    1433
}
fn default_poll() -> Duration {
    Duration(std::time::Duration::from_millis(500))
}
fn default_true() -> bool {
    true
}
fn default_batch_size() -> usize {
    1000
}
fn default_pool_size() -> usize {
    2
}
fn default_connect_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(15))
}
fn default_query_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(60))
}
fn default_max_backoff() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}
fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_open_for() -> Duration {
    Duration(std::time::Duration::from_secs(60))
}

impl SqlServerSourceConfig {
    /// The tiberius client configuration for these settings.
    pub fn client_config(&self) -> tiberius::Config {
        let mut config = tiberius::Config::new();
        config.host(&self.host);
        config.port(self.port);
        config.database(&self.database);
        config.authentication(tiberius::AuthMethod::sql_server(
            &self.username,
            self.password.expose(),
        ));
        config.encryption(if self.encrypt {
            tiberius::EncryptionLevel::Required
        } else {
            tiberius::EncryptionLevel::NotSupported
        });
        if self.trust_server_certificate {
            config.trust_cert();
        } else if let Some(ca) = &self.ca_certificate {
            config.trust_cert_ca(ca);
        }
        config
    }

    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        if self.tables.is_empty() {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "tables".into(),
                message: "no tables to capture".into(),
                hint: Some("list tables as schema.table, e.g. dbo.claims".into()),
            });
        }
        let positive = [
            ("batch_size", self.batch_size as u64),
            ("pool_size", self.pool_size as u64),
            ("circuit_failures", u64::from(self.circuit_failures)),
        ];
        for (field, value) in positive {
            if value == 0 {
                errors.push(SettingsError {
                    kind: DiagnosticKind::InvalidValue,
                    path: field.into(),
                    message: format!("`{field}` must be at least 1"),
                    hint: None,
                });
            }
        }
        if self.trust_server_certificate && self.ca_certificate.is_some() {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "ca_certificate".into(),
                message: "`ca_certificate` and `trust_server_certificate` exclude each other"
                    .into(),
                hint: Some("keep `ca_certificate` to check the server's certificate".into()),
            });
        }
        if let Some(ca) = &self.ca_certificate {
            if !std::path::Path::new(ca).is_file() {
                errors.push(SettingsError {
                    kind: DiagnosticKind::InvalidValue,
                    path: "ca_certificate".into(),
                    message: format!("no file at `{ca}`"),
                    hint: Some("give the path of the CA certificate (PEM or DER)".into()),
                });
            }
        }
        for (i, table) in self.tables.iter().enumerate() {
            if !matches!(table.split_once('.'), Some((s, t)) if !s.is_empty() && !t.is_empty()) {
                errors.push(SettingsError {
                    kind: DiagnosticKind::InvalidValue,
                    path: format!("tables[{i}]"),
                    message: format!("`{table}` is not `schema.table`"),
                    hint: Some("e.g. dbo.claims".into()),
                });
            }
        }
        errors
    }
}
