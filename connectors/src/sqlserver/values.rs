//! SQL Server values (tiberius `ColumnData`) to Avro, by the column types of
//! `strata_pipeline::avro::types` — the same Avro types the PostgreSQL source gives the
//! same columns (docs/type-mapping.md).
//!
//! A value that does not fit its column's Avro type (a decimal wider than the declared
//! precision, a value of another type than the catalog said) is a [`ValueError`] naming
//! the column; the row goes to the dead-letter topic, never a silent NULL.

use apache_avro::types::Value;
use apache_avro::Decimal;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use strata_pipeline::avro::types::{Column, ColumnType};
use tiberius::{ColumnData, FromSql};

use crate::postgres::values::minimal_twos_complement as twos_complement;
pub use crate::postgres::values::ValueError;

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
}

/// The Avro value of `data` in `column` (NULL-able columns as `["null", T]` unions).
pub fn column_value(column: &Column, data: &ColumnData<'static>) -> Result<Value, ValueError> {
    let value = to_avro(column, data)?;
    Ok(match (value, column.nullable) {
        (None, true) => Value::Union(0, Box::new(Value::Null)),
        (None, false) => {
            return Err(error(
                column,
                data,
                "NULL in a column the schema says is NOT NULL".into(),
            ))
        }
        (Some(v), true) => Value::Union(1, Box::new(v)),
        (Some(v), false) => v,
    })
}

fn error(column: &Column, data: &ColumnData<'static>, reason: String) -> ValueError {
    ValueError {
        column: column.name.clone(),
        text: format!("{data:?}").chars().take(64).collect(),
        expected: format!("{:?}", column.ty),
        reason,
    }
}

/// `None` for NULL.
fn to_avro(column: &Column, data: &ColumnData<'static>) -> Result<Option<Value>, ValueError> {
    let fail = |reason: &str| error(column, data, reason.to_string());
    let mismatch = || fail("SQL Server sent another type than the catalog declares");
    let tiberius_err = |e: tiberius::error::Error| error(column, data, e.to_string());
    Ok(match &column.ty {
        ColumnType::Int32 => match data {
            ColumnData::U8(v) => v.map(|v| Value::Int(i32::from(v))),
            ColumnData::I16(v) => v.map(|v| Value::Int(i32::from(v))),
            ColumnData::I32(v) => v.map(Value::Int),
            _ => return Err(mismatch()),
        },
        ColumnType::Int64 => match data {
            ColumnData::U8(v) => v.map(|v| Value::Long(i64::from(v))),
            ColumnData::I16(v) => v.map(|v| Value::Long(i64::from(v))),
            ColumnData::I32(v) => v.map(|v| Value::Long(i64::from(v))),
            ColumnData::I64(v) => v.map(Value::Long),
            _ => return Err(mismatch()),
        },
        ColumnType::Float32 => match data {
            ColumnData::F32(v) => v.map(Value::Float),
            _ => return Err(mismatch()),
        },
        ColumnType::Float64 => match data {
            ColumnData::F32(v) => v.map(|v| Value::Double(f64::from(v))),
            ColumnData::F64(v) => v.map(Value::Double),
            _ => return Err(mismatch()),
        },
        ColumnType::Decimal { precision, scale } => match data {
            ColumnData::Numeric(None) => None,
            ColumnData::Numeric(Some(n)) => {
                let unscaled = rescale(n.value(), u32::from(n.scale()), *scale)
                    .ok_or_else(|| fail("more decimal places than the column's scale"))?;
                if digits(unscaled) > *precision {
                    return Err(fail("more digits than the column's precision"));
                }
                Some(Value::Decimal(Decimal::from(twos_complement(unscaled))))
            }
            // money and smallmoney arrive as scaled integers (4 decimal places).
            ColumnData::I64(v) if *scale == 4 => {
                v.map(|v| Value::Decimal(Decimal::from(twos_complement(i128::from(v)))))
            }
            ColumnData::I32(v) if *scale == 4 => {
                v.map(|v| Value::Decimal(Decimal::from(twos_complement(i128::from(v)))))
            }
            _ => return Err(mismatch()),
        },
        ColumnType::DecimalText | ColumnType::Text | ColumnType::Json => match data {
            ColumnData::String(v) => v.as_ref().map(|s| Value::String(s.to_string())),
            ColumnData::Xml(v) => v.as_ref().map(|x| Value::String(x.to_string())),
            _ => return Err(mismatch()),
        },
        ColumnType::Bool => match data {
            ColumnData::Bit(v) => v.map(Value::Boolean),
            _ => return Err(mismatch()),
        },
        ColumnType::Date => NaiveDate::from_sql(data)
            .map_err(tiberius_err)?
            .map(|d| {
                i32::try_from((d - epoch()).num_days())
                    .map(Value::Date)
                    .map_err(|_| fail("date out of range"))
            })
            .transpose()?,
        ColumnType::Time => NaiveTime::from_sql(data)
            .map_err(tiberius_err)?
            .map(|t| {
                (t - NaiveTime::MIN)
                    .num_microseconds()
                    .map(Value::TimeMicros)
                    .ok_or_else(|| fail("time out of range"))
            })
            .transpose()?,
        ColumnType::Timestamp => {
            let utc = match data {
                ColumnData::DateTimeOffset(_) => DateTime::<FixedOffset>::from_sql(data)
                    .map_err(tiberius_err)?
                    .map(|t| t.naive_utc()),
                _ => NaiveDateTime::from_sql(data).map_err(tiberius_err)?,
            };
            utc.map(|t| Value::TimestampMicros(t.and_utc().timestamp_micros()))
        }
        ColumnType::Uuid => match data {
            ColumnData::Guid(v) => v.map(|g| Value::String(g.to_string())),
            _ => return Err(mismatch()),
        },
        ColumnType::Bytes => match data {
            ColumnData::Binary(v) => v.as_ref().map(|b| Value::Bytes(b.to_vec())),
            _ => return Err(mismatch()),
        },
        ColumnType::Array(_) => return Err(fail("SQL Server has no array columns")),
    })
}

/// `value` × 10^(to − from), exactly; `None` when digits would be lost or it overflows.
fn rescale(value: i128, from: u32, to: u32) -> Option<i128> {
    if to >= from {
        value.checked_mul(10i128.checked_pow(to - from)?)
    } else {
        let factor = 10i128.checked_pow(from - to)?;
        (value % factor == 0).then(|| value / factor)
    }
}

fn digits(n: i128) -> u32 {
    n.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use tiberius::numeric::Numeric;
    use tiberius::{IntoSql, Uuid};

    use super::*;

    fn col(ty: &str, nullable: bool) -> Column {
        Column {
            name: "c".into(),
            ty: ColumnType::from_sqlserver(ty).expect("mapped"),
            nullable,
        }
    }

    fn value(ty: &str, data: ColumnData<'static>) -> Value {
        column_value(&col(ty, false), &data).unwrap_or_else(|e| panic!("{ty}: {e}"))
    }

    #[test]
    fn integers_bits_and_floats() {
        assert_eq!(value("tinyint", ColumnData::U8(Some(200))), Value::Int(200));
        assert_eq!(value("smallint", ColumnData::I16(Some(-3))), Value::Int(-3));
        assert_eq!(value("int", ColumnData::I32(Some(7))), Value::Int(7));
        assert_eq!(
            value("bigint", ColumnData::I64(Some(1 << 40))),
            Value::Long(1 << 40)
        );
        assert_eq!(
            value("bit", ColumnData::Bit(Some(true))),
            Value::Boolean(true)
        );
        assert_eq!(
            value("float", ColumnData::F64(Some(1.5))),
            Value::Double(1.5)
        );
        assert_eq!(value("real", ColumnData::F32(Some(2.5))), Value::Float(2.5));
    }

    #[test]
    fn decimals_keep_their_scale_and_check_precision() {
        let n = ColumnData::Numeric(Some(Numeric::new_with_scale(-12345, 2)));
        let expected = Value::Decimal(Decimal::from(twos_complement(-12345)));
        assert_eq!(value("decimal(12,2)", n.clone()), expected);
        // A value sent with fewer places is scaled up exactly.
        let short = ColumnData::Numeric(Some(Numeric::new_with_scale(5, 0)));
        assert_eq!(
            value("numeric(12,2)", short),
            Value::Decimal(Decimal::from(twos_complement(500)))
        );
        let err = column_value(&col("decimal(3,2)", false), &n).unwrap_err();
        assert!(err.reason.contains("precision"), "{err}");
        // money: 4 places, sent as a scaled integer.
        assert_eq!(
            value("money", ColumnData::I64(Some(12_3400))),
            Value::Decimal(Decimal::from(twos_complement(12_3400)))
        );
    }

    #[test]
    fn strings_uuids_and_bytes() {
        let s = ColumnData::String(Some(Cow::Borrowed("Zoë")));
        assert_eq!(value("nvarchar", s), Value::String("Zoë".into()));
        let g = Uuid::from_u128(0x1234);
        assert_eq!(
            value("uniqueidentifier", ColumnData::Guid(Some(g))),
            Value::String(g.to_string())
        );
        let b = ColumnData::Binary(Some(Cow::Borrowed(&[1, 2, 3][..])));
        assert_eq!(value("varbinary", b), Value::Bytes(vec![1, 2, 3]));
    }

    #[test]
    fn dates_times_and_offsets_in_utc() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        assert_eq!(value("date", d.into_sql()), Value::Date(20_782));
        let t = d.and_hms_micro_opt(10, 30, 0, 250).unwrap();
        let micros = t.and_utc().timestamp_micros();
        assert_eq!(
            value("datetime2", t.into_sql()),
            Value::TimestampMicros(micros)
        );
        let offset = FixedOffset::east_opt(2 * 3600).unwrap();
        let local = t.and_local_timezone(offset).unwrap();
        assert_eq!(
            value("datetimeoffset", local.into_sql()),
            Value::TimestampMicros(micros - 2 * 3_600_000_000),
            "stored in UTC"
        );
        let time = NaiveTime::from_hms_micro_opt(1, 2, 3, 4).unwrap();
        assert_eq!(
            value("time", time.into_sql()),
            Value::TimeMicros(3_723_000_004)
        );
    }

    #[test]
    fn nulls_and_wrong_types() {
        assert_eq!(
            column_value(&col("int", true), &ColumnData::I32(None)).unwrap(),
            Value::Union(0, Box::new(Value::Null))
        );
        assert_eq!(
            column_value(&col("int", true), &ColumnData::I32(Some(1))).unwrap(),
            Value::Union(1, Box::new(Value::Int(1)))
        );
        assert!(column_value(&col("int", false), &ColumnData::I32(None)).is_err());
        let err = column_value(&col("int", false), &ColumnData::Bit(Some(true))).unwrap_err();
        assert!(err.reason.contains("another type"), "{err}");
    }
}
