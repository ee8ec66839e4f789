//! Fuzzes the reply parser (TCP, UDP, ICMP and ICMPv6 quoting either) and the classification
//! after it: neither may panic on any input, and a parsed reply must classify consistently.

#![no_main]

use libfuzzer_sys::fuzz_target;
use synwatch_engine::{SourcePortRange, classify_reply};
use synwatch_wire::parse_reply;

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = parse_reply(data) {
        if let Some(classified) = classify_reply(&reply, SourcePortRange::DEFAULT) {
            assert!(SourcePortRange::DEFAULT.contains(classified.local_port));
        }
    }
});
