//! The claim-analysis stage: validates, classifies and scores each new claim from its
//! header, with features kept in state per member (the conflict stage partitions claims,
//! policies and members by member id, so a member's history is local).
//!
//! Each claim is analysed once, when it is first seen; a later event can revise earlier
//! analyses (a velocity burst flags every claim of the burst, not only those after the
//! limit) by emitting a new record for them, whose id derives from the event that
//! revised it. Sinks keep the latest analysis per claim.
//!
//! Claim lines (delivered after their claim by the claim-assembly stage) revise the
//! claim's analysis with line-level features; see [`super::lines`].

use std::sync::Arc;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use super::config::ClaimAnalysisConfig;
use super::lines::{self, Line, EM_MIX, PROCEDURE_AMOUNTS};
use super::member::{MemberActivity, Recent};
use super::rules::{self, reason, AmountStats, Reason};
use crate::avro::schemas::CLAIM_ANALYSIS;
use crate::processors::change::{column, number, Cell, Change, Row};
use crate::runtime::{
    Context, Event, Output, OutputSchema, ProcessError, Processor, Rejection, Timer,
};

const POLICIES: &str = "policies";
const CLAIMS: &str = "claims";
/// Per member: its claims by service day, and its recent claims per provider
/// ([`MemberActivity`]).
const MEMBER_ACTIVITY: &str = "member_activity";
/// Stores of earlier versions, now unread: declared so that state and changelogs written
/// by them still open and restore.
const RETIRED: [&str; 3] = ["exact", "recent", "member_days"];
const AMOUNTS: &str = "amounts";
/// Per provider: claims by service day, within the velocity window of the latest day.
const PROVIDER_DAYS: &str = "provider_days";
/// Claims waiting for their member's first policy, by member.
const WAITING: &str = "waiting";
/// The member whose [`WAITING`] entry holds a waiting claim, by claim id: a line of a
/// waiting claim finds it with two reads instead of a scan of every waiting member.
const WAITING_CLAIMS: &str = "waiting_claims";
/// What two claims share when one is an exact duplicate of the other.
/// Fixed-width numbers first, then the claim type and each diagnosis after a 0 byte
/// (text columns cannot hold one).
fn exact_key(claim: &Claim) -> Vec<u8> {
    let mut key = Vec::with_capacity(40 + claim.claim_type.len() + 8 * claim.diagnoses.len());
    key.extend_from_slice(&claim.member.to_be_bytes());
    key.extend_from_slice(&claim.provider.to_be_bytes());
    key.extend_from_slice(&claim.from.to_be_bytes());
    key.extend_from_slice(&claim.to.to_be_bytes());
    key.extend_from_slice(&cents(claim.billed).to_be_bytes());
    key.extend_from_slice(claim.claim_type.as_bytes());
    for diagnosis in &claim.diagnoses {
        key.push(0);
        key.extend_from_slice(diagnosis.as_bytes());
    }
    key
}

/// `AMOUNTS` key: the provider, then the claim type.
fn amounts_key(provider: i64, claim_type: &str) -> Vec<u8> {
    let mut key = provider.to_be_bytes().to_vec();
    key.extend_from_slice(claim_type.as_bytes());
    key
}

/// An amount in cents, as amounts compare for exact duplicates.
fn cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

/// Amount columns are numeric(12,2) in both sources.
const AMOUNT_SCALE: u32 = 2;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Policy {
    policy_id: i64,
    start: i32,
    end: Option<i32>,
}

/// What the stage keeps of an analysed claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    claim_id: i64,
    member: i64,
    provider: i64,
    from: i32,
    to: i32,
    submitted: i32,
    billed: f64,
    diagnoses: Vec<String>,
    claim_type: String,
    form_type: String,
    position: String,
    event_time_ms: i64,
    key: Cell,
    key_schema_id: u32,
    reasons: Vec<Reason>,
    /// Lines seen so far, by line number.
    #[serde(default)]
    lines: Vec<Line>,
    /// Changes folded into the claim since its header (each line added, changed or
    /// removed — also while it waited for coverage — and each later claim of the member
    /// that revised it): part of the analysis id, so ids of one claim only grow.
    #[serde(default)]
    revision: u32,
}

impl Claim {
    /// The id of the claim's current analysis: `<claim position>/<claim>/<revision>`.
    /// Stores keep the analysis with the greatest id, so it must grow with every
    /// revision whatever order the revising events arrive in: lines of one claim come
    /// from different partitions of the lines topic and may reach this stage in any
    /// order, so an id taken from a line's own position would let an earlier revision
    /// (fewer lines) win over a later one. Counting changes rather than emissions makes
    /// the last analysis after the same events have the same id in any order.
    fn analysis_id(&self) -> String {
        format!("{}/{}/{:08}", self.position, self.claim_id, self.revision)
    }
}

pub struct ClaimAnalysis {
    config: ClaimAnalysisConfig,
    schema: Arc<str>,
}

fn long(row: &Row, name: &str) -> Option<i64> {
    match column(row, name)? {
        Value::Long(v) => Some(*v),
        Value::Int(v) => Some(i64::from(*v)),
        _ => None,
    }
}

fn date(row: &Row, name: &str) -> Option<i32> {
    match column(row, name)? {
        Value::Date(d) => Some(*d),
        _ => None,
    }
}

fn text(row: &Row, name: &str) -> Option<String> {
    match column(row, name)? {
        Value::String(s) => Some(s.trim().to_string()),
        _ => None,
    }
}

fn strings(row: &Row, name: &str) -> Vec<String> {
    match column(row, name) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Union(_, inner) => match &**inner {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The activity of `member` ([`MEMBER_ACTIVITY`]); none yet for a member new here.
fn member_activity(ctx: &Context<'_>, member: i64) -> Result<MemberActivity, ProcessError> {
    Ok(ctx
        .get_state(MEMBER_ACTIVITY, &member.to_be_bytes())?
        .unwrap_or_default())
}

impl ClaimAnalysis {
    pub fn new(config: ClaimAnalysisConfig) -> Self {
        Self {
            config,
            schema: CLAIM_ANALYSIS.into(),
        }
    }

    fn coverage_wait_ms(&self) -> i64 {
        self.config.coverage_wait.0.as_millis() as i64
    }

    fn days(&self, d: &crate::topology::units::Duration) -> i32 {
        (d.0.as_secs() / 86_400).max(1) as i32
    }

    fn read_claim(&self, change: &Change, event: &Event<'_>) -> Result<Claim, Rejection> {
        let row = change
            .after
            .as_ref()
            .ok_or_else(|| Rejection::new("claim.no_row", "a claim change without a row"))?;
        let need = |what: &str| {
            Rejection::new(
                "claim.missing_field",
                format!("claim row lacks `{what}` (or it has an unexpected type)"),
            )
        };
        let billed = column(row, "billed_amount")
            .and_then(|v| number(v, AMOUNT_SCALE))
            .ok_or_else(|| need("billed_amount"))?;
        Ok(Claim {
            claim_id: long(row, "claim_id").ok_or_else(|| need("claim_id"))?,
            member: long(row, "member_id").ok_or_else(|| need("member_id"))?,
            provider: long(row, "provider_id").ok_or_else(|| need("provider_id"))?,
            from: date(row, "service_date_from").ok_or_else(|| need("service_date_from"))?,
            to: date(row, "service_date_to").ok_or_else(|| need("service_date_to"))?,
            submitted: date(row, "submitted_date").ok_or_else(|| need("submitted_date"))?,
            billed,
            diagnoses: strings(row, "diagnosis_codes"),
            claim_type: text(row, "claim_type").unwrap_or_default(),
            form_type: text(row, "form_type").unwrap_or_default(),
            position: change.position.to_string(),
            event_time_ms: change.ts_ms,
            key: Cell::from(event.key.unwrap_or(&Value::Null)),
            key_schema_id: event.key_schema_id.unwrap_or_default(),
            reasons: Vec::new(),
            lines: Vec::new(),
            revision: 0,
        })
    }

    fn class(claim: &Claim) -> &str {
        rules::CLASSES
            .iter()
            .find(|c| **c == claim.claim_type)
            .copied()
            .or_else(|| rules::class_of_form(&claim.form_type))
            .unwrap_or("UNKNOWN")
    }

    fn emit(&self, ctx: &mut Context<'_>, claim: &Claim, analysis_id: String) {
        let score = rules::score(&claim.reasons);
        let routing = rules::routing(score, &self.config.thresholds);
        let class = Self::class(claim);
        let class_index = rules::CLASSES.iter().position(|c| *c == class).unwrap_or(5) as u32;
        let routing_index = match routing {
            "AUTO_APPROVE" => 0,
            "REVIEW" => 1,
            _ => 2,
        };
        let reasons = claim
            .reasons
            .iter()
            .map(|r| {
                Value::Record(vec![
                    ("code".into(), Value::String(r.code.clone())),
                    ("contribution".into(), Value::Double(r.contribution)),
                    ("detail".into(), Value::String(r.detail.clone())),
                ])
            })
            .collect();
        let record = Value::Record(vec![
            ("analysis_id".into(), Value::String(analysis_id)),
            ("claim_id".into(), Value::Long(claim.claim_id)),
            ("position".into(), Value::String(claim.position.clone())),
            ("claim_class".into(), Value::Enum(class_index, class.into())),
            ("score".into(), Value::Double(score)),
            ("routing".into(), Value::Enum(routing_index, routing.into())),
            ("reasons".into(), Value::Array(reasons)),
            (
                "event_time_ms".into(),
                Value::TimestampMillis(claim.event_time_ms),
            ),
        ]);
        ctx.emit(Output {
            port: None,
            key: Some(Value::from(&claim.key)),
            key_schema: OutputSchema::Id(claim.key_schema_id),
            value: Some(record),
            value_schema: OutputSchema::Text(self.schema.clone()),
            partition_by: None,
        });
    }

    fn policy(&self, change: &Change, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(row) = change.after.as_ref() else {
            return Ok(()); // a removed policy keeps covering the claims already analysed
        };
        let (Some(member), Some(policy_id), Some(start)) = (
            long(row, "member_id"),
            long(row, "policy_id"),
            date(row, "coverage_start"),
        ) else {
            return Err(Rejection::new(
                "policy.missing_field",
                "policy row lacks member_id, policy_id or coverage_start",
            )
            .into());
        };
        let key = member.to_be_bytes();
        let mut policies: Vec<Policy> = ctx.get_state(POLICIES, &key)?.unwrap_or_default();
        policies.retain(|p| p.policy_id != policy_id);
        policies.push(Policy {
            policy_id,
            start,
            end: date(row, "coverage_end"),
        });
        ctx.put_state(POLICIES, &key, &policies);
        // Claims that waited for this member's coverage can be analysed now.
        if let Some(waiting) = ctx.get_state::<Vec<Claim>>(WAITING, &key)? {
            ctx.delete(WAITING, &key);
            for claim in waiting {
                ctx.delete(WAITING_CLAIMS, &claim.claim_id.to_be_bytes());
                let activity = member_activity(ctx, member)?;
                self.analyse(claim, &policies, activity, ctx)?;
            }
        }
        Ok(())
    }

    /// Analyses `claim`, new to this stage, of a member with `policies` and `member`'s
    /// activity as the state holds it.
    fn analyse(
        &self,
        mut claim: Claim,
        policies: &[Policy],
        mut member: MemberActivity,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let today = claim.event_time_ms.div_euclid(DAY_MS) as i32;
        let mut reasons = Vec::new();
        // Validation.
        if claim.from > today {
            reasons.push(reason(
                "FUTURE_SERVICE",
                format!(
                    "service starts {} days after it was recorded",
                    claim.from - today
                ),
            ));
        }
        if claim.to > claim.submitted {
            reasons.push(reason(
                "SERVICE_AFTER_SUBMISSION",
                "service ends after the claim was submitted".into(),
            ));
        }
        if claim.billed <= 0.0 {
            reasons.push(reason(
                "NON_POSITIVE_AMOUNT",
                format!("billed {:.2}", claim.billed),
            ));
        }
        // Diagnosis codes are sensitive (schemas/claims_domain.yaml): the reason names
        // which codes are malformed by their place in the list, never by their value,
        // since analyses reach the cloud tier.
        let bad: Vec<String> = (1..)
            .zip(&claim.diagnoses)
            .filter(|(_, c)| !rules::is_icd10(c))
            .map(|(i, _)| i.to_string())
            .collect();
        if claim.diagnoses.is_empty() {
            reasons.push(reason("BAD_DIAGNOSIS_CODE", "no diagnosis code".into()));
        } else if !bad.is_empty() {
            reasons.push(reason(
                "BAD_DIAGNOSIS_CODE",
                format!(
                    "diagnosis code(s) {} of {} not ICD-10-CM",
                    bad.join(", "),
                    claim.diagnoses.len()
                ),
            ));
        }
        if let Some(implied) = rules::class_of_form(&claim.form_type) {
            if implied != claim.claim_type {
                reasons.push(reason(
                    "CLASS_MISMATCH",
                    format!("{} on a {} form", claim.claim_type, claim.form_type),
                ));
            }
        }
        let covered = policies
            .iter()
            .any(|p| p.start <= claim.from && p.end.is_none_or(|e| claim.from <= e));
        if !covered {
            reasons.push(reason(
                "COVERAGE_INACTIVE",
                "no policy of the member covers the service date".into(),
            ));
        }

        // Exact duplicates: same member, provider, dates, diagnoses and amount, so served
        // the same day: the member's claims of that day are the candidates. Of two exact
        // duplicates the one committed later is flagged, whichever reached this stage
        // first (claims of one member come from several partitions upstream).
        let exact = exact_key(&claim);
        let mut original: Option<Claim> = None;
        for &id in member.claims_on(claim.from) {
            if id == claim.claim_id {
                continue;
            }
            let Some(other) = ctx.get_state::<Claim>(CLAIMS, &id.to_be_bytes())? else {
                continue;
            };
            if exact_key(&other) == exact
                && original
                    .as_ref()
                    .is_none_or(|o| other.position < o.position)
            {
                original = Some(other);
            }
        }
        if let Some(mut original) = original {
            if original.position <= claim.position {
                reasons.push(reason(
                    "DUPLICATE_EXACT",
                    format!("same as claim {}", original.claim_id),
                ));
            } else if !original.reasons.iter().any(|r| r.code == "DUPLICATE_EXACT") {
                original.reasons.push(reason(
                    "DUPLICATE_EXACT",
                    format!("same as claim {}", claim.claim_id),
                ));
                original.revision += 1;
                ctx.put_state(CLAIMS, &original.claim_id.to_be_bytes(), &original);
                self.emit(ctx, &original, original.analysis_id());
            }
        }

        // Near duplicates: same member, provider and diagnoses within the window, amount within 6%.
        let window = self.days(&self.config.duplicate_window);
        let this = Recent {
            claim_id: claim.claim_id,
            provider: claim.provider,
            from: claim.from,
            billed: claim.billed,
            diagnoses: claim.diagnoses.clone(),
        };
        if !reasons.iter().any(|r| r.code == "DUPLICATE_EXACT") {
            if let Some(r) = member.near(&this, window, |r| {
                r.from != claim.from
                    && r.diagnoses == claim.diagnoses
                    && (claim.billed / r.billed - 1.0).abs() <= 0.06
            }) {
                reasons.push(reason(
                    "DUPLICATE_NEAR",
                    format!(
                        "like claim {} ({} days apart)",
                        r.claim_id,
                        (r.from - claim.from).abs()
                    ),
                ));
            }
        }
        member.add_recent(this, window);

        // Amount outliers against the provider's history for this kind of claim.
        let stats_key = amounts_key(claim.provider, &claim.claim_type);
        let mut stats: AmountStats = ctx.get_state(AMOUNTS, &stats_key)?.unwrap_or_default();
        if let Some(z) = stats.z(claim.billed) {
            if z > self.config.outlier_z {
                reasons.push(reason(
                    "AMOUNT_OUTLIER",
                    format!(
                        "{:.2} is {z:.1} sd above the provider's usual",
                        claim.billed
                    ),
                ));
            }
        }
        stats.add(claim.billed);
        ctx.put_state(AMOUNTS, &stats_key, &stats);

        // Lines that arrived while the claim waited for its member's coverage.
        for line in &claim.lines {
            lines::judge(&self.config, claim.provider, line, &mut reasons, ctx)?;
        }
        lines::derive(&mut reasons, &claim.lines, claim.billed);
        // Provider velocity (this partition's share of the provider's claims).
        let velocity_days = self.days(&self.config.velocity_window);
        let provider_key = claim.provider.to_be_bytes();
        let mut days: Vec<(i32, u32)> = ctx
            .get_state(PROVIDER_DAYS, &provider_key)?
            .unwrap_or_default();
        match days.iter_mut().find(|(d, _)| *d == claim.from) {
            Some((_, n)) => *n += 1,
            None => days.push((claim.from, 1)),
        }
        let latest = days.iter().map(|(d, _)| *d).max().unwrap_or(claim.from);
        days.retain(|(d, _)| latest - d < velocity_days.max(1) * 2);
        let near: u32 = days
            .iter()
            .filter(|(d, _)| (d - claim.from).abs() < velocity_days)
            .map(|(_, n)| n)
            .sum();
        ctx.put_state(PROVIDER_DAYS, &provider_key, &days);
        if near > self.config.provider_velocity_limit {
            reasons.push(reason(
                "VELOCITY_PROVIDER",
                format!(
                    "{near} claims of the provider within {velocity_days} day(s) in this partition"
                ),
            ));
        }

        claim.reasons = reasons;
        ctx.put_state(CLAIMS, &claim.claim_id.to_be_bytes(), &claim);
        self.emit(ctx, &claim, claim.analysis_id());

        // Member velocity: more than the limit within the window flags the whole burst.
        // Claims are counted by service day, so claims arriving out of date order are
        // counted against the right days.
        let near = member.add_day(claim.from, claim.claim_id, velocity_days);
        ctx.put_state(MEMBER_ACTIVITY, &claim.member.to_be_bytes(), &member);
        if near.len() > self.config.member_velocity_limit as usize {
            for (_, id) in &near {
                let Some(mut other) = ctx.get_state::<Claim>(CLAIMS, &id.to_be_bytes())? else {
                    continue;
                };
                if other.reasons.iter().any(|r| r.code == "VELOCITY_MEMBER") {
                    continue;
                }
                other.reasons.push(reason(
                    "VELOCITY_MEMBER",
                    format!(
                        "{} claims of the member within {velocity_days} day(s)",
                        near.len()
                    ),
                ));
                other.revision += 1;
                ctx.put_state(CLAIMS, &id.to_be_bytes(), &other);
                self.emit(ctx, &other, other.analysis_id());
            }
        }
        Ok(())
    }
}

impl ClaimAnalysis {
    /// A line of a claim this stage has seen: added to (or removed from) the claim, and
    /// the claim's analysis revised under an id derived from the line's position.
    fn line(&self, change: &Change, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let row = change
            .row()
            .ok_or_else(|| Rejection::new("line.no_row", "a claim-line change without a row"))?;
        let (Some(claim_id), Some(line_number)) = (long(row, "claim_id"), long(row, "line_number"))
        else {
            return Err(Rejection::new(
                "line.missing_field",
                "claim line lacks claim_id or line_number",
            )
            .into());
        };
        // The line as the claim now has it (`None` once deleted), and whether it changed.
        let update = |claim: &mut Claim| -> Result<(Option<Line>, bool), Rejection> {
            let before = claim.lines.iter().position(|l| l.number == line_number);
            if change.op == "d" {
                let removed = before.map(|i| claim.lines.remove(i)).is_some();
                return Ok((None, removed));
            }
            let line = Line {
                number: line_number,
                procedure: text(row, "procedure_code").unwrap_or_default(),
                charge: column(row, "charge_amount")
                    .and_then(|v| number(v, AMOUNT_SCALE))
                    .ok_or_else(|| {
                        Rejection::new("line.missing_field", "claim line lacks charge_amount")
                    })?,
            };
            if before.is_some_and(|i| claim.lines[i] == line) {
                return Ok((Some(line), false)); // a redelivered line
            }
            claim.lines.retain(|l| l.number != line_number);
            claim.lines.push(line.clone());
            claim.lines.sort_by_key(|l| l.number);
            Ok((Some(line), true))
        };
        let claim_key = claim_id.to_be_bytes();
        if let Some(mut claim) = ctx.get_state::<Claim>(CLAIMS, &claim_key)? {
            let (line, changed) = update(&mut claim)?;
            if !changed {
                return Ok(());
            }
            if let Some(line) = line {
                lines::judge(&self.config, claim.provider, &line, &mut claim.reasons, ctx)?;
            }
            lines::derive(&mut claim.reasons, &claim.lines, claim.billed);
            claim.revision += 1;
            ctx.put_state(CLAIMS, &claim_key, &claim);
            self.emit(ctx, &claim, claim.analysis_id());
            return Ok(());
        }
        // The claim waits for its member's coverage: so does the line, inside it.
        if let Some(member) = ctx.get(WAITING_CLAIMS, &claim_key)? {
            let mut waiting: Vec<Claim> = ctx.get_state(WAITING, &member)?.unwrap_or_default();
            if let Some(claim) = waiting.iter_mut().find(|c| c.claim_id == claim_id) {
                if update(claim)?.1 {
                    claim.revision += 1;
                }
                ctx.put_state(WAITING, &member, &waiting);
                return Ok(());
            }
        }
        Err(Rejection::new(
            "line.unknown_claim",
            format!("line {line_number} of claim {claim_id}, which this stage has not seen; is claim_assembly before claim_analysis?"),
        )
        .into())
    }
}

impl Processor for ClaimAnalysis {
    fn stores(&self) -> Vec<&'static str> {
        let mut stores = vec![
            POLICIES,
            CLAIMS,
            MEMBER_ACTIVITY,
            AMOUNTS,
            WAITING,
            WAITING_CLAIMS,
            PROCEDURE_AMOUNTS,
            EM_MIX,
            PROVIDER_DAYS,
        ];
        stores.extend(RETIRED);
        stores
    }

    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let change = Change::from_event(event)?;
        match change.table.rsplit('.').next() {
            Some("policies") => self.policy(&change, ctx),
            Some("claims") if matches!(change.op, "c" | "r") => {
                let claim = self.read_claim(&change, event)?;
                let member = member_activity(ctx, claim.member)?;
                if member.has(claim.claim_id) {
                    return Ok(()); // analysed already
                }
                let key = claim.member.to_be_bytes();
                match ctx.get_state::<Vec<Policy>>(POLICIES, &key)? {
                    Some(policies) => self.analyse(claim, &policies, member, ctx),
                    None => {
                        let mut waiting: Vec<Claim> =
                            ctx.get_state(WAITING, &key)?.unwrap_or_default();
                        if !waiting.iter().any(|c| c.claim_id == claim.claim_id) {
                            // If no policy comes, the claim is analysed without one.
                            ctx.set_timer(claim.event_time_ms + self.coverage_wait_ms(), &key);
                            ctx.put(WAITING_CLAIMS, &claim.claim_id.to_be_bytes(), key.to_vec());
                            waiting.push(claim);
                        }
                        ctx.put_state(WAITING, &key, &waiting);
                        Ok(())
                    }
                }
            }
            Some("claim_lines") => self.line(&change, ctx),
            _ => Ok(()),
        }
    }

    /// A member's claims waited `coverage_wait` for a policy that never came: they are
    /// analysed without one. Claims that started waiting later keep their own timers.
    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(waiting) = ctx.get_state::<Vec<Claim>>(WAITING, &timer.name)? else {
            return Ok(());
        };
        let wait = self.coverage_wait_ms();
        let (due, still): (Vec<Claim>, Vec<Claim>) = waiting
            .into_iter()
            .partition(|c| c.event_time_ms + wait <= timer.due_ms);
        if still.is_empty() {
            ctx.delete(WAITING, &timer.name);
        } else {
            ctx.put_state(WAITING, &timer.name, &still);
        }
        for claim in due {
            ctx.delete(WAITING_CLAIMS, &claim.claim_id.to_be_bytes());
            let member = member_activity(ctx, claim.member)?;
            self.analyse(claim, &[], member, ctx)?;
        }
        Ok(())
    }
}
