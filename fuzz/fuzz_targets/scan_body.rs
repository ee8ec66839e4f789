//! Fuzzes the scans API's JSON body (`POST /api/v1/scans`): a validated request or a reason,
//! never a panic.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let modules = BTreeMap::new();
    match synwatch_exporter::ondemand::parse_scan_body(data, &modules) {
        Ok(body) => {
            assert!(!body.params.targets.is_empty());
            assert!(body.dedupe_key.is_none_or(|key| (1..=200).contains(&key.len())));
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
