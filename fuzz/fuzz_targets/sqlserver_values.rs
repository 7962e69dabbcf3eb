//! A SQL Server row value as tiberius decodes it (any type, any content — also another
//! type than the catalog declared) through the SQL Server source's value mapping, for a
//! column type read from the catalog (any type name, precision and scale): refused with
//! an error, or an Avro value that fits the schema the source registers for the column.
#![no_main]
use std::borrow::Cow;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use strata_fuzz::avro::types::{Column, ColumnType};
use strata_fuzz::sqlserver::values::column_value;
use tiberius::numeric::Numeric;
use tiberius::time::{Date, DateTime, DateTime2, DateTimeOffset, SmallDateTime, Time};
use tiberius::ColumnData;

const TYPES: &[&str] = &[
    "tinyint",
    "smallint",
    "int",
    "bigint",
    "real",
    "float",
    "bit",
    "decimal",
    "numeric",
    "money",
    "smallmoney",
    "date",
    "time",
    "datetime",
    "datetime2",
    "smalldatetime",
    "datetimeoffset",
    "uniqueidentifier",
    "char",
    "varchar",
    "nchar",
    "nvarchar",
    "text",
    "ntext",
    "binary",
    "varbinary",
    "image",
    "xml",
    "sql_variant",
];

fn type_name(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary(); // anything the catalog could say
    }
    let base = *u.choose(TYPES)?;
    Ok(match u.int_in_range(0..=2)? {
        0 => base.to_string(),
        1 => format!("{base}({})", u.arbitrary::<u8>()?),
        _ => format!("{base}({},{})", u.arbitrary::<u8>()?, u.arbitrary::<u8>()?),
    })
}

fn column_data(u: &mut Unstructured) -> Result<ColumnData<'static>> {
    let present = u.ratio(7, 8)?;
    let some = |u: &mut Unstructured| -> Result<bool> { Ok(present || u.arbitrary()?) };
    Ok(match u.int_in_range(0..=16)? {
        0 => ColumnData::U8(some(u)?.then(|| u.arbitrary()).transpose()?),
        1 => ColumnData::I16(some(u)?.then(|| u.arbitrary()).transpose()?),
        2 => ColumnData::I32(some(u)?.then(|| u.arbitrary()).transpose()?),
        3 => ColumnData::I64(some(u)?.then(|| u.arbitrary()).transpose()?),
        4 => ColumnData::F32(some(u)?.then(|| u.arbitrary()).transpose()?),
        5 => ColumnData::F64(some(u)?.then(|| u.arbitrary()).transpose()?),
        6 => ColumnData::Bit(some(u)?.then(|| u.arbitrary()).transpose()?),
        7 => ColumnData::String(
            some(u)?
                .then(|| u.arbitrary::<String>().map(Cow::Owned))
                .transpose()?,
        ),
        8 => ColumnData::Guid(
            some(u)?
                .then(|| u.arbitrary::<[u8; 16]>().map(tiberius::Uuid::from_bytes))
                .transpose()?,
        ),
        9 => ColumnData::Binary(
            some(u)?
                .then(|| u.arbitrary::<Vec<u8>>().map(Cow::Owned))
                .transpose()?,
        ),
        10 => ColumnData::Numeric(
            some(u)?
                .then(|| -> Result<Numeric> {
                    // A scale past 37 is not TDS; tiberius asserts it.
                    Ok(Numeric::new_with_scale(
                        u.arbitrary()?,
                        u.int_in_range(0..=37)?,
                    ))
                })
                .transpose()?,
        ),
        11 => ColumnData::DateTime(
            some(u)?
                .then(|| -> Result<DateTime> { Ok(DateTime::new(u.arbitrary()?, u.arbitrary()?)) })
                .transpose()?,
        ),
        12 => ColumnData::SmallDateTime(
            some(u)?
                .then(|| -> Result<SmallDateTime> {
                    Ok(SmallDateTime::new(u.arbitrary()?, u.arbitrary()?))
                })
                .transpose()?,
        ),
        13 => ColumnData::Time(some(u)?.then(|| time(u)).transpose()?),
        14 => ColumnData::Date(some(u)?.then(|| date(u)).transpose()?),
        15 => ColumnData::DateTime2(
            some(u)?
                .then(|| -> Result<DateTime2> { Ok(DateTime2::new(date(u)?, time(u)?)) })
                .transpose()?,
        ),
        _ => ColumnData::DateTimeOffset(
            some(u)?
                .then(|| -> Result<DateTimeOffset> {
                    Ok(DateTimeOffset::new(
                        DateTime2::new(date(u)?, time(u)?),
                        u.arbitrary()?,
                    ))
                })
                .transpose()?,
        ),
    })
}

/// Days fit in three bytes on the wire.
fn date(u: &mut Unstructured) -> Result<Date> {
    Ok(Date::new(u.int_in_range(0..=0xFF_FFFF)?))
}

/// Scales 0 to 7, as TDS has them.
fn time(u: &mut Unstructured) -> Result<Time> {
    Ok(Time::new(u.arbitrary()?, u.int_in_range(0..=7)?))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(name), Ok(nullable), Ok(cell)) =
        (type_name(&mut u), u.arbitrary(), column_data(&mut u))
    else {
        return;
    };
    let Ok(ty) = ColumnType::from_sqlserver(&name) else {
        return;
    };
    let column = Column {
        name: "c".into(),
        ty,
        nullable,
    };
    let Ok(value) = column_value(&column, &cell) else {
        return;
    };
    strata_fuzz::assert_fits_column(&column, value, &(&name, &cell));
});
