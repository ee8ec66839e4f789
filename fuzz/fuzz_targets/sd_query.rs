//! Fuzzes `/sd`'s query string: a filter or a reason, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    if let Err(reason) = synwatch_exporter::sd::parse_sd_query(query) {
        assert!(!reason.is_empty());
    }
});
