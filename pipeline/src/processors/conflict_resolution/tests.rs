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

fn feed(h: &mut Harness<ConflictResolution>, w: &Write, position: u64) -> Vec<Output> {
    let key = Value::Record(vec![("claim_id".into(), Value::Long(1))]);
    let value = envelope(w, position);
    h.feed(&Event {
        topic: "claims",
        partition: 0,
        offset: position as i64,
        timestamp_ms: 0,
        key: Some(&key),
        key_schema_id: Some(1),
        value: Some(&value),
        value_schema_id: Some(2),
    })
    .expect("processed")
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
