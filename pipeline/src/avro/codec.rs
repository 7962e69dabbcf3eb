//! Encoding and decoding of Avro events in the Confluent wire format, with schemas cached
//! by subject and by id.
//!
//! Steady state makes no HTTP calls: [`Codec::register`] asks the registry once per
//! (subject, schema) and returns a [`Writer`] that encodes synchronously; [`Codec::decode`]
//! asks the registry once per unseen schema id. Parsed schemas and their resolved names
//! live for the whole process (there are a handful per table), which is what lets a
//! `Writer` and the cached readers borrow them without locks on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use super::plan::Plan;
use super::registry_client::{RegistryClient, RegistryClientError};
use super::wire::{self, WireError};
use crate::topology::RegistrySettings;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("schema id {id} is unknown to the registry at {url}; the record was written against another registry, or its schema was deleted")]
    UnknownSchemaId { id: u32, url: String },
    #[error("the bytes do not match schema id {id}: {detail}")]
    Mismatch { id: u32, detail: String },
    #[error("the value does not match the schema of subject `{subject}`: {source}")]
    Encode {
        subject: String,
        #[source]
        source: apache_avro::Error,
    },
    #[error("schema for subject `{subject}` is not valid Avro: {detail}")]
    InvalidSchema { subject: String, detail: String },
    #[error("{0}; to let this table go on anyway, set `schema_registry.allow_incompatible: true` in the topology")]
    Incompatible(#[source] RegistryClientError),
    #[error(transparent)]
    Registry(RegistryClientError),
}

impl CodecError {
    /// Stable code for dead-letter headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CodecError::Wire(WireError::Truncated { .. }) => "wire.truncated",
            CodecError::Wire(WireError::BadMagic { .. }) => "wire.bad_magic",
            CodecError::UnknownSchemaId { .. } => "schema.unknown_id",
            CodecError::Mismatch { .. } => "schema.mismatch",
            CodecError::Encode { .. } => "encode.value_mismatch",
            CodecError::InvalidSchema { .. } => "schema.invalid",
            CodecError::Incompatible(_) => "schema.incompatible",
            CodecError::Registry(_) => "registry.failed",
        }
    }

    /// Whether the same call may succeed later (the registry was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::Registry(e) if e.is_transient())
    }
}

impl From<RegistryClientError> for CodecError {
    fn from(e: RegistryClientError) -> Self {
        match e {
            RegistryClientError::Incompatible { .. } => CodecError::Incompatible(e),
            RegistryClientError::Invalid {
                subject, detail, ..
            } => CodecError::InvalidSchema { subject, detail },
            other => CodecError::Registry(other),
        }
    }
}

/// Encodes values of one registered schema. Cheap to clone; encoding needs no lock.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<WriterInner>,
}

struct WriterInner {
    subject: String,
    id: u32,
    schema: &'static Schema,
    writer: GenericDatumWriter<'static>,
    /// The fast path, when the schema compiles (see [`Plan`]).
    plan: Option<Plan>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("subject", &self.inner.subject)
            .field("id", &self.inner.id)
            .finish()
    }
}

impl Writer {
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    pub fn schema(&self) -> &'static Schema {
        self.inner.schema
    }

    /// Appends the framed encoding of `value` to `out`.
    pub fn encode_into(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), CodecError> {
        wire::write_header(self.inner.id, out);
        if let Some(plan) = &self.inner.plan {
            let mark = out.len();
            if plan.encode(value, out).is_some() {
                return Ok(());
            }
            out.truncate(mark);
        }
        self.inner
            .writer
            .write_value_ref(out, value)
            .map(|_| ())
            .map_err(|source| CodecError::Encode {
                subject: self.inner.subject.clone(),
                source,
            })
    }

    pub fn encode(&self, value: &Value) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(value, &mut out)?;
        Ok(out)
    }
}

struct ReaderEntry {
    reader: GenericDatumReader<'static>,
    plan: Option<Plan>,
}

/// A decoded record: the writer's schema id, its schema and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub id: u32,
    pub value: Value,
}

pub struct Codec {
    registry: RegistryClient,
    allow_incompatible: bool,
    /// (subject, schema text) → writer.
    writers: RwLock<HashMap<(String, String), Writer>>,
    /// Schema text → the name [`Codec::register_on_topic`] puts in its subject.
    record_names: RwLock<HashMap<String, String>>,
    readers: RwLock<HashMap<u32, Arc<ReaderEntry>>>,
}

/// Parses `text` and keeps it for the life of the process (see the module docs).
fn leak_schema(subject: &str, text: &str) -> Result<&'static Schema, CodecError> {
    let schema = Schema::parse_str(text).map_err(|e| CodecError::InvalidSchema {
        subject: subject.into(),
        detail: e.to_string(),
    })?;
    Ok(Box::leak(Box::new(schema)))
}

impl Codec {
    pub fn new(settings: &RegistrySettings) -> Result<Self, CodecError> {
        Ok(Self {
            registry: RegistryClient::new(settings)?,
            allow_incompatible: settings.allow_incompatible,
            writers: RwLock::default(),
            record_names: RwLock::default(),
            readers: RwLock::default(),
        })
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// Registers `schema` for records of `topic` and returns its writer. One topic
    /// carries several record types (a source's tables; conflicts and dead-letter notices
    /// on the audit topic), so subjects follow TopicRecordNameStrategy:
    /// `<topic>-<record full name>` (a schema that is not a record: its type, `string`).
    pub async fn register_on_topic(&self, topic: &str, schema: &str) -> Result<Writer, CodecError> {
        let name = self.record_name(topic, schema)?;
        self.register(&format!("{topic}-{name}"), schema).await
    }

    /// The full name of `schema`'s record (a schema that is not a record: its type),
    /// parsed once per schema text.
    fn record_name(&self, topic: &str, schema: &str) -> Result<String, CodecError> {
        if let Some(name) = self
            .record_names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(schema)
        {
            return Ok(name.clone());
        }
        let parsed = Schema::parse_str(schema).map_err(|e| CodecError::InvalidSchema {
            subject: topic.into(),
            detail: e.to_string(),
        })?;
        let name = match &parsed {
            Schema::Record(r) => r.name.fullname(None),
            other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
        };
        self.record_names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(schema.to_string(), name.clone());
        Ok(name)
    }

    /// Registers `schema` under `subject` (once per process) and returns its writer.
    /// A schema the registry finds incompatible fails with [`CodecError::Incompatible`],
    /// unless the topology allows it: then the subject's compatibility is set to NONE
    /// and the schema registered, with a warning.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<Writer, CodecError> {
        let cache_key = (subject.to_string(), schema.to_string());
        if let Some(w) = self.read_writers().get(&cache_key) {
            return Ok(w.clone());
        }
        let parsed = leak_schema(subject, schema)?;
        let id = match self.registry.register(subject, schema).await {
            Err(e @ RegistryClientError::Incompatible { .. }) if self.allow_incompatible => {
                tracing::warn!(%subject, error = %e, "registering an incompatible schema because the topology allows it");
                self.registry
                    .set_subject_compatibility(subject, "NONE")
                    .await?;
                self.registry.register(subject, schema).await?
            }
            other => other?,
        };
        let writer = GenericDatumWriter::builder(parsed)
            .validate(false)
            .build()
            .map_err(|e| CodecError::InvalidSchema {
                subject: subject.into(),
                detail: e.to_string(),
            })?;
        let writer = Writer {
            inner: Arc::new(WriterInner {
                subject: subject.to_string(),
                id,
                schema: parsed,
                writer,
                plan: Plan::compile(parsed),
            }),
        };
        self.writers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cache_key, writer.clone());
        Ok(writer)
    }

    fn read_writers(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), Writer>> {
        self.writers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_reader(&self, id: u32) -> Option<Arc<ReaderEntry>> {
        self.readers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    async fn reader(&self, id: u32) -> Result<Arc<ReaderEntry>, CodecError> {
        if let Some(r) = self.cached_reader(id) {
            return Ok(r);
        }
        let text = self.registry.fetch(id).await.map_err(|e| match e {
            RegistryClientError::NotFound { id, url } => CodecError::UnknownSchemaId { id, url },
            other => CodecError::Registry(other),
        })?;
        let subject = format!("schema id {id}");
        let schema = leak_schema(&subject, &text)?;
        let reader =
            GenericDatumReader::builder(schema)
                .build()
                .map_err(|e| CodecError::InvalidSchema {
                    subject,
                    detail: e.to_string(),
                })?;
        let entry = Arc::new(ReaderEntry {
            reader,
            plan: Plan::compile(schema),
        });
        self.readers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry.clone());
        Ok(entry)
    }

    /// Decodes a framed record; fetches its schema only the first time its id is seen.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Decoded, CodecError> {
        let (id, payload) = wire::split(bytes)?;
        let reader = self.reader(id).await?;
        Self::decode_with(&reader, id, payload)
    }

    /// Decodes without any registry call; `None` when the schema id has not been seen yet.
    pub fn decode_cached(&self, bytes: &[u8]) -> Option<Result<Decoded, CodecError>> {
        let (id, payload) = match wire::split(bytes) {
            Ok(v) => v,
            Err(e) => return Some(Err(e.into())),
        };
        let reader = self.cached_reader(id)?;
        Some(Self::decode_with(&reader, id, payload))
    }

    fn decode_with(
        entry: &ReaderEntry,
        id: u32,
        mut payload: &[u8],
    ) -> Result<Decoded, CodecError> {
        if let Some(plan) = &entry.plan {
            let mut input = payload;
            if let Some(value) = plan.decode(&mut input).filter(|_| input.is_empty()) {
                return Ok(Decoded { id, value });
            }
        }
        let value = entry
            .reader
            .read_value(&mut payload)
            .map_err(|e| CodecError::Mismatch {
                id,
                detail: e.to_string(),
            })?;
        if !payload.is_empty() {
            return Err(CodecError::Mismatch {
                id,
                detail: format!("{} bytes left over after the record", payload.len()),
            });
        }
        Ok(Decoded { id, value })
    }
}
