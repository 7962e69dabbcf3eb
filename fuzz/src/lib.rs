//! The parsers of external bytes, compiled from their source files for fuzzing:
//! pgoutput messages, Avro event bodies (the compiled decoding plan and the Confluent
//! framing), topology YAML and the SQL Server source's stored offsets.

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
