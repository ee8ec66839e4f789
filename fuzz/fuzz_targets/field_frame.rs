//! Fuzzes the field lab's responder on untrusted frames: the segment parser and the simulator
//! behind it must not panic on any frame, and every reply it writes must be a packet synwatch's
//! own parser reads.

#![no_main]

use std::sync::Mutex;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use synwatch_lab::field::{Simulator, SimulatorOptions, parse_segment, profile, write_reply};

static SIMULATOR: Mutex<Option<Simulator>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let _ = parse_segment(data);
    let mut guard = SIMULATOR.lock().unwrap();
    let simulator = guard.get_or_insert_with(|| {
        // The hostile profile exercises every decision: loss, firewall, ICMP, late and
        // duplicated replies.
        Simulator::new(profile("hostile", 1).unwrap(), SimulatorOptions::default()).unwrap()
    });
    let now = Duration::from_millis(u64::from(simulator.counters().frames) * 3);
    simulator.handle_frame(now, data);
    simulator.poll_transmit(now + Duration::from_secs(6), |reply| {
        let mut buffer = [0u8; 256];
        let length = write_reply(reply, &mut buffer).expect("a reply fits");
        assert!(synwatch_wire::parse_reply(&buffer[14..length]).is_ok(), "a reply synwatch cannot parse");
    });
});
