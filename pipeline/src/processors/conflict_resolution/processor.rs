//! The conflict-resolution stage: merges each row's writes from every origin (see
//! [`super::merge`]) and emits the merged row, plus an audit record per conflict.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value;

use super::config::ConflictConfig;
use super::merge::{Merged, MergedWithoutClocks, Rules};
use crate::avro::schemas::{CONFLICT_AUDIT, STRING_KEY};
use crate::processors::change::{column, describe, rewrite, to_cells, Cell, Change};
use crate::runtime::{Context, Event, Output, OutputSchema, ProcessError, Processor, Rejection};

const ROWS: &str = "rows";
/// What an audit record says of a sensitive column's value.
const WITHHELD: &str = "(sensitive: withheld)";

pub struct ConflictResolution {
    config: ConflictConfig,
    /// Region of this deployment: changes from it without an origin are this site's.
    region: String,
    rules: HashMap<String, Rules>,
    audit_schema: Arc<str>,
}

impl ConflictResolution {
    pub fn new(config: ConflictConfig, region: &str) -> Self {
        Self {
            config,
            region: region.into(),
            rules: HashMap::new(),
            audit_schema: CONFLICT_AUDIT.into(),
        }
    }

    fn rules(&mut self, table: &str) -> &Rules {
        let (tables, default) = (&self.config.tables, self.config.default_policy);
        self.rules
            .entry(table.to_string())
            .or_insert_with(|| Rules::new(tables.get(table), default))
    }

    /// Who made the change: its own stamp, else this site for local changes, else the
    /// region it was captured in (a topic mirrored from another region).
    fn origin(&self, change: &Change) -> String {
        match change.origin {
            Some(o) => o.to_string(),
            None if change.region == self.region || change.region.is_empty() => {
                self.config.origin.clone()
            }
            None => change.region.to_string(),
        }
    }
}

/// The merged state of a row, also from records written before [`Merged::clocks`].
fn read_merged(ctx: &Context<'_>, state_key: &[u8]) -> Result<Merged, ProcessError> {
    match ctx.get_state::<Merged>(ROWS, state_key) {
        Ok(merged) => Ok(merged.unwrap_or_default()),
        Err(err) => match ctx.get_state::<MergedWithoutClocks>(ROWS, state_key) {
            Ok(old) => Ok(old.map(Merged::from).unwrap_or_default()),
            Err(_) => Err(err.into()),
        },
    }
}

impl Processor for ConflictResolution {
    fn stores(&self) -> Vec<&'static str> {
        vec![ROWS]
    }

    fn process(&mut self, event: &Event<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let change = Change::from_event(event)?;
        let value_schema = OutputSchema::Id(event.value_schema_id.unwrap_or_default());
        let key_schema = OutputSchema::Id(event.key_schema_id.unwrap_or_default());
        let envelope = event.value.cloned().unwrap_or(Value::Null);
        if change.op == "t" {
            // A truncate empties the table everywhere; nothing to merge.
            ctx.emit(Output {
                port: None,
                key: None,
                key_schema,
                value: Some(envelope),
                value_schema,
                partition_by: None,
            });
            return Ok(());
        }
        if let Some(unknown) = change.unavailable.iter().find(|c| {
            change
                .row()
                .is_some_and(|r| !r.iter().any(|(n, _)| n == *c))
        }) {
            return Err(Rejection::new(
                "envelope.unknown_unavailable_column",
                format!(
                    "a change of {} marks column `{unknown}` unavailable, which its row does not have",
                    change.table
                ),
            )
            .into());
        }
        let key = change.key(event)?;
        let key_text = describe(&Cell::from(key));
        let state_key = format!("{}\0{key_text}", change.table).into_bytes();
        let origin = self.origin(&change);
        let mut guard_key = state_key.clone();
        guard_key.push(0);
        guard_key.extend_from_slice(origin.as_bytes());
        if !ctx.is_newer(&guard_key, change.position)? {
            return Ok(()); // this origin's change was applied already
        }
        let mut merged = read_merged(ctx, &state_key)?;
        // The clock orders origins; within this one the position is newer (checked
        // above), and the stamp's clock is raised so that it ranks as such.
        let stamp = merged.stamp(
            origin,
            change.hlc.unwrap_or(change.ts_ms << 16),
            change.position.to_string(),
        );
        let rules = self.rules(&change.table).clone();
        let conflicts = match (change.op, &change.after) {
            ("d", _) | (_, None) => {
                merged.delete(&stamp);
                Vec::new()
            }
            (_, Some(after)) => {
                let before = change.before.map(to_cells);
                // An unchanged TOAST value arrives as NULL: it is no write of that
                // column, whose value the state keeps.
                let mut row = to_cells(after);
                row.retain(|(c, _)| !change.unavailable.contains(&c.as_str()));
                merged.write(&rules, &stamp, &row, before.as_deref())
            }
        };
        ctx.put_state(ROWS, &state_key, &merged);

        let deleted = merged.is_deleted();
        let merged_row = merged.row();
        let shape = change.row().unwrap_or_default();
        let after: Vec<(String, Value)> = shape
            .iter()
            .map(|(name, v)| {
                let cell = merged_row.iter().find(|(c, _)| c == name).map(|(_, c)| c);
                (
                    name.clone(),
                    cell.map(Value::from).unwrap_or_else(|| v.clone()),
                )
            })
            .collect();
        // Still unavailable: the columns the state does not hold either (its first
        // change seen was already without them, e.g. a replay from mid-stream). The
        // sinks then leave them as they are stored.
        let unavailable: Vec<Value> = change
            .unavailable
            .iter()
            .filter(|c| !merged_row.iter().any(|(name, _)| name == *c))
            .map(|c| Value::String(c.to_string()))
            .collect();
        let op = match (deleted, change.op) {
            (true, _) => "d",
            (false, "d") => "u",
            (false, op) => op,
        };
        let latest_hlc = merged
            .fields
            .iter()
            .map(|(_, f)| f.stamp.hlc)
            .max()
            .unwrap_or(stamp.hlc);
        let out = rewrite(
            &envelope,
            &[
                ("after", (!deleted).then(|| Value::Record(after.clone()))),
                ("op", Some(Value::String(op.into()))),
                ("origin", Some(Value::String(stamp.origin.clone()))),
                ("hlc", Some(Value::Long(latest_hlc))),
                ("unavailable_columns", Some(Value::Array(unavailable))),
            ],
        );
        let partition_by = self
            .config
            .partition_by
            .iter()
            .find_map(|c| column(&after, c).filter(|v| **v != Value::Null))
            .map(|v| describe(&Cell::from(v)).into_bytes());
        ctx.emit(Output {
            port: None,
            key: Some(key.clone()),
            key_schema,
            value: Some(out),
            value_schema,
            partition_by: partition_by.clone(),
        });
        // The audit topic is read beyond the on-prem tier: a sensitive column's values
        // (schemas/claims_domain.yaml) are withheld from it, its stamps kept.
        let sensitive = crate::domain::Domain::claims()
            .table(&change.table)
            .map(|f| f.sensitive.as_slice())
            .unwrap_or_default();
        let shown = |column: &str, value: &Cell| {
            if sensitive.iter().any(|s| s == column) {
                Value::String(WITHHELD.into())
            } else {
                Value::String(describe(value))
            }
        };
        for (i, c) in conflicts.iter().enumerate() {
            let audit = Value::Record(vec![
                (
                    "audit_id".into(),
                    Value::String(format!("{}/{i}", change.position)),
                ),
                ("table".into(), Value::String(change.table.clone())),
                ("key".into(), Value::String(key_text.clone())),
                (
                    "field_group".into(),
                    match rules.group(&c.column) {
                        Some(g) => Value::Union(1, Box::new(Value::String(g.into()))),
                        None => Value::Union(0, Box::new(Value::Null)),
                    },
                ),
                (
                    "local_origin".into(),
                    Value::String(c.existing.stamp.origin.clone()),
                ),
                ("local_hlc".into(), Value::Long(c.existing.stamp.hlc)),
                ("local_value".into(), shown(&c.column, &c.existing.value)),
                (
                    "remote_origin".into(),
                    Value::String(c.incoming.stamp.origin.clone()),
                ),
                ("remote_hlc".into(), Value::Long(c.incoming.stamp.hlc)),
                ("remote_value".into(), shown(&c.column, &c.incoming.value)),
                (
                    "winner".into(),
                    if c.incoming_won {
                        Value::Enum(1, "REMOTE".into())
                    } else {
                        Value::Enum(0, "LOCAL".into())
                    },
                ),
                (
                    "rule".into(),
                    match rules.policy {
                        super::Policy::LastWriterWins => Value::Enum(0, "LAST_WRITER_WINS".into()),
                        super::Policy::SourcePriority => Value::Enum(1, "SOURCE_PRIORITY".into()),
                        super::Policy::FieldMerge => Value::Enum(2, "FIELD_MERGE".into()),
                    },
                ),
                (
                    "position".into(),
                    Value::String(change.position.to_string()),
                ),
            ]);
            ctx.emit(Output {
                port: Some("audit".into()),
                key: Some(Value::String(format!("{}:{key_text}", change.table))),
                key_schema: OutputSchema::Text(STRING_KEY.into()),
                value: Some(audit),
                value_schema: OutputSchema::Text(self.audit_schema.clone()),
                partition_by: partition_by.clone(),
            });
        }
        Ok(())
    }
}
