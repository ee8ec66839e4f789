//! Fuzzes the field lab's responder on untrusted frames: the probe parser (TCP and UDP) and the simulator
//! behind it must not panic on any frame, and every reply it writes must be a packet synwatch's
//! own parser reads.

#![no_main]

use std::sync::Mutex;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use synwatch_lab::field::{MAX_REPLY_LEN, Simulator, SimulatorOptions, parse_probe, profile, write_reply};

static SIMULATOR: Mutex<Option<Simulator>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let _ = parse_probe(data, data.len());
    // As the receive ring hands a long frame over: cut short, with its length on the wire.
    let _ = parse_probe(&data[..data.len().min(64)], data.len());
    let mut guard = SIMULATOR.lock().unwrap();
    let simulator = guard.get_or_insert_with(|| {
        // The hostile profile exercises every decision: loss, firewall, ICMP, late and
        // duplicated replies.
        Simulator::new(profile("hostile", 1).unwrap(), SimulatorOptions::default()).unwrap()
    });
    let now = Duration::from_millis(u64::from(simulator.counters().frames) * 3);
    simulator.handle_frame(now, data);
    simulator.poll_transmit(now + Duration::from_secs(6), |reply, answer| {
        let mut buffer = [0u8; MAX_REPLY_LEN];
        let length = write_reply(reply, answer, &mut buffer).expect("a reply fits");
        assert!(synwatch_wire::parse_reply(&buffer[14..length]).is_ok(), "a reply synwatch cannot parse");
    });
});
