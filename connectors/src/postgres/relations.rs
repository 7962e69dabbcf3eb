//! The relation cache: what pgoutput `Relation` messages say about each captured table,
//! turned into the columns Avro schemas are derived from, and schema changes detected.
//!
//! Nullability policy: primary-key columns are required, every other column is
//! NULL-able on the wire. `Relation` messages do not carry NOT NULL, and making it part
//! of the schema would turn a harmless `ALTER … DROP NOT NULL` upstream into an
//! incompatible schema change.

use std::collections::HashMap;

use strata_pipeline::avro::types::{Column, ColumnType, UnmappedType};

use super::pgoutput::Relation;

/// Built-in type OIDs and their `format_type` names; others are looked up in the catalog.
fn builtin_type(oid: u32, typmod: i32) -> Option<String> {
    let numeric = |m: i32| {
        if m < 4 {
            "numeric".to_string()
        } else {
            let m = m - 4;
            format!("numeric({},{})", (m >> 16) & 0xFFFF, m & 0xFFFF)
        }
    };
    Some(match oid {
        16 => "boolean".into(),
        17 => "bytea".into(),
        20 => "bigint".into(),
        21 => "smallint".into(),
        23 => "integer".into(),
        25 | 1042 | 1043 | 19 => "text".into(),
        114 => "json".into(),
        3802 => "jsonb".into(),
        700 => "real".into(),
        701 => "double precision".into(),
        1082 => "date".into(),
        1083 => "time without time zone".into(),
        1114 => "timestamp without time zone".into(),
        1184 => "timestamp with time zone".into(),
        1700 => numeric(typmod),
        2950 => "uuid".into(),
        1000 => "boolean[]".into(),
        1005 => "smallint[]".into(),
        1007 => "integer[]".into(),
        1016 => "bigint[]".into(),
        1009 | 1014 | 1015 => "text[]".into(),
        1231 => format!("{}[]", numeric(typmod)),
        1182 => "date[]".into(),
        1115 => "timestamp without time zone[]".into(),
        1185 => "timestamp with time zone[]".into(),
        _ => return None,
    })
}

pub use crate::emitter::TableShape;

/// What a new `Relation` message means for a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// First sight of the table since the replication connection opened.
    New,
    /// Same columns as before (PostgreSQL resends relations after reconnects and cache resets).
    Unchanged,
    /// Columns were added, dropped or changed type: a new schema version.
    Altered {
        added: Vec<String>,
        dropped: Vec<String>,
        retyped: Vec<String>,
    },
}

#[derive(Debug, Default)]
pub struct RelationCache {
    by_oid: HashMap<u32, TableShape>,
    /// (schema, table) → primary key, from the catalog. The key flags of a relation
    /// message are its replica identity: every column under `REPLICA IDENTITY FULL`,
    /// which must not become the Kafka key.
    primary_keys: HashMap<(String, String), Vec<String>>,
}

impl RelationCache {
    pub fn with_keys(primary_keys: HashMap<(String, String), Vec<String>>) -> Self {
        Self {
            by_oid: HashMap::new(),
            primary_keys,
        }
    }

    /// Records `relation`; `lookup` names types that are not built in (`format_type(oid, typmod)`).
    pub fn update(
        &mut self,
        relation: &Relation,
        lookup: &dyn Fn(u32, i32) -> Option<String>,
    ) -> Result<(TableShape, Change), UnmappedType> {
        let key: Vec<String> = match self
            .primary_keys
            .get(&(relation.namespace.clone(), relation.name.clone()))
        {
            Some(pk) if !pk.is_empty() => pk.clone(),
            _ => relation
                .columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| c.name.clone())
                .collect(),
        };
        let mut columns = Vec::with_capacity(relation.columns.len());
        for c in &relation.columns {
            let type_name = builtin_type(c.type_oid, c.type_modifier)
                .or_else(|| lookup(c.type_oid, c.type_modifier))
                .unwrap_or_else(|| format!("type oid {}", c.type_oid));
            let ty = ColumnType::from_postgres(&type_name)?;
            columns.push(Column {
                name: c.name.clone(),
                ty,
                nullable: !key.contains(&c.name),
            });
        }
        let shape = TableShape {
            schema: relation.namespace.clone(),
            table: relation.name.clone(),
            key,
            columns,
        };
        let change = match self.by_oid.get(&relation.oid) {
            None => Change::New,
            Some(old) if old.columns == shape.columns => Change::Unchanged,
            Some(old) => {
                let names =
                    |s: &TableShape| s.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
                let (old_names, new_names) = (names(old), names(&shape));
                Change::Altered {
                    added: new_names
                        .iter()
                        .filter(|n| !old_names.contains(n))
                        .cloned()
                        .collect(),
                    dropped: old_names
                        .iter()
                        .filter(|n| !new_names.contains(n))
                        .cloned()
                        .collect(),
                    retyped: shape
                        .columns
                        .iter()
                        .filter(|c| old.columns.iter().any(|o| o.name == c.name && o.ty != c.ty))
                        .map(|c| c.name.clone())
                        .collect(),
                }
            }
        };
        self.by_oid.insert(relation.oid, shape.clone());
        Ok((shape, change))
    }

    pub fn get(&self, oid: u32) -> Option<&TableShape> {
        self.by_oid.get(&oid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::pgoutput::{RelationColumn, ReplicaIdentity};

    fn relation(columns: &[(&str, u32, i32, bool)]) -> Relation {
        Relation {
            oid: 1,
            namespace: "public".into(),
            name: "claims".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|(n, oid, m, key)| RelationColumn {
                    is_key: *key,
                    name: n.to_string(),
                    type_oid: *oid,
                    type_modifier: *m,
                })
                .collect(),
        }
    }

    #[test]
    fn maps_types_and_detects_changes() {
        let mut cache = RelationCache::default();
        let none = |_: u32, _: i32| None;
        let numeric_12_2 = ((12 << 16) | 2) + 4;
        let (shape, change) = cache
            .update(
                &relation(&[("id", 20, -1, true), ("amount", 1700, numeric_12_2, false)]),
                &none,
            )
            .unwrap();
        assert_eq!(change, Change::New);
        assert_eq!(shape.key, vec!["id"]);
        assert_eq!(
            shape.columns[1].ty,
            ColumnType::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert!(!shape.columns[0].nullable && shape.columns[1].nullable);

        let (_, again) = cache
            .update(
                &relation(&[("id", 20, -1, true), ("amount", 1700, numeric_12_2, false)]),
                &none,
            )
            .unwrap();
        assert_eq!(again, Change::Unchanged);
        let (_, altered) = cache
            .update(
                &relation(&[
                    ("id", 20, -1, true),
                    ("amount", 701, -1, false),
                    ("note", 25, -1, false),
                ]),
                &none,
            )
            .unwrap();
        assert_eq!(
            altered,
            Change::Altered {
                added: vec!["note".into()],
                dropped: vec![],
                retyped: vec!["amount".into()]
            }
        );
    }

    #[test]
    fn under_replica_identity_full_the_key_is_still_the_primary_key() {
        let keys = HashMap::from([(
            ("public".to_string(), "claims".to_string()),
            vec!["id".to_string()],
        )]);
        let mut cache = RelationCache::with_keys(keys);
        let none = |_: u32, _: i32| None;
        // REPLICA IDENTITY FULL flags every column as part of the identity.
        let (shape, _) = cache
            .update(
                &relation(&[("id", 20, -1, true), ("note", 25, -1, true)]),
                &none,
            )
            .unwrap();
        assert_eq!(shape.key, vec!["id".to_string()]);
        assert!(!shape.columns[0].nullable && shape.columns[1].nullable);
    }

    #[test]
    fn unknown_types_use_the_lookup_or_fail_clearly() {
        let mut cache = RelationCache::default();
        let lookup = |oid: u32, _: i32| (oid == 90_001).then(|| "citext".to_string());
        assert!(cache
            .update(
                &relation(&[("id", 20, -1, true), ("email", 90_001, -1, false)]),
                &lookup
            )
            .is_ok());
        let err = cache
            .update(
                &relation(&[("id", 20, -1, true), ("doc", 3614, -1, false)]),
                &lookup,
            )
            .unwrap_err();
        assert!(err.to_string().contains("3614"), "{err}");
    }
}
