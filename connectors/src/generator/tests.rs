use std::collections::HashMap;

use chrono::{Duration, NaiveDate};

use super::model::{Anomaly, Claim, ClaimFactory, Label, BURST_SIZE};
use super::GeneratorConfig;

fn config(seed: u64) -> GeneratorConfig {
    GeneratorConfig {
        members: 500,
        providers: 60,
        claims: 4_000,
        anomaly_share: 0.08,
        seed,
        today: NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
        ..GeneratorConfig::default()
    }
}

fn backfill(config: &GeneratorConfig) -> (ClaimFactory, Vec<(Claim, Option<Label>)>) {
    let mut f = ClaimFactory::new(config);
    let (from, to) = f.backfill_window(config.years);
    let mut out = Vec::new();
    while out.len() < config.claims as usize {
        out.extend(f.next(from, to));
    }
    (f, out)
}

#[test]
fn same_seed_same_data() {
    let (fa, a) = backfill(&config(7));
    let (fb, b) = backfill(&config(7));
    assert_eq!(fa.reference(), fb.reference());
    assert_eq!(a, b);
    let (_, c) = backfill(&config(8));
    assert_ne!(a, c, "another seed, other data");
}

#[test]
fn labels_match_the_rows() {
    let cfg = config(11);
    let (factory, rows) = backfill(&cfg);
    let by_id: HashMap<i64, &Claim> = rows.iter().map(|(c, _)| (c.id, c)).collect();
    let policies: HashMap<i64, _> = factory
        .reference()
        .policies
        .iter()
        .map(|p| (p.member_id, p))
        .collect();
    let mut seen: HashMap<Anomaly, usize> = HashMap::new();
    for (claim, label) in &rows {
        let Some(label) = label else { continue };
        assert_eq!(label.claim_id, claim.id);
        *seen.entry(label.anomaly).or_default() += 1;
        match label.anomaly {
            Anomaly::ExactDuplicate => {
                let original = by_id[&label.related_claim_id.unwrap()];
                assert_eq!(
                    Claim {
                        id: original.id,
                        ..claim.clone()
                    },
                    *original
                );
            }
            Anomaly::NearDuplicate => {
                let original = by_id[&label.related_claim_id.unwrap()];
                assert_eq!(
                    (claim.member_id, claim.provider_id),
                    (original.member_id, original.provider_id)
                );
                assert_eq!(
                    claim.lines[0].procedure_code,
                    original.lines[0].procedure_code
                );
                let gap = (claim.service_date_from - original.service_date_from).num_days();
                assert!((1..=3).contains(&gap), "{gap}");
            }
            Anomaly::VelocityBurst => {
                let first = by_id[&label.related_claim_id.unwrap()];
                assert_eq!(
                    (claim.member_id, claim.service_date_from),
                    (first.member_id, first.service_date_from)
                );
            }
            Anomaly::AmountOutlier => {
                let median = super::catalog::procedure(claim.lines[0].procedure_code)
                    .unwrap()
                    .median_cents;
                assert!(
                    claim.lines[0].charge_cents > 5 * median,
                    "{} vs median {median}",
                    claim.lines[0].charge_cents
                );
            }
            Anomaly::Upcoding => assert_eq!(claim.lines[0].procedure_code, "99215"),
            Anomaly::CoverageViolation => {
                let end = policies[&claim.member_id].coverage_end.unwrap();
                assert!(claim.service_date_from > end);
            }
        }
    }
    for anomaly in Anomaly::ALL {
        assert!(
            seen.get(&anomaly).copied().unwrap_or(0) > 0,
            "{anomaly:?} planted"
        );
    }
    assert_eq!(
        seen[&Anomaly::VelocityBurst] % BURST_SIZE,
        0,
        "whole bursts are labelled"
    );
}

#[test]
fn unlabelled_claims_are_clean() {
    let cfg = config(3);
    let (factory, rows) = backfill(&cfg);
    let policies: HashMap<i64, _> = factory
        .reference()
        .policies
        .iter()
        .map(|p| (p.member_id, p))
        .collect();
    for (claim, label) in &rows {
        if label.is_some() {
            continue;
        }
        let p = policies[&claim.member_id];
        assert!(claim.service_date_from >= p.coverage_start);
        assert!(
            p.coverage_end.is_none_or(|e| claim.service_date_from <= e),
            "normal claims are covered"
        );
        assert_eq!(
            claim.billed_cents,
            claim.lines.iter().map(|l| l.charge_cents).sum::<i64>()
        );
        assert!(claim.submitted_date >= claim.service_date_to && claim.submitted_date <= cfg.today);
    }
}

#[test]
fn every_tier_gets_data_and_volume_is_skewed() {
    let cfg = config(5);
    let (_, rows) = backfill(&cfg);
    let age = |c: &Claim| (cfg.today - c.service_date_from).num_days();
    let hot = rows.iter().filter(|(c, _)| age(c) < 90).count();
    let warm = rows
        .iter()
        .filter(|(c, _)| (90..=365).contains(&age(c)))
        .count();
    let cold = rows.iter().filter(|(c, _)| age(c) > 365).count();
    assert!(
        hot > 50 && warm > 300 && cold > 1_000,
        "hot {hot}, warm {warm}, cold {cold}"
    );

    let mut per_provider: HashMap<i64, usize> = HashMap::new();
    for (c, _) in &rows {
        *per_provider.entry(c.provider_id).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_provider.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let median = counts[counts.len() / 2];
    assert!(
        counts[0] > 4 * median,
        "a few providers dominate: top {} vs median {median}",
        counts[0]
    );
    assert!(rows
        .iter()
        .all(|(c, _)| cfg.today - c.service_date_from <= Duration::days(3 * 365)));
}
