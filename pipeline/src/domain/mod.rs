//! The claims domain as Strata sees it: which tables are reference data, which column
//! gives a row its age, and which columns are sensitive. Read from
//! `schemas/claims_domain.yaml`, the single place these facts are written down.

use std::collections::BTreeMap;

use serde::Deserialize;

const DOMAIN_FILE: &str = include_str!("../../../schemas/claims_domain.yaml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub tables: BTreeMap<String, TableFacts>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFacts {
    /// Reference data (members, providers, policies) is routed to every tier.
    pub reference: bool,
    /// The date column whose age decides the tier of a row.
    #[serde(default)]
    pub age_field: Option<String>,
    /// Columns that never reach the cloud tiers in clear.
    #[serde(default)]
    pub sensitive: Vec<String>,
}

impl Domain {
    /// The claims domain shipped with Strata.
    pub fn claims() -> &'static Domain {
        static DOMAIN: std::sync::OnceLock<Domain> = std::sync::OnceLock::new();
        DOMAIN.get_or_init(|| {
            serde_yaml_ng::from_str(DOMAIN_FILE)
                .expect("schemas/claims_domain.yaml is checked by a unit test")
        })
    }

    /// Facts of `table` (`schema.table`); SQL Server's `dbo` maps to `public`.
    pub fn table(&self, table: &str) -> Option<&TableFacts> {
        self.tables.get(table).or_else(|| {
            table
                .strip_prefix("dbo.")
                .and_then(|t| self.tables.get(&format!("public.{t}")))
        })
    }

    pub fn is_sensitive(&self, table: &str, column: &str) -> bool {
        self.table(table)
            .is_some_and(|t| t.sensitive.iter().any(|c| c == column))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_file_parses_and_marks_pii() {
        let d: Domain = serde_yaml_ng::from_str(DOMAIN_FILE).unwrap();
        assert!(d.tables["public.members"].reference);
        let domain = Domain::claims();
        assert!(domain.is_sensitive("public.members", "ssn"));
        assert!(domain.is_sensitive("dbo.claims", "diagnosis_codes"));
        assert!(!domain.is_sensitive("public.claims", "billed_amount"));
        assert_eq!(
            domain.table("public.claims").unwrap().age_field.as_deref(),
            Some("service_date_from")
        );
    }
}
