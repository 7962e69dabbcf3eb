//! The connector's SQL Server CDC modules, compiled on their own (they depend only on
//! tiberius and futures) so that tests/wire.rs can drive them against a TDS stand-in.

#[path = "../../../connectors/src/sqlserver/lsn.rs"]
pub mod lsn;
#[path = "../../../connectors/src/sqlserver/reader.rs"]
pub mod reader;
#[path = "../../../connectors/src/sqlserver/stream.rs"]
pub mod stream;
