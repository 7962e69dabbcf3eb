//! Stateless checks and the scoring rule: code formats, classification, amounts' running
//! statistics, and how reasons add up to a score and a routing decision.

use serde::{Deserialize, Serialize};

use super::config::RoutingThresholds;

/// ICD-10-CM: letter (not U), digit, digit or letter, then optionally `.` and 1–4
/// alphanumerics.
pub fn is_icd10(code: &str) -> bool {
    let b = code.as_bytes();
    let alnum = |c: u8| c.is_ascii_digit() || c.is_ascii_uppercase();
    if b.len() < 3 || !b[0].is_ascii_uppercase() || b[0] == b'U' {
        return false;
    }
    if !b[1].is_ascii_digit() || !alnum(b[2]) {
        return false;
    }
    match &b[3..] {
        [] => true,
        [b'.', rest @ ..] => (1..=4).contains(&rest.len()) && rest.iter().all(|c| alnum(*c)),
        _ => false,
    }
}

/// CPT (5 digits, or 4 digits + F/T) or HCPCS Level II (letter + 4 digits).
pub fn is_procedure_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 5
        && ((b.iter().all(u8::is_ascii_digit))
            || (b[..4].iter().all(u8::is_ascii_digit) && matches!(b[4], b'F' | b'T'))
            || (b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_digit)))
}

/// Evaluation-and-management office visits, lowest to highest level.
pub const EM_LEVELS: [&str; 5] = ["99211", "99212", "99213", "99214", "99215"];

/// A provider's E&M lines seen so far, per level ([`EM_LEVELS`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmCounts(pub [u64; 5]);

/// E&M lines a provider needs before its level mix is compared with its peers'.
pub const MIN_EM_LINES: u64 = 20;

impl EmCounts {
    pub fn add(&mut self, level: usize) {
        self.0[level] += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Share of the two highest levels (99214, 99215).
    pub fn high_share(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (self.0[3] + self.0[4]) as f64 / total as f64
    }
}

/// The class a claim form implies.
pub fn class_of_form(form: &str) -> Option<&'static str> {
    Some(match form {
        "CMS1500" => "PROFESSIONAL",
        "UB04" => "INSTITUTIONAL",
        "NCPDP" => "PHARMACY",
        "ADA" => "DENTAL",
        "VISION" => "VISION",
        _ => return None,
    })
}

pub const CLASSES: [&str; 6] = [
    "PROFESSIONAL",
    "INSTITUTIONAL",
    "PHARMACY",
    "DENTAL",
    "VISION",
    "UNKNOWN",
];

/// Exponentially weighted mean and variance of ln(amount): streams in O(1) state, and the
/// log makes the log-normal charges of a procedure or provider roughly normal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AmountStats {
    pub count: u64,
    pub mean: f64,
    pub var: f64,
}

/// Weight of a new observation once warmed up.
const ALPHA: f64 = 0.05;
/// Observations needed before a z-score is trusted.
pub const MIN_HISTORY: u64 = 20;

impl AmountStats {
    /// The z-score of `amount` against the history, if there is enough of it.
    pub fn z(&self, amount: f64) -> Option<f64> {
        if self.count < MIN_HISTORY || amount <= 0.0 {
            return None;
        }
        let sd = self.var.sqrt().max(0.05);
        Some((amount.ln() - self.mean) / sd)
    }

    pub fn add(&mut self, amount: f64) {
        if amount <= 0.0 {
            return;
        }
        let x = amount.ln();
        self.count += 1;
        // Plain averages while warming up, then exponential weights.
        let alpha = (1.0 / self.count as f64).max(ALPHA);
        let delta = x - self.mean;
        self.mean += alpha * delta;
        self.var = (1.0 - alpha) * (self.var + alpha * delta * delta);
    }
}

/// A reason that fired, with the weight it adds to the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub contribution: f64,
    pub detail: String,
}

/// Weight of each reason code; the score is their sum, capped at 1.
pub fn weight(code: &str) -> f64 {
    match code {
        "DUPLICATE_EXACT" => 0.9,
        "COVERAGE_INACTIVE" => 0.8,
        "VELOCITY_MEMBER" => 0.5,
        "VELOCITY_PROVIDER" => 0.3,
        "DUPLICATE_NEAR" => 0.45,
        "AMOUNT_OUTLIER" | "PROCEDURE_AMOUNT_OUTLIER" | "UPCODING" => 0.45,
        "LINES_SUM_MISMATCH" => 0.3,
        "FUTURE_SERVICE" | "SERVICE_AFTER_SUBMISSION" | "NON_POSITIVE_AMOUNT" => 0.35,
        "BAD_DIAGNOSIS_CODE" | "BAD_PROCEDURE_CODE" => 0.3,
        "CLASS_MISMATCH" => 0.2,
        _ => 0.1,
    }
}

pub fn reason(code: &str, detail: String) -> Reason {
    Reason {
        code: code.into(),
        contribution: weight(code),
        detail,
    }
}

pub fn score(reasons: &[Reason]) -> f64 {
    reasons.iter().map(|r| r.contribution).sum::<f64>().min(1.0)
}

pub fn routing(score: f64, t: &RoutingThresholds) -> &'static str {
    if score >= t.investigate {
        "INVESTIGATE"
    } else if score >= t.review {
        "REVIEW"
    } else {
        "AUTO_APPROVE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icd10_codes() {
        for ok in ["E11.9", "I10", "Z00.00", "S72.001A", "M54.5"] {
            assert!(is_icd10(ok), "{ok}");
        }
        for bad in [
            "",
            "E1",
            "U07.1",
            "e11.9",
            "E11.",
            "E11.12345",
            "11.9",
            "E11-9",
        ] {
            assert!(!is_icd10(bad), "{bad}");
        }
    }

    #[test]
    fn procedure_codes() {
        for ok in ["99213", "0001F", "J1100", "G0008"] {
            assert!(is_procedure_code(ok), "{ok}");
        }
        for bad in ["9921", "992133", "ABCDE", "j1100"] {
            assert!(!is_procedure_code(bad), "{bad}");
        }
    }

    #[test]
    fn outliers_stand_out_after_warm_up() {
        let mut s = AmountStats::default();
        for i in 0..200u32 {
            assert_eq!(s.z(100.0).is_some(), u64::from(i) >= MIN_HISTORY);
            s.add(80.0 + f64::from(i % 40));
        }
        assert!(s.z(100.0).unwrap().abs() < 2.0);
        assert!(s.z(2000.0).unwrap() > 4.0, "20x is an outlier");
    }

    #[test]
    fn score_and_routing() {
        let t = RoutingThresholds {
            review: 0.3,
            investigate: 0.7,
        };
        assert_eq!(routing(score(&[]), &t), "AUTO_APPROVE");
        let dup = [reason("DUPLICATE_EXACT", String::new())];
        assert_eq!(routing(score(&dup), &t), "INVESTIGATE");
        let near = [reason("DUPLICATE_NEAR", String::new())];
        assert_eq!(routing(score(&near), &t), "REVIEW");
        let many: Vec<_> = (0..5)
            .map(|_| reason("DUPLICATE_EXACT", String::new()))
            .collect();
        assert_eq!(score(&many), 1.0, "capped");
    }
}
