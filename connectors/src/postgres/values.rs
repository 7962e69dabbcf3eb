//! PostgreSQL text-format values (as pgoutput and COPY send them) to Avro values, by the
//! column types of `strata_pipeline::avro::types`.
//!
//! A value that cannot be represented (a NaN numeric, an `infinity` date, a number wider
//! than its declared precision) is a [`ValueError`] naming the column, never a guess or
//! a silent NULL: the row goes to the dead-letter topic with the reason.

use apache_avro::types::Value;
use apache_avro::Decimal;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use strata_pipeline::avro::types::{Column, ColumnType};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}`: cannot read `{text}` as {expected}: {reason}")]
pub struct ValueError {
    pub column: String,
    pub text: String,
    pub expected: String,
    pub reason: String,
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
}

/// Converts the text of one non-NULL value of `ty`.
pub fn text_to_avro(column: &str, ty: &ColumnType, text: &str) -> Result<Value, ValueError> {
    let fail = |reason: String| ValueError {
        column: column.to_string(),
        text: text.chars().take(64).collect(),
        expected: format!("{ty:?}"),
        reason,
    };
    Ok(match ty {
        ColumnType::Int32 => Value::Int(text.parse().map_err(|e| fail(format!("{e}")))?),
        ColumnType::Int64 => Value::Long(text.parse().map_err(|e| fail(format!("{e}")))?),
        ColumnType::Float32 => Value::Float(text.parse().map_err(|e| fail(format!("{e}")))?),
        ColumnType::Float64 => Value::Double(text.parse().map_err(|e| fail(format!("{e}")))?),
        ColumnType::Decimal { precision, scale } => {
            let unscaled = parse_decimal(text, *precision, *scale).map_err(fail)?;
            Value::Decimal(Decimal::from(minimal_twos_complement(unscaled)))
        }
        ColumnType::DecimalText | ColumnType::Text | ColumnType::Json => {
            Value::String(text.to_string())
        }
        ColumnType::Bool => match text {
            "t" | "true" => Value::Boolean(true),
            "f" | "false" => Value::Boolean(false),
            _ => return Err(fail("expected t or f".into())),
        },
        ColumnType::Date => {
            let d = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|e| fail(format!("{e} (infinite and BC dates have no Avro form)")))?;
            let days = (d - epoch()).num_days();
            Value::Date(i32::try_from(days).map_err(|_| fail("out of range".into()))?)
        }
        ColumnType::Time => {
            let t =
                NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|e| fail(format!("{e}")))?;
            let micros = (t - NaiveTime::MIN)
                .num_microseconds()
                .ok_or_else(|| fail("out of range".into()))?;
            Value::TimeMicros(micros)
        }
        ColumnType::Timestamp => {
            Value::TimestampMicros(parse_timestamp_micros(text).map_err(fail)?)
        }
        ColumnType::Uuid => {
            let ok = text.len() == 36
                && text.chars().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if !ok {
                return Err(fail("not a UUID".into()));
            }
            Value::String(text.to_string())
        }
        ColumnType::Bytes => Value::Bytes(parse_bytea(text).map_err(fail)?),
        ColumnType::Array(element) => {
            let items = parse_array(text).map_err(fail)?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(match item {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(s) => Value::Union(1, Box::new(text_to_avro(column, element, &s)?)),
                });
            }
            Value::Array(out)
        }
    })
}

/// The Avro value of a column, NULL-able columns as `["null", T]` unions.
pub fn column_value(column: &Column, text: Option<&str>) -> Result<Value, ValueError> {
    match (text, column.nullable) {
        (None, true) => Ok(Value::Union(0, Box::new(Value::Null))),
        (None, false) => Err(ValueError {
            column: column.name.clone(),
            text: "NULL".into(),
            expected: format!("{:?}", column.ty),
            reason: "the column is NOT NULL in the schema Strata read; the table changed — its next Relation message updates the schema".into(),
        }),
        (Some(t), true) => Ok(Value::Union(1, Box::new(text_to_avro(&column.name, &column.ty, t)?))),
        (Some(t), false) => text_to_avro(&column.name, &column.ty, t),
    }
}

/// `-12.5` with scale 2 → -1250, checking the declared precision.
fn parse_decimal(text: &str, precision: u32, scale: u32) -> Result<i128, String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .chars()
            .chain(frac_part.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(
            "not a finite decimal number (NaN and infinity have no Avro decimal form)".into(),
        );
    }
    if frac_part.len() > scale as usize && frac_part[scale as usize..].chars().any(|c| c != '0') {
        return Err(format!("more than {scale} decimal places"));
    }
    let mut unscaled: i128 = 0;
    let frac: String = frac_part
        .chars()
        .chain(std::iter::repeat('0'))
        .take(scale as usize)
        .collect();
    for c in int_part.chars().chain(frac.chars()) {
        unscaled = unscaled
            .checked_mul(10)
            .and_then(|u| u.checked_add(i128::from(c as u8 - b'0')))
            .ok_or("too many digits")?;
    }
    let limit = 10i128.checked_pow(precision).ok_or("precision above 38")?;
    if unscaled >= limit {
        return Err(format!("wider than numeric({precision},{scale})"));
    }
    Ok(if negative { -unscaled } else { unscaled })
}

/// The shortest big-endian two's complement bytes of `n`, as Avro decimals store them.
pub(crate) fn minimal_twos_complement(n: i128) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

fn parse_timestamp_micros(text: &str) -> Result<i64, String> {
    let micros = if let Ok(dt) = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        dt.timestamp_micros()
    } else {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|e| format!("{e} (infinite and BC timestamps have no Avro form)"))?
            .and_utc()
            .timestamp_micros()
    };
    Ok(micros)
}

fn parse_bytea(text: &str) -> Result<Vec<u8>, String> {
    let hex = text
        .strip_prefix("\\x")
        .ok_or("bytea must be in hex output format (bytea_output = hex)")?;
    hex::decode(hex).map_err(|e| e.to_string())
}

/// Elements of a one-dimensional array literal (`{a,"b c",NULL}`); `None` is NULL.
fn parse_array(text: &str) -> Result<Vec<Option<String>>, String> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("an array literal starts with { and ends with }")?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Ok(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.push(chars.next().ok_or("dangling escape")?),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err("unterminated quoted element".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' {
                    return Err("multi-dimensional arrays are not supported".into());
                }
                item.push(c);
                chars.next();
            }
        }
        items.push(if !quoted && item == "NULL" {
            None
        } else {
            Some(item)
        });
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(c) => return Err(format!("unexpected `{c}` after an element")),
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str, p: u32, s: u32) -> Result<Value, ValueError> {
        text_to_avro(
            "amount",
            &ColumnType::Decimal {
                precision: p,
                scale: s,
            },
            text,
        )
    }

    #[test]
    fn decimals_keep_scale_and_sign() {
        assert_eq!(
            dec("1250.50", 12, 2).unwrap(),
            Value::Decimal(Decimal::from(vec![0x01, 0xE8, 0x7A]))
        );
        assert_eq!(
            dec("-0.01", 12, 2).unwrap(),
            Value::Decimal(Decimal::from(vec![0xFF]))
        );
        assert_eq!(
            dec("128", 12, 0).unwrap(),
            Value::Decimal(Decimal::from(vec![0x00, 0x80]))
        );
        assert!(dec("NaN", 12, 2).is_err());
        assert!(dec("1.234", 12, 2).is_err());
        assert!(dec("1000", 3, 0).is_err());
        assert!(
            dec("1.200", 12, 2).is_ok(),
            "trailing zeros beyond the scale are fine"
        );
    }

    #[test]
    fn dates_times_and_timestamps() {
        assert_eq!(
            text_to_avro("d", &ColumnType::Date, "1970-01-02").unwrap(),
            Value::Date(1)
        );
        assert!(text_to_avro("d", &ColumnType::Date, "infinity").is_err());
        assert_eq!(
            text_to_avro("t", &ColumnType::Time, "00:00:01.5").unwrap(),
            Value::TimeMicros(1_500_000)
        );
        let utc = text_to_avro("ts", &ColumnType::Timestamp, "1970-01-01 00:00:01+00").unwrap();
        let offset =
            text_to_avro("ts", &ColumnType::Timestamp, "1970-01-01 02:00:01.25+02").unwrap();
        assert_eq!(utc, Value::TimestampMicros(1_000_000));
        assert_eq!(offset, Value::TimestampMicros(1_250_000));
        assert_eq!(
            text_to_avro("ts", &ColumnType::Timestamp, "1970-01-01 00:00:02").unwrap(),
            Value::TimestampMicros(2_000_000)
        );
    }

    #[test]
    fn arrays_bytea_bool_uuid() {
        let arr = ColumnType::Array(Box::new(ColumnType::Text));
        let v = text_to_avro("dx", &arr, r#"{E11.9,"a,b",NULL,"q\"t"}"#).unwrap();
        let Value::Array(items) = v else {
            panic!("array")
        };
        assert_eq!(items.len(), 4);
        assert_eq!(
            items[1],
            Value::Union(1, Box::new(Value::String("a,b".into())))
        );
        assert_eq!(items[2], Value::Union(0, Box::new(Value::Null)));
        assert_eq!(
            items[3],
            Value::Union(1, Box::new(Value::String("q\"t".into())))
        );
        assert_eq!(
            text_to_avro("b", &ColumnType::Bytes, "\\x0aff").unwrap(),
            Value::Bytes(vec![10, 255])
        );
        // Not hex digits, odd length, or a multi-byte character where a digit pair
        // should start: each an error (the last once panicked slicing inside the char).
        for text in ["\\x0g", "\\x0af", "\\x \u{80}A", "0aff"] {
            assert!(
                text_to_avro("b", &ColumnType::Bytes, text).is_err(),
                "{text}"
            );
        }
        assert_eq!(
            text_to_avro("f", &ColumnType::Bool, "t").unwrap(),
            Value::Boolean(true)
        );
        assert!(text_to_avro("u", &ColumnType::Uuid, "not-a-uuid").is_err());
        assert!(text_to_avro("dx", &arr, "{{1},{2}}").is_err());
    }

    #[test]
    fn null_in_a_not_null_column_is_an_error() {
        let c = Column {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        };
        assert!(column_value(&c, None).is_err());
        let n = Column {
            nullable: true,
            ..c
        };
        assert_eq!(
            column_value(&n, None).unwrap(),
            Value::Union(0, Box::new(Value::Null))
        );
    }

    proptest::proptest! {
        #[test]
        fn decimal_bytes_round_trip(n in -9_999_999_999i64..9_999_999_999i64) {
            let text = format!("{}{}.{:02}", if n < 0 { "-" } else { "" }, n.abs() / 100, n.abs() % 100);
            let Value::Decimal(d) = dec(&text, 12, 2).unwrap() else { panic!("decimal") };
            let bytes: Vec<u8> = d.try_into().unwrap();
            let mut buf = if bytes[0] & 0x80 != 0 { [0xFF; 16] } else { [0; 16] };
            buf[16 - bytes.len()..].copy_from_slice(&bytes);
            proptest::prop_assert_eq!(i128::from_be_bytes(buf), i128::from(n));
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,40}") {
            for ty in [ColumnType::Int64, ColumnType::Date, ColumnType::Timestamp, ColumnType::Bytes,
                       ColumnType::Decimal { precision: 12, scale: 2 }, ColumnType::Array(Box::new(ColumnType::Int32))] {
                let _ = text_to_avro("c", &ty, &text);
            }
        }
    }
}
