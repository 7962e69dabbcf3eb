//! The synthetic claims workload, as plain data: deterministic for a seed, written by
//! [`super::writer`]. Nothing here touches a database.

use chrono::{Duration, NaiveDate};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::LogNormal;

use super::catalog::{self, Procedure, EM_LEVELS};
use super::config::GeneratorConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimType {
    Professional,
    Institutional,
    Pharmacy,
    Dental,
    Vision,
}

impl ClaimType {
    pub const ALL: [ClaimType; 5] = [
        ClaimType::Professional,
        ClaimType::Institutional,
        ClaimType::Pharmacy,
        ClaimType::Dental,
        ClaimType::Vision,
    ];
    /// Share of claims of each type, in `ALL` order.
    const SHARE: [u32; 5] = [60, 10, 15, 10, 5];

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimType::Professional => "PROFESSIONAL",
            ClaimType::Institutional => "INSTITUTIONAL",
            ClaimType::Pharmacy => "PHARMACY",
            ClaimType::Dental => "DENTAL",
            ClaimType::Vision => "VISION",
        }
    }
    pub fn form_type(self) -> &'static str {
        match self {
            ClaimType::Professional => "CMS1500",
            ClaimType::Institutional => "UB04",
            ClaimType::Pharmacy => "NCPDP",
            ClaimType::Dental => "ADA",
            ClaimType::Vision => "VISION",
        }
    }
    fn provider_type(self) -> (&'static str, &'static [&'static str]) {
        match self {
            ClaimType::Professional => (
                "PHYSICIAN",
                &[
                    "Family Medicine",
                    "Internal Medicine",
                    "Cardiology",
                    "Orthopedics",
                    "Physical Therapy",
                ],
            ),
            ClaimType::Institutional => ("FACILITY", &["General Hospital", "Ambulatory Surgery"]),
            ClaimType::Pharmacy => ("PHARMACY", &["Retail Pharmacy", "Specialty Pharmacy"]),
            ClaimType::Dental => ("DENTIST", &["General Dentistry", "Endodontics"]),
            ClaimType::Vision => ("OPTOMETRIST", &["Optometry"]),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: i64,
    pub first_name: &'static str,
    pub last_name: &'static str,
    pub date_of_birth: NaiveDate,
    pub ssn: String,
    pub gender: &'static str,
    pub address_line: String,
    pub city: &'static str,
    pub state: &'static str,
    pub postal_code: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub id: i64,
    pub npi: String,
    pub name: String,
    pub provider_type: &'static str,
    pub specialty: &'static str,
    pub state: &'static str,
    pub claim_type: ClaimType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: i64,
    pub member_id: i64,
    pub plan_code: &'static str,
    pub coverage_start: NaiveDate,
    pub coverage_end: Option<NaiveDate>,
}

impl Policy {
    pub fn status(&self) -> &'static str {
        if self.coverage_end.is_some() {
            "TERMINATED"
        } else {
            "ACTIVE"
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Submitted,
    Adjudicated,
    Paid,
    Denied,
    Void,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Submitted => "SUBMITTED",
            Status::Adjudicated => "ADJUDICATED",
            Status::Paid => "PAID",
            Status::Denied => "DENIED",
            Status::Void => "VOID",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub number: i16,
    pub procedure_code: &'static str,
    pub modifiers: Vec<&'static str>,
    pub units: i32,
    pub charge_cents: i64,
    pub service_date: NaiveDate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub id: i64,
    pub member_id: i64,
    pub provider_id: i64,
    pub policy_id: i64,
    pub claim_type: ClaimType,
    pub status: Status,
    pub service_date_from: NaiveDate,
    pub service_date_to: NaiveDate,
    pub submitted_date: NaiveDate,
    pub billed_cents: i64,
    pub allowed_cents: Option<i64>,
    pub paid_cents: Option<i64>,
    pub diagnosis_codes: Vec<&'static str>,
    pub place_of_service: Option<&'static str>,
    pub frequency_code: i16,
    pub original_claim_id: Option<i64>,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Anomaly {
    ExactDuplicate,
    NearDuplicate,
    VelocityBurst,
    AmountOutlier,
    Upcoding,
    CoverageViolation,
}

impl Anomaly {
    pub const ALL: [Anomaly; 6] = [
        Anomaly::ExactDuplicate,
        Anomaly::NearDuplicate,
        Anomaly::VelocityBurst,
        Anomaly::AmountOutlier,
        Anomaly::Upcoding,
        Anomaly::CoverageViolation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::ExactDuplicate => "exact_duplicate",
            Anomaly::NearDuplicate => "near_duplicate",
            Anomaly::VelocityBurst => "velocity_burst",
            Anomaly::AmountOutlier => "amount_outlier",
            Anomaly::Upcoding => "upcoding",
            Anomaly::CoverageViolation => "coverage_violation",
        }
    }
}

/// A planted anomaly, written to `generator.anomaly_labels`.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub claim_id: i64,
    pub anomaly: Anomaly,
    pub related_claim_id: Option<i64>,
    pub detail: String,
}

/// Members, providers and policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub members: Vec<Member>,
    pub providers: Vec<Provider>,
    pub policies: Vec<Policy>,
}

/// Claims per burst of a velocity anomaly.
pub const BURST_SIZE: usize = 12;

/// Makes claims one after another from a seeded generator; the same config gives the
/// same sequence.
pub struct ClaimFactory {
    rng: ChaCha8Rng,
    today: NaiveDate,
    anomaly_share: f64,
    reference: Reference,
    providers_by_type: Vec<(ClaimType, Vec<usize>, WeightedIndex<f64>)>,
    type_index: WeightedIndex<u32>,
    upcoders: Vec<usize>,
    next_claim_id: i64,
    recent: Vec<Claim>,
}

fn luhn_npi(rng: &mut ChaCha8Rng) -> String {
    // NPIs carry a Luhn check digit computed with the 80840 prefix.
    let body: Vec<u32> = std::iter::once(1 + rng.random_range(0..2))
        .chain((0..8).map(|_| rng.random_range(0..10)))
        .collect();
    let digits: Vec<u32> = [8, 0, 8, 4, 0]
        .into_iter()
        .chain(body.iter().copied())
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                *d
            }
        })
        .sum();
    let check = (10 - sum % 10) % 10;
    body.iter()
        .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
        .chain(std::iter::once(char::from_digit(check, 10).unwrap_or('0')))
        .collect()
}

pub fn reference(config: &GeneratorConfig) -> Reference {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let span_days = i64::from(config.years) * 365;
    let members = (1..=i64::from(config.members))
        .map(|id| {
            let (city, state) = catalog::CITIES[rng.random_range(0..catalog::CITIES.len())];
            Member {
                id,
                first_name: catalog::FIRST_NAMES[rng.random_range(0..catalog::FIRST_NAMES.len())],
                last_name: catalog::LAST_NAMES[rng.random_range(0..catalog::LAST_NAMES.len())],
                date_of_birth: config.today - Duration::days(rng.random_range(365..90 * 365)),
                // Unique for up to 10^8 members; the 9xx area is never issued.
                ssn: format!(
                    "9{:02}-{:02}-{:04}",
                    (id / 1_000_000) % 100,
                    (id / 10_000) % 100,
                    id % 10_000
                ),
                gender: ["F", "M", "X"][rng.random_range(0..3)],
                address_line: format!(
                    "{} {} St",
                    rng.random_range(1..9999),
                    catalog::LAST_NAMES[rng.random_range(0..catalog::LAST_NAMES.len())]
                ),
                city,
                state,
                postal_code: format!("{:05}", rng.random_range(10_000..99_999)),
            }
        })
        .collect::<Vec<_>>();
    let type_index = WeightedIndex::new(ClaimType::SHARE).expect("static weights");
    let providers = (1..=i64::from(config.providers))
        .map(|id| {
            // Every type gets providers first, then by share.
            let claim_type = if (id as usize) <= ClaimType::ALL.len() {
                ClaimType::ALL[id as usize - 1]
            } else {
                ClaimType::ALL[type_index.sample(&mut rng)]
            };
            let (provider_type, specialties) = claim_type.provider_type();
            let (_, state) = catalog::CITIES[rng.random_range(0..catalog::CITIES.len())];
            let specialty = specialties[rng.random_range(0..specialties.len())];
            Provider {
                id,
                npi: luhn_npi(&mut rng),
                name: format!(
                    "{} {} {id}",
                    catalog::LAST_NAMES[rng.random_range(0..catalog::LAST_NAMES.len())],
                    specialty
                ),
                provider_type,
                specialty,
                state,
                claim_type,
            }
        })
        .collect();
    let policies = members
        .iter()
        .map(|m| {
            let start = config.today - Duration::days(span_days + rng.random_range(0..365));
            // About one member in seven left the plan: coverage ended in the past.
            let end = (rng.random_range(0..7) == 0).then(|| {
                let earliest = 180;
                let latest = (config.today - start).num_days() - 30;
                start + Duration::days(rng.random_range(earliest..latest.max(earliest + 1)))
            });
            Policy {
                id: 100_000 + m.id,
                member_id: m.id,
                plan_code: catalog::PLANS[rng.random_range(0..catalog::PLANS.len())],
                coverage_start: start,
                coverage_end: end,
            }
        })
        .collect();
    Reference {
        members,
        providers,
        policies,
    }
}

fn money_round(cents: f64) -> i64 {
    (cents.max(1.0)).round() as i64
}

impl ClaimFactory {
    pub fn new(config: &GeneratorConfig) -> Self {
        let reference = reference(config);
        // A separate stream, so the claims do not shift when reference data sizes change.
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_c1a1_5000_0001);
        let providers_by_type = ClaimType::ALL
            .iter()
            .filter_map(|t| {
                let indices: Vec<usize> = reference
                    .providers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.claim_type == *t)
                    .map(|(i, _)| i)
                    .collect();
                // A few providers see far more patients than the rest (Zipf-like volume).
                let weights: Vec<f64> = (0..indices.len())
                    .map(|rank| 1.0 / ((rank + 1) as f64).powf(1.1))
                    .collect();
                let index = WeightedIndex::new(&weights).ok()?;
                Some((*t, indices, index))
            })
            .collect::<Vec<_>>();
        let physicians: Vec<usize> = reference
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.claim_type == ClaimType::Professional)
            .map(|(i, _)| i)
            .collect();
        let upcoder_count = (physicians.len() / 50).max(1);
        let upcoders = (0..upcoder_count)
            .map(|_| physicians[rng.random_range(0..physicians.len())])
            .collect();
        Self {
            rng,
            today: config.today,
            anomaly_share: config.anomaly_share,
            reference,
            providers_by_type,
            type_index: WeightedIndex::new(ClaimType::SHARE).expect("static weights"),
            upcoders,
            next_claim_id: 1,
            recent: Vec::new(),
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    fn take_id(&mut self) -> i64 {
        let id = self.next_claim_id;
        self.next_claim_id += 1;
        id
    }

    fn charge(&mut self, procedure: &Procedure) -> i64 {
        let lognormal =
            LogNormal::new((procedure.median_cents as f64).ln(), 0.35).expect("valid parameters");
        money_round(lognormal.sample(&mut self.rng))
    }

    fn pick_provider(&mut self, claim_type: ClaimType) -> usize {
        let (_, indices, weights) = self
            .providers_by_type
            .iter()
            .find(|(t, _, _)| *t == claim_type)
            .or_else(|| self.providers_by_type.first())
            .expect("every config has providers");
        indices[weights.sample(&mut self.rng)]
    }

    /// A member covered on a date within `[from, to]`, and that date.
    fn covered_member(&mut self, from: NaiveDate, to: NaiveDate) -> (usize, NaiveDate) {
        loop {
            let m = self.rng.random_range(0..self.reference.members.len());
            let policy = &self.reference.policies[m];
            let lo = from.max(policy.coverage_start);
            let hi = to.min(policy.coverage_end.unwrap_or(to));
            if lo <= hi {
                let date = lo + Duration::days(self.rng.random_range(0..=(hi - lo).num_days()));
                return (m, date);
            }
        }
    }

    fn build_claim(
        &mut self,
        member: usize,
        provider: usize,
        date: NaiveDate,
        main: &'static Procedure,
    ) -> Claim {
        let claim_type = main.claim_type;
        let mut lines = vec![Line {
            number: 1,
            procedure_code: main.code,
            modifiers: vec![],
            units: 1,
            charge_cents: self.charge(main),
            service_date: date,
        }];
        let extra = match claim_type {
            ClaimType::Professional | ClaimType::Dental => self.rng.random_range(0..3),
            _ => 0,
        };
        for n in 0..extra {
            let options: Vec<&'static Procedure> = catalog::procedures_of(claim_type)
                .filter(|p| !EM_LEVELS.contains(&p.code))
                .collect();
            let p = options[self.rng.random_range(0..options.len())];
            let units = if p.code == "97110" {
                self.rng.random_range(1..4)
            } else {
                1
            };
            let charge = self.charge(p) * i64::from(units);
            lines.push(Line {
                number: n + 2,
                procedure_code: p.code,
                modifiers: if units > 1 { vec!["GP"] } else { vec![] },
                units,
                charge_cents: charge,
                service_date: date,
            });
        }
        let dx = catalog::diagnoses(claim_type);
        let mut diagnosis_codes = vec![dx[self.rng.random_range(0..dx.len())]];
        if self.rng.random_range(0..3) == 0 {
            let second = dx[self.rng.random_range(0..dx.len())];
            if second != diagnosis_codes[0] {
                diagnosis_codes.push(second);
            }
        }
        let to = if claim_type == ClaimType::Institutional {
            date + Duration::days(self.rng.random_range(0..4))
        } else {
            date
        };
        let submitted = (to + Duration::days(self.rng.random_range(1..30))).min(self.today);
        let billed: i64 = lines.iter().map(|l| l.charge_cents).sum();
        let age = (self.today - submitted).num_days();
        let (status, allowed, paid) = if age < 7 {
            (Status::Submitted, None, None)
        } else if age < 14 {
            (Status::Adjudicated, Some(billed * 8 / 10), None)
        } else if self.rng.random_range(0..100) < 12 {
            (Status::Denied, Some(0), Some(0))
        } else {
            let allowed = billed * self.rng.random_range(55..95) / 100;
            (
                Status::Paid,
                Some(allowed),
                Some(allowed * self.rng.random_range(70..100) / 100),
            )
        };
        let member_id = self.reference.members[member].id;
        Claim {
            id: self.take_id(),
            member_id,
            provider_id: self.reference.providers[provider].id,
            policy_id: self.reference.policies[member].id,
            claim_type,
            status,
            service_date_from: date,
            service_date_to: to,
            submitted_date: submitted,
            billed_cents: billed,
            allowed_cents: allowed,
            paid_cents: paid,
            diagnosis_codes,
            place_of_service: match claim_type {
                ClaimType::Professional => Some("11"),
                ClaimType::Institutional => Some("21"),
                _ => None,
            },
            frequency_code: 1,
            original_claim_id: None,
            lines,
        }
    }

    fn normal_claim(&mut self, from: NaiveDate, to: NaiveDate) -> Claim {
        let claim_type = ClaimType::ALL[self.type_index.sample(&mut self.rng)];
        let provider = self.pick_provider(claim_type);
        let claim_type = self.reference.providers[provider].claim_type;
        let (member, date) = self.covered_member(from, to);
        let mut options: Vec<&'static Procedure> = catalog::procedures_of(claim_type).collect();
        if self.upcoders.contains(&provider) {
            // An upcoder's visits drift up: every ordinary one is billed at 99214, and the
            // top level, 99215, only on its labelled claims.
            options.retain(|p| !catalog::EM_LEVELS.contains(&p.code) || p.code == "99214");
        }
        let main = options[self.rng.random_range(0..options.len())];
        self.build_claim(member, provider, date, main)
    }

    fn remember(&mut self, claim: &Claim) {
        if self.recent.len() >= 256 {
            let i = self.rng.random_range(0..self.recent.len());
            self.recent[i] = claim.clone();
        } else {
            self.recent.push(claim.clone());
        }
    }

    /// The next claims with service dates in `[from, to]`: one normal claim, or the
    /// claims of one planted anomaly with their labels.
    pub fn next(&mut self, from: NaiveDate, to: NaiveDate) -> Vec<(Claim, Option<Label>)> {
        let plant = self.anomaly_share > 0.0
            && !self.recent.is_empty()
            && self.rng.random_bool(self.anomaly_share.min(1.0));
        if !plant {
            let claim = self.normal_claim(from, to);
            self.remember(&claim);
            return vec![(claim, None)];
        }
        let anomaly = Anomaly::ALL[self.rng.random_range(0..Anomaly::ALL.len())];
        let label = |claim: &Claim, related: Option<i64>, detail: String| Label {
            claim_id: claim.id,
            anomaly,
            related_claim_id: related,
            detail,
        };
        match anomaly {
            Anomaly::ExactDuplicate => {
                let original = self.recent[self.rng.random_range(0..self.recent.len())].clone();
                let copy = Claim {
                    id: self.take_id(),
                    ..original.clone()
                };
                let l = label(
                    &copy,
                    Some(original.id),
                    format!(
                        "same member, provider, dates, codes and amounts as claim {}",
                        original.id
                    ),
                );
                vec![(copy, Some(l))]
            }
            Anomaly::NearDuplicate => {
                let original = self.recent[self.rng.random_range(0..self.recent.len())].clone();
                let shift = Duration::days(self.rng.random_range(1..4));
                let mut near = Claim {
                    id: self.take_id(),
                    ..original.clone()
                };
                near.service_date_from += shift;
                near.service_date_to += shift;
                near.submitted_date = (near.submitted_date + shift)
                    .min(self.today)
                    .max(near.service_date_to);
                for line in &mut near.lines {
                    line.service_date += shift;
                    line.charge_cents = line.charge_cents * self.rng.random_range(95..106) / 100;
                }
                near.billed_cents = near.lines.iter().map(|l| l.charge_cents).sum();
                let l = label(
                    &near,
                    Some(original.id),
                    format!(
                        "same member, provider and procedure as claim {} within {} days",
                        original.id,
                        shift.num_days()
                    ),
                );
                vec![(near, Some(l))]
            }
            Anomaly::VelocityBurst => {
                let (member, date) = self.covered_member(from, to);
                let mut out = Vec::with_capacity(BURST_SIZE);
                let mut first = None;
                for _ in 0..BURST_SIZE {
                    let provider = self.pick_provider(ClaimType::Professional);
                    let options: Vec<&'static Procedure> =
                        catalog::procedures_of(ClaimType::Professional)
                            .filter(|p| p.code != "99215")
                            .collect();
                    let main = options[self.rng.random_range(0..options.len())];
                    let claim = self.build_claim(member, provider, date, main);
                    let first_id = *first.get_or_insert(claim.id);
                    let l = label(
                        &claim,
                        Some(first_id),
                        format!(
                            "{BURST_SIZE} claims for member {} on {date}",
                            claim.member_id
                        ),
                    );
                    out.push((claim, Some(l)));
                }
                out
            }
            Anomaly::AmountOutlier => {
                let mut claim = self.normal_claim(from, to);
                let factor = self.rng.random_range(15..40);
                claim.lines[0].charge_cents *= factor;
                claim.billed_cents = claim.lines.iter().map(|l| l.charge_cents).sum();
                if let Some(a) = claim.allowed_cents.as_mut() {
                    *a *= factor;
                }
                let l = label(
                    &claim,
                    None,
                    format!(
                        "line 1 ({}) billed {factor}x its usual charge",
                        claim.lines[0].procedure_code
                    ),
                );
                vec![(claim, Some(l))]
            }
            Anomaly::Upcoding => {
                let provider = self.upcoders[self.rng.random_range(0..self.upcoders.len())];
                let (member, date) = self.covered_member(from, to);
                let main = catalog::procedure("99215").expect("in the catalogue");
                let claim = self.build_claim(member, provider, date, main);
                let l = label(
                    &claim,
                    None,
                    format!(
                        "provider {} bills the highest E&M level far above its peers",
                        claim.provider_id
                    ),
                );
                vec![(claim, Some(l))]
            }
            Anomaly::CoverageViolation => {
                let ended: Vec<usize> = self
                    .reference
                    .policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.coverage_end.is_some_and(|e| e < to))
                    .map(|(i, _)| i)
                    .collect();
                if ended.is_empty() {
                    let claim = self.normal_claim(from, to);
                    return vec![(claim, None)];
                }
                let member = ended[self.rng.random_range(0..ended.len())];
                let end = self.reference.policies[member]
                    .coverage_end
                    .expect("filtered on it");
                let lo = from.max(end + Duration::days(1));
                let date =
                    lo + Duration::days(self.rng.random_range(0..=(to - lo).num_days().max(0)));
                let provider = self.pick_provider(ClaimType::Professional);
                let options: Vec<&'static Procedure> =
                    catalog::procedures_of(ClaimType::Professional)
                        .filter(|p| p.code != "99215")
                        .collect();
                let main = options[self.rng.random_range(0..options.len())];
                let claim = self.build_claim(member, provider, date, main);
                let l = label(
                    &claim,
                    None,
                    format!("service on {date}, after member coverage ended on {end}"),
                );
                vec![(claim, Some(l))]
            }
        }
    }

    /// The backfill window: `years` back from `today`, up to yesterday.
    pub fn backfill_window(&self, years: u32) -> (NaiveDate, NaiveDate) {
        let from = self.today - Duration::days(i64::from(years) * 365);
        (from, self.today - Duration::days(1))
    }

    /// The streaming window: the last 30 days.
    pub fn stream_window(&self) -> (NaiveDate, NaiveDate) {
        (self.today - Duration::days(30), self.today)
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    pub fn today(&self) -> NaiveDate {
        self.today
    }
}
