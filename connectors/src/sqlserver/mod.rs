//! SQL Server CDC source: reads `cdc.fn_cdc_get_all_changes_*` through tiberius.
//!
//! `lsn` and `stream` hold the LSN, offset and ordering logic (tested without a server);
//! the TDS side sits behind [`stream::CdcReader`].

mod config;
pub mod lsn;
pub mod reader;
pub mod stream;
pub mod values;

pub use config::SqlServerSourceConfig;

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
