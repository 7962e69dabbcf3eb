//! The columns of a PostgreSQL store follow the source's.
//!
//! Before a batch is written, the writer schema of each record not seen before is read
//! (from the registry, by the id its bytes carry; the registry's compatibility rules
//! have applied when it was registered) and compared with the store's table:
//! - a column the store lacks is added (`ALTER TABLE … ADD COLUMN`, on the parent of a
//!   partitioned table, so every partition has it) before the first record carrying it
//!   is written, typed by the one type mapping (`docs/type-mapping.md`,
//!   [`ColumnType::from_avro`] then [`ColumnType::postgres`]);
//! - a column the source no longer sends stays in the store, NULL from then on (logged);
//! - a column whose type changed into one the store's type cannot hold stops the sink
//!   with the table, the column and both types named: never a silent cast.
//!
//! Column names are quoted wherever the store writes them; a name PostgreSQL would
//! truncate (more than 63 bytes) is refused at the first record, naming it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sqlx::Row as _;
use strata_pipeline::avro::types::ColumnType;
use strata_pipeline::avro::Codec;
use strata_pipeline::runtime::{SinkError, SinkRecord};

use super::{parse_change, transient, PgStore, Table};

/// PostgreSQL's identifier limit (NAMEDATALEN − 1).
const MAX_IDENTIFIER: usize = 63;

/// An identifier, quoted for SQL.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The columns of the row (`after`) of a change-envelope writer schema, in order, with
/// their types; `None` for a schema that is not a change envelope (an analysis).
pub fn row_columns(schema_text: &str) -> Result<Option<Vec<(String, ColumnType)>>, String> {
    let schema: serde_json::Value =
        serde_json::from_str(schema_text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(fields) = schema.get("fields").and_then(|f| f.as_array()) else {
        return Ok(None);
    };
    // The row record is defined where first used (`before`); `after` names it.
    let defined = ["before", "after"].into_iter().find_map(|image| {
        let field = fields
            .iter()
            .find(|f| f.get("name") == Some(&image.into()))?;
        let record = match field.get("type") {
            Some(serde_json::Value::Array(branches)) => branches.iter().find(|b| *b != "null"),
            other => other,
        };
        record?.get("fields")?.as_array()
    });
    let Some(columns) = defined else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        let name = c
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or("a column without a name")?;
        let ty = match c.get("type") {
            Some(serde_json::Value::Array(branches)) => branches.iter().find(|b| *b != "null"),
            other => other,
        };
        let ty = ty
            .and_then(ColumnType::from_avro)
            .ok_or_else(|| format!("column `{name}` has an Avro type no store type maps to"))?;
        out.push((name.to_string(), ty));
    }
    Ok(Some(out))
}

/// What a table must do to hold rows of `source`'s columns.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// (column, PostgreSQL type) to add.
    pub add: Vec<(String, String)>,
    /// Columns the store has and the source no longer sends.
    pub dropped: Vec<String>,
}

/// The plan for `qualified` (`schema.table`), whose columns are `store` (name, type as
/// `format_type` prints it; bookkeeping columns left out); an error for a change the
/// store cannot follow.
pub fn plan(
    qualified: &str,
    store: &[(String, String)],
    source: &[(String, ColumnType)],
) -> Result<Plan, String> {
    let mut plan = Plan::default();
    for (name, ty) in source {
        if name.len() > MAX_IDENTIFIER {
            return Err(format!(
                "{qualified}: the source's column `{name}` is {} bytes long, more than PostgreSQL's {MAX_IDENTIFIER}; rename it upstream or leave it out of the publication",
                name.len()
            ));
        }
        match store.iter().find(|(c, _)| c == name) {
            None => plan.add.push((name.clone(), ty.postgres())),
            Some((_, stored)) => {
                if !holds(stored, ty) {
                    return Err(format!(
                        "{qualified}: column `{name}` is {stored} in the store, and the source now sends {} (Avro {}); the store cannot follow this change: alter the column by hand (or replay into new tables), then start again",
                        ty.postgres(),
                        ty.avro()
                    ));
                }
            }
        }
    }
    let sent: BTreeSet<&str> = source.iter().map(|(n, _)| n.as_str()).collect();
    plan.dropped = store
        .iter()
        .filter(|(c, _)| !sent.contains(c.as_str()))
        .map(|(c, _)| c.clone())
        .collect();
    Ok(plan)
}

/// Whether a store column of type `stored` holds every value of `ty`: the same column
/// type, or a wider one (text holds any text, numeric any decimal, bigint any integer).
fn holds(stored: &str, ty: &ColumnType) -> bool {
    let Ok(store) = ColumnType::from_postgres(stored) else {
        return false;
    };
    match (&store, ty) {
        (a, b) if a == b => true,
        (ColumnType::Int64, ColumnType::Int32) => true,
        (ColumnType::Float64, ColumnType::Float32 | ColumnType::Int32) => true,
        (
            ColumnType::DecimalText,
            ColumnType::Decimal { .. } | ColumnType::Int32 | ColumnType::Int64,
        ) => true,
        (
            ColumnType::Decimal {
                precision: p,
                scale: s,
            },
            ColumnType::Decimal { precision, scale },
        ) => s >= scale && p - s >= precision - scale,
        // Sensitive text columns hold tokens or ciphertext in the cloud tiers.
        (ColumnType::Text, ColumnType::Text | ColumnType::Uuid) => true,
        (ColumnType::Json, ColumnType::Text) => false,
        _ => false,
    }
}

impl PgStore {
    /// Makes the tables follow the columns of the writer schemas `codec` reads.
    pub fn following(mut self, codec: Arc<Codec>) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Adds to the tables the columns the writer schemas of `records` carry and they
    /// lack, before `records` are written; see the module's rules.
    pub(super) async fn follow(&mut self, records: &[SinkRecord]) -> Result<(), SinkError> {
        let Some(codec) = self.codec.clone() else {
            return Ok(());
        };
        let mut added = false;
        for record in records {
            let (Some(id), Some(value)) = (record.value_schema_id, &record.value) else {
                continue;
            };
            if self.followed.contains(&id) {
                continue;
            }
            let Ok((_, name)) = parse_change(record, value) else {
                self.followed.insert(id); // an analysis, or a record the write refuses
                continue;
            };
            let text = codec
                .registry()
                .fetch(id)
                .await
                .map_err(|e| SinkError::Transient(e.to_string()))?;
            let columns = row_columns(&text)
                .map_err(|e| SinkError::Fatal(format!("writer schema {id}: {e}")))?;
            let (Some(columns), Some(table)) = (columns, self.tables.get(&name)) else {
                self.followed.insert(id);
                continue;
            };
            let qualified = format!("{}.{name}", self.schema);
            let plan = plan(&qualified, &table.columns, &columns).map_err(SinkError::Fatal)?;
            for column in &plan.dropped {
                tracing::warn!(table = %qualified, %column, schema_id = id, "the source no longer sends this column; the store keeps it, NULL in rows written from now on");
            }
            let pool = self
                .pool
                .clone()
                .ok_or_else(|| SinkError::Fatal("the store was not opened".into()))?;
            for (column, ty) in &plan.add {
                sqlx::query(&format!(
                    "ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {} {ty}",
                    quote(column)
                ))
                .execute(&pool)
                .await
                .map_err(|e| match e {
                    // The store refused the column: a person must look.
                    sqlx::Error::Database(_) => {
                        SinkError::Fatal(format!("adding column {column} {ty} to {qualified}: {e}"))
                    }
                    // The store was away (a restart, a cut): the batch is retried.
                    e => transient(e),
                })?;
                tracing::info!(table = %qualified, %column, r#type = %ty, "added a column the source added");
                added = true;
            }
            self.followed.insert(id);
        }
        if added {
            self.read_layout().await?;
        }
        Ok(())
    }

    /// Reads every table's columns and key from the catalog.
    pub(super) async fn read_layout(&mut self) -> Result<(), SinkError> {
        let pool = self
            .pool
            .clone()
            .ok_or_else(|| SinkError::Fatal("the store was not opened".into()))?;
        let rows = sqlx::query(
            "SELECT c.relname::text AS tbl, a.attname::text AS col,
                    format_type(a.atttypid, a.atttypmod) AS ty,
                    coalesce(a.attnum = ANY(i.indkey), false) AS in_key
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY c.relname, a.attnum",
        )
        .bind(&self.schema)
        .fetch_all(&pool)
        .await
        .map_err(transient)?;
        let mut tables: HashMap<String, Table> = HashMap::new();
        for row in rows {
            let (table, col, ty, in_key): (String, String, String, bool) = (
                row.get("tbl"),
                row.get("col"),
                row.get("ty"),
                row.get("in_key"),
            );
            let t = tables.entry(table.clone()).or_insert_with(|| Table {
                columns: Vec::new(),
                key: Vec::new(),
                partition_by: None,
            });
            if col.starts_with('_') {
                continue;
            }
            let partition_col = match (self.partitioned, table.as_str()) {
                (true, "claims") => Some("service_date_from"),
                (true, "claim_lines") => Some("service_date"),
                _ => None,
            };
            if in_key && partition_col != Some(col.as_str()) {
                t.key.push(col.clone());
            }
            t.partition_by = partition_col.map(str::to_string);
            t.columns.push((col, ty));
        }
        self.tables = tables;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Vec<(String, String)> {
        vec![
            ("claim_id".into(), "bigint".into()),
            ("status".into(), "text".into()),
            ("place_of_service".into(), "character(2)".into()),
            ("billed_amount".into(), "numeric(12,2)".into()),
        ]
    }

    #[test]
    fn a_column_added_upstream_is_added_and_one_dropped_is_kept() {
        let source = vec![
            ("claim_id".to_string(), ColumnType::Int64),
            ("status".to_string(), ColumnType::Text),
            ("place_of_service".to_string(), ColumnType::Text),
            ("note".to_string(), ColumnType::Text),
            ("extra".to_string(), ColumnType::Json),
        ];
        let plan = plan("hot.claims", &store(), &source).unwrap();
        assert_eq!(
            plan.add,
            vec![
                ("note".into(), "text".into()),
                ("extra".into(), "jsonb".into())
            ]
        );
        assert_eq!(plan.dropped, vec!["billed_amount".to_string()]);
    }

    #[test]
    fn a_type_the_store_cannot_follow_is_an_error_naming_both() {
        let source = vec![("status".to_string(), ColumnType::Int32)];
        let err = plan("hot.claims", &store(), &source).unwrap_err();
        assert!(
            err.contains("hot.claims: column `status` is text in the store"),
            "{err}"
        );
        assert!(err.contains("integer"), "{err}");
        // A wider decimal does not fit numeric(12,2); a narrower one does.
        let wider = [(
            "billed_amount".to_string(),
            ColumnType::Decimal {
                precision: 14,
                scale: 4,
            },
        )];
        assert!(plan("hot.claims", &store(), &wider).is_err());
        let narrower = [(
            "billed_amount".to_string(),
            ColumnType::Decimal {
                precision: 8,
                scale: 2,
            },
        )];
        assert!(plan("hot.claims", &store(), &narrower).is_ok());
    }

    #[test]
    fn a_name_postgres_would_truncate_is_refused_and_others_are_quoted() {
        let long = "n".repeat(64);
        let err = plan("hot.claims", &store(), &[(long.clone(), ColumnType::Text)]).unwrap_err();
        assert!(err.contains(&long) && err.contains("63"), "{err}");
        assert_eq!(quote("order"), "\"order\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_row_columns_of_a_change_envelope_schema() {
        let schema = r#"{"type":"record","name":"E","fields":[
            {"name":"before","type":["null",{"type":"record","name":"V","fields":[
                {"name":"id","type":"long"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"at","type":["null",{"type":"long","logicalType":"timestamp-micros"}]}]}]},
            {"name":"after","type":["null","V"]}]}"#;
        let columns = row_columns(schema).unwrap().unwrap();
        assert_eq!(
            columns,
            vec![
                ("id".into(), ColumnType::Int64),
                ("note".into(), ColumnType::Text),
                ("at".into(), ColumnType::Timestamp)
            ]
        );
        assert_eq!(
            row_columns(r#"{"type":"record","name":"A","fields":[]}"#),
            Ok(None)
        );
    }
}
