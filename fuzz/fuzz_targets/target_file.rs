//! Fuzzes the readers of target lists: a Prometheus `file_sd` file (any text is its groups or
//! an error naming the file, a line and a column) and one target item of a config, `/probe` or
//! `synwatch scan` (an address, a range or a host name, or an error); neither ever panics, and
//! every name accepted is one the validator accepts again unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use synwatch_engine::{AddressFamily, HostName, TargetItem, parse_target_item};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match synwatch_exporter::config::parse_target_file(text, "fuzz.yml") {
        Ok((items, ports)) => {
            assert!(ports.iter().all(|port| port.number > 0));
            for item in items {
                if let TargetItem::Name(name) = item {
                    let again = HostName::parse(&name.to_string(), AddressFamily::Any).expect("a name reads back");
                    assert_eq!(again, name);
                }
            }
        }
        Err(error) => {
            assert_eq!(error.origin, "fuzz.yml");
            assert!(error.line >= 1 && error.column >= 1, "{error}");
        }
    }
    for item in text.split([',', '\n']).take(64) {
        if let Ok(TargetItem::Name(name)) = parse_target_item(item, AddressFamily::Any) {
            assert!(name.name().len() <= synwatch_engine::names::MAX_NAME_LENGTH);
            assert!(name.name().bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte)));
        }
    }
});
