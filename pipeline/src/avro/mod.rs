//! Avro events in the Confluent wire format: the schemas in `schemas/`, the column type
//! mapping shared by the sources, and the cached encoder/decoder.

mod codec;
pub mod plan;
mod registry_client;
pub mod schemas;
pub mod types;
pub mod wire;

pub use codec::{Codec, CodecError, Decoded, Writer};
pub use registry_client::{RegistryClient, RegistryClientError};
