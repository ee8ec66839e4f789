//! Fuzzes the UDP payload side: a user payload file (errors must carry a line and column
//! inside the text) and the reading of an answer's or a quoted probe's cookie for every
//! built-in payload. None may panic, and a cookie read back has its value inside its mask.

#![no_main]

use libfuzzer_sys::fuzz_target;
use synwatch_wire::PayloadTable;
use synwatch_wire::payloads::BUILT_IN_PORTS;

fuzz_target!(|data: &[u8]| {
    let table = PayloadTable::built_in();
    if let Ok(text) = std::str::from_utf8(data) {
        match table.parse_file(text) {
            Ok(parsed) => assert!(parsed.user_ports() <= 65535),
            Err(error) => {
                assert!(error.line >= 1 && error.line <= text.lines().count().max(1));
                assert!(error.column >= 1);
            }
        }
    }
    for port in BUILT_IN_PORTS {
        let payload = table.for_port(port);
        for bits in [payload.echoed_cookie(data), payload.quoted_cookie(data)].into_iter().flatten() {
            assert_eq!(bits.value & !bits.mask, 0, "port {port}: bits outside the mask");
        }
    }
});
