//! Line-level features of claim analysis on the in-memory harness.

use apache_avro::types::Value;

use super::{ClaimAnalysis, ClaimAnalysisConfig};
use crate::processors::testing::{change, envelope};
use crate::runtime::harness::Harness;
use crate::runtime::processor::record_field;
use crate::runtime::{Event, Output};

const DAY: i32 = 20_400; // 2025-11-08
const NOW_MS: i64 = (DAY as i64 + 10) * 86_400_000;

struct Feeder {
    h: Harness<ClaimAnalysis>,
    position: u64,
}

impl Feeder {
    fn new() -> Self {
        Self::with(serde_yaml_ng::from_str("{}").unwrap())
    }

    /// A harness with `config`, members 1 to 50 covered.
    fn with(config: ClaimAnalysisConfig) -> Self {
        assert!(config.check().is_empty());
        let mut f = Self {
            h: Harness::new(ClaimAnalysis::new(config)),
            position: 0,
        };
        for member in 1..=50 {
            f.row(
                "policies",
                vec![
                    ("policy_id", Value::Long(member)),
                    ("member_id", Value::Long(member)),
                    ("coverage_start", Value::Date(DAY - 365)),
                ],
            );
        }
        f
    }

    fn feed(&mut self, value: Value) -> Result<Vec<Output>, crate::runtime::ProcessError> {
        let key = Value::Long(self.position as i64);
        self.h.feed(&Event {
            topic: "assembly",
            partition: 0,
            offset: self.position as i64,
            timestamp_ms: NOW_MS,
            key: Some(&key),
            key_schema_id: Some(1),
            value: Some(&value),
            value_schema_id: Some(2),
        })
    }

    /// A row of `table` at the next position, and what processing it gave.
    fn try_row(
        &mut self,
        table: &str,
        row: Vec<(&str, Value)>,
    ) -> Result<Vec<Output>, crate::runtime::ProcessError> {
        self.position += 1;
        let value = envelope(table, self.position, NOW_MS, row);
        self.feed(value)
    }

    fn row(&mut self, table: &str, row: Vec<(&str, Value)>) -> Vec<Output> {
        self.try_row(table, row).expect("processed")
    }

    /// Claim `id`, served on `DAY - id % 200`; the analyses it leads to.
    fn claim(&mut self, id: i64, member: i64, provider: i64, billed: f64) -> Vec<Output> {
        self.row(
            "claims",
            vec![
                ("claim_id", Value::Long(id)),
                ("member_id", Value::Long(member)),
                ("provider_id", Value::Long(provider)),
                ("claim_type", Value::String("PROFESSIONAL".into())),
                ("form_type", Value::String("CMS1500".into())),
                ("service_date_from", Value::Date(DAY - id as i32 % 200)),
                ("service_date_to", Value::Date(DAY - id as i32 % 200)),
                ("submitted_date", Value::Date(DAY)),
                ("billed_amount", Value::Double(billed)),
                (
                    "diagnosis_codes",
                    Value::Array(vec![Value::String("J06.9".into())]),
                ),
            ],
        )
    }

    /// The row of line `number` of `claim`.
    fn line_row(claim: i64, number: i64, code: &str, charge: f64) -> Vec<(&str, Value)> {
        vec![
            ("claim_id", Value::Long(claim)),
            ("line_number", Value::Long(number)),
            ("procedure_code", Value::String(code.into())),
            ("charge_amount", Value::Double(charge)),
        ]
    }

    /// The reason codes of the analysis a line leads to.
    fn line(&mut self, claim: i64, number: i64, code: &str, charge: f64) -> Vec<String> {
        let out = self.row("claim_lines", Self::line_row(claim, number, code, charge));
        assert_eq!(out.len(), 1, "a line revises its claim's analysis");
        codes(&out[0])
    }
}

fn codes(output: &Output) -> Vec<String> {
    let Some(Value::Array(reasons)) = record_field(output.value.as_ref().unwrap(), "reasons")
    else {
        panic!("reasons")
    };
    reasons
        .iter()
        .filter_map(|r| match record_field(r, "code") {
            Some(Value::String(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn lines_must_sum_to_the_header_and_carry_valid_codes() {
    let mut f = Feeder::new();
    f.claim(1, 1, 100, 200.0);
    let first = f.line(1, 1, "99213", 125.0);
    assert!(
        first.contains(&"LINES_SUM_MISMATCH".to_string()),
        "{first:?}"
    );
    let second = f.line(1, 2, "80053", 75.0);
    assert!(second.is_empty(), "all lines in, sum matches: {second:?}");
    let bad = f.line(1, 3, "9921", 0.0);
    assert!(bad.contains(&"BAD_PROCEDURE_CODE".to_string()), "{bad:?}");
    // Removing the bad line clears what it caused.
    f.position += 1;
    let delete = change(
        "claim_lines",
        "d",
        f.position,
        NOW_MS,
        Some(vec![
            ("claim_id", Value::Long(1)),
            ("line_number", Value::Long(3)),
        ]),
        None,
    );
    let out = f.feed(delete).unwrap();
    assert!(codes(&out[0]).is_empty(), "{:?}", codes(&out[0]));
}

#[test]
fn a_charge_far_above_the_procedures_history_is_an_outlier() {
    let mut f = Feeder::new();
    for id in 1..=40 {
        let charge = 120.0 + (id % 7) as f64;
        f.claim(id, id % 50 + 1, 100 + id % 5, charge);
        assert!(!f
            .line(id, 1, "99213", charge)
            .contains(&"PROCEDURE_AMOUNT_OUTLIER".to_string()));
    }
    f.claim(41, 3, 101, 2_400.0);
    let codes = f.line(41, 1, "99213", 2_400.0);
    assert!(
        codes.contains(&"PROCEDURE_AMOUNT_OUTLIER".to_string()),
        "{codes:?}"
    );
}

#[test]
fn a_provider_billing_high_levels_far_more_than_its_peers_is_upcoding() {
    let mut f = Feeder::new();
    let mut id = 0;
    // Peers bill mostly middle levels.
    for i in 0..200 {
        id += 1;
        f.claim(id, i % 50 + 1, 200 + i % 10, 100.0);
        let level = ["99212", "99213", "99213", "99214"][i as usize % 4];
        f.line(id, 1, level, 100.0);
    }
    // Provider 9 bills 99215 on every visit.
    let mut flagged = 0;
    for i in 0..30 {
        id += 1;
        f.claim(id, i % 50 + 1, 9, 260.0);
        if f.line(id, 1, "99215", 260.0)
            .contains(&"UPCODING".to_string())
        {
            flagged += 1;
        }
    }
    assert!(
        flagged >= 10,
        "the provider's high-level lines are flagged once its mix is known: {flagged}"
    );
    // A peer's 99214 is not.
    id += 1;
    f.claim(id, 1, 201, 185.0);
    assert!(!f
        .line(id, 1, "99214", 185.0)
        .contains(&"UPCODING".to_string()));
}

#[test]
fn a_line_of_a_claim_never_seen_is_rejected() {
    let mut f = Feeder::new();
    let err = f
        .try_row("claim_lines", Feeder::line_row(999, 1, "99213", 1.0))
        .unwrap_err();
    assert!(err.to_string().contains("claim_assembly"), "{err}");
}

#[test]
fn lines_of_a_claim_waiting_for_coverage_wait_inside_it() {
    let mut f = Feeder::new();
    // Members 101 and 102 have no policy yet: their claims wait, and so do the lines.
    assert!(f.claim(11, 101, 100, 160.0).is_empty());
    assert!(f.claim(12, 102, 100, 160.0).is_empty());
    for (claim, number, charge) in [(11, 1, 100.0), (12, 1, 1.0), (11, 2, 60.0)] {
        let row = Feeder::line_row(claim, number, "99213", charge);
        assert!(f.row("claim_lines", row).is_empty());
    }
    let released = f.row(
        "policies",
        vec![
            ("policy_id", Value::Long(101)),
            ("member_id", Value::Long(101)),
            ("coverage_start", Value::Date(DAY - 365)),
        ],
    );
    assert_eq!(released.len(), 1, "member 101's claim, and only it");
    assert_eq!(
        record_field(released[0].value.as_ref().unwrap(), "claim_id"),
        Some(&Value::Long(11))
    );
    assert!(codes(&released[0]).is_empty(), "both lines were in it");
    // Released, the claim takes its next lines directly.
    assert!(f
        .line(11, 2, "99213", 50.0)
        .contains(&"LINES_SUM_MISMATCH".to_string()));
}

#[test]
fn a_provider_over_its_daily_limit_is_flagged_from_the_claim_that_passes_it() {
    let mut f = Feeder::with(serde_yaml_ng::from_str("{provider_velocity_limit: 3}").unwrap());
    let mut flagged = Vec::new();
    for id in 1..=5 {
        // Same service day (ids spaced by 200 keep `DAY - id % 200` equal), other members.
        let claim_id = id * 200;
        f.claim(claim_id, id, 77, 100.0 + id as f64);
        let codes = f.line(claim_id, 1, "99213", 100.0 + id as f64);
        flagged.push(codes.contains(&"VELOCITY_PROVIDER".to_string()));
    }
    assert_eq!(flagged, [false, false, false, true, true]);
}

#[test]
fn member_velocity_counts_the_days_within_the_window_short_or_long() {
    // Claims 1, 2 and 3 are served on consecutive days, claim 10 a week before them.
    // A 3-day window (read day by day) holds the first three together; a 10-day window
    // (a scan of the member's days) holds all four.
    for (window, flagged) in [("3d", vec![1, 2, 3]), ("10d", vec![1, 2, 3, 10])] {
        let mut f = Feeder::with(
            serde_yaml_ng::from_str(&format!(
                "{{velocity_window: {window}, member_velocity_limit: 2}}"
            ))
            .unwrap(),
        );
        let mut latest = std::collections::BTreeMap::new();
        for id in [1, 2, 3, 10] {
            for out in f.claim(id, 9, 100 + id, 50.0 * id as f64) {
                let Some(Value::Long(claim)) =
                    record_field(out.value.as_ref().unwrap(), "claim_id")
                else {
                    panic!("claim_id")
                };
                latest.insert(*claim, codes(&out).contains(&"VELOCITY_MEMBER".to_string()));
            }
        }
        let got: Vec<i64> = latest
            .into_iter()
            .filter(|(_, v)| *v)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(got, flagged, "window {window}");
    }
}

fn analysis_id(output: &Output) -> String {
    match record_field(output.value.as_ref().unwrap(), "analysis_id") {
        Some(Value::String(id)) => id.clone(),
        other => panic!("analysis_id: {other:?}"),
    }
}

#[test]
fn analysis_ids_grow_whatever_order_lines_arrive_in() {
    let mut f = Feeder::new();
    f.claim(1, 1, 100, 200.0);
    let line = |number: i64, charge: f64| {
        vec![
            ("claim_id", Value::Long(1)),
            ("line_number", Value::Long(number)),
            ("procedure_code", Value::String("99213".into())),
            ("charge_amount", Value::Double(charge)),
        ]
    };
    // Line 2 was committed after line 1 but arrives first (another partition upstream).
    let second = f
        .feed(envelope("claim_lines", 1_000, NOW_MS, line(2, 75.0)))
        .unwrap();
    let first = f
        .feed(envelope("claim_lines", 900, NOW_MS, line(1, 125.0)))
        .unwrap();
    let (a, b) = (analysis_id(&second[0]), analysis_id(&first[0]));
    assert!(b > a, "the later revision has the greater id: {a} then {b}");
    assert!(
        codes(&first[0]).is_empty(),
        "both lines counted: {:?}",
        codes(&first[0])
    );
    // The same line again (an upstream redelivery) revises nothing.
    let again = f
        .feed(envelope("claim_lines", 900, NOW_MS, line(1, 125.0)))
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn of_two_exact_duplicates_the_later_committed_is_flagged_in_any_order() {
    let claim = |id: i64| {
        vec![
            ("claim_id", Value::Long(id)),
            ("member_id", Value::Long(3)),
            ("provider_id", Value::Long(100)),
            ("claim_type", Value::String("PROFESSIONAL".into())),
            ("form_type", Value::String("CMS1500".into())),
            ("service_date_from", Value::Date(DAY - 3)),
            ("service_date_to", Value::Date(DAY - 3)),
            ("submitted_date", Value::Date(DAY)),
            ("billed_amount", Value::Double(150.0)),
            (
                "diagnosis_codes",
                Value::Array(vec![Value::String("J06.9".into())]),
            ),
        ]
    };
    // Claim 2 was committed after claim 1 but reaches the stage first.
    let mut f = Feeder::new();
    let later = f.feed(envelope("claims", 2_000, NOW_MS, claim(2))).unwrap();
    assert!(codes(&later[0]).is_empty(), "{:?}", codes(&later[0]));
    let earlier = f.feed(envelope("claims", 1_000, NOW_MS, claim(1))).unwrap();
    let by_claim = |id: i64| {
        earlier
            .iter()
            .find(|o| record_field(o.value.as_ref().unwrap(), "claim_id") == Some(&Value::Long(id)))
            .map(codes)
    };
    assert_eq!(
        by_claim(1),
        Some(vec![]),
        "the first committed is the original"
    );
    assert_eq!(
        by_claim(2),
        Some(vec!["DUPLICATE_EXACT".to_string()]),
        "claim 2's analysis is revised"
    );
}

#[test]
fn a_claim_delivered_again_is_analysed_once() {
    let mut f = Feeder::new();
    assert_eq!(f.claim(1, 1, 100, 200.0).len(), 1);
    f.line(1, 1, "99213", 200.0);
    // Again later (a redelivery, or a snapshot read after the insert), another day between.
    f.claim(405, 1, 100, 90.0);
    assert!(f.claim(1, 1, 100, 200.0).is_empty());
}

#[test]
fn a_claim_missing_a_required_field_is_rejected_with_the_field_named() {
    let mut f = Feeder::new();
    let processed = f.try_row(
        "claims",
        vec![
            ("claim_id", Value::Long(7)),
            ("provider_id", Value::Long(3)),
            ("service_date_from", Value::Date(DAY)),
            ("service_date_to", Value::Date(DAY)),
            ("submitted_date", Value::Date(DAY)),
            ("billed_amount", Value::Double(100.0)),
        ],
    );
    match processed {
        Err(crate::runtime::ProcessError::Rejected(r)) => {
            assert_eq!(r.code, "claim.missing_field");
            assert!(r.to_string().contains("member_id"), "{r}");
        }
        other => panic!("a claim without member_id must be rejected, not {other:?}"),
    }
}
