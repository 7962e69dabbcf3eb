//! Builders for processor tests and benches: change envelopes in the shape the sources
//! write.

use apache_avro::types::Value;

/// An insert (`op=c`) of `row` into `public.<table>` at `position`, committed at `ts_ms`.
pub fn envelope(table: &str, position: u64, ts_ms: i64, row: Vec<(&str, Value)>) -> Value {
    change(table, "c", position, ts_ms, None, Some(row))
}

/// A change of `public.<table>` with the given op and row images.
pub fn change(
    table: &str,
    op: &str,
    position: u64,
    ts_ms: i64,
    before: Option<Vec<(&str, Value)>>,
    after: Option<Vec<(&str, Value)>>,
) -> Value {
    let image = |row: Option<Vec<(&str, Value)>>| match row {
        Some(row) => Value::Union(
            1,
            Box::new(Value::Record(
                row.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            )),
        ),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    Value::Record(vec![
        ("before".into(), image(before)),
        ("after".into(), image(after)),
        (
            "source".into(),
            Value::Record(vec![
                ("schema".into(), Value::String("public".into())),
                ("table".into(), Value::String(table.into())),
                (
                    "position".into(),
                    Value::String(format!("{position:016x}-00000000")),
                ),
                ("ts_ms".into(), Value::Long(ts_ms)),
            ]),
        ),
        ("op".into(), Value::String(op.into())),
    ])
}
