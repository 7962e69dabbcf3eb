//! Compatibility levels and the Avro checks behind them, as Confluent defines them:
//! BACKWARD — the new schema reads data written with the old one; FORWARD — the old
//! schema reads data written with the new one; FULL — both. The `_TRANSITIVE` forms check
//! against every live version, the others against the latest only.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::SchemaCompatibility;
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
            if let Err(e) = SchemaCompatibility::can_read(old, new) {
                problems.push(format!("the new schema cannot read data written with an earlier one: {e}"));
            }
        }
        if level.checks_forward() {
            if let Err(e) = SchemaCompatibility::can_read(new, old) {
                problems.push(format!("an earlier schema cannot read data written with the new one: {e}"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(r#"{{"type":"record","name":"r","fields":[{fields}]}}"#)).unwrap()
    }

    #[test]
    fn levels_follow_confluent_semantics() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let optional_added = schema(r#"{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}"#);
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
    fn parses_level_names() {
        assert_eq!("full_transitive".parse::<Level>(), Ok(Level::FullTransitive));
        assert!("SIDEWAYS".parse::<Level>().is_err());
    }
}
