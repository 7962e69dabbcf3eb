use serde::{Deserialize, Serialize};

use crate::topology::units::Duration;
use crate::topology::{DiagnosticKind, SettingsError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimAnalysisConfig {
    /// Window in which a claim with the same member, provider and procedure is a near duplicate.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// Sliding window of the member and provider velocity features.
    #[serde(default = "default_velocity_window")]
    pub velocity_window: Duration,
    /// Claims per member within `velocity_window` above which velocity is a reason.
    #[serde(default = "default_member_velocity")]
    pub member_velocity_limit: u32,
    /// Claims per provider within `velocity_window` above which velocity is a reason,
    /// counted per partition: claims are partitioned by member, so each partition sees
    /// its share of a provider's claims (with 4 partitions, set a quarter of the rate
    /// you mean).
    #[serde(default = "default_provider_velocity")]
    pub provider_velocity_limit: u32,
    /// z-score of ln(amount) against the provider's running history above which an amount
    /// is an outlier.
    #[serde(default = "default_outlier_z")]
    pub outlier_z: f64,
    /// z-score of ln(line charge) against the same procedure's history above which a line
    /// is an outlier (procedures' charges vary less than providers', so the bar is higher).
    #[serde(default = "default_procedure_outlier_z")]
    pub procedure_outlier_z: f64,
    /// How far a provider's share of the two highest E&M levels may exceed its peers'
    /// before its high-level lines are flagged as upcoding (0.25 = 25 points).
    #[serde(default = "default_upcoding_drift")]
    pub upcoding_drift: f64,
    /// How long (in event time) a claim waits for its member's first policy before it is
    /// analysed without one (and so flagged `COVERAGE_INACTIVE`).
    #[serde(default = "default_coverage_wait")]
    pub coverage_wait: Duration,
    #[serde(default)]
    pub thresholds: RoutingThresholds,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingThresholds {
    /// Score from which a claim goes to manual review.
    pub review: f64,
    /// Score from which a claim goes to the investigation unit.
    pub investigate: f64,
}

impl Default for RoutingThresholds {
    fn default() -> Self {
        Self {
            review: 0.3,
            investigate: 0.7,
        }
    }
}

fn default_duplicate_window() -> Duration {
    Duration(std::time::Duration::from_secs(30 * 86_400))
}
fn default_velocity_window() -> Duration {
    Duration(std::time::Duration::from_secs(86_400))
}
fn default_member_velocity() -> u32 {
    10
}
fn default_provider_velocity() -> u32 {
    200
}
fn default_coverage_wait() -> Duration {
    Duration(std::time::Duration::from_secs(86_400))
}
fn default_upcoding_drift() -> f64 {
    0.25
}
fn default_procedure_outlier_z() -> f64 {
    4.0
}
fn default_outlier_z() -> f64 {
    3.0
}

impl ClaimAnalysisConfig {
    pub fn check(&self) -> Vec<SettingsError> {
        let mut errors = Vec::new();
        let t = &self.thresholds;
        let in_range = |x: f64| (0.0..=1.0).contains(&x);
        if !in_range(t.review) || !in_range(t.investigate) || t.review >= t.investigate {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "thresholds".into(),
                message: format!(
                    "thresholds must satisfy 0 <= review < investigate <= 1 (got review {}, investigate {})",
                    t.review, t.investigate
                ),
                hint: Some("e.g. review: 0.3, investigate: 0.7".into()),
            });
        }
        if self.outlier_z <= 0.0 || self.procedure_outlier_z <= 0.0 {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "outlier_z".into(),
                message: "outlier_z and procedure_outlier_z must be positive".into(),
                hint: Some("3.5 to 5 are usual".into()),
            });
        }
        if !(0.0..1.0).contains(&self.upcoding_drift) || self.upcoding_drift == 0.0 {
            errors.push(SettingsError {
                kind: DiagnosticKind::InvalidValue,
                path: "upcoding_drift".into(),
                message: format!(
                    "upcoding_drift must be in (0, 1), got {}",
                    self.upcoding_drift
                ),
                hint: Some("0.25 flags a provider 25 points above its peers".into()),
            });
        }
        errors
    }
}
