//! `strata generate`: a synthetic, deterministic claims workload with planted anomalies.
//!
//! The same seed and `today` always give the same rows and labels: every random choice
//! comes from a seeded ChaCha generator, in a fixed order. Labels of planted anomalies go
//! to `generator.anomaly_labels`, a table the CDC source does not capture.

mod catalog;
mod config;
pub mod model;
mod writer;

pub use config::{ConfigError, GeneratorConfig};
pub use writer::{
    check_schema, connect, generate, migrate, GenerateError, Report, Start, POSTGRES_MIGRATION,
};

#[cfg(test)]
mod tests;
