//! The tiering stage: every claim row lives in exactly one tier, chosen by its age at
//! event time; reference rows go to every tier.
//!
//! State per claim row: its tier, its latest envelope and key (as cells, with their schema
//! ids) and its latest analysis. A timer at the next boundary (age field + `hot_max_age`,
//! then + `warm_max_age`) moves it on when the watermark passes, so a replay moves rows at
//! the same points. A move emits the row to the new tier and a `TierMove` record; the
//! new tier's sink removes the row from the old store after writing it.

use std::sync::Arc;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use super::config::TieringConfig;
use super::pii::{PiiKeyError, Protection};
use crate::avro::schemas::TIER_MOVE;
use crate::domain::Domain;
use crate::processors::change::{rewrite, Cell, Change, Row};
use crate::runtime::{
    Context, Event, Output, OutputSchema, ProcessError, Processor, Rejection, Timer,
};

const ROWS: &str = "rows";
/// Analyses that arrived before their claim, by claim id.
const WAITING: &str = "waiting_analysis";
const STRING_KEY: &str = r#""string""#;
const DAY_MS: i64 = 86_400_000;

/// Tiers from hottest to coldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    Hot,
    Warm,
    Cold,
}

impl Tier {
    fn port(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
    fn symbol(self) -> Value {
        match self {
            Tier::Hot => Value::Enum(0, "HOT".into()),
            Tier::Warm => Value::Enum(1, "WARM".into()),
            Tier::Cold => Value::Enum(2, "COLD".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    tier: Tier,
    table: String,
    /// Day number of the age field (days since 1970-01-01).
    age_day: i32,
    envelope: Cell,
    value_schema_id: u32,
    key: Cell,
    key_schema_id: u32,
    /// Latest analysis of a claim, re-emitted when the claim moves.
    analysis: Option<(Cell, u32)>,
}

pub struct Tiering {
    config: TieringConfig,
    domain: &'static Domain,
    move_schema: Arc<str>,
    protection: Protection,
}

impl Tiering {
    /// Fails when the PII key the settings name cannot be read.
    pub fn new(config: TieringConfig) -> Result<Self, PiiKeyError> {
        Ok(Self {
            protection: Protection::from_policy(&config.pii)?,
            config,
            domain: Domain::claims(),
            move_schema: TIER_MOVE.into(),
        })
    }

    fn hot_ms(&self) -> i64 {
        self.config.hot_max_age.0.as_millis() as i64
    }
    fn warm_ms(&self) -> i64 {
        self.config.warm_max_age.0.as_millis() as i64
    }

    fn tier_at(&self, age_day: i32, at_ms: i64) -> Tier {
        let age = at_ms - i64::from(age_day) * DAY_MS;
        if age < self.hot_ms() {
            Tier::Hot
        } else if age < self.warm_ms() {
            Tier::Warm
        } else {
            Tier::Cold
        }
    }

    /// When a row of `age_day` in `tier` crosses into the next tier, if ever.
    fn next_boundary(&self, tier: Tier, age_day: i32) -> Option<i64> {
        let date_ms = i64::from(age_day) * DAY_MS;
        match tier {
            Tier::Hot => Some(date_ms + self.hot_ms()),
            Tier::Warm => Some(date_ms + self.warm_ms()),
            Tier::Cold => None,
        }
    }

    /// `envelope` as it may leave for `tier`: sensitive columns protected on their way
    /// to a cloud tier (see [`super::pii`]), kept on premise (cold).
    fn for_tier(&self, table: &str, envelope: &Value, tier: Tier) -> Value {
        if tier == Tier::Cold {
            return envelope.clone();
        }
        let Some(facts) = self.domain.table(table) else {
            return envelope.clone();
        };
        if facts.sensitive.is_empty() {
            return envelope.clone();
        }
        let position = match crate::runtime::processor::record_field(envelope, "source")
            .and_then(|s| crate::runtime::processor::record_field(s, "position"))
        {
            Some(Value::String(p)) => p.clone(),
            _ => String::new(),
        };
        let scrub = |row: Option<&Value>| -> Option<Value> {
            let Some(Value::Union(_, inner)) = row else {
                return None;
            };
            let Value::Record(fields) = &**inner else {
                return None;
            };
            Some(Value::Record(
                fields
                    .iter()
                    .map(|(n, v)| {
                        let v = if facts.sensitive.contains(n) {
                            self.protection.protect(v, &position, n)
                        } else {
                            v.clone()
                        };
                        (n.clone(), v)
                    })
                    .collect(),
            ))
        };
        rewrite(
            envelope,
            &[
                ("before", scrub(record_field_raw(envelope, "before"))),
                ("after", scrub(record_field_raw(envelope, "after"))),
            ],
        )
    }

    fn emit_row(&self, ctx: &mut Context<'_>, tier: Tier, e: &Entry, envelope: &Value) {
        ctx.emit(Output {
            port: Some(tier.port().into()),
            key: Some(Value::from(&e.key)),
            key_schema: OutputSchema::Id(e.key_schema_id),
            value: Some(self.for_tier(&e.table, envelope, tier)),
            value_schema: OutputSchema::Id(e.value_schema_id),
            partition_by: None,
        });
    }

    /// `analysis` as it may leave for `tier`: on its way to a cloud tier, no reason text
    /// quotes a sensitive value of the claim (see [`super::pii::withhold_quoted`]).
    fn analysis_for_tier(&self, e: &Entry, analysis: Value, tier: Tier) -> Value {
        let facts = self.domain.table(&e.table);
        let sensitive = match facts {
            Some(f) if tier != Tier::Cold && !f.sensitive.is_empty() => &f.sensitive,
            _ => return analysis,
        };
        let envelope = Value::from(&e.envelope);
        let row = match record_field_raw(&envelope, "after") {
            Some(Value::Union(_, inner)) => match &**inner {
                Value::Record(fields) => super::pii::sensitive_texts(fields, sensitive),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        super::pii::withhold_quoted(&analysis, &row)
    }

    fn emit_analysis(&self, ctx: &mut Context<'_>, tier: Tier, e: &Entry) {
        if let Some((analysis, schema_id)) = &e.analysis {
            ctx.emit(Output {
                port: Some(tier.port().into()),
                key: Some(Value::from(&e.key)),
                key_schema: OutputSchema::Id(e.key_schema_id),
                value: Some(self.analysis_for_tier(e, Value::from(analysis), tier)),
                value_schema: OutputSchema::Id(*schema_id),
                partition_by: None,
            });
        }
    }

    /// Moves `e` from its tier to `to`: the row to the new tier, a delete to the old one,
    /// and a move record.
    fn emit_move(
        &self,
        ctx: &mut Context<'_>,
        e: &Entry,
        to: Tier,
        position: &str,
        reason: &str,
        at_ms: i64,
    ) {
        let envelope = Value::from(&e.envelope);
        self.emit_row(ctx, to, e, &envelope);
        self.emit_analysis(ctx, to, e);
        // Moving on (colder): the new tier's sink evicts the row from the old store once it
        // has it, so the claim is never in neither. Moving back (a corrected date) is rare
        // and has no such sink: the old tier gets a delete.
        if to < e.tier {
            let delete = rewrite(
                &envelope,
                &[
                    ("before", record_field_raw(&envelope, "after").map(unwrap)),
                    ("after", None),
                    ("op", Some(Value::String("d".into()))),
                ],
            );
            self.emit_row(ctx, e.tier, e, &delete);
        }
        let key_text = serde_json::to_string(&e.key).unwrap_or_default();
        let record = Value::Record(vec![
            (
                "move_id".into(),
                Value::String(format!("{position}/{}/{key_text}", e.table)),
            ),
            ("table".into(), Value::String(e.table.clone())),
            ("key".into(), Value::String(key_text.clone())),
            (
                "from_tier".into(),
                Value::Union(1, Box::new(e.tier.symbol())),
            ),
            ("to_tier".into(), to.symbol()),
            ("position".into(), Value::String(position.into())),
            (
                "reason".into(),
                match reason {
                    "AGED" => Value::Enum(0, "AGED".into()),
                    _ => Value::Enum(1, "UPDATED".into()),
                },
            ),
            ("event_time_ms".into(), Value::TimestampMillis(at_ms)),
        ]);
        ctx.emit(Output {
            port: Some("moves".into()),
            key: Some(Value::String(format!("{}:{key_text}", e.table))),
            key_schema: OutputSchema::Text(STRING_KEY.into()),
            value: Some(record),
            value_schema: OutputSchema::Text(self.move_schema.clone()),
            partition_by: None,
        });
    }

    fn analysis(&self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let claim_id = match event.field("claim_id") {
            Some(Value::Long(id)) => *id,
            _ => {
                return Err(Rejection::new(
                    "analysis.no_claim_id",
                    "an analysis record without claim_id",
                )
                .into())
            }
        };
        let analysis = (
            Cell::from(event.value.unwrap_or(&Value::Null)),
            event.value_schema_id.unwrap_or_default(),
        );
        let key = claim_key(claim_id);
        match ctx.get_state::<Entry>(ROWS, &key)? {
            Some(mut e) => {
                e.analysis = Some(analysis);
                self.emit_analysis(ctx, e.tier, &e);
                ctx.put_state(ROWS, &key, &e);
            }
            None => ctx.put_state(WAITING, &claim_id.to_be_bytes(), &analysis),
        }
        Ok(())
    }
}

fn unwrap(v: &Value) -> Value {
    match v {
        Value::Union(_, inner) => (**inner).clone(),
        other => other.clone(),
    }
}

fn record_field_raw<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    match value {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

/// State key of a claims row, shared by claim rows and their analyses.
fn claim_key(claim_id: i64) -> Vec<u8> {
    format!("public.claims\0{claim_id}").into_bytes()
}

fn row_key(table: &str, key: &Value, row: &Row) -> Vec<u8> {
    if table.ends_with(".claims") {
        if let Some(Value::Long(id)) = crate::processors::change::column(row, "claim_id") {
            return claim_key(*id);
        }
    }
    format!(
        "{table}\0{}",
        serde_json::to_string(&Cell::from(key)).unwrap_or_default()
    )
    .into_bytes()
}

impl Processor for Tiering {
    fn stores(&self) -> Vec<&'static str> {
        vec![ROWS, WAITING]
    }

    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if event.field("analysis_id").is_some() {
            return self.analysis(event, ctx);
        }
        let change = Change::from_event(event)?;
        let envelope = event.value.cloned().unwrap_or(Value::Null);
        let at_ms = self.event_time(event);
        let facts = self.domain.table(&change.table);
        let age_field = facts
            .and_then(|f| f.age_field.clone())
            .unwrap_or_else(|| self.config.age_field.clone());
        let reference = facts.is_some_and(|f| f.reference);
        let (key_schema, value_schema) = (
            event.key_schema_id.unwrap_or_default(),
            event.value_schema_id.unwrap_or_default(),
        );
        if reference || change.op == "t" {
            for tier in [Tier::Hot, Tier::Warm, Tier::Cold] {
                ctx.emit(Output {
                    port: Some(tier.port().into()),
                    key: event.key.cloned(),
                    key_schema: OutputSchema::Id(key_schema),
                    value: Some(self.for_tier(&change.table, &envelope, tier)),
                    value_schema: OutputSchema::Id(value_schema),
                    partition_by: None,
                });
            }
            return Ok(());
        }
        let key = change.key(event)?;
        let row = change.row().unwrap_or_default();
        if change.op == "d" {
            // Deletes may carry only the key columns: the tier comes from state.
            let state_key = row_key(&change.table, key, row);
            let previous = ctx.get_state::<Entry>(ROWS, &state_key)?;
            let tiers = match &previous {
                Some(p) => {
                    if let Some(due) = self.next_boundary(p.tier, p.age_day) {
                        ctx.cancel_timer(due, &state_key);
                    }
                    vec![p.tier]
                }
                None => vec![Tier::Hot, Tier::Warm, Tier::Cold],
            };
            for tier in tiers {
                ctx.emit(Output {
                    port: Some(tier.port().into()),
                    key: Some(key.clone()),
                    key_schema: OutputSchema::Id(key_schema),
                    value: Some(self.for_tier(&change.table, &envelope, tier)),
                    value_schema: OutputSchema::Id(value_schema),
                    partition_by: None,
                });
            }
            ctx.delete(ROWS, &state_key);
            return Ok(());
        }
        let age_day = match crate::processors::change::column(row, &age_field) {
            Some(Value::Date(d)) => *d,
            other => {
                return Err(Rejection::new(
                    "tiering.no_age",
                    format!("{}: age field `{age_field}` is {other:?}, not a date; set `age_field` in the topology or the domain file", change.table),
                )
                .into())
            }
        };
        let state_key = row_key(&change.table, key, row);
        let previous = ctx.get_state::<Entry>(ROWS, &state_key)?;
        if let Some(p) = &previous {
            if let Some(due) = self.next_boundary(p.tier, p.age_day) {
                ctx.cancel_timer(due, &state_key);
            }
        }
        let tier = self.tier_at(age_day, at_ms);
        let mut entry = Entry {
            tier,
            table: change.table.clone(),
            age_day,
            envelope: Cell::from(&envelope),
            value_schema_id: value_schema,
            key: Cell::from(key),
            key_schema_id: key_schema,
            analysis: previous.as_ref().and_then(|p| p.analysis.clone()),
        };
        let mut analysis_arrived_first = false;
        if let Some(claim_id) = change
            .table
            .ends_with(".claims")
            .then(|| claim_id(row))
            .flatten()
        {
            if let Some(waiting) = ctx.get_state(WAITING, &claim_id.to_be_bytes())? {
                entry.analysis = Some(waiting);
                analysis_arrived_first = true;
                ctx.delete(WAITING, &claim_id.to_be_bytes());
            }
        }
        match previous {
            Some(p) if p.tier != tier => {
                let old = Entry {
                    tier: p.tier,
                    ..entry.clone()
                };
                self.emit_move(ctx, &old, tier, change.position, "UPDATED", at_ms);
            }
            _ => {
                self.emit_row(ctx, tier, &entry, &envelope);
                if analysis_arrived_first {
                    self.emit_analysis(ctx, tier, &entry);
                }
            }
        }
        if let Some(due) = self.next_boundary(tier, age_day) {
            ctx.set_timer(due, &state_key);
        }
        ctx.put_state(ROWS, &state_key, &entry);
        Ok(())
    }

    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(mut entry) = ctx.get_state::<Entry>(ROWS, &timer.name)? else {
            return Ok(()); // deleted meanwhile
        };
        let to = self.tier_at(entry.age_day, timer.due_ms);
        if to == entry.tier {
            return Ok(());
        }
        self.emit_move(
            ctx,
            &entry,
            to,
            &format!("aged@{}", timer.due_ms),
            "AGED",
            timer.due_ms,
        );
        entry.tier = to;
        if let Some(due) = self.next_boundary(to, entry.age_day) {
            ctx.set_timer(due, &timer.name);
        }
        ctx.put_state(ROWS, &timer.name, &entry);
        Ok(())
    }
}

fn claim_id(row: &Row) -> Option<i64> {
    match crate::processors::change::column(row, "claim_id") {
        Some(Value::Long(id)) => Some(*id),
        _ => None,
    }
}
