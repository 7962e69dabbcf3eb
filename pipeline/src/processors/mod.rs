//! Stateful processors, one folder each with its config, logic and tests.

pub mod change;
pub mod claim_analysis;
pub mod claim_assembly;
pub mod conflict_resolution;
pub mod testing;
pub mod tiering;
