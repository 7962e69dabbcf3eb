//! Avro values as the text PostgreSQL parses back into a column's type.

use apache_avro::types::Value;
use chrono::NaiveDate;

/// The text PostgreSQL parses back into `v` for a column of type `ty`.
pub fn to_text(v: &Value, ty: &str) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Union(_, inner) => return to_text(inner, ty),
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Long(l) => l.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::String(s) | Value::Enum(_, s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Date(d) => NaiveDate::from_num_days_from_ce_opt(*d + 719_163)?.to_string(),
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            chrono::DateTime::from_timestamp_micros(*us)?.to_rfc3339()
        }
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            chrono::DateTime::from_timestamp_millis(*ms)?.to_rfc3339()
        }
        Value::Decimal(d) => {
            let scale = ty
                .split_once(',')
                .and_then(|(_, s)| s.trim_end_matches(')').trim().parse::<u32>().ok())
                .unwrap_or(0);
            decimal_text(&Vec::<u8>::try_from(d).ok()?, scale)?
        }
        Value::Bytes(b) | Value::Fixed(_, b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("\\x{hex}")
        }
        Value::Array(items) => {
            let inner = ty.trim_end_matches("[]");
            let parts: Vec<String> = items
                .iter()
                .map(|i| match to_text(i, inner) {
                    None => "NULL".into(),
                    Some(t) => format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")),
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => format!("{other:?}"),
    })
}

/// Two's-complement big-endian unscaled bytes as a decimal string with `scale` digits.
fn decimal_text(bytes: &[u8], scale: u32) -> Option<String> {
    if bytes.len() > 16 {
        return None;
    }
    let mut unscaled: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(*b);
    }
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if negative { "-" } else { "" };
    Some(if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_postgres_text() {
        assert_eq!(decimal_text(&[0x30, 0x39], 2).as_deref(), Some("123.45"));
        assert_eq!(decimal_text(&[0xff, 0x38], 2).as_deref(), Some("-2.00"));
        assert_eq!(decimal_text(&[0x05], 3).as_deref(), Some("0.005"));
        assert_eq!(
            to_text(&Value::Date(0), "date").as_deref(),
            Some("1970-01-01")
        );
        let arr = Value::Array(vec![
            Value::String("E11.9".into()),
            Value::String("a\"b".into()),
        ]);
        assert_eq!(
            to_text(&arr, "text[]").as_deref(),
            Some(r#"{"E11.9","a\"b"}"#)
        );
        assert_eq!(
            to_text(&Value::Union(0, Box::new(Value::Null)), "text"),
            None
        );
        assert_eq!(
            to_text(
                &Value::TimestampMicros(1_000_000),
                "timestamp with time zone"
            )
            .as_deref(),
            Some("1970-01-01T00:00:01+00:00")
        );
    }
}
