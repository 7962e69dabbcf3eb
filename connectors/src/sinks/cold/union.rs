//! One container file for the records of several writer schemas: the file's schema is
//! the union of them, and each datum is the branch of its own schema.
//!
//! A partition of a tier topic interleaves tables (a claim, its lines, its analysis), so
//! a file per writer schema would cut a file at nearly every record. An Avro union may
//! hold any number of records with distinct full names; what stops a plain union of the
//! registered schemas is that they share named types (every change envelope defines
//! `strata.cdc.Source`), and Avro allows a name to be defined once. So the second and
//! later definitions of a name are replaced by a reference to the first — only where
//! they are identical. Two different definitions of one name (two versions of one
//! table's schema) cannot share a file: [`Union::admits`] says so and the writer starts
//! a new file.

use std::collections::HashMap;

use serde_json::Value;

/// The union being built for one file: its branches in order and the named types
/// defined so far, by full name.
#[derive(Default)]
pub struct Union {
    branches: Vec<Value>,
    ids: Vec<u32>,
    defined: HashMap<String, Value>,
}

impl Union {
    /// The branch of writer schema `id`, if it is already in the union.
    pub fn branch(&self, id: u32) -> Option<usize> {
        self.ids.iter().position(|i| *i == id)
    }

    /// Adds schema `id` (its JSON `text`) as the next branch; `false` if it cannot join.
    pub fn add(&mut self, id: u32, text: &str) -> bool {
        let Ok(mut schema) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let mut defined = self.defined.clone();
        if dedupe(&mut schema, "", &mut defined).is_err() {
            return false;
        }
        self.defined = defined;
        self.branches.push(schema);
        self.ids.push(id);
        true
    }

    /// The branches' schema ids, `_`-joined (`17_18_21`), for the file's name.
    pub fn ids(&self) -> String {
        let ids: Vec<String> = self.ids.iter().map(u32::to_string).collect();
        ids.join("_")
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The file's schema: the single branch itself (files of one schema read as before),
    /// or the union of the branches.
    pub fn schema(&self) -> Result<apache_avro::Schema, apache_avro::Error> {
        match self.branches.as_slice() {
            [one] => apache_avro::Schema::parse(one),
            many => apache_avro::Schema::parse(&Value::Array(many.to_vec())),
        }
    }
}

/// A name defined twice, differently.
#[derive(Debug)]
struct Conflict;

/// Replaces, within `node` (enclosed by namespace `ns`), each definition of a name already
/// in `defined` by a reference to it, and records new definitions.
fn dedupe(
    node: &mut Value,
    ns: &str,
    defined: &mut HashMap<String, Value>,
) -> Result<(), Conflict> {
    match node {
        Value::Array(branches) => {
            for b in branches {
                dedupe(b, ns, defined)?;
            }
            Ok(())
        }
        Value::Object(object) => {
            let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
            let named = matches!(kind, "record" | "enum" | "fixed" | "error");
            if !named {
                // A complex type that is not named (array, map) or a wrapped type.
                for key in ["items", "values", "type"] {
                    if let Some(child) = object.get_mut(key) {
                        if !child.is_string() {
                            dedupe(child, ns, defined)?;
                        }
                    }
                }
                return Ok(());
            }
            let full = full_name(object, ns);
            if let Some(first) = defined.get(&full) {
                if first != &Value::Object(object.clone()) {
                    return Err(Conflict);
                }
                *node = Value::String(full);
                return Ok(());
            }
            defined.insert(full.clone(), Value::Object(object.clone()));
            let inner = full.rsplit_once('.').map_or("", |(n, _)| n).to_string();
            if let Some(Value::Array(fields)) = object.get_mut("fields") {
                for field in fields {
                    if let Some(ty) = field.get_mut("type") {
                        dedupe(ty, &inner, defined)?;
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A named type's full name: its `name` if dotted, else `namespace` (or the enclosing
/// one) and `name`.
fn full_name(object: &serde_json::Map<String, Value>, ns: &str) -> String {
    let name = object.get("name").and_then(Value::as_str).unwrap_or("");
    if name.contains('.') {
        return name.to_string();
    }
    let ns = object
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(ns);
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;

    fn envelope(ns: &str, column: &str) -> String {
        serde_json::json!({
            "type": "record", "name": "Envelope", "namespace": ns,
            "fields": [
                {"name": "after", "type": ["null", {"type": "record", "name": "Value",
                    "fields": [{"name": column, "type": "long"}]}]},
                {"name": "before", "type": ["null", "Value"]},
                {"name": "source", "type": {"type": "record", "name": "Source",
                    "namespace": "strata.cdc", "fields": [{"name": "ts_ms", "type": "long"}]}}
            ]
        })
        .to_string()
    }

    #[test]
    fn envelopes_of_different_tables_share_one_file_and_read_back() {
        let mut union = Union::default();
        assert!(union.add(1, &envelope("t.claims", "claim_id")));
        assert!(union.add(2, &envelope("t.lines", "line_id")));
        assert_eq!((union.branch(2), union.len()), (Some(1), 2));
        let schema = union.schema().unwrap();
        let row = |column: &str, n: i64| {
            Avro::Record(vec![
                (
                    "after".into(),
                    Avro::Union(
                        1,
                        Box::new(Avro::Record(vec![(column.into(), Avro::Long(n))])),
                    ),
                ),
                ("before".into(), Avro::Union(0, Box::new(Avro::Null))),
                (
                    "source".into(),
                    Avro::Record(vec![("ts_ms".into(), Avro::Long(n))]),
                ),
            ])
        };
        let mut writer = apache_avro::Writer::new(&schema, Vec::new()).unwrap();
        writer
            .append_value(Avro::Union(0, Box::new(row("claim_id", 7))))
            .unwrap();
        writer
            .append_value(Avro::Union(1, Box::new(row("line_id", 8))))
            .unwrap();
        let bytes = writer.into_inner().unwrap();
        let read: Vec<Avro> = apache_avro::Reader::new(&bytes[..])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            read,
            [
                Avro::Union(0, Box::new(row("claim_id", 7))),
                Avro::Union(1, Box::new(row("line_id", 8)))
            ]
        );
    }

    #[test]
    fn two_versions_of_one_table_do_not_share_a_file() {
        let mut union = Union::default();
        assert!(union.add(1, &envelope("t.claims", "claim_id")));
        assert!(!union.add(3, &envelope("t.claims", "other")));
        assert_eq!(
            union.ids(),
            "1",
            "a refused schema leaves the union as it was"
        );
        assert!(union.add(4, &envelope("t.lines", "line_id")));
        assert_eq!(union.ids(), "1_4");
    }

    #[test]
    fn a_single_schema_is_the_file_schema_itself() {
        let mut union = Union::default();
        union.add(1, &envelope("t.claims", "claim_id"));
        assert!(matches!(
            union.schema().unwrap(),
            apache_avro::Schema::Record(_)
        ));
    }
}
