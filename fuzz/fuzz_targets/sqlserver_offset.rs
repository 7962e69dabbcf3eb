//! Any text as the SQL Server source's stored offset (read back from Kafka): decoded or
//! refused, and a decoded offset encodes back to an offset equal to it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use strata_fuzz::lsn::{Lsn, Offset};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(offset) = Offset::decode(text) {
            assert_eq!(Offset::decode(&offset.encode()), Some(offset));
        }
        if let Some(lsn) = Lsn::parse(text) {
            assert_eq!(Lsn::parse(&lsn.to_string()), Some(lsn));
        }
    }
});
