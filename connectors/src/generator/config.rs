use chrono::NaiveDate;

/// What `strata generate` writes. Every field has a CLI flag of the same name.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    pub members: u32,
    pub providers: u32,
    /// Claims written by the bulk backfill (service dates spread over `years`).
    pub claims: u32,
    /// Claims arriving after the backfill, with their lifecycle as updates and deletes.
    pub stream_claims: u32,
    /// New claims per second in the streaming phase; `None` writes as fast as possible.
    pub rate: Option<f64>,
    /// Share of claims that are planted anomalies, 0 to 1.
    pub anomaly_share: f64,
    pub seed: u64,
    /// Service dates spread over this many years back from `today`.
    pub years: u32,
    /// The generator's "now": fixed so a seed always gives the same data.
    pub today: NaiveDate,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            members: 2_000,
            providers: 200,
            claims: 20_000,
            stream_claims: 0,
            rate: None,
            anomaly_share: 0.05,
            seed: 42,
            years: 3,
            today: chrono::Utc::now().date_naive(),
        }
    }
}

/// Options that contradict each other; reported before anything is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("--members must be at least 1 (claims need members)")]
    NoMembers,
    #[error("--providers must be at least 1 (claims need providers)")]
    NoProviders,
    #[error("--rate must be a positive number of claims per second (got {0}); leave it out to write as fast as possible")]
    BadRate(f64),
    #[error("--anomaly-share must be between 0 and 1 (got {0})")]
    BadShare(f64),
    #[error("--years must be between 1 and 30 (got {0})")]
    BadYears(u32),
    #[error("velocity bursts need at least 12 providers (got {0}); raise --providers or set --anomaly-share 0")]
    TooFewProvidersForAnomalies(u32),
}

impl GeneratorConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.members == 0 {
            return Err(ConfigError::NoMembers);
        }
        if self.providers == 0 {
            return Err(ConfigError::NoProviders);
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::BadRate(rate));
            }
        }
        if !(0.0..=1.0).contains(&self.anomaly_share) || self.anomaly_share.is_nan() {
            return Err(ConfigError::BadShare(self.anomaly_share));
        }
        if !(1..=30).contains(&self.years) {
            return Err(ConfigError::BadYears(self.years));
        }
        if self.anomaly_share > 0.0 && self.providers < 12 {
            return Err(ConfigError::TooFewProvidersForAnomalies(self.providers));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contradictions_are_refused() {
        let ok = GeneratorConfig::default();
        assert!(ok.check().is_ok());
        let bad = [
            GeneratorConfig {
                members: 0,
                ..ok.clone()
            },
            GeneratorConfig {
                rate: Some(0.0),
                ..ok.clone()
            },
            GeneratorConfig {
                rate: Some(f64::NAN),
                ..ok.clone()
            },
            GeneratorConfig {
                anomaly_share: 1.5,
                ..ok.clone()
            },
            GeneratorConfig {
                anomaly_share: -0.1,
                ..ok.clone()
            },
            GeneratorConfig {
                years: 0,
                ..ok.clone()
            },
            GeneratorConfig {
                providers: 3,
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(config.check().is_err(), "{config:?}");
        }
    }
}
