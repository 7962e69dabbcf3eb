//! strata-connectors: CDC sources (PostgreSQL, SQL Server) and the hot, warm and cold sinks.

pub mod generator;
pub mod pg_connection;
pub mod postgres;
pub mod sinks;
pub mod sqlserver;
