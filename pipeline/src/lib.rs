//! strata-pipeline: the event model, topology files, the runtime and the processors.

pub mod avro;
pub mod domain;
pub mod kafka;
pub mod ops;
pub mod processors;
pub mod runtime;
pub mod secret;
pub mod state;
pub mod topology;
