//! Builds the Avro key and change envelope of one row change.

use apache_avro::types::Value;

use super::position::Position;
use super::relations::TableShape;
use super::values::{column_value, ValueError};

/// Where a change comes from, for the envelope's `source` record.
pub struct SourceInfo<'a> {
    pub region: &'a str,
    pub db: &'a str,
    pub txid: Option<u32>,
    pub commit_time_ms: i64,
    pub snapshot: &'a str,
}

/// One row image: each column's text, `None` for NULL; `Err(())` marks an unchanged TOAST value.
pub type RowText<'a> = Vec<Result<Option<&'a str>, ()>>;

fn union(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

/// The row record and the columns whose value the source did not send.
pub fn row(shape: &TableShape, cells: &RowText<'_>) -> Result<(Value, Vec<String>), ValueError> {
    let mut fields = Vec::with_capacity(shape.columns.len());
    let mut unavailable = Vec::new();
    for (i, column) in shape.columns.iter().enumerate() {
        let value = match cells.get(i) {
            Some(Ok(text)) => column_value(column, *text)?,
            // Unchanged TOAST, or a column the row image lacks: NULL, and said so.
            _ => {
                unavailable.push(column.name.clone());
                column_value(
                    &strata_pipeline::avro::types::Column {
                        nullable: true,
                        ..column.clone()
                    },
                    None,
                )?
            }
        };
        fields.push((strata_pipeline::avro::types::avro_name(&column.name), value));
    }
    Ok((Value::Record(fields), unavailable))
}

/// The key record: the key columns of `row`.
pub fn key(shape: &TableShape, row: &Value) -> Value {
    let Value::Record(fields) = row else {
        return Value::Null;
    };
    let key_fields = shape
        .key
        .iter()
        .filter_map(|k| {
            let name = strata_pipeline::avro::types::avro_name(k);
            fields.iter().find(|(n, _)| *n == name).map(|(n, v)| {
                // Key columns are required in the key schema; unwrap their union.
                let v = match v {
                    Value::Union(_, inner) => (**inner).clone(),
                    other => other.clone(),
                };
                (n.clone(), v)
            })
        })
        .collect();
    Value::Record(key_fields)
}

/// What changed in one row.
pub struct RowChange {
    /// `c`, `u`, `d` or `r`.
    pub op: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// Columns whose value the source did not send (unchanged TOAST).
    pub unavailable: Vec<String>,
    pub position: Position,
}

/// The change envelope.
pub fn envelope(
    shape: &TableShape,
    change: RowChange,
    info: &SourceInfo<'_>,
    now_ms: i64,
) -> Value {
    let RowChange {
        op,
        before,
        after,
        unavailable,
        position,
    } = change;
    let source = Value::Record(vec![
        ("connector".into(), Value::String("postgres".into())),
        ("region".into(), Value::String(info.region.into())),
        ("db".into(), Value::String(info.db.into())),
        ("schema".into(), Value::String(shape.schema.clone())),
        ("table".into(), Value::String(shape.table.clone())),
        ("position".into(), Value::String(position.to_string())),
        (
            "lsn".into(),
            union(Some(Value::Long(position.commit_lsn.0 as i64))),
        ),
        (
            "tx_index".into(),
            union(Some(Value::Long(i64::from(position.index)))),
        ),
        ("commit_lsn".into(), union(None)),
        ("seqval".into(), union(None)),
        (
            "txid".into(),
            union(info.txid.map(|x| Value::Long(i64::from(x)))),
        ),
        ("ts_ms".into(), Value::Long(info.commit_time_ms)),
        ("snapshot".into(), Value::String(info.snapshot.into())),
    ]);
    Value::Record(vec![
        ("before".into(), union(before)),
        ("after".into(), union(after)),
        ("source".into(), source),
        ("op".into(), Value::String(op.into())),
        ("ts_ms".into(), union(Some(Value::Long(now_ms)))),
        (
            "unavailable_columns".into(),
            Value::Array(unavailable.into_iter().map(Value::String).collect()),
        ),
        ("origin".into(), union(None)),
        ("hlc".into(), union(None)),
    ])
}
