//! The SQL Server migration is valid T-SQL: every batch parses with sqlparser's MS SQL
//! dialect. (It runs for real in docker/, where a SQL Server exists.)

use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;

const SQLSERVER: &str = include_str!("../sql/claims/sqlserver/001_claims.sql");

/// Batches separated by `GO` lines, as sqlcmd splits them.
fn batches(script: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in script.lines() {
        if line.trim().eq_ignore_ascii_case("GO") {
            out.push(String::new());
        } else if !line.trim_start().starts_with("--") {
            let last = out.last_mut().expect("never empty");
            last.push_str(line);
            last.push('\n');
        }
    }
    out.into_iter().filter(|b| !b.trim().is_empty()).collect()
}

#[test]
fn every_tsql_batch_parses() {
    let batches = batches(SQLSERVER);
    assert!(batches.len() >= 15, "tables, indexes and CDC enablement");
    for (i, batch) in batches.iter().enumerate() {
        Parser::parse_sql(&MsSqlDialect {}, batch)
            .unwrap_or_else(|e| panic!("batch {i} does not parse: {e}\n{batch}"));
    }
}

#[test]
fn snapshot_isolation_is_allowed_for_the_initial_snapshot() {
    assert!(SQLSERVER.contains("SET ALLOW_SNAPSHOT_ISOLATION ON"));
}

#[test]
fn every_captured_table_has_cdc_enabled() {
    for table in ["members", "providers", "policies", "claims", "claim_lines"] {
        let call = format!("@source_name = N'{table}'");
        assert!(SQLSERVER.contains(&call), "CDC enabled on dbo.{table}");
    }
}
