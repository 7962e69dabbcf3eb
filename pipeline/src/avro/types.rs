//! Column types of captured tables and their Avro form, shared by the PostgreSQL and
//! SQL Server sources so the same column gives the same Avro type whichever database it
//! comes from. docs/type-mapping.md has the table for users; the tests below pin it.
//!
//! | source type                                   | Avro                                           |
//! |-----------------------------------------------|------------------------------------------------|
//! | smallint, tinyint, integer                    | int                                            |
//! | bigint                                        | long                                           |
//! | real / double precision, float                | float / double                                 |
//! | numeric(p,s), decimal(p,s), money             | bytes, logicalType decimal (precision, scale)  |
//! | numeric without precision                     | string (exact decimal text)                    |
//! | text, varchar, char, nvarchar, nchar, ntext   | string                                         |
//! | boolean, bit                                  | boolean                                        |
//! | date                                          | int, logicalType date                          |
//! | time                                          | long, logicalType time-micros                  |
//! | timestamp, timestamptz, datetime, datetime2, datetimeoffset | long, logicalType timestamp-micros (UTC) |
//! | uuid, uniqueidentifier                        | string, logicalType uuid                       |
//! | json, jsonb                                   | string (`strata.type: json`)                   |
//! | bytea, varbinary, binary                      | bytes                                          |
//! | T[]                                           | array of (null or T)                           |
//! | NULL-able column                              | union of null and the type, default null       |

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// A decimal with no declared precision: kept exact as text.
    DecimalText,
    Text,
    Bool,
    Date,
    Time,
    Timestamp,
    Uuid,
    Json,
    Bytes,
    Array(Box<ColumnType>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column type `{type_name}` ({database}) has no Avro mapping; see docs/type-mapping.md for the supported types, or cast the column in a view")]
pub struct UnmappedType {
    pub database: &'static str,
    pub type_name: String,
}

/// Splits `numeric(12,2)` into `numeric` and `[12, 2]`.
fn split_modifiers(type_name: &str) -> (&str, Vec<i64>) {
    match type_name.split_once('(') {
        Some((base, rest)) => {
            let args = rest
                .trim_end_matches(')')
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            (base.trim(), args)
        }
        None => (type_name.trim(), Vec::new()),
    }
}

/// `decimal(p)` / `decimal(p,s)` modifiers; `None` when there are none (or no valid
/// precision). Avro wants 0 ≤ scale ≤ precision, which PostgreSQL 15 does not: a scale
/// above the precision (`numeric(2,5)`: at most 0.00099) widens the precision to the
/// scale, a negative one (`numeric(3,-2)`: up to 99900) becomes scale 0 with the
/// precision the rounded integers need. Every value of the column fits either way.
fn decimal(args: &[i64]) -> Option<ColumnType> {
    let (precision, scale) = match args {
        [p] => (*p, 0),
        [p, s] => (*p, *s),
        _ => return None,
    };
    if precision < 1 {
        return None;
    }
    let (precision, scale) = if scale < 0 {
        (precision.checked_sub(scale)?, 0)
    } else {
        (precision.max(scale), scale)
    };
    Some(ColumnType::Decimal {
        precision: u32::try_from(precision).ok()?,
        scale: u32::try_from(scale).ok()?,
    })
}

impl ColumnType {
    /// Maps a PostgreSQL type as `format_type()` prints it (`numeric(12,2)`,
    /// `timestamp with time zone`, `text[]`).
    pub fn from_postgres(type_name: &str) -> Result<ColumnType, UnmappedType> {
        let unmapped = || UnmappedType {
            database: "postgres",
            type_name: type_name.to_string(),
        };
        if let Some(element) = type_name.strip_suffix("[]") {
            return Ok(ColumnType::Array(Box::new(Self::from_postgres(element)?)));
        }
        let (base, args) = split_modifiers(type_name);
        // `timestamp(3) with time zone` carries its modifier in the middle.
        let base_words: String = if base.starts_with("timestamp") || base.starts_with("time") {
            type_name
                .split(['(', ')'])
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(_, s)| s.trim())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            base.to_string()
        };
        Ok(match base_words.as_str() {
            "smallint" | "integer" | "int" | "int2" | "int4" => ColumnType::Int32,
            "bigint" | "int8" => ColumnType::Int64,
            "real" | "float4" => ColumnType::Float32,
            "double precision" | "float8" => ColumnType::Float64,
            "numeric" | "decimal" => decimal(&args).unwrap_or(ColumnType::DecimalText),
            "money" => ColumnType::Decimal {
                precision: 19,
                scale: 2,
            },
            "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "name"
            | "citext" => ColumnType::Text,
            "boolean" | "bool" => ColumnType::Bool,
            "date" => ColumnType::Date,
            "time" | "time without time zone" => ColumnType::Time,
            "timestamp"
            | "timestamp without time zone"
            | "timestamp with time zone"
            | "timestamptz" => ColumnType::Timestamp,
            "uuid" => ColumnType::Uuid,
            "json" | "jsonb" => ColumnType::Json,
            "bytea" => ColumnType::Bytes,
            _ => return Err(unmapped()),
        })
    }

    /// Maps a SQL Server type as `sys.types` names it, with its modifiers
    /// (`decimal(12,2)`, `nvarchar(50)`).
    pub fn from_sqlserver(type_name: &str) -> Result<ColumnType, UnmappedType> {
        let (base, args) = split_modifiers(type_name);
        Ok(match base.to_ascii_lowercase().as_str() {
            "tinyint" | "smallint" | "int" => ColumnType::Int32,
            "bigint" => ColumnType::Int64,
            "real" => ColumnType::Float32,
            "float" => ColumnType::Float64,
            // SQL Server's default precision is 18.
            "decimal" | "numeric" => decimal(&args).unwrap_or(ColumnType::Decimal {
                precision: 18,
                scale: 0,
            }),
            "money" => ColumnType::Decimal {
                precision: 19,
                scale: 4,
            },
            "smallmoney" => ColumnType::Decimal {
                precision: 10,
                scale: 4,
            },
            "bit" => ColumnType::Bool,
            "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "sysname" => {
                ColumnType::Text
            }
            "date" => ColumnType::Date,
            "time" => ColumnType::Time,
            "datetime" | "datetime2" | "smalldatetime" | "datetimeoffset" => ColumnType::Timestamp,
            "uniqueidentifier" => ColumnType::Uuid,
            "binary" | "varbinary" | "image" => ColumnType::Bytes,
            _ => {
                return Err(UnmappedType {
                    database: "sqlserver",
                    type_name: type_name.to_string(),
                })
            }
        })
    }

    /// The Avro schema of a non-null value of this type.
    pub fn avro(&self) -> Value {
        match self {
            ColumnType::Int32 => json!("int"),
            ColumnType::Int64 => json!("long"),
            ColumnType::Float32 => json!("float"),
            ColumnType::Float64 => json!("double"),
            ColumnType::Decimal { precision, scale } => {
                json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale})
            }
            ColumnType::DecimalText => json!({"type": "string", "strata.type": "decimal"}),
            ColumnType::Text => json!("string"),
            ColumnType::Bool => json!("boolean"),
            ColumnType::Date => json!({"type": "int", "logicalType": "date"}),
            ColumnType::Time => json!({"type": "long", "logicalType": "time-micros"}),
            ColumnType::Timestamp => json!({"type": "long", "logicalType": "timestamp-micros"}),
            ColumnType::Uuid => json!({"type": "string", "logicalType": "uuid"}),
            ColumnType::Json => json!({"type": "string", "strata.type": "json"}),
            ColumnType::Bytes => json!("bytes"),
            ColumnType::Array(element) => {
                json!({"type": "array", "items": ["null", element.avro()]})
            }
        }
    }
}

impl ColumnType {
    /// The column type whose [`ColumnType::avro`] is `schema` (the inverse mapping, read
    /// by the stores to follow a column added upstream); `None` for a schema no column
    /// type maps to.
    pub fn from_avro(schema: &Value) -> Option<ColumnType> {
        let logical = |name: &str| schema.get("logicalType").and_then(Value::as_str) == Some(name);
        let strata = |name: &str| schema.get("strata.type").and_then(Value::as_str) == Some(name);
        let base = match schema {
            Value::String(t) => t.as_str(),
            Value::Object(o) => o.get("type").and_then(Value::as_str)?,
            _ => return None,
        };
        Some(match base {
            "int" if logical("date") => ColumnType::Date,
            "int" => ColumnType::Int32,
            "long" if logical("time-micros") => ColumnType::Time,
            "long" if logical("timestamp-micros") => ColumnType::Timestamp,
            "long" => ColumnType::Int64,
            "float" => ColumnType::Float32,
            "double" => ColumnType::Float64,
            "bytes" if logical("decimal") => ColumnType::Decimal {
                precision: u32::try_from(schema.get("precision")?.as_u64()?).ok()?,
                scale: schema
                    .get("scale")
                    .and_then(Value::as_u64)
                    .map_or(Some(0), |s| u32::try_from(s).ok())?,
            },
            "bytes" => ColumnType::Bytes,
            "string" if strata("decimal") => ColumnType::DecimalText,
            "string" if strata("json") => ColumnType::Json,
            "string" if logical("uuid") => ColumnType::Uuid,
            "string" => ColumnType::Text,
            "boolean" => ColumnType::Bool,
            "array" => {
                let items = schema.get("items")?;
                let element = match items {
                    Value::Array(branches) => branches.iter().find(|b| *b != "null")?,
                    other => other,
                };
                ColumnType::Array(Box::new(ColumnType::from_avro(element)?))
            }
            _ => return None,
        })
    }

    /// The PostgreSQL type a store gives a column of this type.
    pub fn postgres(&self) -> String {
        match self {
            ColumnType::Int32 => "integer".into(),
            ColumnType::Int64 => "bigint".into(),
            ColumnType::Float32 => "real".into(),
            ColumnType::Float64 => "double precision".into(),
            ColumnType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
            ColumnType::DecimalText => "numeric".into(),
            ColumnType::Text => "text".into(),
            ColumnType::Bool => "boolean".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Time => "time without time zone".into(),
            ColumnType::Timestamp => "timestamp with time zone".into(),
            ColumnType::Uuid => "uuid".into(),
            ColumnType::Json => "jsonb".into(),
            ColumnType::Bytes => "bytea".into(),
            ColumnType::Array(element) => format!("{}[]", element.postgres()),
        }
    }
}

impl Column {
    /// The Avro field for this column; NULL-able columns are `["null", T]` with default null.
    pub fn avro_field(&self) -> Value {
        if self.nullable {
            json!({"name": avro_name(&self.name), "type": ["null", self.ty.avro()], "default": null})
        } else {
            json!({"name": avro_name(&self.name), "type": self.ty.avro()})
        }
    }
}

/// An Avro name for `text`: letters, digits and `_`, not starting with a digit.
pub fn avro_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// An Avro namespace for a topic name: each dot-separated part made a valid name.
pub fn avro_namespace(topic: &str) -> String {
    topic
        .split('.')
        .map(avro_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// The Avro record of a row with `columns`.
pub fn row_record(name: &str, columns: &[Column]) -> Value {
    json!({
        "type": "record",
        "name": name,
        "fields": columns.iter().map(Column::avro_field).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_type_reads_back_from_its_avro_form_and_has_a_store_type() {
        let scalars = [
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::Decimal {
                precision: 12,
                scale: 2,
            },
            ColumnType::DecimalText,
            ColumnType::Text,
            ColumnType::Bool,
            ColumnType::Date,
            ColumnType::Time,
            ColumnType::Timestamp,
            ColumnType::Uuid,
            ColumnType::Json,
            ColumnType::Bytes,
        ];
        for t in scalars {
            let array = ColumnType::Array(Box::new(t.clone()));
            for t in [t, array] {
                assert_eq!(ColumnType::from_avro(&t.avro()), Some(t.clone()), "{t:?}");
                // The store's type maps back to the same column type.
                assert_eq!(
                    ColumnType::from_postgres(&t.postgres()),
                    Ok(t.clone()),
                    "{t:?}"
                );
            }
        }
        assert_eq!(
            ColumnType::from_avro(&json!({"type": "map", "values": "int"})),
            None
        );
    }

    #[test]
    fn postgres_types_map_as_documented() {
        let cases = [
            ("smallint", ColumnType::Int32),
            ("integer", ColumnType::Int32),
            ("bigint", ColumnType::Int64),
            (
                "numeric(12,2)",
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            (
                "numeric(7)",
                ColumnType::Decimal {
                    precision: 7,
                    scale: 0,
                },
            ),
            // PostgreSQL 15 allows a scale above the precision, or below zero.
            (
                "numeric(2,5)",
                ColumnType::Decimal {
                    precision: 5,
                    scale: 5,
                },
            ),
            (
                "numeric(3,-2)",
                ColumnType::Decimal {
                    precision: 5,
                    scale: 0,
                },
            ),
            ("numeric", ColumnType::DecimalText),
            ("text", ColumnType::Text),
            ("character varying(20)", ColumnType::Text),
            ("character(3)", ColumnType::Text),
            ("boolean", ColumnType::Bool),
            ("date", ColumnType::Date),
            ("timestamp without time zone", ColumnType::Timestamp),
            ("timestamp(3) with time zone", ColumnType::Timestamp),
            ("timestamp with time zone", ColumnType::Timestamp),
            ("uuid", ColumnType::Uuid),
            ("jsonb", ColumnType::Json),
            ("json", ColumnType::Json),
            ("bytea", ColumnType::Bytes),
            ("double precision", ColumnType::Float64),
            ("text[]", ColumnType::Array(Box::new(ColumnType::Text))),
            (
                "character varying(10)[]",
                ColumnType::Array(Box::new(ColumnType::Text)),
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(ColumnType::from_postgres(name), Ok(expected), "{name}");
        }
        let err = ColumnType::from_postgres("tsvector").unwrap_err();
        assert!(err.to_string().contains("tsvector"));
    }

    #[test]
    fn sqlserver_types_map_to_the_same_avro() {
        let same = [
            ("int", "integer"),
            ("bigint", "bigint"),
            ("decimal(12,2)", "numeric(12,2)"),
            ("nvarchar(50)", "text"),
            ("bit", "boolean"),
            ("date", "date"),
            ("datetime2", "timestamp without time zone"),
            ("datetimeoffset", "timestamp with time zone"),
            ("uniqueidentifier", "uuid"),
            ("varbinary(max)", "bytea"),
        ];
        for (mssql, pg) in same {
            assert_eq!(
                ColumnType::from_sqlserver(mssql).unwrap().avro(),
                ColumnType::from_postgres(pg).unwrap().avro(),
                "{mssql} vs {pg}"
            );
        }
        assert!(ColumnType::from_sqlserver("geography").is_err());
    }

    #[test]
    fn nullable_columns_are_unions_with_null_default() {
        let col = Column {
            name: "paid".into(),
            ty: ColumnType::Decimal {
                precision: 12,
                scale: 2,
            },
            nullable: true,
        };
        let field = col.avro_field();
        assert_eq!(field["type"][0], "null");
        assert_eq!(field["default"], Value::Null);
        let record = row_record("Value", &[col]);
        apache_avro::Schema::parse(&record).expect("a valid Avro schema");
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(avro_name("2nd-col"), "_2nd_col");
        assert_eq!(
            avro_namespace("us-east.cdc.claims.public.claims"),
            "us_east.cdc.claims.public.claims"
        );
    }
}
