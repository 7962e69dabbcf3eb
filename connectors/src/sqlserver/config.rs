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
    /// Require TLS to the server.
    #[serde(default = "default_true")]
    pub encrypt: bool,
    /// Accept the server's certificate without checking it (test servers only).
    #[serde(default)]
    pub trust_server_certificate: bool,
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
