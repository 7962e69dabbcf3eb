//! strata-connectors: CDC sources (PostgreSQL, SQL Server) and the hot, warm and cold sinks.

pub mod emitter;
pub mod envelope;
pub mod generator;
pub mod pg_connection;
pub mod postgres;
pub mod sinks;
pub mod source_state;
pub mod sqlserver;
