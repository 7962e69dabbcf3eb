//! Tiering: routes claims to the hot, warm or cold tier by age at event time.

mod config;
pub mod pii;
mod processor;
#[cfg(test)]
mod tests;

pub use config::{PiiMode, PiiPolicy, TieringConfig};
pub use processor::{Tier, Tiering};

use crate::topology::{Ports, Role, TypedKind};

/// Outputs of the tiering processor, one per tier plus tier moves.
pub const PORTS: [&str; 4] = ["hot", "warm", "cold", "moves"];

pub fn kind() -> TypedKind<TieringConfig> {
    TypedKind {
        name: "tiering",
        role: Role::Processor,
        summary: "routes claims to hot/warm/cold by age and moves them on as they age",
        ports: |_| Ports {
            named: PORTS.iter().map(|p| p.to_string()).collect(),
        },
        check: TieringConfig::check,
    }
}
