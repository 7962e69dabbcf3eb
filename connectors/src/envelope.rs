//! The change envelope and key record, the same for every CDC source
//! (`schemas/change_envelope.avsc`, Debezium's shape).

use apache_avro::types::Value;
use strata_pipeline::avro::types::avro_name;

use crate::emitter::TableShape;

/// The envelope's `source` record. Each source fills its own position fields and leaves
/// the other source's NULL.
pub struct SourceFields<'a> {
    /// `postgres` or `sqlserver`.
    pub connector: &'static str,
    pub region: &'a str,
    pub db: &'a str,
    /// The event's position as fixed-width text: string order is log order.
    pub position: String,
    /// PostgreSQL: commit LSN and index in the transaction.
    pub lsn: Option<i64>,
    pub tx_index: Option<i64>,
    /// SQL Server: `__$start_lsn` and `__$seqval` as hex.
    pub commit_lsn: Option<String>,
    pub seqval: Option<String>,
    pub txid: Option<i64>,
    pub commit_time_ms: i64,
    /// `true` for snapshot rows, else `false`.
    pub snapshot: &'a str,
}

/// The row images of one change.
pub struct Images {
    /// `c`, `u`, `d`, `r` or `t`.
    pub op: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// Columns whose value the source did not send.
    pub unavailable: Vec<String>,
}

fn union(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
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
            let name = avro_name(k);
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

/// The change envelope of one change.
pub fn envelope(
    shape: &TableShape,
    images: Images,
    source: &SourceFields<'_>,
    now_ms: i64,
) -> Value {
    let text = |s: &str| Value::String(s.to_string());
    let source = Value::Record(vec![
        ("connector".into(), text(source.connector)),
        ("region".into(), text(source.region)),
        ("db".into(), text(source.db)),
        ("schema".into(), Value::String(shape.schema.clone())),
        ("table".into(), Value::String(shape.table.clone())),
        ("position".into(), Value::String(source.position.clone())),
        ("lsn".into(), union(source.lsn.map(Value::Long))),
        ("tx_index".into(), union(source.tx_index.map(Value::Long))),
        (
            "commit_lsn".into(),
            union(source.commit_lsn.clone().map(Value::String)),
        ),
        (
            "seqval".into(),
            union(source.seqval.clone().map(Value::String)),
        ),
        ("txid".into(), union(source.txid.map(Value::Long))),
        ("ts_ms".into(), Value::Long(source.commit_time_ms)),
        ("snapshot".into(), text(source.snapshot)),
    ]);
    Value::Record(vec![
        ("before".into(), union(images.before)),
        ("after".into(), union(images.after)),
        ("source".into(), source),
        ("op".into(), text(images.op)),
        ("ts_ms".into(), union(Some(Value::Long(now_ms)))),
        (
            "unavailable_columns".into(),
            Value::Array(images.unavailable.into_iter().map(Value::String).collect()),
        ),
        ("origin".into(), union(None)),
        ("hlc".into(), union(None)),
    ])
}
