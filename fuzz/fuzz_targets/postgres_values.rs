//! Any text as a value of any PostgreSQL column type (`format_type()` names, with any
//! modifiers, arrays of them) through the PostgreSQL source's value mapping — the
//! tuple data of pgoutput and the rows of the snapshot's COPY: refused with an error,
//! or an Avro value that fits the schema the source registers for the column.
#![no_main]
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use strata_fuzz::avro::types::{Column, ColumnType};
use strata_fuzz::postgres::values::column_value;

const TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "real",
    "double precision",
    "numeric",
    "money",
    "text",
    "character varying",
    "boolean",
    "date",
    "time without time zone",
    "timestamp without time zone",
    "timestamp with time zone",
    "uuid",
    "jsonb",
    "bytea",
];

fn type_name(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary(); // anything the catalog could say
    }
    let base = *u.choose(TYPES)?;
    let name = match u.int_in_range(0..=2)? {
        0 => base.to_string(),
        1 => format!("{base}({})", u.arbitrary::<i8>()?),
        _ => format!("{base}({},{})", u.arbitrary::<u8>()?, u.arbitrary::<i8>()?),
    };
    Ok(if u.ratio(1, 4)? {
        format!("{name}[]")
    } else {
        name
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(name), Ok(nullable), Ok(text)) = (
        type_name(&mut u),
        u.arbitrary::<bool>(),
        u.arbitrary::<Option<&str>>(),
    ) else {
        return;
    };
    let Ok(ty) = ColumnType::from_postgres(&name) else {
        return;
    };
    let column = Column {
        name: "c".into(),
        ty,
        nullable,
    };
    let Ok(value) = column_value(&column, text) else {
        return;
    };
    strata_fuzz::assert_fits_column(&column, value, &(&name, text));
});
