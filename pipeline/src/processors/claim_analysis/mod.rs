//! Claim analysis: validation, classification and scoring with reasons.

mod config;
mod lines;
mod member;
mod processor;
pub mod rules;
#[cfg(test)]
mod tests;

pub use config::{ClaimAnalysisConfig, RoutingThresholds};
pub use processor::ClaimAnalysis;

use crate::topology::{Ports, Role, TypedKind};

pub fn kind() -> TypedKind<ClaimAnalysisConfig> {
    TypedKind {
        name: "claim_analysis",
        role: Role::Processor,
        summary:
            "validates, classifies and scores claims; routes them to approve, review or investigate",
        ports: |_| Ports::default(),
        check: ClaimAnalysisConfig::check,
    }
}
