//! The stream's contract on generated change streams, through an in-memory [`CdcReader`]
//! that answers like SQL Server's CDC functions.

use std::collections::HashMap;

use futures::executor::block_on;
use futures::future::BoxFuture;
use proptest::prelude::*;

use super::*;

/// Capture instances and their change rows; a row is a number naming the image.
#[derive(Default, Clone)]
struct FakeServer {
    instances: Vec<CaptureInstance>,
    rows: HashMap<String, Vec<ChangeRow<u32>>>,
    min: HashMap<String, Lsn>,
    max: Lsn,
}

impl CdcReader for FakeServer {
    type Row = u32;

    fn capture_instances(&mut self) -> BoxFuture<'_, Result<Vec<CaptureInstance>, CdcError>> {
        Box::pin(async move { Ok(self.instances.clone()) })
    }

    fn max_lsn(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>> {
        Box::pin(async move { Ok(self.max) })
    }

    fn min_lsn<'a>(&'a mut self, instance: &'a str) -> BoxFuture<'a, Result<Lsn, CdcError>> {
        Box::pin(async move { Ok(self.min.get(instance).copied().unwrap_or(Lsn::ZERO)) })
    }

    fn changes<'a>(
        &'a mut self,
        instance: &'a str,
        from: Lsn,
        to: Lsn,
    ) -> BoxFuture<'a, Result<Vec<ChangeRow<u32>>, CdcError>> {
        Box::pin(async move {
            let mut rows: Vec<_> = self
                .rows
                .get(instance)
                .into_iter()
                .flatten()
                .filter(|r| (from..=to).contains(&r.position.commit_lsn))
                .cloned()
                .collect();
            rows.sort_by_key(|r| r.position);
            Ok(rows)
        })
    }

    // The stream does not snapshot; the source's tests cover these.
    fn columns<'a>(
        &'a mut self,
        _instance: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CapturedColumn>, CdcError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn begin_snapshot(&mut self) -> BoxFuture<'_, Result<Lsn, CdcError>> {
        Box::pin(async move { Ok(self.max) })
    }

    fn snapshot_rows<'a>(
        &'a mut self,
        _table: &'a str,
        _columns: &'a [String],
    ) -> BoxStream<'a, Result<u32, CdcError>> {
        Box::pin(futures::stream::empty())
    }

    fn end_snapshot(&mut self) -> BoxFuture<'_, Result<(), CdcError>> {
        Box::pin(async { Ok(()) })
    }
}

fn lsn(n: u64) -> Lsn {
    let mut bytes = [0u8; 10];
    bytes[2..].copy_from_slice(&n.to_be_bytes());
    Lsn(bytes)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Insert,
    Update,
    Delete,
}

const TABLES: [&str; 3] = ["dbo.claims", "dbo.claim_lines", "dbo.members"];

/// Transactions of (table, kind) changes → a server with one instance per table, and the
/// events the stream must produce, in order.
fn server(transactions: &[Vec<(usize, Kind)>]) -> (FakeServer, Vec<ChangeEvent<u32>>) {
    let mut s = FakeServer::default();
    for (i, table) in TABLES.iter().enumerate() {
        s.instances.push(CaptureInstance {
            table: table.to_string(),
            name: format!("inst{i}"),
            start_lsn: lsn(1),
        });
    }
    let mut expected = Vec::new();
    let mut image = 0u32;
    for (t, changes) in transactions.iter().enumerate() {
        let commit_lsn = lsn(10 + 10 * t as u64);
        s.max = commit_lsn;
        for (n, (table, kind)) in changes.iter().enumerate() {
            let seqval = lsn(n as u64 + 1);
            let at = |operation| Position {
                commit_lsn,
                seqval,
                operation,
            };
            let instance = format!("inst{table}");
            let mut push = |position: Position| {
                image += 1;
                s.rows.entry(instance.clone()).or_default().push(ChangeRow {
                    position,
                    row: image,
                });
                image
            };
            let (position, kind) = match kind {
                Kind::Insert => {
                    let after = push(at(Operation::Insert));
                    (at(Operation::Insert), ChangeKind::Insert { after })
                }
                Kind::Delete => {
                    let before = push(at(Operation::Delete));
                    (at(Operation::Delete), ChangeKind::Delete { before })
                }
                Kind::Update => {
                    let before = push(at(Operation::UpdateBefore));
                    let after = push(at(Operation::UpdateAfter));
                    (
                        at(Operation::UpdateAfter),
                        ChangeKind::Update { before, after },
                    )
                }
            };
            expected.push(ChangeEvent {
                table: TABLES[*table].to_string(),
                instance,
                position,
                kind,
            });
        }
    }
    (s, expected)
}

fn tables() -> Vec<String> {
    TABLES.iter().map(|t| t.to_string()).collect()
}

fn transactions() -> impl Strategy<Value = Vec<Vec<(usize, Kind)>>> {
    let kind = prop_oneof![Just(Kind::Insert), Just(Kind::Update), Just(Kind::Delete)];
    prop::collection::vec(prop::collection::vec((0..TABLES.len(), kind), 1..5), 1..25)
}

fn poll_all(s: &mut FakeServer, offset: Option<Offset>, limit: usize) -> Vec<ChangeEvent<u32>> {
    block_on(poll(s, &tables(), offset, Lsn::ZERO, limit)).expect("poll")
}

proptest! {
    #[test]
    fn changes_of_all_tables_leave_in_commit_order(txs in transactions()) {
        let (mut s, expected) = server(&txs);
        let got = poll_all(&mut s, None, usize::MAX);
        prop_assert!(got.windows(2).all(|w| w[0].position < w[1].position));
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn resuming_from_any_offset_yields_exactly_the_rest(txs in transactions(), pick in any::<prop::sample::Index>()) {
        let (mut s, expected) = server(&txs);
        let k = pick.index(expected.len());
        let offset = Offset { position: expected[k].position };
        prop_assert_eq!(poll_all(&mut s, Some(offset), usize::MAX), expected[k + 1..].to_vec());
    }

    #[test]
    fn paging_by_a_small_limit_loses_and_repeats_nothing(txs in transactions(), limit in 1usize..4) {
        let (mut s, expected) = server(&txs);
        let mut got = Vec::new();
        let mut offset = None;
        loop {
            let page = poll_all(&mut s, offset, limit);
            prop_assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            offset = Some(Offset { position: last.position });
            got.extend(page);
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn a_newer_capture_instance_takes_over_at_its_start(txs in transactions(), pick in any::<prop::sample::Index>()) {
        let (mut s, expected) = server(&txs);
        // A schema change on dbo.claims: a second instance captures from a later commit
        // LSN on, while the old one (not yet dropped) still captures too.
        let switch = lsn(10 + 10 * pick.index(txs.len()) as u64);
        s.instances.push(CaptureInstance {
            table: TABLES[0].into(),
            name: "inst0_v2".into(),
            start_lsn: switch,
        });
        let copied: Vec<_> = s.rows.get("inst0").into_iter().flatten()
            .filter(|r| r.position.commit_lsn >= switch).cloned().collect();
        s.rows.insert("inst0_v2".into(), copied);
        let got = poll_all(&mut s, None, usize::MAX);
        let expected: Vec<_> = expected.into_iter().map(|mut e| {
            if e.instance == "inst0" && e.position.commit_lsn >= switch {
                e.instance = "inst0_v2".into();
            }
            e
        }).collect();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn an_offset_older_than_the_retained_changes_asks_for_a_snapshot() {
    let (mut s, expected) = server(&[vec![(0, Kind::Insert)], vec![(0, Kind::Insert)]]);
    s.min.insert("inst0".into(), lsn(20));
    let offset = Offset {
        position: expected[0].position,
    };
    let err = block_on(poll(&mut s, &tables(), Some(offset), Lsn::ZERO, 10)).unwrap_err();
    assert!(
        matches!(err, CdcError::BeyondRetention { .. }) && err.to_string().contains("snapshot"),
        "{err}"
    );
}

#[test]
fn a_table_without_a_capture_instance_is_named() {
    let (mut s, _) = server(&[vec![(0, Kind::Insert)]]);
    s.instances.retain(|i| i.table != "dbo.members");
    let err = block_on(poll(&mut s, &tables(), None, Lsn::ZERO, 10)).unwrap_err();
    assert!(err.to_string().contains("dbo.members"), "{err}");
}

#[test]
fn half_an_update_is_an_error_not_a_guess() {
    let (mut s, _) = server(&[vec![(0, Kind::Update)]]);
    s.rows
        .get_mut("inst0")
        .unwrap()
        .retain(|r| r.position.operation != Operation::UpdateAfter);
    let err = block_on(poll(&mut s, &tables(), None, Lsn::ZERO, 10)).unwrap_err();
    assert!(matches!(err, CdcError::UnpairedUpdate { .. }), "{err}");
}
