//! Change envelopes as processors see them: the fields they read from a decoded
//! envelope, and the way they write a modified envelope back (same schema, so a
//! pass-through output reuses the input's schema id).
//!
//! Rows kept in state are stored as [`Cell`]s (a serde mirror of the Avro values a row
//! can hold), since Avro binary needs the writer's schema to be read back.

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::runtime::processor::record_field;
use crate::runtime::{Event, Rejection};

/// A row: column name → value, in schema order.
pub type Row = [(String, Value)];

/// The parts of a change envelope processors work with, borrowed from the decoded
/// envelope (reading one copies nothing but the table's name).
#[derive(Debug, Clone, PartialEq)]
pub struct Change<'e> {
    /// `schema.table`.
    pub table: String,
    /// `c`, `u`, `d`, `r` or `t`.
    pub op: &'e str,
    pub before: Option<&'e Row>,
    pub after: Option<&'e Row>,
    pub position: &'e str,
    /// Commit time in the source, ms.
    pub ts_ms: i64,
    pub region: &'e str,
    pub origin: Option<&'e str>,
    pub hlc: Option<i64>,
    /// Columns whose value the source did not send (an unchanged TOAST value): NULL in
    /// the row, but not NULL in the database.
    pub unavailable: Vec<&'e str>,
}

fn unwrap_union(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

fn text(v: Option<&Value>) -> Option<&str> {
    match v.map(unwrap_union) {
        Some(Value::String(s)) | Some(Value::Enum(_, s)) => Some(s),
        _ => None,
    }
}

fn row(v: Option<&Value>) -> Option<&Row> {
    match v.map(unwrap_union) {
        Some(Value::Record(fields)) => Some(fields),
        _ => None,
    }
}

impl<'e> Change<'e> {
    /// Reads a change envelope; anything else is rejected with what is missing.
    pub fn from_event(event: &Event<'e>) -> Result<Change<'e>, Rejection> {
        let value = event.value.ok_or_else(|| {
            Rejection::new(
                "envelope.tombstone",
                "a tombstone where a change envelope was expected",
            )
        })?;
        let missing = |what: &str| {
            Rejection::new(
                "envelope.missing_field",
                format!("not a change envelope: `{what}` is missing or of the wrong type"),
            )
        };
        let source = record_field(value, "source").ok_or_else(|| missing("source"))?;
        let schema =
            text(record_field(source, "schema")).ok_or_else(|| missing("source.schema"))?;
        let table = text(record_field(source, "table")).ok_or_else(|| missing("source.table"))?;
        let ts_ms = match record_field(source, "ts_ms").map(unwrap_union) {
            Some(Value::Long(ms)) => *ms,
            _ => return Err(missing("source.ts_ms")),
        };
        Ok(Change {
            table: format!("{schema}.{table}"),
            op: text(record_field(value, "op")).ok_or_else(|| missing("op"))?,
            before: row(record_field(value, "before")),
            after: row(record_field(value, "after")),
            position: text(record_field(source, "position"))
                .ok_or_else(|| missing("source.position"))?,
            ts_ms,
            region: text(record_field(source, "region")).unwrap_or_default(),
            origin: text(record_field(value, "origin")),
            hlc: match record_field(value, "hlc").map(unwrap_union) {
                Some(Value::Long(h)) => Some(*h),
                _ => None,
            },
            unavailable: match record_field(value, "unavailable_columns").map(unwrap_union) {
                Some(Value::Array(items)) => items.iter().filter_map(|v| text(Some(v))).collect(),
                _ => Vec::new(),
            },
        })
    }

    /// The event's key; a change without one is rejected.
    pub fn key<'k>(&self, event: &Event<'k>) -> Result<&'k Value, Rejection> {
        event.key.ok_or_else(|| {
            Rejection::new(
                "envelope.no_key",
                format!("a change of {} without a key", self.table),
            )
        })
    }

    /// The row this change leaves (after), or the one it removed (before).
    pub fn row(&self) -> Option<&'e Row> {
        self.after.or(self.before)
    }

    /// A column of [`Change::row`].
    ///
    /// A NULL counts as absent: a delete's before-image (REPLICA IDENTITY DEFAULT) carries
    /// only the key, with every other column NULL, and must not read as a NULL value.
    pub fn column(&self, name: &str) -> Option<&Value> {
        self.row()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| unwrap_union(v))
            .filter(|v| **v != Value::Null)
    }
}

/// A column of a row, unions looked through.
pub fn column<'r>(row: &'r Row, name: &str) -> Option<&'r Value> {
    row.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| unwrap_union(v))
}

/// `envelope` with some top-level fields replaced (unions keep their branch rules:
/// `None` → null branch, `Some` → the value branch).
pub fn rewrite(envelope: &Value, changes: &[(&str, Option<Value>)]) -> Value {
    let Value::Record(fields) = envelope else {
        return envelope.clone();
    };
    Value::Record(
        fields
            .iter()
            .map(|(name, old)| {
                let Some((_, new)) = changes.iter().find(|(n, _)| n == name) else {
                    return (name.clone(), old.clone());
                };
                let value = match (old, new) {
                    (Value::Union(..), None) => Value::Union(0, Box::new(Value::Null)),
                    (Value::Union(..), Some(v)) => Value::Union(1, Box::new(v.clone())),
                    (_, Some(v)) => v.clone(),
                    (_, None) => Value::Null,
                };
                (name.clone(), value)
            })
            .collect(),
    )
}

/// A value as stable text (JSON of its [`Cell`]): state keys and partitioning bytes, equal
/// for equal values whatever stage computes them.
pub fn describe(cell: &Cell) -> String {
    serde_json::to_string(cell).unwrap_or_default()
}

/// A serde mirror of the Avro values a row holds, for rows kept in state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bytes(Vec<u8>),
    String(String),
    Fixed(usize, Vec<u8>),
    Enum(u32, String),
    Union(u32, Box<Cell>),
    Array(Vec<Cell>),
    Map(Vec<(String, Cell)>),
    Record(Vec<(String, Cell)>),
    Date(i32),
    /// Unscaled two's-complement big-endian bytes; the scale is the schema's.
    Decimal(Vec<u8>),
    TimeMicros(i64),
    TimestampMillis(i64),
    TimestampMicros(i64),
    Uuid(String),
    /// Anything else, kept as its debug text (never produced by Strata's sources).
    Other(String),
}

impl From<&Value> for Cell {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => Cell::Null,
            Value::Boolean(b) => Cell::Bool(*b),
            Value::Int(i) => Cell::Int(*i),
            Value::Long(l) => Cell::Long(*l),
            Value::Float(f) => Cell::Float(*f),
            Value::Double(d) => Cell::Double(*d),
            Value::Bytes(b) => Cell::Bytes(b.clone()),
            Value::String(s) => Cell::String(s.clone()),
            Value::Fixed(n, b) => Cell::Fixed(*n, b.clone()),
            Value::Enum(i, s) => Cell::Enum(*i, s.clone()),
            Value::Union(i, inner) => Cell::Union(*i, Box::new(Cell::from(&**inner))),
            Value::Array(items) => Cell::Array(items.iter().map(Cell::from).collect()),
            Value::Map(m) => {
                let mut entries: Vec<_> =
                    m.iter().map(|(k, v)| (k.clone(), Cell::from(v))).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Cell::Map(entries)
            }
            Value::Record(fields) => Cell::Record(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Cell::from(v)))
                    .collect(),
            ),
            Value::Date(d) => Cell::Date(*d),
            Value::Decimal(d) => Cell::Decimal(Vec::<u8>::try_from(d).unwrap_or_default()),
            Value::TimeMicros(t) => Cell::TimeMicros(*t),
            Value::TimestampMillis(t) => Cell::TimestampMillis(*t),
            Value::TimestampMicros(t) => Cell::TimestampMicros(*t),
            Value::Uuid(u) => Cell::Uuid(u.to_string()),
            other => Cell::Other(format!("{other:?}")),
        }
    }
}

impl From<&Cell> for Value {
    fn from(c: &Cell) -> Self {
        match c {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Boolean(*b),
            Cell::Int(i) => Value::Int(*i),
            Cell::Long(l) => Value::Long(*l),
            Cell::Float(f) => Value::Float(*f),
            Cell::Double(d) => Value::Double(*d),
            Cell::Bytes(b) => Value::Bytes(b.clone()),
            Cell::String(s) => Value::String(s.clone()),
            Cell::Fixed(n, b) => Value::Fixed(*n, b.clone()),
            Cell::Enum(i, s) => Value::Enum(*i, s.clone()),
            Cell::Union(i, inner) => Value::Union(*i, Box::new(Value::from(&**inner))),
            Cell::Array(items) => Value::Array(items.iter().map(Value::from).collect()),
            Cell::Map(m) => {
                Value::Map(m.iter().map(|(k, v)| (k.clone(), Value::from(v))).collect())
            }
            Cell::Record(f) => {
                Value::Record(f.iter().map(|(k, v)| (k.clone(), Value::from(v))).collect())
            }
            Cell::Date(d) => Value::Date(*d),
            Cell::Decimal(b) => Value::Decimal(apache_avro::Decimal::from(b.clone())),
            Cell::TimeMicros(t) => Value::TimeMicros(*t),
            Cell::TimestampMillis(t) => Value::TimestampMillis(*t),
            Cell::TimestampMicros(t) => Value::TimestampMicros(*t),
            Cell::Uuid(u) => u
                .parse()
                .map(Value::Uuid)
                .unwrap_or_else(|_| Value::String(u.clone())),
            Cell::Other(s) => Value::String(s.clone()),
        }
    }
}

/// A whole row as cells.
pub fn to_cells(row: &Row) -> Vec<(String, Cell)> {
    row.iter()
        .map(|(k, v)| (k.clone(), Cell::from(v)))
        .collect()
}

pub fn from_cells(cells: &[(String, Cell)]) -> Vec<(String, Value)> {
    cells
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v)))
        .collect()
}

/// The number a numeric column holds (decimals scaled by `scale`), for amounts.
pub fn number(v: &Value, scale: u32) -> Option<f64> {
    match v {
        Value::Int(i) => Some(f64::from(*i)),
        Value::Long(l) => Some(*l as f64),
        Value::Float(f) => Some(f64::from(*f)),
        Value::Double(d) => Some(*d),
        Value::Decimal(d) => {
            let bytes = Vec::<u8>::try_from(d).ok()?;
            let mut unscaled: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                -1
            } else {
                0
            };
            for b in bytes.iter().take(16) {
                unscaled = (unscaled << 8) | i128::from(*b);
            }
            Some(unscaled as f64 / 10f64.powi(scale as i32))
        }
        Value::Union(_, inner) => number(inner, scale),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_trip_row_values() {
        let row: Vec<(String, Value)> = vec![
            ("id".into(), Value::Long(7)),
            (
                "amount".into(),
                Value::Union(
                    1,
                    Box::new(Value::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39]))),
                ),
            ),
            ("d".into(), Value::Date(19_000)),
            (
                "codes".into(),
                Value::Array(vec![Value::String("E11.9".into())]),
            ),
            ("n".into(), Value::Union(0, Box::new(Value::Null))),
        ];
        let cells = to_cells(&row);
        let bytes = crate::state::encode_state(&cells);
        let back: Vec<(String, Cell)> = crate::state::decode_state("rows", b"k", &bytes).unwrap();
        assert_eq!(from_cells(&back), row);
    }

    #[test]
    fn decimals_read_as_numbers() {
        let d = Value::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39])); // 12345
        assert_eq!(number(&d, 2), Some(123.45));
        let neg = Value::Decimal(apache_avro::Decimal::from(vec![0xff, 0x38])); // -200
        assert_eq!(number(&neg, 2), Some(-2.0));
    }

    #[test]
    fn rewrite_keeps_union_branches() {
        let env = Value::Record(vec![
            ("after".into(), Value::Union(0, Box::new(Value::Null))),
            ("op".into(), Value::String("c".into())),
            ("hlc".into(), Value::Union(0, Box::new(Value::Null))),
        ]);
        let out = rewrite(
            &env,
            &[
                ("op", Some(Value::String("u".into()))),
                ("hlc", Some(Value::Long(5))),
            ],
        );
        assert_eq!(
            out,
            Value::Record(vec![
                ("after".into(), Value::Union(0, Box::new(Value::Null))),
                ("op".into(), Value::String("u".into())),
                ("hlc".into(), Value::Union(1, Box::new(Value::Long(5)))),
            ])
        );
    }
}
