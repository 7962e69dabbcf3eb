//! Which source position is safe to acknowledge upstream.
//!
//! A source sends the events of each transaction to Kafka and learns of their delivery
//! out of order. It may tell the database "done up to P" (PostgreSQL's flush LSN, SQL
//! Server's stored LSN) only when every event of every transaction up to and including
//! P has been acknowledged by Kafka. [`AckTracker`] keeps that rule: transactions are
//! registered in commit order, and [`AckTracker::confirmed`] only ever moves forward to
//! the end of the longest fully acknowledged prefix.

use std::collections::VecDeque;

/// Handle of one registered transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxId(u64);

#[derive(Debug)]
struct Tx<P> {
    outstanding: usize,
    sealed_at: Option<P>,
}

#[derive(Debug)]
pub struct AckTracker<P> {
    first_id: u64,
    txs: VecDeque<Tx<P>>,
    confirmed: Option<P>,
}

impl<P: Copy + Ord> Default for AckTracker<P> {
    fn default() -> Self {
        Self {
            first_id: 0,
            txs: VecDeque::new(),
            confirmed: None,
        }
    }
}

impl<P: Copy + Ord> AckTracker<P> {
    /// Starts tracking from `confirmed`, the position the database already has.
    pub fn new(confirmed: Option<P>) -> Self {
        Self {
            confirmed,
            ..Self::default()
        }
    }

    /// Registers the next transaction, in commit order.
    pub fn begin(&mut self) -> TxId {
        self.txs.push_back(Tx {
            outstanding: 0,
            sealed_at: None,
        });
        TxId(self.first_id + self.txs.len() as u64 - 1)
    }

    fn tx(&mut self, id: TxId) -> Option<&mut Tx<P>> {
        let index = id.0.checked_sub(self.first_id)?;
        self.txs.get_mut(usize::try_from(index).ok()?)
    }

    /// One more event of `id` is on its way to Kafka.
    pub fn sent(&mut self, id: TxId) {
        if let Some(tx) = self.tx(id) {
            tx.outstanding += 1;
        }
    }

    /// Kafka acknowledged one event of `id`.
    pub fn acked(&mut self, id: TxId) {
        if let Some(tx) = self.tx(id) {
            tx.outstanding = tx.outstanding.saturating_sub(1);
        }
        self.advance();
    }

    /// All events of `id` have been sent; `position` is where the transaction ends.
    pub fn seal(&mut self, id: TxId, position: P) {
        if let Some(tx) = self.tx(id) {
            tx.sealed_at = Some(position);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while let Some(front) = self.txs.front() {
            match front.sealed_at {
                Some(p) if front.outstanding == 0 => {
                    self.confirmed = Some(self.confirmed.map_or(p, |c| c.max(p)));
                    self.txs.pop_front();
                    self.first_id += 1;
                }
                _ => break,
            }
        }
    }

    /// The position up to which everything is acknowledged by Kafka.
    pub fn confirmed(&self) -> Option<P> {
        self.confirmed
    }

    /// Events sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.txs.iter().map(|t| t.outstanding).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn waits_for_the_whole_prefix() {
        let mut t = AckTracker::new(Some(10u64));
        let a = t.begin();
        t.sent(a);
        t.sent(a);
        t.seal(a, 20);
        let b = t.begin();
        t.sent(b);
        t.seal(b, 30);
        t.acked(b);
        assert_eq!(t.confirmed(), Some(10), "b is done but a is not");
        t.acked(a);
        assert_eq!(t.confirmed(), Some(10));
        t.acked(a);
        assert_eq!(t.confirmed(), Some(30));
        assert_eq!(t.in_flight(), 0);
    }

    proptest! {
        /// Whatever order deliveries arrive in, the confirmed position never passes an
        /// unacknowledged event, and reaches the last transaction once all are acknowledged.
        #[test]
        fn never_confirms_past_an_unacknowledged_event(
            sizes in proptest::collection::vec(0usize..4, 1..20),
            order in proptest::collection::vec(any::<u32>(), 0..80),
        ) {
            let mut t = AckTracker::new(None);
            let mut events = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let id = t.begin();
                for _ in 0..*n {
                    t.sent(id);
                    events.push((id, i as u64));
                }
                t.seal(id, i as u64);
            }
            let mut pending = events.clone();
            for pick in order {
                if pending.is_empty() { break; }
                let (id, _) = pending.remove(pick as usize % pending.len());
                t.acked(id);
                let lowest_pending = pending.iter().map(|(_, tx)| *tx).min();
                if let (Some(c), Some(low)) = (t.confirmed(), lowest_pending) {
                    prop_assert!(c < low, "confirmed {c} while tx {low} has unacked events");
                }
            }
            for (id, _) in pending.drain(..) {
                t.acked(id);
            }
            prop_assert_eq!(t.confirmed(), Some(sizes.len() as u64 - 1));
        }
    }
}
