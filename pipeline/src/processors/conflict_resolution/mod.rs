//! Conflict resolution: replicas that both write converge on the same state.

mod config;
pub mod merge;
mod processor;
#[cfg(test)]
mod tests;

pub use config::{ConflictConfig, FieldGroup, Policy, TablePolicy};
pub use processor::ConflictResolution;

use crate::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<ConflictConfig> {
    TypedKind {
        name: "conflict_resolution",
        role: Role::Processor,
        summary:
            "merges changes from cloud and on-prem replicas deterministically; audits each conflict",
        ports: |_| Ports {
            named: vec!["audit".into()],
        },
        check: ConflictConfig::check,
    }
}
