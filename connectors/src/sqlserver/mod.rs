//! SQL Server CDC source: reads `cdc.fn_cdc_get_all_changes_*` through tiberius.

mod config;

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
