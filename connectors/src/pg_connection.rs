//! Connection settings for PostgreSQL, shared by the CDC source and the hot and warm sinks.

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use strata_pipeline::secret::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgConnection {
    /// `postgres://user@host:port/db`; put the password in `password`, not here.
    pub url: String,
    /// Password, usually `${PGPASSWORD}`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `disable`, `prefer` or `require` / `verify-ca` / `verify-full`.
    #[serde(default = "default_ssl_mode")]
    pub ssl_mode: String,
}

fn default_ssl_mode() -> String {
    "prefer".into()
}

#[derive(Debug, thiserror::Error)]
pub enum PgConnectionError {
    #[error("`{url}` is not a PostgreSQL URL: {source}; write postgres://user@host:port/database")]
    Url {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("unknown ssl_mode `{0}`; use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
}

impl PgConnection {
    pub fn options(&self) -> Result<PgConnectOptions, PgConnectionError> {
        let mut options: PgConnectOptions =
            self.url.parse().map_err(|source| PgConnectionError::Url {
                url: self.url.clone(),
                source,
            })?;
        if let Some(password) = &self.password {
            options = options.password(password.expose());
        }
        let mode = self
            .ssl_mode
            .parse::<PgSslMode>()
            .map_err(|_| PgConnectionError::SslMode(self.ssl_mode.clone()))?;
        Ok(options.ssl_mode(mode))
    }

    /// A settings problem as the topology loader reports it.
    pub fn check(&self, path: &str) -> Option<strata_pipeline::topology::SettingsError> {
        self.options()
            .err()
            .map(|e| strata_pipeline::topology::SettingsError {
                kind: strata_pipeline::topology::DiagnosticKind::InvalidValue,
                path: path.into(),
                message: e.to_string(),
                hint: None,
            })
    }
}
