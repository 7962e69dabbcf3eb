//! The `strata` binary's own parts: the component registration point and the schema
//! registry server. Everything else lives in `strata-pipeline` and `strata-connectors`.

pub mod bench;
pub mod components;
pub mod registry;
