//! The schemas of every event on the wire, loaded from `schemas/*.avsc` (the source of
//! truth; no schema text lives in Rust), and the per-table key and envelope schemas
//! derived from a table's columns.

use serde_json::Value;

use super::types::{avro_namespace, row_record, Column};

/// `schemas/` files compiled into the binary.
pub const CHANGE_ENVELOPE: &str = include_str!("../../../schemas/change_envelope.avsc");
pub const CLAIM_ANALYSIS: &str = include_str!("../../../schemas/claim_analysis.avsc");
pub const TIER_MOVE: &str = include_str!("../../../schemas/tier_move.avsc");
pub const CONFLICT_AUDIT: &str = include_str!("../../../schemas/conflict_audit.avsc");
pub const DEAD_LETTER: &str = include_str!("../../../schemas/dead_letter.avsc");
/// The key schema of records keyed by plain text (the audit topic's).
pub const STRING_KEY: &str = r#""string""#;

/// Every fixed schema, by file name.
pub const ALL: [(&str, &str); 5] = [
    ("change_envelope.avsc", CHANGE_ENVELOPE),
    ("claim_analysis.avsc", CLAIM_ANALYSIS),
    ("tier_move.avsc", TIER_MOVE),
    ("conflict_audit.avsc", CONFLICT_AUDIT),
    ("dead_letter.avsc", DEAD_LETTER),
];

/// Name of the row placeholder in `change_envelope.avsc`.
const ROW_PLACEHOLDER: &str = "Value";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("table {table} has no primary key; CDC keys events by primary key — add one (ALTER TABLE … ADD PRIMARY KEY)")]
    NoPrimaryKey { table: String },
    #[error("primary key column `{column}` of {table} is not among its columns")]
    UnknownKeyColumn { table: String, column: String },
    #[error("schemas/change_envelope.avsc is not a record with `before` and `after` fields of [\"null\", \"Value\"]")]
    BadTemplate,
    #[error("the derived schema of {table} is not valid Avro: {source}")]
    Invalid {
        table: String,
        #[source]
        source: apache_avro::Error,
    },
}

/// Key and value schemas of one captured table, as JSON text ready to register.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchemas {
    pub key: String,
    pub value: String,
}

/// Derives the key record (primary key columns) and the change envelope of a table
/// whose events go to `topic`. Names follow Debezium: `<namespace>.Key`,
/// `<namespace>.Envelope`, `<namespace>.Value`, with the namespace taken from the topic.
pub fn table_schemas(
    topic: &str,
    table: &str,
    columns: &[Column],
    primary_key: &[String],
) -> Result<TableSchemas, SchemaError> {
    if primary_key.is_empty() {
        return Err(SchemaError::NoPrimaryKey {
            table: table.into(),
        });
    }
    let namespace = avro_namespace(topic);
    let key_columns = primary_key
        .iter()
        .map(|k| {
            columns
                .iter()
                .find(|c| &c.name == k)
                .map(|c| Column {
                    nullable: false,
                    ..c.clone()
                })
                .ok_or_else(|| SchemaError::UnknownKeyColumn {
                    table: table.into(),
                    column: k.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut key = row_record("Key", &key_columns);
    key["namespace"] = Value::String(namespace.clone());

    let mut envelope: Value =
        serde_json::from_str(CHANGE_ENVELOPE).map_err(|_| SchemaError::BadTemplate)?;
    envelope["namespace"] = Value::String(namespace);
    let fields = envelope["fields"]
        .as_array_mut()
        .ok_or(SchemaError::BadTemplate)?;
    let before = fields
        .iter_mut()
        .find(|f| f["name"] == "before")
        .ok_or(SchemaError::BadTemplate)?;
    if before["type"][1] != ROW_PLACEHOLDER {
        return Err(SchemaError::BadTemplate);
    }
    // The first use defines the row record; `after` refers to it by name.
    before["type"][1] = row_record(ROW_PLACEHOLDER, columns);

    let schemas = TableSchemas {
        key: key.to_string(),
        value: envelope.to_string(),
    };
    for text in [&schemas.key, &schemas.value] {
        apache_avro::Schema::parse_str(text).map_err(|source| SchemaError::Invalid {
            table: table.into(),
            source,
        })?;
    }
    Ok(schemas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::types::ColumnType;

    #[test]
    fn every_schema_file_is_valid_avro() {
        for (file, text) in ALL {
            if file == "change_envelope.avsc" {
                continue; // a template: checked through table_schemas
            }
            apache_avro::Schema::parse_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn derives_key_and_envelope() {
        let columns = vec![
            Column {
                name: "claim_id".into(),
                ty: ColumnType::Int64,
                nullable: false,
            },
            Column {
                name: "note".into(),
                ty: ColumnType::Text,
                nullable: true,
            },
        ];
        let s = table_schemas(
            "us-east.cdc.claims.public.claims",
            "public.claims",
            &columns,
            &["claim_id".into()],
        )
        .unwrap();
        let key: Value = serde_json::from_str(&s.key).unwrap();
        assert_eq!(key["namespace"], "us_east.cdc.claims.public.claims");
        assert_eq!(key["fields"].as_array().unwrap().len(), 1);
        let value = apache_avro::Schema::parse_str(&s.value).unwrap();
        assert!(format!("{value:?}").contains("note"));
    }

    #[test]
    fn refuses_tables_without_primary_key() {
        let columns = vec![Column {
            name: "x".into(),
            ty: ColumnType::Int32,
            nullable: false,
        }];
        assert!(matches!(
            table_schemas("t", "public.t", &columns, &[]),
            Err(SchemaError::NoPrimaryKey { .. })
        ));
    }
}
