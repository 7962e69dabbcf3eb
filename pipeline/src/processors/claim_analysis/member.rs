//! A member's claims, as the duplicate and member-velocity features read them: one state
//! record per member, so a claim reads and writes one key of its member for all three
//! features (a key per feature and claim, each new to RocksDB, cost more than the
//! features themselves).
//!
//! Claims of a member arrive in any service-date order (a snapshot or a backlog of old
//! claims), so what is kept is not pruned against the latest service day:
//! - the recent claims of a provider are pruned against each new claim of that provider
//!   (kept within `duplicate_window` of it);
//! - the claim ids by service day are all kept, a few bytes per claim.

use serde::{Deserialize, Serialize};

/// A claim as the near-duplicate feature compares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Recent {
    pub claim_id: i64,
    pub provider: i64,
    pub from: i32,
    pub billed: f64,
    pub diagnoses: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct MemberActivity {
    /// Per provider, the claims within `duplicate_window` of its latest claim to arrive.
    recent: Vec<Recent>,
    /// Claim ids by service day, in day order.
    days: Vec<(i32, Vec<i64>)>,
}

impl MemberActivity {
    /// The first other claim of `claim`'s provider within `window` days of it that `like`
    /// accepts.
    pub fn near(
        &self,
        claim: &Recent,
        window: i32,
        like: impl Fn(&Recent) -> bool,
    ) -> Option<&Recent> {
        self.recent.iter().find(|r| {
            r.claim_id != claim.claim_id
                && r.provider == claim.provider
                && (r.from - claim.from).abs() <= window
                && like(r)
        })
    }

    /// Adds `claim` to the recent claims of its provider, dropping those of the provider
    /// more than `window` days from it.
    pub fn add_recent(&mut self, claim: Recent, window: i32) {
        self.recent.retain(|r| {
            r.provider != claim.provider
                || (r.claim_id != claim.claim_id && (r.from - claim.from).abs() <= window)
        });
        self.recent.push(claim);
    }

    /// Whether claim `id` is one of the member's (it was analysed).
    pub fn has(&self, id: i64) -> bool {
        self.days.iter().any(|(_, ids)| ids.contains(&id))
    }

    /// Where `day` is in `days`, or where it would go.
    fn day_index(&self, day: i32) -> Result<usize, usize> {
        self.days.binary_search_by_key(&day, |(d, _)| *d)
    }

    /// The claims served on `day`.
    pub fn claims_on(&self, day: i32) -> &[i64] {
        match self.day_index(day) {
            Ok(at) => &self.days[at].1,
            Err(_) => &[],
        }
    }

    /// Adds claim `id`, served on `day`, to its day and returns the claims (day, id) within
    /// `window` days of `day` (a day's distance below `window`), in day order.
    pub fn add_day(&mut self, day: i32, id: i64, window: i32) -> Vec<(i32, i64)> {
        match self.day_index(day) {
            Ok(at) if !self.days[at].1.contains(&id) => self.days[at].1.push(id),
            Ok(_) => {}
            Err(at) => self.days.insert(at, (day, vec![id])),
        }
        let first = self.days.partition_point(|(d, _)| day - d >= window);
        self.days[first..]
            .iter()
            .take_while(|(d, _)| d - day < window)
            .flat_map(|(d, ids)| ids.iter().map(move |id| (*d, *id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recent(claim_id: i64, provider: i64, from: i32) -> Recent {
        Recent {
            claim_id,
            provider,
            from,
            billed: 100.0,
            diagnoses: vec!["J06.9".into()],
        }
    }

    #[test]
    fn a_claim_finds_only_its_providers_other_claims_within_the_window() {
        let mut member = MemberActivity::default();
        for r in [recent(1, 7, 100), recent(2, 8, 101), recent(3, 7, 125)] {
            member.add_recent(r, 30);
        }
        let new = recent(4, 7, 110);
        assert_eq!(member.near(&new, 30, |_| true).map(|r| r.claim_id), Some(1));
        assert_eq!(member.near(&recent(1, 7, 100), 5, |_| true), None, "itself");
        assert_eq!(
            member.near(&new, 30, |r| r.from > 120).map(|r| r.claim_id),
            Some(3)
        );
        assert_eq!(
            member.near(&new, 14, |r| r.from > 120),
            None,
            "15 days apart"
        );
    }

    #[test]
    fn a_providers_recent_claims_are_pruned_against_its_new_claim_only() {
        let mut member = MemberActivity::default();
        member.add_recent(recent(1, 7, 100), 30);
        member.add_recent(recent(2, 8, 100), 30);
        member.add_recent(recent(3, 7, 140), 30);
        let kept: Vec<i64> = member.recent.iter().map(|r| r.claim_id).collect();
        assert_eq!(kept, [2, 3], "provider 7's claim 40 days before went");
        // An old claim arriving late keeps the newer one within its window.
        member.add_recent(recent(4, 7, 115), 30);
        let kept: Vec<i64> = member.recent.iter().map(|r| r.claim_id).collect();
        assert_eq!(kept, [2, 3, 4]);
    }

    #[test]
    fn days_count_the_claims_within_the_window_in_any_order() {
        let mut member = MemberActivity::default();
        assert_eq!(member.add_day(10, 1, 3), [(10, 1)]);
        assert_eq!(member.add_day(12, 2, 3), [(10, 1), (12, 2)]);
        // Late, and a redelivery: counted once, in day order.
        assert_eq!(member.add_day(9, 3, 3), [(9, 3), (10, 1)]);
        assert_eq!(member.add_day(9, 3, 3), [(9, 3), (10, 1)]);
        // Far later days do not push the early ones out.
        member.add_day(400, 4, 3);
        assert_eq!(
            member.add_day(11, 5, 3),
            [(9, 3), (10, 1), (11, 5), (12, 2)]
        );
    }
}
