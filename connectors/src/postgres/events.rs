//! Builds the Avro key and change envelope of one row change.

use apache_avro::types::Value;

use super::position::Position;
use super::relations::TableShape;
use super::values::{column_value, ValueError};
use crate::envelope::{Images, SourceFields};

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

pub use crate::envelope::key;

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
    let source = SourceFields {
        connector: "postgres",
        region: info.region,
        db: info.db,
        position: position.to_string(),
        lsn: Some(position.commit_lsn.0 as i64),
        tx_index: Some(i64::from(position.index)),
        commit_lsn: None,
        seqval: None,
        txid: info.txid.map(i64::from),
        commit_time_ms: info.commit_time_ms,
        snapshot: info.snapshot,
    };
    crate::envelope::envelope(
        shape,
        Images {
            op,
            before,
            after,
            unavailable,
        },
        &source,
        now_ms,
    )
}
