//! Dead letters, and their notices on the audit topic.
//!
//! A record a processor or sink cannot decode, process or store goes whole — key and
//! value bytes as read — to the region's dead-letter topic, with headers that say where
//! it came from and why. A notice of it, the same facts as a `strata.ops.DeadLetter`
//! Avro record but without the bytes (they may hold PII), goes to the region's audit
//! topic beside the conflicts resolved, so one topic tells what the pipeline refused or
//! overrode.
//!
//! Both are sent, and acknowledged, before the input's offset is committed: a crash in
//! between sends them again with the same key (the input's topic/partition/offset), so
//! an auditor can drop repeats.

use apache_avro::types::Value;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::Message;

use crate::avro::schemas::{DEAD_LETTER, STRING_KEY};
use crate::avro::{Codec, CodecError};

/// Where the record failed (the `Stage` enum of `schemas/dead_letter.avsc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Decode,
    Process,
    Store,
}

impl Stage {
    fn avro(self) -> Value {
        match self {
            Stage::Decode => Value::Enum(0, "DECODE".into()),
            Stage::Process => Value::Enum(2, "PROCESS".into()),
            Stage::Store => Value::Enum(3, "STORE".into()),
        }
    }
}

/// One record refused by `component`.
pub(crate) struct Letter<'a> {
    pub component: &'a str,
    pub stage: Stage,
    /// Stable error code, e.g. `wire.bad_magic`.
    pub code: &'a str,
    pub error: &'a str,
    pub message: &'a OwnedMessage,
}

impl Letter<'_> {
    /// The dead-letter record's headers.
    pub fn headers(&self) -> OwnedHeaders {
        let m = self.message;
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        [
            ("strata.component", self.component),
            ("strata.error.code", self.code),
            ("strata.error", self.error),
            ("strata.input.topic", m.topic()),
            ("strata.input.partition", &partition),
            ("strata.input.offset", &offset),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        })
    }

    /// The notice for the audit topic, encoded: (key, value).
    pub async fn notice(
        &self,
        codec: &Codec,
        audit_topic: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), CodecError> {
        let m = self.message;
        let key = Value::String(format!("{}/{}/{}", m.topic(), m.partition(), m.offset()));
        let some = |v: Value| Value::Union(1, Box::new(v));
        let none = || Value::Union(0, Box::new(Value::Null));
        let value = Value::Record(vec![
            ("component".into(), Value::String(self.component.into())),
            ("stage".into(), self.stage.avro()),
            ("error_kind".into(), Value::String(self.code.into())),
            ("error".into(), Value::String(self.error.into())),
            ("topic".into(), some(Value::String(m.topic().into()))),
            ("partition".into(), some(Value::Int(m.partition()))),
            ("offset".into(), some(Value::Long(m.offset()))),
            ("key".into(), none()),
            ("value".into(), none()),
            (
                "ts_ms".into(),
                Value::TimestampMillis(m.timestamp().to_millis().unwrap_or_default()),
            ),
        ]);
        let key_writer = codec.register_on_topic(audit_topic, STRING_KEY).await?;
        let value_writer = codec.register_on_topic(audit_topic, DEAD_LETTER).await?;
        Ok((key_writer.encode(&key)?, value_writer.encode(&value)?))
    }
}
