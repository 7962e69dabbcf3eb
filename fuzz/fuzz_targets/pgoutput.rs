//! Any bytes as a pgoutput message: decoded or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = strata_fuzz::pgoutput::decode(&bytes::Bytes::copy_from_slice(data));
});
