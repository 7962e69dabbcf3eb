//! Any text as a topology file: loaded or refused with diagnostics, never a panic or a
//! hang. (Component settings are checked by each kind's own parser, not compiled here.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use strata_fuzz::topology::{load_str, Catalog};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let lookup = |name: &str| (name == "SET").then(|| "value".to_string());
        let _ = load_str("fuzz.yaml", text, &Catalog::new(), &lookup);
    }
});
