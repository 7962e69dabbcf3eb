//! The conflict-resolution processor on the in-memory harness: replicas that see the same
//! writes in different orders emit the same final row; each conflict is audited; a
//! redelivered write changes nothing.

use apache_avro::types::Value;
use proptest::prelude::*;

use super::{ConflictConfig, ConflictResolution};
use crate::processors::testing::change;
use crate::runtime::harness::Harness;
use crate::runtime::processor::record_field;
use crate::runtime::{Event, Output};

const CONFIG: &str = "
origin: on-prem
tables:
  public.claims:
    policy: source_priority
    field_groups:
      clinical: { fields: [diagnosis], owner: on-prem }
      workflow: { fields: [status], owner: cloud }
";

/// One write of claim 1 by `origin` at hybrid logical clock `hlc`.
#[derive(Debug, Clone)]
struct Write {
    origin: &'static str,
    hlc: i64,
    status: &'static str,
    diagnosis: &'static str,
    amount: i64,
}

fn envelope(w: &Write, position: u64) -> Value {
    let row = vec![
        ("claim_id", Value::Long(1)),
        ("member_id", Value::Long(7)),
        ("status", Value::String(w.status.into())),
        ("diagnosis", Value::String(w.diagnosis.into())),
        ("amount", Value::Long(w.amount)),
    ];
    let Value::Record(mut fields) = change("claims", "u", position, w.hlc >> 16, None, Some(row))
    else {
        unreachable!()
    };
    fields.push((
        "origin".into(),
        Value::Union(1, Box::new(Value::String(w.origin.into()))),
    ));
    fields.push(("hlc".into(), Value::Union(1, Box::new(Value::Long(w.hlc)))));
    Value::Record(fields)
}

fn replica() -> Harness<ConflictResolution> {
    let config: ConflictConfig = serde_yaml_ng::from_str(CONFIG).unwrap();
    assert!(config.check().is_empty());
    Harness::new(ConflictResolution::new(config, "us-east"))
}

/// Feeds one change of (`key`, `value`) at `offset` of partition 0.
fn deliver(
    h: &mut Harness<ConflictResolution>,
    key: &Value,
    value: &Value,
    offset: i64,
) -> Result<Vec<Output>, String> {
    h.feed(&Event {
        topic: "changes",
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: Some(key),
        key_schema_id: Some(1),
        value: Some(value),
        value_schema_id: Some(2),
    })
    .map_err(|e| format!("{e:?}"))
}

fn feed(h: &mut Harness<ConflictResolution>, w: &Write, position: u64) -> Vec<Output> {
    let key = Value::Record(vec![("claim_id".into(), Value::Long(1))]);
    deliver(h, &key, &envelope(w, position), position as i64).expect("processed")
}

/// The merged row of the last default-port output: (status, diagnosis, amount).
fn merged(outputs: &[Output]) -> Option<(String, String, i64)> {
    let out = outputs.iter().rev().find(|o| o.port.is_none())?;
    let after = record_field(out.value.as_ref()?, "after")?;
    let after = match after {
        Value::Union(_, inner) => &**inner,
        v => v,
    };
    let text = |name| match record_field(after, name) {
        Some(Value::String(s)) => s.clone(),
        v => panic!("{name}: {v:?}"),
    };
    let Some(Value::Long(amount)) = record_field(after, "amount") else {
        panic!("amount")
    };
    Some((text("status"), text("diagnosis"), *amount))
}

fn writes() -> Vec<Write> {
    vec![
        Write {
            origin: "on-prem",
            hlc: 10 << 16,
            status: "SUBMITTED",
            diagnosis: "J06.9",
            amount: 100,
        },
        Write {
            origin: "cloud",
            hlc: 11 << 16,
            status: "APPROVED",
            diagnosis: "Z00.0",
            amount: 120,
        },
        Write {
            origin: "on-prem",
            hlc: 12 << 16,
            status: "PENDED",
            diagnosis: "J20.9",
            amount: 110,
        },
    ]
}

#[test]
fn source_priority_gives_each_field_group_to_its_owner_and_audits_the_conflict() {
    let mut h = replica();
    let mut all = Vec::new();
    for (i, w) in writes().iter().enumerate() {
        all.extend(feed(&mut h, w, i as u64 + 1));
    }
    // Status is the cloud's, the diagnosis on-prem's, the rest last-writer-wins.
    assert_eq!(merged(&all), Some(("APPROVED".into(), "J20.9".into(), 110)));
    let audits = all
        .iter()
        .filter(|o| o.port.as_deref() == Some("audit"))
        .count();
    assert!(audits >= 1, "an overridden write is audited");
}

#[test]
fn a_redelivered_write_changes_nothing() {
    let mut h = replica();
    let ws = writes();
    feed(&mut h, &ws[0], 1);
    feed(&mut h, &ws[1], 2);
    assert!(
        feed(&mut h, &ws[0], 1).is_empty(),
        "the same position again emits nothing"
    );
}

proptest! {
    /// Any order of the same writes, each with its own position, ends on the same row.
    #[test]
    fn replicas_converge_whatever_the_order(order in Just((0..3usize).collect::<Vec<_>>()).prop_shuffle()) {
        let ws = writes();
        let mut reference = replica();
        let mut expected = Vec::new();
        for (i, w) in ws.iter().enumerate() {
            expected.extend(feed(&mut reference, w, i as u64 + 1));
        }
        let mut other = replica();
        let mut got = Vec::new();
        for i in order {
            got.extend(feed(&mut other, &ws[i], i as u64 + 1));
        }
        prop_assert_eq!(merged(&got), merged(&expected));
    }
}

#[test]
fn an_audit_withholds_the_values_of_sensitive_columns() {
    let mut h = replica();
    let mut audits = Vec::new();
    for (position, origin, name) in [(1, "on-prem", "Okafor"), (2, "cloud", "Okafor-Reyes")] {
        let row = vec![
            ("member_id", Value::Long(7)),
            ("last_name", Value::String(name.into())),
            (
                "state",
                Value::String(if position == 1 { "NY" } else { "NJ" }.into()),
            ),
        ];
        let Value::Record(mut fields) = change("members", "u", position, 1_000, None, Some(row))
        else {
            unreachable!()
        };
        fields.push((
            "origin".into(),
            Value::Union(1, Box::new(Value::String(origin.into()))),
        ));
        fields.push((
            "hlc".into(),
            Value::Union(1, Box::new(Value::Long((position as i64) << 16))),
        ));
        let (key, value) = (
            Value::Record(vec![("member_id".into(), Value::Long(7))]),
            Value::Record(fields),
        );
        let out = deliver(&mut h, &key, &value, position as i64).expect("processed");
        audits.extend(
            out.into_iter()
                .filter(|o| o.port.as_deref() == Some("audit")),
        );
    }
    // The audit names no column, only the values: one pair per differing column.
    let mut pairs: Vec<(Option<String>, Option<String>)> = audits
        .iter()
        .filter_map(|a| a.value.as_ref())
        .map(|a| (text_field(a, "local_value"), text_field(a, "remote_value")))
        .collect();
    pairs.sort();
    let withheld = Some("(sensitive: withheld)".to_string());
    assert_eq!(
        pairs,
        vec![
            (withheld.clone(), withheld),
            (
                Some(r#"{"String":"NY"}"#.to_string()),
                Some(r#"{"String":"NJ"}"#.to_string())
            ),
        ]
    );
}

fn text_field(record: &Value, name: &str) -> Option<String> {
    match record_field(record, name)? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Claim 5's change at `position` with `note`, marked unavailable when `None`, and the
/// `unavailable` columns named in the envelope.
fn toast_change(position: u64, note: Option<&str>, unavailable: &[&str]) -> Value {
    let note = match note {
        Some(n) => Value::Union(1, Box::new(Value::String(n.into()))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let status = Value::String(format!("status {position}"));
    let row = vec![
        ("claim_id", Value::Long(5)),
        ("status", status),
        ("note", note),
    ];
    let Value::Record(mut fields) = change("claims", "u", position, 1_000, None, Some(row)) else {
        unreachable!()
    };
    fields.push((
        "unavailable_columns".into(),
        Value::Array(
            unavailable
                .iter()
                .map(|c| Value::String(c.to_string()))
                .collect(),
        ),
    ));
    Value::Record(fields)
}

fn feed_value(
    h: &mut Harness<ConflictResolution>,
    value: &Value,
    offset: i64,
) -> Result<Vec<Output>, String> {
    let key = Value::Record(vec![("claim_id".into(), Value::Long(5))]);
    deliver(h, &key, value, offset)
}

fn note_and_marker(out: &[Output]) -> (Option<Value>, Option<Value>) {
    let value = out[0].value.as_ref().unwrap();
    let after = record_field(value, "after").unwrap();
    let after = match after {
        Value::Union(_, inner) => &**inner,
        v => v,
    };
    (
        record_field(after, "note").cloned(),
        record_field(value, "unavailable_columns").cloned(),
    )
}

#[test]
fn an_unchanged_toast_value_is_filled_from_state_and_never_nulled() {
    let mut h = replica();
    let big = "x".repeat(19_000);
    feed_value(&mut h, &toast_change(1, Some(&big), &[]), 1).unwrap();
    let out = feed_value(&mut h, &toast_change(2, None, &["note"]), 2).unwrap();
    assert_eq!(
        note_and_marker(&out),
        (
            Some(Value::Union(1, Box::new(Value::String(big)))),
            Some(Value::Array(vec![]))
        ),
        "the note comes from state, and nothing is left unavailable"
    );

    // No state holds it (a replay from mid-stream): the marker goes on to the sinks.
    let mut fresh = replica();
    let out = feed_value(&mut fresh, &toast_change(3, None, &["note"]), 3).unwrap();
    assert_eq!(
        note_and_marker(&out).1,
        Some(Value::Array(vec![Value::String("note".into())]))
    );

    // A marker naming a column the row does not have is rejected (a dead letter).
    let err = feed_value(&mut fresh, &toast_change(4, None, &["nope"]), 4).unwrap_err();
    assert!(err.contains("unknown_unavailable_column"), "{err}");
}
