//! Compatibility levels and the Avro checks behind them, as Confluent defines them:
//! BACKWARD — the new schema reads data written with the old one; FORWARD — the old
//! schema reads data written with the new one; FULL — both. The `_TRANSITIVE` forms check
//! against every live version, the others against the latest only.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::None,
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    /// The same check against a single version.
    pub fn non_transitive(self) -> Level {
        match self {
            Level::BackwardTransitive => Level::Backward,
            Level::ForwardTransitive => Level::Forward,
            Level::FullTransitive => Level::Full,
            other => other,
        }
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

/// Checks `new` against `existing` (oldest first) under `level`; returns the reasons it fails.
pub fn check(level: Level, new: &Schema, existing: &[&Schema]) -> Vec<String> {
    let against: &[&Schema] = if level.is_transitive() {
        existing
    } else {
        existing.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    let mut problems = Vec::new();
    for old in against {
        if level.checks_backward() {
            if let Some(why) = cannot_read(old, new) {
                problems.push(format!(
                    "the new schema cannot read data written with an earlier one: {why}"
                ));
            }
        }
        if level.checks_forward() {
            if let Some(why) = cannot_read(new, old) {
                problems.push(format!(
                    "an earlier schema cannot read data written with the new one: {why}"
                ));
            }
        }
    }
    problems
}

/// Why `reader` cannot read every datum written with `writer`, or `None` if it can.
///
/// apache-avro answers `Partial` when only some branches of a union resolve (a nullable
/// row record whose new field lacks a default, say); Confluent counts that as
/// incompatible, and so does this, naming the field found by [`partial_cause`].
fn cannot_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some(
            partial_cause(writer, reader, "")
                .unwrap_or_else(|| "some values of the earlier schema have no match".into()),
        ),
        Err(e) => Some(e.to_string()),
    }
}

/// Walks two schemas to the first place where reading fails, with its field path.
fn partial_cause(writer: &Schema, reader: &Schema, path: &str) -> Option<String> {
    let at = |why: String| {
        if path.is_empty() {
            why
        } else {
            format!("at `{path}`: {why}")
        }
    };
    match (writer, reader) {
        (Schema::Record(w), Schema::Record(r)) => r.fields.iter().find_map(|rf| {
            let wf = w.fields.iter().find(|wf| wf.name == rf.name)?;
            let child = if path.is_empty() {
                rf.name.clone()
            } else {
                format!("{path}.{}", rf.name)
            };
            partial_cause(&wf.schema, &rf.schema, &child)
        }),
        (Schema::Union(w), Schema::Union(r)) => w.variants().iter().find_map(|wv| {
            let same = r.variants().iter().find(|rv| match (wv.name(), rv.name()) {
                (Some(a), Some(b)) => a.name() == b.name(),
                (None, None) => std::mem::discriminant(*rv) == std::mem::discriminant(wv),
                _ => false,
            });
            match same {
                None => Some(at(format!(
                    "the union has no branch for {:?}",
                    wv.name().map(|n| n.name()).unwrap_or("a value")
                ))),
                Some(rv) => match SchemaCompatibility::can_read(wv, rv) {
                    Ok(Compatibility::Full) => None,
                    Ok(Compatibility::Partial) => partial_cause(wv, rv, path),
                    Err(e) => Some(at(e.to_string())),
                },
            }
        }),
        (Schema::Array(w), Schema::Array(r)) => partial_cause(&w.items, &r.items, path),
        (Schema::Map(w), Schema::Map(r)) => partial_cause(&w.types, &r.types, path),
        _ => match SchemaCompatibility::can_read(writer, reader) {
            Ok(Compatibility::Full) => None,
            Ok(Compatibility::Partial) => Some(at(
                "only some values resolve (e.g. enum symbols missing)".into(),
            )),
            Err(e) => Some(at(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"r","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn levels_follow_confluent_semantics() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let optional_added = schema(
            r#"{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        let required_added = schema(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#);
        let removed = schema(r#"{"name":"c","type":["null","string"],"default":null}"#);

        assert!(check(Level::Backward, &optional_added, &[&v1]).is_empty());
        assert!(check(Level::Full, &optional_added, &[&v1]).is_empty());
        assert!(!check(Level::Backward, &required_added, &[&v1]).is_empty());
        assert!(check(Level::Forward, &required_added, &[&v1]).is_empty());
        assert!(!check(Level::Forward, &removed, &[&v1]).is_empty());
        assert!(check(Level::None, &removed, &[&v1]).is_empty());
    }

    #[test]
    fn transitive_checks_every_version() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"},{"name":"b","type":"string","default":"x"}"#);
        // Drops `a`, which v1 data has without a default in v3: fine against v2 only when
        // `a` is optional there — here it is not, so both levels fail; make v3 read v2 only.
        let v3 = schema(r#"{"name":"b","type":"string","default":"x"}"#);
        assert!(check(Level::Backward, &v3, &[&v1, &v2]).is_empty());
        assert!(check(Level::BackwardTransitive, &v3, &[&v1, &v2]).is_empty());
        let v3_needs_b = schema(r#"{"name":"b","type":"string"}"#);
        assert!(check(Level::Backward, &v3_needs_b, &[&v1, &v2]).is_empty());
        assert!(!check(Level::BackwardTransitive, &v3_needs_b, &[&v1, &v2]).is_empty());
    }

    #[test]
    fn a_required_field_inside_a_nullable_record_is_incompatible() {
        let wrap = |fields: &str| {
            Schema::parse_str(&format!(
                r#"{{"type":"record","name":"Envelope","fields":[{{"name":"after","type":["null",{{"type":"record","name":"Value","fields":[{fields}]}}],"default":null}}]}}"#
            ))
            .unwrap()
        };
        let v1 = wrap(r#"{"name":"id","type":"long"}"#);
        let v2 = wrap(r#"{"name":"id","type":"long"},{"name":"billed","type":"double"}"#);
        let problems = check(Level::Backward, &v2, &[&v1]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("billed") && problems[0].contains("after"),
            "{problems:?}"
        );
        let v3 = wrap(
            r#"{"name":"id","type":"long"},{"name":"note","type":["null","string"],"default":null}"#,
        );
        assert!(check(Level::Full, &v3, &[&v1]).is_empty());
    }

    #[test]
    fn parses_level_names() {
        assert_eq!(
            "full_transitive".parse::<Level>(),
            Ok(Level::FullTransitive)
        );
        assert!("SIDEWAYS".parse::<Level>().is_err());
    }
}
