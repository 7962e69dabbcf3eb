//! The merge rule that makes replicas converge.
//!
//! A row's merged state is, for every column, the value of the write with the highest
//! *rank* among all writes that touched the column; a delete is kept as a stamp and hides
//! the row until a write ranks above it. Taking a maximum is commutative, associative and
//! idempotent, so every replica that has seen the same set of writes holds the same
//! state, whatever order they arrived in, and a redelivered write changes nothing.
//!
//! Rank of a write to a column = (owner?, HLC, origin, position):
//! - `owner?` counts only under `source_priority`, for columns of a field group whose
//!   owner is the write's origin;
//! - HLC, then origin, order writes in time; the position breaks the tie between two
//!   writes of one origin in the same clock tick (positions of one origin are totally
//!   ordered).
//!
//! Within one origin, the position alone decides which write is newer: the clock a
//! write carries is raised to the highest clock its origin wrote to the row before
//! ([`Merged::stamp`]), so an origin's clocks never run backwards against its own
//! positions. (A snapshot row read late carries a later time than an update committed
//! while the snapshot ran; ranked by time alone the update would lose.) A key's writes
//! of one origin arrive in position order, one partition, so every replica raises them
//! the same way.
//!
//! Which columns a write touches: every column under `last_writer_wins` and
//! `source_priority`; under `field_merge`, those that differ from the `before` image, or
//! (without one) from the last row the same origin wrote — so concurrent edits of
//! different columns from two sites both survive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{Policy, TablePolicy};
use crate::processors::change::Cell;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub hlc: i64,
    pub origin: String,
    pub position: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldState {
    pub value: Cell,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Merged {
    /// Columns in the order first seen (the schema's order).
    pub fields: Vec<(String, FieldState)>,
    pub deleted: Option<Stamp>,
    /// Last row each origin wrote (for `field_merge` without a before image).
    pub last_by_origin: BTreeMap<String, Vec<(String, Cell)>>,
    /// The highest clock each origin stamped on this row: the floor of its next stamp.
    #[serde(default)]
    pub clocks: BTreeMap<String, i64>,
}

/// [`Merged`] as records were written before it kept [`Merged::clocks`] (postcard is
/// positional, so the shorter record needs its own shape to be read).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MergedWithoutClocks {
    pub fields: Vec<(String, FieldState)>,
    pub deleted: Option<Stamp>,
    pub last_by_origin: BTreeMap<String, Vec<(String, Cell)>>,
}

impl From<MergedWithoutClocks> for Merged {
    /// An origin's floor is the highest clock of its writes that the row still shows.
    fn from(old: MergedWithoutClocks) -> Merged {
        let mut clocks = BTreeMap::new();
        let stamps = old.fields.iter().map(|(_, f)| &f.stamp);
        for stamp in stamps.chain(old.deleted.as_ref()) {
            let floor = clocks.entry(stamp.origin.clone()).or_insert(stamp.hlc);
            *floor = (*floor).max(stamp.hlc);
        }
        Merged {
            fields: old.fields,
            deleted: old.deleted,
            last_by_origin: old.last_by_origin,
            clocks,
        }
    }
}

/// The rules of one table.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub policy: Policy,
    /// Column → (field group, owner).
    pub groups: BTreeMap<String, (String, String)>,
}

impl Rules {
    pub fn new(policy: Option<&TablePolicy>, default: Policy) -> Rules {
        let Some(p) = policy else {
            return Rules {
                policy: default,
                groups: BTreeMap::new(),
            };
        };
        let mut groups = BTreeMap::new();
        for (name, g) in &p.field_groups {
            for f in &g.fields {
                groups.insert(f.clone(), (name.clone(), g.owner.clone()));
            }
        }
        Rules {
            policy: p.policy,
            groups,
        }
    }

    fn rank<'s>(&self, column: &str, stamp: &'s Stamp) -> (bool, &'s Stamp) {
        let owner = self.policy == Policy::SourcePriority
            && self
                .groups
                .get(column)
                .is_some_and(|(_, owner)| *owner == stamp.origin);
        (owner, stamp)
    }

    pub fn group(&self, column: &str) -> Option<&str> {
        self.groups.get(column).map(|(g, _)| g.as_str())
    }
}

/// A column where two origins disagreed, and who won.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub column: String,
    pub existing: FieldState,
    pub incoming: FieldState,
    pub incoming_won: bool,
}

impl Merged {
    /// The stamp of `origin`'s next write at `position`, whose own clock says `hlc`: the
    /// clock is raised to the origin's floor, which then follows it. Call it only for a
    /// write newer (by position) than every earlier one of `origin` on this row.
    pub fn stamp(&mut self, origin: String, hlc: i64, position: String) -> Stamp {
        let floor = self.clocks.entry(origin.clone()).or_insert(hlc);
        *floor = (*floor).max(hlc);
        Stamp {
            hlc: *floor,
            origin,
            position,
        }
    }

    pub fn is_deleted(&self) -> bool {
        match &self.deleted {
            None => false,
            Some(d) => self.fields.iter().all(|(_, f)| &f.stamp <= d),
        }
    }

    /// The merged row, in column order.
    pub fn row(&self) -> Vec<(String, Cell)> {
        self.fields
            .iter()
            .map(|(k, f)| (k.clone(), f.value.clone()))
            .collect()
    }

    /// Applies a write of `row` (with its `before` image, if the source sent one).
    pub fn write(
        &mut self,
        rules: &Rules,
        stamp: &Stamp,
        row: &[(String, Cell)],
        before: Option<&[(String, Cell)]>,
    ) -> Vec<Conflict> {
        let previous = before
            .map(<[_]>::to_vec)
            .or_else(|| self.last_by_origin.get(&stamp.origin).cloned());
        let touches = |column: &str, value: &Cell| match (rules.policy, &previous) {
            (Policy::FieldMerge, Some(prev)) => {
                prev.iter().find(|(c, _)| c == column).map(|(_, v)| v) != Some(value)
            }
            _ => true,
        };
        let mut conflicts = Vec::new();
        for (column, value) in row {
            if !touches(column, value) {
                continue;
            }
            let incoming = FieldState {
                value: value.clone(),
                stamp: stamp.clone(),
            };
            match self.fields.iter_mut().find(|(c, _)| c == column) {
                None => self.fields.push((column.clone(), incoming)),
                Some((_, existing)) => {
                    let wins = rules.rank(column, stamp) > rules.rank(column, &existing.stamp);
                    if existing.stamp.origin != stamp.origin && existing.value != *value {
                        conflicts.push(Conflict {
                            column: column.clone(),
                            existing: existing.clone(),
                            incoming: incoming.clone(),
                            incoming_won: wins,
                        });
                    }
                    if wins {
                        *existing = incoming;
                    }
                }
            }
        }
        if rules.policy == Policy::FieldMerge {
            self.last_by_origin
                .insert(stamp.origin.clone(), row.to_vec());
        }
        conflicts
    }

    pub fn delete(&mut self, stamp: &Stamp) {
        if self.deleted.as_ref().is_none_or(|d| stamp > d) {
            self.deleted = Some(stamp.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::conflict_resolution::config::FieldGroup;
    use proptest::prelude::*;

    fn stamp(hlc: i64, origin: &str) -> Stamp {
        Stamp {
            hlc,
            origin: origin.into(),
            position: format!("{hlc:016x}"),
        }
    }

    fn row(status: &str, dx: &str) -> Vec<(String, Cell)> {
        vec![
            ("claim_id".into(), Cell::Long(1)),
            ("status".into(), Cell::String(status.into())),
            ("diagnosis".into(), Cell::String(dx.into())),
        ]
    }

    fn priority_rules() -> Rules {
        let mut groups = BTreeMap::new();
        groups.insert(
            "clinical".into(),
            FieldGroup {
                fields: vec!["diagnosis".into()],
                owner: "on-prem".into(),
            },
        );
        groups.insert(
            "workflow".into(),
            FieldGroup {
                fields: vec!["status".into()],
                owner: "cloud".into(),
            },
        );
        Rules::new(
            Some(&TablePolicy {
                policy: Policy::SourcePriority,
                field_groups: groups,
            }),
            Policy::LastWriterWins,
        )
    }

    #[test]
    fn last_writer_wins_by_clock_then_origin() {
        let rules = Rules::default();
        let mut m = Merged::default();
        m.write(&rules, &stamp(10, "cloud"), &row("PAID", "E11"), None);
        let c = m.write(&rules, &stamp(5, "on-prem"), &row("DENIED", "I10"), None);
        assert_eq!(m.row(), row("PAID", "E11"));
        assert_eq!(c.len(), 2, "both differing columns audited");
        assert!(c.iter().all(|c| !c.incoming_won));
    }

    #[test]
    fn source_priority_gives_each_group_to_its_owner() {
        let rules = priority_rules();
        let mut m = Merged::default();
        // The cloud writes later, but only its own group survives.
        m.write(&rules, &stamp(1, "on-prem"), &row("SUBMITTED", "E11"), None);
        m.write(&rules, &stamp(2, "cloud"), &row("PAID", "Z00"), None);
        assert_eq!(m.row(), row("PAID", "E11"));
    }

    #[test]
    fn field_merge_keeps_concurrent_edits_of_different_columns() {
        let rules = Rules {
            policy: Policy::FieldMerge,
            groups: BTreeMap::new(),
        };
        let base = row("SUBMITTED", "E11");
        let mut m = Merged::default();
        m.write(&rules, &stamp(1, "on-prem"), &base, None);
        m.write(&rules, &stamp(3, "cloud"), &row("PAID", "E11"), Some(&base));
        m.write(&rules, &stamp(2, "on-prem"), &row("SUBMITTED", "I10"), None);
        assert_eq!(m.row(), row("PAID", "I10"));
    }

    #[test]
    fn within_one_origin_the_later_position_wins_whatever_its_clock() {
        // A snapshot row read at t=50 and an update committed at t=40 after the
        // snapshot's consistent point: the update is at the later position.
        let rules = Rules::default();
        let mut m = Merged::default();
        let read = m.stamp("on-prem".into(), 50, "0001-0000".into());
        m.write(&rules, &read, &row("SUBMITTED", "E11"), None);
        let update = m.stamp("on-prem".into(), 40, "0002-0000".into());
        assert_eq!(update.hlc, 50, "raised to the origin's floor");
        m.write(&rules, &update, &row("PAID", "E11"), None);
        assert_eq!(m.row(), row("PAID", "E11"));
        let delete = m.stamp("on-prem".into(), 30, "0003-0000".into());
        m.delete(&delete);
        assert!(m.is_deleted(), "a later delete of the same origin wins");
        // Another origin's clock still orders against it.
        let cloud = m.stamp("cloud".into(), 49, "c-1".into());
        m.write(&rules, &cloud, &row("DENIED", "E11"), None);
        assert!(
            m.is_deleted(),
            "an older write of another origin stays hidden"
        );
    }

    #[test]
    fn rows_stored_before_clocks_were_kept_still_read() {
        let old = MergedWithoutClocks {
            fields: vec![(
                "status".into(),
                FieldState {
                    value: Cell::String("PAID".into()),
                    stamp: stamp(70, "on-prem"),
                },
            )],
            deleted: Some(stamp(90, "cloud")),
            last_by_origin: BTreeMap::new(),
        };
        #[derive(Serialize)]
        struct Shape<'a>(
            &'a [(String, FieldState)],
            &'a Option<Stamp>,
            &'a BTreeMap<String, Vec<(String, Cell)>>,
        );
        let bytes = postcard::to_allocvec(&Shape(&old.fields, &old.deleted, &old.last_by_origin))
            .expect("encodes");
        assert!(postcard::from_bytes::<Merged>(&bytes).is_err());
        let read: MergedWithoutClocks = postcard::from_bytes(&bytes).expect("old shape reads");
        let merged = Merged::from(read);
        assert_eq!(merged.clocks.get("on-prem"), Some(&70));
        assert_eq!(merged.clocks.get("cloud"), Some(&90));
    }

    #[test]
    fn delete_hides_until_a_later_write() {
        let rules = Rules::default();
        let mut m = Merged::default();
        m.write(&rules, &stamp(1, "a"), &row("SUBMITTED", "E11"), None);
        m.delete(&stamp(2, "b"));
        assert!(m.is_deleted());
        m.write(&rules, &stamp(3, "a"), &row("PAID", "E11"), None);
        assert!(!m.is_deleted());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(i64, &'static str, &'static str, &'static str),
        Delete(i64, &'static str),
    }

    fn op() -> impl Strategy<Value = Op> {
        let origin = prop::sample::select(vec!["on-prem", "cloud"]);
        let status = prop::sample::select(vec!["SUBMITTED", "PAID", "DENIED"]);
        let dx = prop::sample::select(vec!["E11", "I10", "Z00"]);
        prop_oneof![
            4 => (0i64..20, origin.clone(), status, dx).prop_map(|(h, o, s, d)| Op::Write(h, o, s, d)),
            1 => (0i64..20, origin).prop_map(|(h, o)| Op::Delete(h, o)),
        ]
    }

    proptest! {
        /// Replicas that see the same writes in any order, some of them twice, agree.
        #[test]
        fn replicas_converge_in_any_order(
            ops in prop::collection::vec(op(), 1..12),
            seed in any::<u64>(),
            priority in any::<bool>(),
        ) {
            let rules = if priority { priority_rules() } else { Rules::default() };
            // Tag writes with their index once, so a shuffled copy keeps their identity.
            let tagged: Vec<(usize, Op)> = ops.iter().cloned().enumerate().collect();
            let mut shuffled = tagged.clone();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            shuffled.push(shuffled[0].clone()); // a redelivery
            let run = |list: &[(usize, Op)]| {
                let mut m = Merged::default();
                for (i, op) in list {
                    let mk = |h: i64, o: &str| Stamp { hlc: h, origin: o.into(), position: format!("{h:08}-{i:04}") };
                    match op {
                        Op::Write(h, o, s, d) => { m.write(&rules, &mk(*h, o), &row(s, d), None); }
                        Op::Delete(h, o) => m.delete(&mk(*h, o)),
                    }
                }
                let mut fields = m.row();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                (fields, m.is_deleted())
            };
            prop_assert_eq!(run(&tagged), run(&shuffled));
        }
    }
}
