//! Claim assembly: brings each claim's lines to the partition of its member, after the
//! claim, so that claim analysis sees a claim and its lines together.

mod config;
mod processor;
#[cfg(test)]
mod tests;

pub use config::ClaimAssemblyConfig;
pub use processor::ClaimAssembly;

use crate::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<ClaimAssemblyConfig> {
    TypedKind {
        name: "claim_assembly",
        role: Role::Processor,
        summary: "co-locates claim lines with their claim's member, each line after its claim",
        ports: |_| Ports::default(),
        check: ClaimAssemblyConfig::check,
    }
}
