//! The fault suite's oracle: every store of a quickstart-shaped topology compared with
//! the source, every row and every column.
//!
//! For each captured table (members, providers, policies, claims, claim_lines):
//! - a reference table's rows are in hot, warm and cold (cold: the latest archived
//!   record of the key);
//! - a claim or claim line is in exactly the tier its age gives (days from its age field
//!   to today: hot < 90, warm < 365, else cold; within a day of a boundary either
//!   neighbour will do) and in neither other PostgreSQL store;
//! - every column equals the source's; sensitive columns (`schemas/claims_domain.yaml`)
//!   are NULL in hot and warm, the quickstart's `pii: drop`, and as in the source in cold;
//! - a row deleted at the source is in no PostgreSQL store, and cold's latest record of
//!   its key is a delete, or there is none;
//! - each claim in hot or warm has its analysis in the same store, and each claim in cold
//!   an analysis in the archive.
//!
//! Cold is read through its manifests (the files they list), never by listing files. A
//! query or read that fails panics: a failed read is never "no rows".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::types::Value;
use chrono::NaiveDate;
use sqlx::{Connection, PgConnection};
use strata_connectors::sinks::cold::archive::Archive;

/// A captured table: its name, key columns, age field (none: reference data) and the
/// columns the cloud tiers receive protected.
pub struct Table {
    pub name: &'static str,
    pub key: &'static [&'static str],
    pub age_field: Option<&'static str>,
    pub sensitive: &'static [&'static str],
}

pub const TABLES: [Table; 5] = [
    Table {
        name: "members",
        key: &["member_id"],
        age_field: None,
        sensitive: &[
            "first_name",
            "last_name",
            "date_of_birth",
            "ssn",
            "address_line",
            "city",
            "postal_code",
        ],
    },
    Table {
        name: "providers",
        key: &["provider_id"],
        age_field: None,
        sensitive: &[],
    },
    Table {
        name: "policies",
        key: &["policy_id"],
        age_field: None,
        sensitive: &[],
    },
    Table {
        name: "claims",
        key: &["claim_id"],
        age_field: Some("service_date_from"),
        sensitive: &["diagnosis_codes"],
    },
    Table {
        name: "claim_lines",
        key: &["claim_id", "line_number"],
        age_field: Some("service_date"),
        sensitive: &[],
    },
];

/// A column value in one form for PostgreSQL's JSON and Avro alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Norm {
    Null,
    Bool(bool),
    Num(f64),
    Text(String),
    /// Days since 1970-01-01.
    Date(i64),
    /// Microseconds since the epoch, UTC.
    Ts(i64),
    List(Vec<Norm>),
}

fn text(s: &str) -> Norm {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Norm::Ts(t.timestamp_micros());
    }
    if s.len() == 10 {
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Norm::Date(days(d));
        }
    }
    Norm::Text(s.to_string())
}

fn days(d: NaiveDate) -> i64 {
    (d - NaiveDate::default()).num_days()
}

fn from_json(v: &serde_json::Value) -> Norm {
    use serde_json::Value as J;
    match v {
        J::Null => Norm::Null,
        J::Bool(b) => Norm::Bool(*b),
        J::Number(n) => Norm::Num(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => text(s),
        J::Array(items) => Norm::List(items.iter().map(from_json).collect()),
        J::Object(_) => Norm::Text(v.to_string()),
    }
}

/// `value` of `schema` (named types resolved through `names`) in its [`Norm`] form.
fn from_avro(value: &Value, schema: &Schema, names: &HashMap<Name, Schema>) -> Norm {
    match (value, resolve(schema, names)) {
        (Value::Union(i, inner), Schema::Union(u)) => match u.variants().get(*i as usize) {
            Some(s) => from_avro(inner, s, names),
            None => panic!("union index {i} outside {u:?}"),
        },
        (Value::Union(_, inner), s) => from_avro(inner, s, names),
        (Value::Null, _) => Norm::Null,
        (Value::Boolean(b), _) => Norm::Bool(*b),
        (Value::Int(i), _) => Norm::Num(f64::from(*i)),
        (Value::Long(i), _) => Norm::Num(*i as f64),
        (Value::Float(f), _) => Norm::Num(f64::from(*f)),
        (Value::Double(f), _) => Norm::Num(*f),
        (Value::String(s), _) | (Value::Enum(_, s), _) => text(s),
        (Value::Uuid(u), _) => Norm::Text(u.to_string()),
        (Value::Date(d), _) => Norm::Date(i64::from(*d)),
        (Value::TimestampMicros(us), _) => Norm::Ts(*us),
        (Value::TimestampMillis(ms), _) => Norm::Ts(ms * 1000),
        (Value::Decimal(d), Schema::Decimal(s)) => {
            let bytes = Vec::<u8>::try_from(d).expect("decimal bytes");
            let unscaled = bytes.iter().fold(
                if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                    -1i128
                } else {
                    0
                },
                |acc, b| (acc << 8) | i128::from(*b),
            );
            Norm::Num(unscaled as f64 / 10f64.powi(s.scale as i32))
        }
        (Value::Array(items), Schema::Array(a)) => Norm::List(
            items
                .iter()
                .map(|i| from_avro(i, &a.items, names))
                .collect(),
        ),
        (v, s) => panic!("an archived value the oracle cannot read: {v:?} of {s:?}"),
    }
}

/// A row, column → value.
pub type Row = BTreeMap<String, Norm>;

fn key_of(table: &Table, row: &Row) -> String {
    table
        .key
        .iter()
        .map(|k| match row.get(*k) {
            Some(Norm::Num(n)) => format!("{n}"),
            other => panic!("{}: key column {k} is {other:?}", table.name),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `e` says the table does not exist (SQLSTATE 42P01): a store whose sink has
/// not created its tables yet.
pub fn undefined_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01"))
}

/// Every row of `schema.table`, by key (store bookkeeping columns left out); `Err` while
/// the table does not exist yet. Any other failing query fails the test.
async fn pg_rows(
    db: &mut PgConnection,
    schema: &str,
    table: &Table,
) -> Result<BTreeMap<String, Row>, String> {
    let sql = format!(
        "SELECT to_jsonb(t) - '_position' - '_written_at' FROM {schema}.{} t",
        table.name
    );
    let rows: Vec<serde_json::Value> = match sqlx::query_scalar(&sql).fetch_all(&mut *db).await {
        Ok(rows) => rows,
        Err(e) if undefined_table(&e) => {
            return Err(format!("{schema}.{} does not exist yet", table.name))
        }
        Err(e) => panic!("{sql}: {e}"),
    };
    Ok(rows
        .into_iter()
        .map(|json| {
            let serde_json::Value::Object(map) = json else {
                panic!("{sql}: not an object")
            };
            let row: Row = map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect();
            (key_of(table, &row), row)
        })
        .collect())
}

/// What the archive holds last for one key: its row, or `None` for a delete.
struct Archived {
    position: String,
    row: Option<Row>,
}

/// The cold archive read through its manifests: the latest record of every
/// (table, key), and the claims that have an analysis there.
pub struct Cold {
    latest: BTreeMap<(String, String), Archived>,
    analysed: BTreeSet<i64>,
}

fn field<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    let v = match v {
        Value::Union(_, inner) => inner,
        v => v,
    };
    match v {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

fn resolve<'s>(schema: &'s Schema, names: &'s HashMap<Name, Schema>) -> &'s Schema {
    match schema {
        Schema::Ref { name } => names.get(name).unwrap_or(schema),
        s => s,
    }
}

fn field_schema<'s>(
    schema: &'s Schema,
    names: &'s HashMap<Name, Schema>,
    name: &str,
) -> &'s Schema {
    match resolve(schema, names) {
        Schema::Record(r) => &r.fields[r.lookup[name]].schema,
        s => panic!("no field {name} in {s:?}"),
    }
}

impl Cold {
    /// Claim ids whose latest archived change is not a delete.
    pub fn claims(&self) -> BTreeSet<i64> {
        self.latest
            .iter()
            .filter(|((table, _), a)| table == "claims" && a.row.is_some())
            .filter_map(|((_, key), _)| key.parse().ok())
            .collect()
    }
}

pub async fn read_cold(root: &Path) -> Cold {
    let mut cold = Cold {
        latest: BTreeMap::new(),
        analysed: BTreeSet::new(),
    };
    if !root.exists() {
        return cold;
    }
    let location = root.to_str().expect("a UTF-8 archive path");
    let archive = Archive::open(location, &BTreeMap::new()).expect("the archive opens");
    let partitions = archive
        .partitions()
        .await
        .expect("the archive's partitions");
    for p in partitions {
        let entries = archive.manifest(p).await.expect("a manifest reads");
        for entry in entries {
            let bytes = archive
                .read(&entry.file)
                .await
                .unwrap_or_else(|e| panic!("{} listed but unreadable: {e}", entry.file));
            let reader = apache_avro::Reader::new(&bytes[..])
                .unwrap_or_else(|e| panic!("{} is not an Avro container: {e}", entry.file));
            let schema = reader.writer_schema().clone();
            let names: HashMap<Name, Schema> = ResolvedSchema::try_from(&schema)
                .expect("the writer schema resolves")
                .get_names()
                .iter()
                .map(|(n, s)| (n.clone(), (*s).clone()))
                .collect();
            for value in reader {
                let value = value.unwrap_or_else(|e| panic!("{}: {e}", entry.file));
                // A file of several writer schemas holds each record as its union branch.
                let (value, schema) = match (value, &schema) {
                    (Value::Union(branch, value), Schema::Union(union)) => {
                        (*value, union.variants()[branch as usize].clone())
                    }
                    (value, schema) => (value, schema.clone()),
                };
                if let Some(Value::Long(claim)) = field(&value, "claim_id") {
                    if field(&value, "analysis_id").is_some() {
                        cold.analysed.insert(*claim);
                        continue;
                    }
                }
                record_change(&mut cold, &value, &schema, &names, &entry.file);
            }
        }
    }
    cold
}

fn record_change(
    cold: &mut Cold,
    value: &Value,
    schema: &Schema,
    names: &HashMap<Name, Schema>,
    file: &str,
) {
    let source = field(value, "source").unwrap_or_else(|| panic!("{file}: no source"));
    let name = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        other => panic!("{file}: {other:?} where text was expected"),
    };
    let table_name = name(field(source, "table"));
    let position = name(field(source, "position"));
    let op = name(field(value, "op"));
    let Some(table) = TABLES.iter().find(|t| t.name == table_name) else {
        return;
    };
    let image = |which: &str| -> Option<Row> {
        let Some(Value::Union(i, inner)) = field(value, which) else {
            panic!("{file}: {which} is not a union")
        };
        let Value::Record(fields) = &**inner else {
            return None; // null
        };
        let Schema::Union(u) = resolve(field_schema(schema, names, which), names) else {
            panic!("{file}: {which}'s schema is not a union")
        };
        let record_schema = &u.variants()[*i as usize];
        Some(
            fields
                .iter()
                .map(|(n, v)| {
                    let s = field_schema(record_schema, names, n);
                    (n.clone(), from_avro(v, s, names))
                })
                .collect(),
        )
    };
    let (after, before) = (image("after"), image("before"));
    let Some(keyed) = after.as_ref().or(before.as_ref()) else {
        return; // a truncate: the suite makes none
    };
    let key = key_of(table, keyed);
    let row = if op == "d" { None } else { after };
    let slot = cold.latest.entry((table_name, key));
    match slot {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(Archived { position, row });
        }
        std::collections::btree_map::Entry::Occupied(mut o) => {
            if position >= o.get().position {
                o.insert(Archived { position, row });
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Hot,
    Warm,
    Cold,
}

/// The tiers a row of `age_days` may be in (two within a day of a boundary).
fn tiers(age_days: i64) -> Vec<Tier> {
    let of = |d: i64| match d {
        d if d < 90 => Tier::Hot,
        d if d < 365 => Tier::Warm,
        _ => Tier::Cold,
    };
    let mut out = vec![of(age_days - 1), of(age_days), of(age_days + 1)];
    out.dedup();
    out
}

/// What one comparison looked at: rows compared per table.
#[derive(Debug, Default, Clone)]
pub struct Compared {
    pub rows: BTreeMap<&'static str, usize>,
}

/// Compares every store with the source; `Err` names the first difference.
pub async fn compare(url: &str, archive: &Path) -> Result<Compared, String> {
    let mut db = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    sqlx::query("SET TimeZone = 'UTC'")
        .execute(&mut db)
        .await
        .expect("set the time zone");
    let cold = read_cold(archive).await;
    let today = days(chrono::Utc::now().date_naive());
    let mut compared = Compared::default();
    for table in &TABLES {
        let source = pg_rows(&mut db, "public", table).await?;
        let hot = pg_rows(&mut db, "hot", table).await?;
        let warm = pg_rows(&mut db, "warm", table).await?;
        for (key, row) in &source {
            let expected = match table.age_field {
                None => vec![Tier::Hot, Tier::Warm, Tier::Cold],
                Some(f) => match row.get(f) {
                    Some(Norm::Date(d)) => tiers(today - d),
                    other => {
                        return Err(format!("{} {key}: age field {f} is {other:?}", table.name))
                    }
                },
            };
            let reference = table.age_field.is_none();
            let here = |tier: Tier| -> Option<Row> {
                match tier {
                    Tier::Hot => hot.get(key).cloned(),
                    Tier::Warm => warm.get(key).cloned(),
                    Tier::Cold => cold
                        .latest
                        .get(&(table.name.to_string(), key.clone()))
                        .and_then(|a| a.row.clone()),
                }
            };
            let found: Vec<Tier> = [Tier::Hot, Tier::Warm, Tier::Cold]
                .into_iter()
                .filter(|t| here(*t).is_some())
                .collect();
            let pg_found: Vec<Tier> = found.iter().copied().filter(|t| *t != Tier::Cold).collect();
            let ok = if reference {
                found.len() == 3
            } else {
                // In one PostgreSQL store at most; cold may also hold a claim that
                // moved on (it keeps history), so cold counts only when expected.
                let placed: Vec<Tier> = found
                    .iter()
                    .copied()
                    .filter(|t| *t != Tier::Cold || pg_found.is_empty())
                    .collect();
                pg_found.len() <= 1 && placed.len() == 1 && expected.contains(&placed[0])
            };
            if !ok {
                return Err(format!(
                    "{} {key}: in {found:?}, expected {}",
                    table.name,
                    if reference {
                        "hot, warm and cold".to_string()
                    } else {
                        format!("one of {expected:?}")
                    }
                ));
            }
            for tier in found {
                if !reference && tier == Tier::Cold && !pg_found.is_empty() {
                    continue;
                }
                let stored = here(tier).unwrap_or_default();
                for (column, want) in row {
                    let want = if tier != Tier::Cold && table.sensitive.contains(&column.as_str()) {
                        &Norm::Null
                    } else {
                        want
                    };
                    let got = stored.get(column).unwrap_or(&Norm::Null);
                    if !same(got, want) {
                        return Err(format!(
                            "{tier:?} {} {key}: {column} is {got:?}, the source says {want:?}",
                            table.name
                        ));
                    }
                }
            }
            if table.name == "claims" {
                analysed(&mut db, &cold, key, &hot, &warm).await?;
            }
        }
        for (tier, rows) in [("hot", &hot), ("warm", &warm)] {
            if let Some(key) = rows.keys().find(|k| !source.contains_key(*k)) {
                return Err(format!(
                    "{tier} has {} {key}, which the source deleted",
                    table.name
                ));
            }
        }
        if let Some(((_, key), _)) = cold
            .latest
            .iter()
            .find(|((t, k), a)| t == table.name && a.row.is_some() && !source.contains_key(k))
        {
            return Err(format!(
                "cold's latest record of {} {key} is not its delete, but the source deleted it",
                table.name
            ));
        }
        compared.rows.insert(table.name, source.len());
    }
    Ok(compared)
}

async fn analysed(
    db: &mut PgConnection,
    cold: &Cold,
    key: &str,
    hot: &BTreeMap<String, Row>,
    warm: &BTreeMap<String, Row>,
) -> Result<(), String> {
    let id: i64 = key.parse().map_err(|_| format!("claim key {key}"))?;
    let schema = if hot.contains_key(key) {
        "hot"
    } else if warm.contains_key(key) {
        "warm"
    } else {
        return if cold.analysed.contains(&id) {
            Ok(())
        } else {
            Err(format!("cold claim {id} has no analysis in the archive"))
        };
    };
    let sql = format!("SELECT count(*) FROM {schema}.claim_analysis WHERE claim_id = $1");
    let n: i64 = sqlx::query_scalar(&sql)
        .bind(id)
        .fetch_one(&mut *db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    if n == 1 {
        Ok(())
    } else {
        Err(format!("{schema} claim {id} has {n} analyses"))
    }
}

fn same(a: &Norm, b: &Norm) -> bool {
    match (a, b) {
        (Norm::Num(x), Norm::Num(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        (Norm::List(x), Norm::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_near_a_boundary_may_be_in_either_tier() {
        assert_eq!(tiers(10), vec![Tier::Hot]);
        assert_eq!(tiers(90), vec![Tier::Hot, Tier::Warm]);
        assert_eq!(tiers(200), vec![Tier::Warm]);
        assert_eq!(tiers(365), vec![Tier::Warm, Tier::Cold]);
        assert_eq!(tiers(1000), vec![Tier::Cold]);
    }

    #[test]
    fn json_and_avro_forms_meet() {
        assert_eq!(text("2026-12-07"), Norm::Date(20_794));
        assert_eq!(
            text("2026-12-07T00:00:00.5+00:00"),
            Norm::Ts(1_796_601_600_500_000)
        );
        assert_eq!(text("E11.9"), Norm::Text("E11.9".into()));
    }
}
