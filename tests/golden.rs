//! Golden tests of the processors: each file under `tests/golden/` names a processor and
//! its settings, lists input change events and the outputs expected from them, in order.
//! One harness runs them all on the in-memory state of the runtime's harness.
//!
//! File format (YAML):
//! ```yaml
//! processor: claim_analysis          # or tiering, conflict_resolution, claim_assembly
//! settings: { ... }                  # as in a topology file
//! events:
//!   - table: claims                  # public.<table>
//!     op: c                          # c (default), r, u, d
//!     ts: 2026-11-25                 # commit time (a date, midnight UTC)
//!     key: { claim_id: 1 }
//!     after: { claim_id: 1, service_date_from: 2026-11-01, billed_amount: 120.5 }
//!     expect:                        # the outputs of this event, in order
//!       - { port: null, reasons: [COVERAGE_INACTIVE], routing: INVESTIGATE }
//! ```
//! Row values: integers are longs, decimals doubles, `YYYY-MM-DD` strings dates, lists
//! arrays of strings. An expected output checks only the fields it names: `port`,
//! `op`, `reasons` (codes, in order), `routing`, `claim_class` and `after` (some columns).

use std::path::Path;

use apache_avro::types::Value;
use serde::Deserialize;
use strata_pipeline::processors::{
    claim_analysis::ClaimAnalysis, claim_assembly::ClaimAssembly,
    conflict_resolution::ConflictResolution, tiering::Tiering,
};
use strata_pipeline::runtime::harness::Harness;
use strata_pipeline::runtime::processor::record_field;
use strata_pipeline::runtime::{Event, Output, Processor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    processor: String,
    #[serde(default)]
    settings: serde_yaml_ng::Value,
    events: Vec<InputEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputEvent {
    table: String,
    #[serde(default = "create")]
    op: String,
    ts: String,
    key: serde_yaml_ng::Mapping,
    #[serde(default)]
    before: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    after: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    expect: Vec<Expected>,
}

fn create() -> String {
    "c".into()
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Expected {
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    reasons: Option<Vec<String>>,
    #[serde(default)]
    routing: Option<String>,
    #[serde(default)]
    claim_class: Option<String>,
    #[serde(default)]
    after: Option<serde_yaml_ng::Mapping>,
}

fn days(date: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some((d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

fn avro(v: &serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Boolean(*b),
        Y::Number(n) if n.is_i64() => Value::Long(n.as_i64().unwrap_or_default()),
        Y::Number(n) => Value::Double(n.as_f64().unwrap_or_default()),
        Y::String(s) => days(s).map_or_else(|| Value::String(s.clone()), Value::Date),
        Y::Sequence(items) => Value::Array(items.iter().map(avro).collect()),
        other => panic!("unsupported value {other:?}"),
    }
}

fn record(map: &serde_yaml_ng::Mapping) -> Value {
    Value::Record(
        map.iter()
            .map(|(k, v)| {
                (
                    k.as_str().expect("column names are text").to_string(),
                    avro(v),
                )
            })
            .collect(),
    )
}

fn envelope(e: &InputEvent, position: u64) -> Value {
    let ts = i64::from(days(&e.ts).expect("ts is YYYY-MM-DD")) * 86_400_000;
    let image = |m: &Option<serde_yaml_ng::Mapping>| match m {
        Some(m) => Value::Union(1, Box::new(record(m))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let mut fields = vec![
        ("before".to_string(), image(&e.before)),
        ("after".to_string(), image(&e.after)),
        (
            "source".to_string(),
            Value::Record(vec![
                ("schema".into(), Value::String("public".into())),
                ("table".into(), Value::String(e.table.clone())),
                (
                    "position".into(),
                    Value::String(format!("{position:016x}-00000000")),
                ),
                ("ts_ms".into(), Value::Long(ts)),
            ]),
        ),
        ("op".to_string(), Value::String(e.op.clone())),
    ];
    if let Some(origin) = &e.origin {
        fields.push((
            "origin".into(),
            Value::Union(1, Box::new(Value::String(origin.clone()))),
        ));
        fields.push((
            "hlc".into(),
            Value::Union(1, Box::new(Value::Long((ts << 16) + position as i64))),
        ));
    }
    Value::Record(fields)
}

fn unwrap(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => inner,
        v => v,
    }
}

fn check(file: &str, at: usize, expected: &Expected, got: &Output) {
    let here = format!("{file}: event {at}");
    assert_eq!(got.port, expected.port, "{here}: port");
    let value = got
        .value
        .as_ref()
        .unwrap_or_else(|| panic!("{here}: a tombstone"));
    let field = |name: &str| record_field(value, name).map(unwrap);
    if let Some(op) = &expected.op {
        assert_eq!(field("op"), Some(&Value::String(op.clone())), "{here}: op");
    }
    let symbol = |name: &str| match field(name) {
        Some(Value::Enum(_, s)) => s.clone(),
        v => panic!("{here}: {name} is {v:?}"),
    };
    if let Some(routing) = &expected.routing {
        assert_eq!(&symbol("routing"), routing, "{here}: routing");
    }
    if let Some(class) = &expected.claim_class {
        assert_eq!(&symbol("claim_class"), class, "{here}: claim_class");
    }
    if let Some(reasons) = &expected.reasons {
        let Some(Value::Array(items)) = field("reasons") else {
            panic!("{here}: no reasons")
        };
        let codes: Vec<String> = items
            .iter()
            .filter_map(|r| match record_field(r, "code") {
                Some(Value::String(c)) => Some(c.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(&codes, reasons, "{here}: reasons");
    }
    if let Some(after) = &expected.after {
        let row = field("after").unwrap_or_else(|| panic!("{here}: no after"));
        for (name, want) in after {
            let name = name.as_str().expect("column names are text");
            let got = record_field(row, name).map(unwrap);
            assert_eq!(got, Some(&avro(want)), "{here}: after.{name}");
        }
    }
}

fn run<P: Processor>(file: &str, processor: P, events: &[InputEvent]) -> usize {
    let mut h = Harness::new(processor);
    let mut checked = 0;
    for (i, e) in events.iter().enumerate() {
        let key = record(&e.key);
        let value = envelope(e, i as u64 + 1);
        let outputs = h
            .feed(&Event {
                topic: "golden",
                partition: 0,
                offset: i as i64,
                timestamp_ms: 0,
                key: Some(&key),
                key_schema_id: Some(1),
                value: Some(&value),
                value_schema_id: Some(2),
            })
            .unwrap_or_else(|err| panic!("{file}: event {i}: {err}"));
        assert_eq!(
            outputs.len(),
            e.expect.len(),
            "{file}: event {i}: outputs {:?}",
            outputs.iter().map(|o| &o.port).collect::<Vec<_>>()
        );
        for (expected, got) in e.expect.iter().zip(&outputs) {
            check(file, i, expected, got);
            checked += 1;
        }
    }
    checked
}

fn settings<T: serde::de::DeserializeOwned>(case: &Case) -> T {
    let value = match &case.settings {
        serde_yaml_ng::Value::Null => serde_yaml_ng::Value::Mapping(Default::default()),
        v => v.clone(),
    };
    serde_yaml_ng::from_value(value).expect("settings parse")
}

#[test]
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let mut yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        yaml.apply_merge().unwrap_or_else(|e| panic!("{file}: {e}"));
        let case: Case = serde_yaml_ng::from_value(yaml).unwrap_or_else(|e| panic!("{file}: {e}"));
        let checked = match case.processor.as_str() {
            "claim_analysis" => run(&file, ClaimAnalysis::new(settings(&case)), &case.events),
            "claim_assembly" => run(&file, ClaimAssembly::new(settings(&case)), &case.events),
            "tiering" => run(
                &file,
                Tiering::new(settings(&case)).expect("the PII key reads"),
                &case.events,
            ),
            "conflict_resolution" => run(
                &file,
                ConflictResolution::new(settings(&case), "us-east"),
                &case.events,
            ),
            other => panic!("{file}: unknown processor {other}"),
        };
        println!(
            "{file}: {} events, {checked} outputs checked",
            case.events.len()
        );
    }
}
