//! Claim assembly on the in-memory harness: lines follow their claim to its member's
//! partition, in order, whichever arrives first.

use apache_avro::types::Value;

use super::{ClaimAssembly, ClaimAssemblyConfig};
use crate::processors::change::{describe, Cell};
use crate::processors::testing::{change, envelope};
use crate::runtime::harness::Harness;
use crate::runtime::processor::record_field;
use crate::runtime::{Event, Output};

fn harness() -> Harness<ClaimAssembly> {
    let config: ClaimAssemblyConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert!(config.check().is_empty());
    Harness::new(ClaimAssembly::new(config))
}

fn feed(h: &mut Harness<ClaimAssembly>, key: &Value, value: &Value) -> Vec<Output> {
    h.feed(&Event {
        topic: "conflicts",
        partition: 0,
        offset: 0,
        timestamp_ms: 0,
        key: Some(key),
        key_schema_id: Some(1),
        value: Some(value),
        value_schema_id: Some(2),
    })
    .expect("processed")
}

fn member(id: i64) -> Option<Vec<u8>> {
    Some(describe(&Cell::from(&Value::Long(id))).into_bytes())
}

fn claim(id: i64, member: i64, position: u64) -> (Value, Value) {
    (
        Value::Record(vec![("claim_id".into(), Value::Long(id))]),
        envelope(
            "claims",
            position,
            0,
            vec![
                ("claim_id", Value::Long(id)),
                ("member_id", Value::Long(member)),
            ],
        ),
    )
}

fn line_key(claim: i64, line: i32) -> Value {
    Value::Record(vec![
        ("claim_id".into(), Value::Long(claim)),
        ("line_number".into(), Value::Int(line)),
    ])
}

fn line(claim: i64, line: i32, position: u64) -> (Value, Value) {
    (
        line_key(claim, line),
        envelope(
            "claim_lines",
            position,
            0,
            vec![
                ("claim_id", Value::Long(claim)),
                ("line_number", Value::Int(line)),
                ("procedure_code", Value::String("99213".into())),
            ],
        ),
    )
}

fn position(output: &Output) -> String {
    let source = record_field(output.value.as_ref().unwrap(), "source").unwrap();
    match record_field(source, "position") {
        Some(Value::String(p)) => p.clone(),
        v => panic!("{v:?}"),
    }
}

#[test]
fn lines_that_come_first_wait_for_their_claim_and_follow_it_in_position_order() {
    let mut h = harness();
    let (k2, v2) = line(7, 2, 12);
    let (k1, v1) = line(7, 1, 11);
    assert!(
        feed(&mut h, &k2, &v2).is_empty(),
        "no claim yet: the line waits"
    );
    assert!(feed(&mut h, &k1, &v1).is_empty());
    let (k, v) = claim(7, 42, 10);
    let out = feed(&mut h, &k, &v);
    assert_eq!(
        out.iter().map(position).collect::<Vec<_>>(),
        [
            "000000000000000a-00000000",
            "000000000000000b-00000000",
            "000000000000000c-00000000"
        ],
        "the claim, then its lines by position"
    );
    assert!(out.iter().all(|o| o.partition_by == member(42)));
    assert_eq!(out[1].value.as_ref(), Some(&v1), "a line leaves unchanged");
    assert_eq!(out[1].key.as_ref(), Some(&k1));
    // Nothing is left waiting: the claim's next change emits only itself.
    let (k, v) = claim(7, 42, 13);
    assert_eq!(feed(&mut h, &k, &v).len(), 1);
}

#[test]
fn later_lines_and_their_deletes_go_straight_to_the_claims_member() {
    let mut h = harness();
    let (k, v) = claim(8, 43, 1);
    feed(&mut h, &k, &v);
    let (k3, v3) = line(8, 3, 2);
    let out = feed(&mut h, &k3, &v3);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].partition_by, member(43));
    // A delete carries only the key columns.
    let delete = change(
        "claim_lines",
        "d",
        3,
        0,
        Some(vec![
            ("claim_id", Value::Long(8)),
            ("line_number", Value::Int(3)),
        ]),
        None,
    );
    let out = feed(&mut h, &k3, &delete);
    assert_eq!(out[0].partition_by, member(43));
    // So does the claim's own delete.
    let delete = change(
        "claims",
        "d",
        4,
        0,
        Some(vec![("claim_id", Value::Long(8))]),
        None,
    );
    assert_eq!(feed(&mut h, &k, &delete)[0].partition_by, member(43));
}

#[test]
fn other_tables_follow_their_own_member_and_the_same_member_lands_together() {
    let mut h = harness();
    let key = Value::Record(vec![("policy_id".into(), Value::Long(1))]);
    let policy = envelope(
        "policies",
        1,
        0,
        vec![
            ("policy_id", Value::Long(1)),
            ("member_id", Value::Long(44)),
        ],
    );
    let out = feed(&mut h, &key, &policy);
    let (k, v) = claim(9, 44, 2);
    assert_eq!(out[0].partition_by, feed(&mut h, &k, &v)[0].partition_by);
    let key = Value::Record(vec![("code".into(), Value::String("X".into()))]);
    let other = envelope("codes", 3, 0, vec![("code", Value::String("X".into()))]);
    assert_eq!(feed(&mut h, &key, &other)[0].partition_by, None);
}

#[test]
fn a_line_without_its_claim_column_is_rejected_not_dropped() {
    let mut h = harness();
    let key = line_key(1, 1);
    let bad = envelope("claim_lines", 1, 0, vec![("line_number", Value::Int(1))]);
    let err = h
        .feed(&Event {
            topic: "conflicts",
            partition: 0,
            offset: 0,
            timestamp_ms: 0,
            key: Some(&key),
            key_schema_id: Some(1),
            value: Some(&bad),
            value_schema_id: Some(2),
        })
        .unwrap_err();
    assert!(err.to_string().contains("claim_id"), "{err}");
}

#[test]
fn a_line_whose_claim_never_comes_is_sent_on_after_line_wait_not_kept_forever() {
    let mut h = harness();
    let (k, v) = line(5, 1, 1);
    assert!(feed(&mut h, &k, &v).is_empty());
    // Two days of event time later (line_wait is 1 day), another table's change.
    let key = Value::Record(vec![("policy_id".into(), Value::Long(1))]);
    let policy = envelope(
        "policies",
        2,
        2 * 86_400_000,
        vec![
            ("policy_id", Value::Long(1)),
            ("member_id", Value::Long(44)),
        ],
    );
    let out = feed(&mut h, &key, &policy);
    assert_eq!(out.len(), 2, "the policy, then the released line");
    assert_eq!(out[1].value.as_ref(), Some(&v));
    assert_eq!(
        out[1].partition_by, None,
        "its own partition: analysis rejects it there"
    );
    // Released once: the claim coming late emits only itself.
    let (k, v) = claim(5, 42, 3);
    assert_eq!(feed(&mut h, &k, &v).len(), 1);
}

/// A claim voided and deleted before its lines got here: the delete's before-image has
/// only the key (member_id NULL), which must not replace the member the claim went to.
#[test]
fn a_delete_with_a_key_only_image_keeps_the_claims_member() {
    let mut h = harness();
    let (key, value) = claim(7, 42, 10);
    assert_eq!(feed(&mut h, &key, &value)[0].partition_by, member(42));
    let delete = change(
        "claims",
        "d",
        11,
        0,
        Some(vec![
            ("claim_id", Value::Long(7)),
            ("member_id", Value::Union(0, Box::new(Value::Null))),
        ]),
        None,
    );
    assert_eq!(feed(&mut h, &key, &delete)[0].partition_by, member(42));
    let (key, value) = line(7, 1, 12);
    assert_eq!(
        feed(&mut h, &key, &value)[0].partition_by,
        member(42),
        "the line follows its claim"
    );
}
