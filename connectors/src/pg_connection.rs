//! Connection settings for PostgreSQL, shared by the CDC source and the hot and warm sinks.

use std::path::PathBuf;

use pgwire_replication::config::TlsConfig;
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
    /// PEM file of the CA that signed the server's certificate (`verify-ca`,
    /// `verify-full`); without it the system's roots are used.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
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
    #[error("ssl_root_cert `{0}` is not a readable file; give the PEM file of the CA that signed the server's certificate")]
    RootCert(String),
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
        let options = options.ssl_mode(mode);
        Ok(match &self.ssl_root_cert {
            Some(path) if !path.is_file() => {
                return Err(PgConnectionError::RootCert(path.display().to_string()))
            }
            Some(path) => options.ssl_root_cert(path),
            None => options,
        })
    }

    /// The same TLS settings for the replication connection, which has its own client.
    pub fn replication_tls(&self) -> Result<TlsConfig, PgConnectionError> {
        self.options()?;
        let ca = self.ssl_root_cert.clone();
        Ok(match self.ssl_mode.as_str() {
            "disable" => TlsConfig::disabled(),
            "require" => TlsConfig::require(),
            "verify-ca" => TlsConfig::verify_ca(ca),
            "verify-full" => TlsConfig::verify_full(ca),
            _ => TlsConfig {
                mode: pgwire_replication::config::SslMode::Prefer,
                ..TlsConfig::default()
            },
        })
    }

    /// A settings problem as the topology loader reports it, at the field of the
    /// connection found under `path`.
    pub fn check(&self, path: &str) -> Option<strata_pipeline::topology::SettingsError> {
        self.options().err().map(|e| {
            let field = match e {
                PgConnectionError::Url { .. } => "url",
                PgConnectionError::SslMode(_) => "ssl_mode",
                PgConnectionError::RootCert(_) => "ssl_root_cert",
            };
            strata_pipeline::topology::SettingsError {
                kind: strata_pipeline::topology::DiagnosticKind::InvalidValue,
                path: format!("{path}.{field}"),
                message: e.to_string(),
                hint: None,
            }
        })
    }
}
