//! Talks to a Confluent-compatible schema registry through `schema_registry_converter`.
//!
//! Only [`super::Codec`] calls this, and only on a cache miss: registering a schema the
//! process has not used yet, or fetching a schema id it has not seen yet.

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::topology::RegistrySettings;

#[derive(Debug, thiserror::Error)]
pub enum RegistryClientError {
    #[error("cannot read the registry CA file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid registry client settings: {0}")]
    Settings(String),
    #[error("schema id {id} is not in the registry at {url}")]
    NotFound { id: u32, url: String },
    #[error("the registry at {url} refused the schema for subject `{subject}` as incompatible: {detail}")]
    Incompatible {
        subject: String,
        url: String,
        detail: String,
    },
    #[error(
        "the registry at {url} rejected the schema for subject `{subject}` as invalid: {detail}"
    )]
    Invalid {
        subject: String,
        url: String,
        detail: String,
    },
    #[error("the registry at {url} failed: {detail}")]
    Failed {
        url: String,
        detail: String,
        retriable: bool,
    },
}

impl RegistryClientError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryClientError::Failed {
                retriable: true,
                ..
            }
        )
    }
}

pub struct RegistryClient {
    url: String,
    settings: SrSettings,
    http: reqwest::Client,
    auth: Option<(String, Option<String>)>,
}

fn describe(e: &SRCError) -> String {
    let text = match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    };
    with_causes(text, std::error::Error::source(e))
}

/// `text` followed by each cause in `source`'s chain it does not already say (a TLS
/// failure is only named deep in reqwest's chain).
fn with_causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Whether a failed call may succeed later by itself: the registry away or overloaded.
/// A certificate the client refuses does not heal on its own.
fn retriable(flagged: bool, detail: &str) -> bool {
    (flagged || detail.contains("error sending request")) && !detail.contains("certificate")
}

impl RegistryClient {
    pub fn new(settings: &RegistrySettings) -> Result<Self, RegistryClientError> {
        let url = settings.url.trim_end_matches('/').to_string();
        let ca = match &settings.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| RegistryClientError::CaFile {
                    path: path.display().to_string(),
                    source,
                })?;
                let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    RegistryClientError::Settings(format!("{}: {e}", path.display()))
                })?;
                Some(cert)
            }
            None => None,
        };
        let http_builder = || {
            let builder = reqwest::ClientBuilder::new().timeout(Duration::from_secs(30));
            match &ca {
                Some(cert) => builder.add_root_certificate(cert.clone()),
                None => builder,
            }
        };
        let mut builder = SrSettings::new_builder(url.clone());
        let auth = settings.username.as_ref().map(|u| {
            (
                u.clone(),
                settings.password.as_ref().map(|p| p.expose().to_string()),
            )
        });
        if let Some((user, password)) = &auth {
            builder.set_basic_authorization(user, password.as_deref());
        }
        let sr = builder
            .build_with(http_builder())
            .map_err(|e| RegistryClientError::Settings(describe(&e)))?;
        let http = http_builder()
            .build()
            .map_err(|e| RegistryClientError::Settings(e.to_string()))?;
        Ok(Self {
            url,
            settings: sr,
            http,
            auth,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `schema` under `subject` (idempotent) and returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryClientError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map(|r| r.id)
            .map_err(|e| {
                let detail = describe(&e);
                if detail.contains("409") || detail.contains("incompatible") {
                    RegistryClientError::Incompatible {
                        subject: subject.into(),
                        url: self.url.clone(),
                        detail,
                    }
                } else if detail.contains("42201") {
                    RegistryClientError::Invalid {
                        subject: subject.into(),
                        url: self.url.clone(),
                        detail,
                    }
                } else {
                    RegistryClientError::Failed {
                        url: self.url.clone(),
                        retriable: retriable(e.retriable, &detail),
                        detail,
                    }
                }
            })
    }

    /// The schema text of `id`.
    pub async fn fetch(&self, id: u32) -> Result<String, RegistryClientError> {
        get_schema_by_id(id, &self.settings)
            .await
            .map(|r| r.schema)
            .map_err(|e| {
                let detail = describe(&e);
                if detail.contains("40403") || detail.contains("404") {
                    RegistryClientError::NotFound {
                        id,
                        url: self.url.clone(),
                    }
                } else {
                    RegistryClientError::Failed {
                        url: self.url.clone(),
                        retriable: retriable(e.retriable, &detail),
                        detail,
                    }
                }
            })
    }

    /// Sets the compatibility level of one subject (`PUT /config/{subject}`).
    pub async fn set_subject_compatibility(
        &self,
        subject: &str,
        level: &str,
    ) -> Result<(), RegistryClientError> {
        let mut request = self
            .http
            .put(format!("{}/config/{subject}", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(serde_json::json!({ "compatibility": level }).to_string());
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, password.as_ref());
        }
        let failed = |detail: String, retriable| RegistryClientError::Failed {
            url: self.url.clone(),
            detail,
            retriable,
        };
        let response = request.send().await.map_err(|e| {
            let detail = with_causes(e.to_string(), std::error::Error::source(&e));
            let again = retriable(true, &detail);
            failed(detail, again)
        })?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Err(failed(
                format!("PUT /config/{subject}: {status} {body}"),
                status.is_server_error(),
            ))
        }
    }
}
