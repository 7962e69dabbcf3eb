//! SQL Server CDC source: reads `cdc.fn_cdc_get_all_changes_*` through tiberius.
//!
//! `lsn` and `stream` hold the LSN, offset and ordering logic (tested without a server);
//! the TDS side sits behind [`stream::CdcReader`] (`reader`, over connections from
//! `pool`); `source` is the adapter that runs it in a deployment, with `circuit`
//! deciding how long to wait after failures. `simulated` is a CDC database in memory
//! that answers like SQL Server, for tests and benchmarks on machines without one.

pub mod circuit;
mod config;
pub mod lsn;
pub mod pool;
pub mod reader;
pub mod simulated;
pub mod source;
pub mod stream;
pub mod values;

pub use config::{SnapshotMode, SqlServerSourceConfig};

use strata_pipeline::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<SqlServerSourceConfig> {
    TypedKind {
        name: "sqlserver",
        role: Role::Source,
        summary: "captures SQL Server CDC change tables through tiberius",
        ports: |_| Ports::default(),
        check: SqlServerSourceConfig::check,
    }
}
