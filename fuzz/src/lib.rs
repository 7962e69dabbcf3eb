//! The parsers of external bytes, compiled from their source files for fuzzing:
//! pgoutput messages, Avro event bodies (the compiled decoding plan and the Confluent
//! framing), topology YAML, the SQL Server source's stored offsets, and the row values
//! both sources read (PostgreSQL's text format, tiberius's decoded columns) to Avro, by
//! the catalog's column types.

#[path = "../../connectors/src/postgres/pgoutput.rs"]
pub mod pgoutput;

#[path = "../../connectors/src/sqlserver/lsn.rs"]
pub mod lsn;

#[path = "../../pipeline/src/avro/plan.rs"]
pub mod avro_plan;
#[path = "../../pipeline/src/avro/wire.rs"]
pub mod avro_wire;

#[path = "../../pipeline/src/secret.rs"]
pub mod secret;

#[path = "../../pipeline/src/runtime/window.rs"]
mod window;
/// What the topology module needs of the runtime.
pub mod runtime {
    pub use super::window::InputWindow;
}

#[path = "../../pipeline/src/topology/mod.rs"]
pub mod topology;

// The connectors' sources name the pipeline crate; here its modules are this crate's.
extern crate self as strata_pipeline;

#[path = "../../pipeline/src/avro/types.rs"]
pub mod avro_types;
#[path = "../../connectors/src/postgres/values.rs"]
pub mod postgres_values;
#[path = "../../connectors/src/sqlserver/values.rs"]
pub mod sqlserver_values;

/// The module paths those sources use.
pub mod avro {
    pub use super::avro_types as types;
}
pub mod postgres {
    pub use super::postgres_values as values;
}
pub mod sqlserver {
    pub use super::sqlserver_values as values;
}

/// Asserts that `value`, mapped for `column` from `input`, fits the schema the sources
/// register for that column.
pub fn assert_fits_column(
    column: &avro_types::Column,
    value: apache_avro::types::Value,
    input: &dyn std::fmt::Debug,
) {
    let schema = serde_json::json!({
        "type": "record",
        "name": "row",
        "fields": [column.avro_field()],
    });
    let schema = apache_avro::Schema::parse(&schema).expect("the column's schema parses");
    let row = apache_avro::types::Value::Record(vec![(column.name.clone(), value)]);
    assert!(
        row.validate(&schema),
        "{input:?} gave {row:?}, which does not fit {schema:?}"
    );
}
