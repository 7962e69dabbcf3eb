//! Line-level features of claim analysis. The claim-assembly stage delivers a claim's lines
//! after the claim, in its member's partition; each line revises the claim's analysis.
//!
//! - Derived from the lines seen so far, recomputed on every line: procedure codes
//!   well-formed (`BAD_PROCEDURE_CODE`), lines summing to the header's billed amount
//!   (`LINES_SUM_MISMATCH`). So the analysis after a claim's last line is the complete one;
//!   those before it may show a mismatch that the later lines resolve.
//! - Judged once, when a line arrives, against history kept in state: the line's charge
//!   against the same procedure's charges (`PROCEDURE_AMOUNT_OUTLIER`), and for a line at
//!   the top evaluation-and-management level, the provider's share of the two highest
//!   levels against its peers' (`UPCODING`: the provider's mix drifted up, and this line
//!   is where it shows most).
//!
//! History is per partition: a procedure's or a provider's lines are spread over the
//! partitions (claims are partitioned by member), so each partition holds an unbiased
//! sample of them. Deterministic: the same input in the same order gives the same result.

use serde::{Deserialize, Serialize};

use super::config::ClaimAnalysisConfig;
use super::rules::{self, reason, AmountStats, EmCounts, Reason};
use crate::runtime::{Context, ProcessError};

pub(super) const PROCEDURE_AMOUNTS: &str = "procedure_amounts";
pub(super) const EM_MIX: &str = "em_mix";
const PEERS: &[u8] = b"\0peers";

/// What analysis keeps of a claim line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Line {
    pub number: i64,
    pub procedure: String,
    pub charge: f64,
}

/// Reason codes recomputed from all lines on every line.
const DERIVED: [&str; 2] = ["BAD_PROCEDURE_CODE", "LINES_SUM_MISMATCH"];

/// Replaces the derived reasons of `reasons` with those `lines` and `billed` give now.
pub(super) fn derive(reasons: &mut Vec<Reason>, lines: &[Line], billed: f64) {
    reasons.retain(|r| !DERIVED.contains(&r.code.as_str()));
    let bad: Vec<&str> = lines
        .iter()
        .filter(|l| !rules::is_procedure_code(&l.procedure))
        .map(|l| l.procedure.as_str())
        .collect();
    if !bad.is_empty() {
        reasons.push(reason(
            "BAD_PROCEDURE_CODE",
            format!("not CPT/HCPCS: {bad:?}"),
        ));
    }
    let sum: f64 = lines.iter().map(|l| l.charge).sum();
    if !lines.is_empty() && (sum - billed).abs() > 0.005 {
        reasons.push(reason(
            "LINES_SUM_MISMATCH",
            format!(
                "{} line(s) sum to {sum:.2}, the claim bills {billed:.2}",
                lines.len()
            ),
        ));
    }
}

/// Judges a newly arrived line against the history, then adds it to the history.
pub(super) fn judge(
    config: &ClaimAnalysisConfig,
    provider: i64,
    line: &Line,
    reasons: &mut Vec<Reason>,
    ctx: &mut Context<'_>,
) -> Result<(), ProcessError> {
    let key = line.procedure.as_bytes();
    let mut stats: AmountStats = ctx.get_state(PROCEDURE_AMOUNTS, key)?.unwrap_or_default();
    if let Some(z) = stats.z(line.charge) {
        if z > config.procedure_outlier_z
            && !reasons.iter().any(|r| r.code == "PROCEDURE_AMOUNT_OUTLIER")
        {
            reasons.push(reason(
                "PROCEDURE_AMOUNT_OUTLIER",
                format!(
                    "line {} charges {:.2} for {}, {z:.1} sd above that procedure's usual",
                    line.number, line.charge, line.procedure
                ),
            ));
        }
    }
    stats.add(line.charge);
    ctx.put_state(PROCEDURE_AMOUNTS, key, &stats);

    let Some(level) = rules::EM_LEVELS.iter().position(|c| *c == line.procedure) else {
        return Ok(());
    };
    let provider_key = provider.to_be_bytes();
    let read = |ctx: &Context<'_>, key: &[u8]| -> Result<EmCounts, ProcessError> {
        Ok(ctx.get_state(EM_MIX, key)?.unwrap_or_default())
    };
    let (mut own, mut peers) = (read(ctx, &provider_key)?, read(ctx, PEERS)?);
    own.add(level);
    peers.add(level);
    ctx.put_state(EM_MIX, &provider_key, &own);
    ctx.put_state(EM_MIX, PEERS, &peers);
    let drift = own.high_share() - peers.high_share();
    if level == rules::EM_LEVELS.len() - 1
        && own.total() >= rules::MIN_EM_LINES
        && drift > config.upcoding_drift
        && !reasons.iter().any(|r| r.code == "UPCODING")
    {
        reasons.push(reason(
            "UPCODING",
            format!(
                "{:.0}% of the provider's {} E&M lines are 99214/99215, peers {:.0}%",
                own.high_share() * 100.0,
                own.total(),
                peers.high_share() * 100.0
            ),
        ));
    }
    Ok(())
}
