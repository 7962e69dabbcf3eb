//! A schema compiled for the hot path: encoding and decoding that walk the schema by
//! position instead of apache-avro's generic writer and reader (which validate every
//! value against the schema first and look record fields up by name).
//!
//! Invariant: for every value the plan accepts, [`Plan::encode`] writes exactly the bytes
//! apache-avro writes, and [`Plan::decode`] returns exactly the value apache-avro reads
//! (tested by property tests against the generic path). Whatever the plan does not
//! accept — a field out of schema order, a value of another type, a schema feature it
//! does not compile — is refused with `None`, and the caller takes the generic path,
//! which either handles it or produces the precise error.

use std::collections::HashMap;

use apache_avro::schema::{InnerDecimalSchema, Name, ResolvedSchema, UuidSchema};
use apache_avro::types::Value;
use apache_avro::Schema;

#[derive(Debug, Clone)]
pub enum Plan {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record(Box<[(String, Plan)]>),
    Enum(Box<[String]>),
    Array(Box<Plan>),
    Map(Box<Plan>),
    Union(Box<[Plan]>),
    Fixed(usize),
    DecimalBytes,
    UuidString,
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    LocalTimestampMillis,
    LocalTimestampMicros,
    /// Anything else: the whole schema then goes the generic way.
    Unsupported,
}

/// Named types nest at most this deep; recursive schemas stop here (generic path).
const MAX_DEPTH: usize = 32;

impl Plan {
    /// The plan of `schema`, or `None` when part of it is not supported.
    pub fn compile(schema: &Schema) -> Option<Plan> {
        let resolved = ResolvedSchema::try_from(schema).ok()?;
        let plan = Self::build(schema, resolved.get_names(), 0);
        plan.supported().then_some(plan)
    }

    fn supported(&self) -> bool {
        match self {
            Plan::Unsupported => false,
            Plan::Record(fields) => fields.iter().all(|(_, p)| p.supported()),
            Plan::Array(p) | Plan::Map(p) => p.supported(),
            Plan::Union(branches) => branches.iter().all(Plan::supported),
            _ => true,
        }
    }

    fn build(schema: &Schema, names: &HashMap<Name, &Schema>, depth: usize) -> Plan {
        if depth > MAX_DEPTH {
            return Plan::Unsupported;
        }
        let nested = |s: &Schema| Self::build(s, names, depth + 1);
        match schema {
            Schema::Null => Plan::Null,
            Schema::Boolean => Plan::Boolean,
            Schema::Int => Plan::Int,
            Schema::Long => Plan::Long,
            Schema::Float => Plan::Float,
            Schema::Double => Plan::Double,
            Schema::Bytes => Plan::Bytes,
            Schema::String => Plan::String,
            Schema::Record(r) => Plan::Record(
                r.fields
                    .iter()
                    .map(|f| (f.name.clone(), nested(&f.schema)))
                    .collect(),
            ),
            Schema::Enum(e) => Plan::Enum(e.symbols.clone().into_boxed_slice()),
            Schema::Array(a) => Plan::Array(Box::new(nested(&a.items))),
            Schema::Map(m) => Plan::Map(Box::new(nested(&m.types))),
            Schema::Union(u) => Plan::Union(u.variants().iter().map(nested).collect()),
            Schema::Fixed(f) => Plan::Fixed(f.size),
            Schema::Decimal(d) if matches!(d.inner, InnerDecimalSchema::Bytes) => {
                Plan::DecimalBytes
            }
            Schema::Uuid(UuidSchema::String) => Plan::UuidString,
            Schema::Date => Plan::Date,
            Schema::TimeMillis => Plan::TimeMillis,
            Schema::TimeMicros => Plan::TimeMicros,
            Schema::TimestampMillis => Plan::TimestampMillis,
            Schema::TimestampMicros => Plan::TimestampMicros,
            Schema::LocalTimestampMillis => Plan::LocalTimestampMillis,
            Schema::LocalTimestampMicros => Plan::LocalTimestampMicros,
            Schema::Ref { name } => match names.get(name) {
                Some(target) => nested(target),
                None => Plan::Unsupported,
            },
            _ => Plan::Unsupported,
        }
    }

    /// Appends the encoding of `value`; `None` (with `out` possibly extended, which the
    /// caller truncates) when the value does not fit the plan exactly.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Option<()> {
        match (self, value) {
            (Plan::Null, Value::Null) => {}
            (Plan::Boolean, Value::Boolean(b)) => out.push(u8::from(*b)),
            (Plan::Int, Value::Int(i))
            | (Plan::Date, Value::Date(i))
            | (Plan::TimeMillis, Value::TimeMillis(i)) => write_long(i64::from(*i), out),
            (Plan::Long, Value::Long(i))
            | (Plan::TimeMicros, Value::TimeMicros(i))
            | (Plan::TimestampMillis, Value::TimestampMillis(i))
            | (Plan::TimestampMicros, Value::TimestampMicros(i))
            | (Plan::LocalTimestampMillis, Value::LocalTimestampMillis(i))
            | (Plan::LocalTimestampMicros, Value::LocalTimestampMicros(i)) => write_long(*i, out),
            (Plan::Float, Value::Float(x)) => out.extend_from_slice(&x.to_le_bytes()),
            (Plan::Double, Value::Double(x)) => out.extend_from_slice(&x.to_le_bytes()),
            (Plan::Bytes, Value::Bytes(b)) => write_bytes(b, out),
            (Plan::String, Value::String(s)) => write_bytes(s.as_bytes(), out),
            (Plan::UuidString, Value::Uuid(u)) => write_bytes(u.to_string().as_bytes(), out),
            // Sources hand uuids over as their text, which apache-avro writes as is.
            (Plan::UuidString, Value::String(s)) => write_bytes(s.as_bytes(), out),
            (Plan::DecimalBytes, Value::Decimal(d)) => {
                write_bytes(&Vec::<u8>::try_from(d).ok()?, out)
            }
            (Plan::Fixed(n), Value::Fixed(m, b)) if n == m && b.len() == *n => {
                out.extend_from_slice(b)
            }
            (Plan::Enum(symbols), Value::Enum(i, s))
                if symbols.get(*i as usize).is_some_and(|x| x == s) =>
            {
                write_long(i64::from(*i), out)
            }
            (Plan::Union(branches), Value::Union(i, inner)) => {
                let branch = branches.get(*i as usize)?;
                write_long(i64::from(*i), out);
                branch.encode(inner, out)?;
            }
            (Plan::Record(fields), Value::Record(values)) if fields.len() == values.len() => {
                for ((name, plan), (value_name, value)) in fields.iter().zip(values) {
                    if name != value_name {
                        return None;
                    }
                    plan.encode(value, out)?;
                }
            }
            (Plan::Array(items), Value::Array(values)) => {
                if !values.is_empty() {
                    write_long(values.len() as i64, out);
                    for v in values {
                        items.encode(v, out)?;
                    }
                }
                out.push(0);
            }
            (Plan::Map(plan), Value::Map(entries)) => {
                if !entries.is_empty() {
                    write_long(entries.len() as i64, out);
                    for (k, v) in entries {
                        write_bytes(k.as_bytes(), out);
                        plan.encode(v, out)?;
                    }
                }
                out.push(0);
            }
            _ => return None,
        }
        Some(())
    }

    /// Decodes one value from the front of `input`, advancing it; `None` on bytes that
    /// do not decode cleanly (the generic reader then says why).
    pub fn decode(&self, input: &mut &[u8]) -> Option<Value> {
        Some(match self {
            Plan::Null => Value::Null,
            Plan::Boolean => match take(input, 1)?[0] {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                _ => return None,
            },
            Plan::Int => Value::Int(read_int(input)?),
            Plan::Date => Value::Date(read_int(input)?),
            Plan::TimeMillis => Value::TimeMillis(read_int(input)?),
            Plan::Long => Value::Long(read_long(input)?),
            Plan::TimeMicros => Value::TimeMicros(read_long(input)?),
            Plan::TimestampMillis => Value::TimestampMillis(read_long(input)?),
            Plan::TimestampMicros => Value::TimestampMicros(read_long(input)?),
            Plan::LocalTimestampMillis => Value::LocalTimestampMillis(read_long(input)?),
            Plan::LocalTimestampMicros => Value::LocalTimestampMicros(read_long(input)?),
            Plan::Float => Value::Float(f32::from_le_bytes(take(input, 4)?.try_into().ok()?)),
            Plan::Double => Value::Double(f64::from_le_bytes(take(input, 8)?.try_into().ok()?)),
            Plan::Bytes => Value::Bytes(read_bytes(input)?.to_vec()),
            Plan::String => Value::String(std::str::from_utf8(read_bytes(input)?).ok()?.to_owned()),
            Plan::UuidString => {
                let text = std::str::from_utf8(read_bytes(input)?).ok()?;
                Value::Uuid(apache_avro::Uuid::parse_str(text).ok()?)
            }
            Plan::DecimalBytes => {
                Value::Decimal(apache_avro::Decimal::from(read_bytes(input)?.to_vec()))
            }
            Plan::Fixed(n) => Value::Fixed(*n, take(input, *n)?.to_vec()),
            Plan::Enum(symbols) => {
                let i = read_long(input)?;
                let symbol = symbols.get(usize::try_from(i).ok()?)?;
                Value::Enum(i as u32, symbol.clone())
            }
            Plan::Union(branches) => {
                let i = read_long(input)?;
                let branch = branches.get(usize::try_from(i).ok()?)?;
                Value::Union(i as u32, Box::new(branch.decode(input)?))
            }
            Plan::Record(fields) => {
                let mut values = Vec::with_capacity(fields.len());
                for (name, plan) in fields.iter() {
                    values.push((name.clone(), plan.decode(input)?));
                }
                Value::Record(values)
            }
            Plan::Array(items) => {
                let mut values = Vec::new();
                while let Some(n) = read_block_len(input)? {
                    // Each item takes at least one byte, except nulls: bound by the input.
                    values.reserve(n.min(input.len()));
                    for _ in 0..n {
                        values.push(items.decode(input)?);
                    }
                }
                Value::Array(values)
            }
            Plan::Map(plan) => {
                let mut entries = HashMap::new();
                while let Some(n) = read_block_len(input)? {
                    entries.reserve(n.min(input.len()));
                    for _ in 0..n {
                        let key = std::str::from_utf8(read_bytes(input)?).ok()?.to_owned();
                        let value = plan.decode(input)?;
                        entries.insert(key, value);
                    }
                }
                Value::Map(entries)
            }
            Plan::Unsupported => return None,
        })
    }
}

fn write_long(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    write_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn read_long(input: &mut &[u8]) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        z |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

fn read_int(input: &mut &[u8]) -> Option<i32> {
    i32::try_from(read_long(input)?).ok()
}

fn read_bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = usize::try_from(read_long(input)?).ok()?;
    take(input, n)
}

/// The item count of the next array or map block; `None` inside for the end marker.
fn read_block_len(input: &mut &[u8]) -> Option<Option<usize>> {
    let n = read_long(input)?;
    if n == 0 {
        return Some(None);
    }
    if n < 0 {
        read_long(input)?; // the block's size in bytes
    }
    Some(Some(usize::try_from(n.checked_abs()?).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use proptest::prelude::*;

    const SCHEMA: &str = r#"{"type":"record","name":"E","namespace":"t","fields":[
      {"name":"before","type":["null",{"type":"record","name":"Row","fields":[
        {"name":"id","type":"long"},
        {"name":"n","type":["null","int"]},
        {"name":"amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}]},
        {"name":"day","type":["null",{"type":"int","logicalType":"date"}]},
        {"name":"at","type":["null",{"type":"long","logicalType":"timestamp-micros"}]},
        {"name":"u","type":["null",{"type":"string","logicalType":"uuid"}]},
        {"name":"codes","type":["null",{"type":"array","items":"string"}]},
        {"name":"tags","type":{"type":"map","values":"double"}},
        {"name":"ok","type":"boolean"},
        {"name":"f","type":"float"},
        {"name":"raw","type":"bytes"},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B","C"]}},
        {"name":"h","type":{"type":"fixed","name":"H","size":4}}]}]},
      {"name":"after","type":["null","Row"]},
      {"name":"op","type":"string"}]}"#;

    fn row() -> impl Strategy<Value = Value> {
        let opt = |s: BoxedStrategy<Value>| {
            prop_oneof![
                Just(Value::Union(0, Box::new(Value::Null))),
                s.prop_map(|v| Value::Union(1, Box::new(v)))
            ]
        };
        (
            (
                any::<i64>(),
                opt(any::<i32>().prop_map(Value::Int).boxed()),
                opt(proptest::collection::vec(any::<u8>(), 1..6)
                    .prop_map(|b| Value::Decimal(apache_avro::Decimal::from(b)))
                    .boxed()),
                opt(any::<i32>().prop_map(Value::Date).boxed()),
                opt(any::<i64>().prop_map(Value::TimestampMicros).boxed()),
                opt(any::<u128>()
                    .prop_map(|u| Value::Uuid(apache_avro::Uuid::from_u128(u)))
                    .boxed()),
                opt(proptest::collection::vec(".{0,12}", 0..4)
                    .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect()))
                    .boxed()),
            ),
            (
                proptest::collection::hash_map("[a-z]{0,5}", -1e300f64..1e300, 0..3),
                any::<bool>(),
                // NaN != NaN would fail the comparison, not the plan.
                -1e30f32..1e30,
                proptest::collection::vec(any::<u8>(), 0..8),
                0u32..3,
                proptest::array::uniform4(any::<u8>()),
            ),
        )
            .prop_map(
                |((id, n, amount, day, at, u, codes), (tags, ok, f, raw, kind, h))| {
                    Value::Record(vec![
                        ("id".into(), Value::Long(id)),
                        ("n".into(), n),
                        ("amount".into(), amount),
                        ("day".into(), day),
                        ("at".into(), at),
                        ("u".into(), u),
                        ("codes".into(), codes),
                        (
                            "tags".into(),
                            Value::Map(
                                tags.into_iter()
                                    .map(|(k, v)| (k, Value::Double(v)))
                                    .collect(),
                            ),
                        ),
                        ("ok".into(), Value::Boolean(ok)),
                        ("f".into(), Value::Float(f)),
                        ("raw".into(), Value::Bytes(raw)),
                        (
                            "kind".into(),
                            Value::Enum(kind, ["A", "B", "C"][kind as usize].into()),
                        ),
                        ("h".into(), Value::Fixed(4, h.to_vec())),
                    ])
                },
            )
    }

    fn event() -> impl Strategy<Value = Value> {
        (
            proptest::option::of(row()),
            proptest::option::of(row()),
            "[cud]",
        )
            .prop_map(|(before, after, op)| {
                let opt = |r: Option<Value>| match r {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(r) => Value::Union(1, Box::new(r)),
                };
                Value::Record(vec![
                    ("before".into(), opt(before)),
                    ("after".into(), opt(after)),
                    ("op".into(), Value::String(op)),
                ])
            })
    }

    proptest! {
        #[test]
        fn plan_matches_apache_avro_byte_for_byte(value in event()) {
            let schema = Schema::parse_str(SCHEMA).unwrap();
            let plan = Plan::compile(&schema).expect("every type here is supported");
            let writer = GenericDatumWriter::builder(&schema).build().unwrap();
            let generic = writer.write_value_to_vec(value.clone()).unwrap();
            let mut fast = Vec::new();
            plan.encode(&value, &mut fast).expect("the plan takes a valid value");
            prop_assert_eq!(&fast, &generic);

            let reader = GenericDatumReader::builder(&schema).build().unwrap();
            let expected = reader.read_value(&mut &generic[..]).unwrap();
            let mut input = &generic[..];
            let decoded = plan.decode(&mut input).expect("decodes");
            prop_assert!(input.is_empty());
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let schema = Schema::parse_str(SCHEMA).unwrap();
            let plan = Plan::compile(&schema).unwrap();
            let _ = plan.decode(&mut &bytes[..]);
        }
    }

    #[test]
    fn refuses_what_it_cannot_encode_exactly() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
        )
        .unwrap();
        let plan = Plan::compile(&schema).unwrap();
        let mut out = Vec::new();
        let swapped = Value::Record(vec![
            ("b".into(), Value::String("x".into())),
            ("a".into(), Value::Long(1)),
        ]);
        assert!(plan.encode(&swapped, &mut out).is_none());
        let wrong_type = Value::Record(vec![
            ("a".into(), Value::Int(1)),
            ("b".into(), Value::String("x".into())),
        ]);
        assert!(plan.encode(&wrong_type, &mut Vec::new()).is_none());
        let recursive = Schema::parse_str(
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
        )
        .unwrap();
        assert!(Plan::compile(&recursive).is_none());
    }
}
