//! Reference data the generator draws from: procedures with typical charges, diagnosis
//! codes, specialties. Plausible, not exhaustive.

use super::model::ClaimType;

pub struct Procedure {
    pub code: &'static str,
    pub claim_type: ClaimType,
    /// Median charge in cents; actual charges are log-normal around it.
    pub median_cents: i64,
}

const fn p(code: &'static str, claim_type: ClaimType, median_cents: i64) -> Procedure {
    Procedure {
        code,
        claim_type,
        median_cents,
    }
}

/// Evaluation-and-management office visits, lowest to highest level (upcoding drifts up).
pub const EM_LEVELS: [&str; 5] = ["99211", "99212", "99213", "99214", "99215"];

pub const PROCEDURES: &[Procedure] = &[
    p("99211", ClaimType::Professional, 4_500),
    p("99212", ClaimType::Professional, 8_000),
    p("99213", ClaimType::Professional, 12_500),
    p("99214", ClaimType::Professional, 18_500),
    p("99215", ClaimType::Professional, 26_000),
    p("80053", ClaimType::Professional, 3_500),
    p("85025", ClaimType::Professional, 2_500),
    p("36415", ClaimType::Professional, 1_200),
    p("71046", ClaimType::Professional, 9_000),
    p("93000", ClaimType::Professional, 6_000),
    p("97110", ClaimType::Professional, 7_500),
    p("G0439", ClaimType::Professional, 17_000),
    p("99283", ClaimType::Institutional, 95_000),
    p("99285", ClaimType::Institutional, 240_000),
    p("27447", ClaimType::Institutional, 2_600_000),
    p("45378", ClaimType::Institutional, 310_000),
    p("J1100", ClaimType::Pharmacy, 1_500),
    p("J0696", ClaimType::Pharmacy, 2_200),
    p("J3420", ClaimType::Pharmacy, 900),
    p("D0120", ClaimType::Dental, 6_500),
    p("D1110", ClaimType::Dental, 11_000),
    p("D2391", ClaimType::Dental, 19_000),
    p("D2740", ClaimType::Dental, 130_000),
    p("92014", ClaimType::Vision, 17_500),
    p("V2100", ClaimType::Vision, 9_000),
];

pub fn procedures_of(claim_type: ClaimType) -> impl Iterator<Item = &'static Procedure> {
    PROCEDURES
        .iter()
        .filter(move |p| p.claim_type == claim_type)
}

pub fn procedure(code: &str) -> Option<&'static Procedure> {
    PROCEDURES.iter().find(|p| p.code == code)
}

/// ICD-10-CM codes, per claim type.
pub fn diagnoses(claim_type: ClaimType) -> &'static [&'static str] {
    match claim_type {
        ClaimType::Professional | ClaimType::Institutional => &[
            "E11.9", "I10", "J06.9", "M54.50", "Z00.00", "F41.1", "R51.9", "N39.0", "K21.9",
            "E78.5",
        ],
        ClaimType::Pharmacy => &["E11.9", "I10", "J45.909", "M25.561"],
        ClaimType::Dental => &["K02.52", "K05.10", "K08.409", "Z01.20"],
        ClaimType::Vision => &["H52.13", "H52.4", "H40.9", "Z01.00"],
    }
}

pub const FIRST_NAMES: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dmitri", "Elena", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi",
    "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Uma", "Victor",
    "Wen", "Yusuf",
];
pub const LAST_NAMES: &[&str] = &[
    "Adams", "Baker", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jones",
    "Khan", "Lopez", "Miller", "Nguyen", "Okafor", "Patel", "Rossi", "Smith", "Tanaka", "Weber",
    "Young",
];
pub const CITIES: &[(&str, &str)] = &[
    ("Springfield", "IL"),
    ("Columbus", "OH"),
    ("Austin", "TX"),
    ("Denver", "CO"),
    ("Portland", "OR"),
    ("Raleigh", "NC"),
    ("Madison", "WI"),
    ("Tucson", "AZ"),
    ("Albany", "NY"),
    ("Boise", "ID"),
];
pub const PLANS: &[&str] = &[
    "PPO-GOLD",
    "PPO-SILVER",
    "HMO-BASIC",
    "HMO-PLUS",
    "HDHP-HSA",
];
