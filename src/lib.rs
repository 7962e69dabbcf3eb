//! The `strata` binary's own parts: the component registration point, the schema registry
//! server and the `bench` scenarios. Everything else lives in `strata-pipeline` and
//! `strata-connectors`.

pub mod bench;
pub mod components;
pub mod registry;
pub mod replay;
