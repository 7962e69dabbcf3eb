//! SQL Server log sequence numbers and the source's durable offset.
//!
//! An LSN is SQL Server's `binary(10)`: byte order is log order, so LSNs compare as
//! byte strings. Every change row carries `__$start_lsn` (the commit LSN of its
//! transaction), `__$seqval` (its order inside the transaction) and `__$operation`
//! (1 delete, 2 insert, 3 update before-image, 4 update after-image). Their triple is a
//! total order over all captured tables, and it is the event's position.
//!
//! The offset is the position of the last change whose event Kafka acknowledged, with
//! every earlier one: resuming reads from its commit LSN again (inclusive) and skips
//! changes up to and including it, so a transaction cut by a crash is neither lost nor
//! repeated.

use std::fmt;

/// A 10-byte SQL Server LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub [u8; 10]);

impl Lsn {
    pub const ZERO: Lsn = Lsn([0; 10]);

    /// From the bytes of a `binary(10)` column; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Lsn> {
        Some(Lsn(bytes.try_into().ok()?))
    }

    /// Parses the 20 hex digits of [`Lsn`]'s `Display` (an optional `0x` first).
    pub fn parse(text: &str) -> Option<Lsn> {
        let hex = text.strip_prefix("0x").unwrap_or(text);
        if hex.len() != 20 {
            return None;
        }
        let mut out = [0u8; 10];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Lsn(out))
    }

    /// The next LSN in byte order (what `sys.fn_cdc_increment_lsn` computes).
    pub fn increment(self) -> Lsn {
        self.step(u8::overflowing_add)
    }

    /// The LSN before this one in byte order (`sys.fn_cdc_decrement_lsn`).
    pub fn decrement(self) -> Lsn {
        self.step(u8::overflowing_sub)
    }

    /// Adds or subtracts one, carrying from the last byte towards the first.
    fn step(self, op: fn(u8, u8) -> (u8, bool)) -> Lsn {
        let mut bytes = self.0;
        for b in bytes.iter_mut().rev() {
            let (next, carry) = op(*b, 1);
            *b = next;
            if !carry {
                break;
            }
        }
        Lsn(bytes)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// `__$operation` of a change row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Delete = 1,
    Insert = 2,
    UpdateBefore = 3,
    UpdateAfter = 4,
}

impl Operation {
    pub fn from_code(code: i32) -> Option<Operation> {
        Some(match code {
            1 => Operation::Delete,
            2 => Operation::Insert,
            3 => Operation::UpdateBefore,
            4 => Operation::UpdateAfter,
            _ => return None,
        })
    }
}

/// Where a change sits in the log: (commit LSN, sequence value, operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub seqval: Lsn,
    pub operation: Operation,
}

impl Position {
    /// The event position as a fixed-width string: string order is log order, as the
    /// processors' position guard requires.
    pub fn text(&self) -> String {
        format!(
            "{}-{}-{}",
            self.commit_lsn, self.seqval, self.operation as u8
        )
    }
}

/// The source's durable offset: everything up to and including `position` is in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    pub position: Position,
}

impl Offset {
    /// The stored form: `<commit>:<seqval>:<operation>` (hex LSNs).
    pub fn encode(&self) -> String {
        let p = self.position;
        format!("{}:{}:{}", p.commit_lsn, p.seqval, p.operation as u8)
    }

    pub fn decode(text: &str) -> Option<Offset> {
        let mut parts = text.split(':');
        let commit_lsn = Lsn::parse(parts.next()?)?;
        let seqval = Lsn::parse(parts.next()?)?;
        let operation = Operation::from_code(parts.next()?.parse().ok()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Offset {
            position: Position {
                commit_lsn,
                seqval,
                operation,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn increments_with_carry() {
        let mut a = [0u8; 10];
        a[9] = 0xff;
        a[8] = 0x01;
        let mut b = [0u8; 10];
        b[8] = 0x02;
        assert_eq!(Lsn(a).increment(), Lsn(b));
        assert_eq!(Lsn(b).decrement(), Lsn(a));
        assert!(Lsn(a) < Lsn(a).increment());
    }

    proptest! {
        #[test]
        fn text_round_trips_and_keeps_order(a: [u8; 10], b: [u8; 10], sa: [u8; 10], op in 1i32..=4) {
            let (la, lb) = (Lsn(a), Lsn(b));
            prop_assert_eq!(Lsn::parse(&la.to_string()), Some(la));
            prop_assert_eq!(la.cmp(&lb), la.to_string().cmp(&lb.to_string()));
            let offset = Offset { position: Position {
                commit_lsn: la, seqval: Lsn(sa), operation: Operation::from_code(op).unwrap(),
            }};
            prop_assert_eq!(Offset::decode(&offset.encode()), Some(offset));
        }

        #[test]
        fn position_text_orders_like_positions(
            a in (any::<[u8; 10]>(), any::<[u8; 10]>(), 1i32..=4),
            b in (any::<[u8; 10]>(), any::<[u8; 10]>(), 1i32..=4),
        ) {
            let p = |(c, s, o): ([u8; 10], [u8; 10], i32)| Position {
                commit_lsn: Lsn(c), seqval: Lsn(s), operation: Operation::from_code(o).unwrap(),
            };
            let (pa, pb) = (p(a), p(b));
            prop_assert_eq!(pa.cmp(&pb), pa.text().cmp(&pb.text()));
        }
    }

    #[test]
    fn garbage_offsets_are_refused() {
        for bad in [
            "",
            "00",
            "zz:00:1",
            &format!("{}:{}:9", Lsn::ZERO, Lsn::ZERO),
        ] {
            assert_eq!(Offset::decode(bad), None, "{bad}");
        }
    }
}
