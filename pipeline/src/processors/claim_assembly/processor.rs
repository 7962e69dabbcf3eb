//! The claim-assembly stage. Its input is partitioned by claim (the conflict stage's
//! `partition_by: [claim_id, member_id]`), so a claim and its lines meet here; its output
//! is partitioned by the claim's member, which claim analysis needs for member features.
//!
//! Invariants:
//! - Every input event is emitted exactly once per processing, unchanged (same key,
//!   value and schema ids): this stage only chooses partitions and order.
//! - A line is emitted only after its claim was: lines that arrive first wait in state
//!   (keyed by claim, then by position, so they leave in position order) and are emitted
//!   right after their claim. So a line always lands in its claim's member partition —
//!   unless its claim does not come within `line_wait` of event time: then the line is
//!   sent on in its own partition, and claim analysis dead-letters it with the reason.
//! - The claim → member mapping is kept for good (one small entry per claim), so line
//!   changes and deletes that come long after their claim still find the member.
//! - Other tables are partitioned by their own `partition_by` column, like the conflict
//!   stage does; rows without it keep their partition.

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use super::config::ClaimAssemblyConfig;
use crate::processors::change::{describe, Cell, Change};
use crate::runtime::{
    Context, Event, Output, OutputSchema, ProcessError, Processor, Rejection, Timer,
};

/// Claim → partitioning bytes of its member.
const MEMBERS: &str = "claim_members";
/// Lines waiting for their claim: claim ‖ 0 ‖ position → the event.
const WAITING: &str = "waiting_lines";

#[derive(Debug, Serialize, Deserialize)]
struct WaitingLine {
    key: Option<Cell>,
    key_schema: u32,
    value: Cell,
    value_schema: u32,
}

pub struct ClaimAssembly {
    config: ClaimAssemblyConfig,
}

fn bytes_of(value: &Value) -> Vec<u8> {
    describe(&Cell::from(value)).into_bytes()
}

fn pass_through(event: &Event<'_>, partition_by: Option<Vec<u8>>) -> Output {
    Output {
        port: None,
        key: event.key.cloned(),
        key_schema: OutputSchema::Id(event.key_schema_id.unwrap_or_default()),
        value: event.value.cloned(),
        value_schema: OutputSchema::Id(event.value_schema_id.unwrap_or_default()),
        partition_by,
    }
}

impl ClaimAssembly {
    pub fn new(config: ClaimAssemblyConfig) -> Self {
        Self { config }
    }

    fn claim_of(&self, change: &Change) -> Result<Vec<u8>, Rejection> {
        change
            .column(&self.config.claim_column)
            .map(bytes_of)
            .ok_or_else(|| {
                Rejection::new(
                    "assembly.no_claim",
                    format!(
                        "a change of {} without `{}`",
                        change.table, self.config.claim_column
                    ),
                )
            })
    }

    /// Emits and forgets the lines waiting for `claim`, to `partition_by`.
    fn release(
        &self,
        claim: &[u8],
        partition_by: Option<Vec<u8>>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let mut prefix = claim.to_vec();
        prefix.push(0);
        for (key, line) in ctx.scan_state::<WaitingLine>(WAITING, &prefix)? {
            ctx.delete(WAITING, &key);
            ctx.emit(Output {
                port: None,
                key: line.key.as_ref().map(Value::from),
                key_schema: OutputSchema::Id(line.key_schema),
                value: Some(Value::from(&line.value)),
                value_schema: OutputSchema::Id(line.value_schema),
                partition_by: partition_by.clone(),
            });
        }
        Ok(())
    }

    fn claim(
        &self,
        change: &Change,
        event: &Event<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let claim = self.claim_of(change)?;
        // A delete carries only the key: the member is the one recorded before.
        let member = match change.column(&self.config.partition_by) {
            Some(v) => {
                let member = bytes_of(v);
                ctx.put(MEMBERS, &claim, member.clone());
                Some(member)
            }
            None => ctx.get(MEMBERS, &claim)?,
        };
        ctx.emit(pass_through(event, member.clone()));
        self.release(&claim, member, ctx)
    }

    fn line(
        &self,
        change: &Change,
        event: &Event<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let claim = self.claim_of(change)?;
        if let Some(member) = ctx.get(MEMBERS, &claim)? {
            ctx.emit(pass_through(event, Some(member)));
            return Ok(());
        }
        let due = change.ts_ms + self.config.line_wait.0.as_millis() as i64;
        ctx.set_timer(due, &claim);
        let mut key = claim;
        key.push(0);
        key.extend_from_slice(change.position.as_bytes());
        let waiting = WaitingLine {
            key: event.key.map(Cell::from),
            key_schema: event.key_schema_id.unwrap_or_default(),
            value: event.value.map(Cell::from).unwrap_or(Cell::Null),
            value_schema: event.value_schema_id.unwrap_or_default(),
        };
        ctx.put_state(WAITING, &key, &waiting);
        Ok(())
    }
}

impl Processor for ClaimAssembly {
    fn stores(&self) -> Vec<&'static str> {
        vec![MEMBERS, WAITING]
    }

    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let change = Change::from_event(event)?;
        if change.op == "t" {
            ctx.emit(pass_through(event, None));
            return Ok(());
        }
        if change.table == self.config.claims_table {
            self.claim(&change, event, ctx)
        } else if change.table == self.config.lines_table {
            self.line(&change, event, ctx)
        } else {
            let partition_by = change.column(&self.config.partition_by).map(bytes_of);
            ctx.emit(pass_through(event, partition_by));
            Ok(())
        }
    }

    /// `line_wait` passed for lines of a claim that never came here: they go on in their
    /// own partition (the claim's lines that came later have their own, later timers, but
    /// leave with these: waiting longer would not make their claim come).
    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if ctx.get(MEMBERS, &timer.name)?.is_none() {
            self.release(&timer.name, None, ctx)?;
        }
        Ok(())
    }
}
