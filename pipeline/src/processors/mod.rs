//! Stateful processors, one folder each with its config, logic and tests.

pub mod change;
pub mod claim_analysis;
pub mod conflict_resolution;
pub mod tiering;
