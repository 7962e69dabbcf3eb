//! LSNs and event positions of the PostgreSQL source.
//!
//! An event's position is (commit LSN of its transaction, index of the change in the
//! transaction). Commit LSNs grow with commit order, so positions order every change of
//! every table the way PostgreSQL committed them. Snapshot rows carry the slot's
//! consistent point as their LSN: every streamed change commits after it, so a row's
//! snapshot image always sorts before the changes that follow it.
//!
//! On the wire a position is fixed-width hex, `{lsn:016x}-{index:08x}`, so comparing the
//! strings compares the positions — also for tools that know nothing about LSNs.

use std::fmt;
use std::str::FromStr;

/// A WAL location, printed the way PostgreSQL prints it (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an LSN; PostgreSQL writes them as two hex numbers, e.g. 16/B374D848")]
pub struct BadLsn(String);

impl FromStr for Lsn {
    type Err = BadLsn;
    fn from_str(s: &str) -> Result<Self, BadLsn> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| BadLsn(s.into()))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| BadLsn(s.into()))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| BadLsn(s.into()))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub index: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:08x}", self.commit_lsn.0, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_postgres_text() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16-B374".parse::<Lsn>().is_err());
        assert!("zz/1".parse::<Lsn>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn position_strings_sort_like_positions(a in (0u64.., 0u32..), b in (0u64.., 0u32..)) {
            let pa = Position { commit_lsn: Lsn(a.0), index: a.1 };
            let pb = Position { commit_lsn: Lsn(b.0), index: b.1 };
            proptest::prop_assert_eq!(pa.cmp(&pb), pa.to_string().cmp(&pb.to_string()));
        }
    }
}
