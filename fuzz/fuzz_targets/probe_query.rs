//! Fuzzes `/probe`'s query parameters, decoded as the server decodes them and validated
//! against a config with a module: never a panic, and every accepted request is bounded (its
//! ports and targets parsed, its timeout above zero).

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use synwatch_exporter::config::Module;

fn modules() -> &'static BTreeMap<String, Module> {
    static MODULES: OnceLock<BTreeMap<String, Module>> = OnceLock::new();
    MODULES.get_or_init(|| {
        let config = synwatch_exporter::config::parse(
            "ondemand: {enabled: true, allow_targets: [127.0.0.0/8]}\nmodules:\n  web: {ports: \"80,443\", wait: 1s}\n",
            "fuzz.yaml",
        )
        .expect("the fuzz config parses");
        config.modules
    })
}

fuzz_target!(|data: &[u8]| {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(data).into_owned().collect();
    if let Ok(params) = synwatch_exporter::ondemand::probe::parse_probe_query(&pairs, modules()) {
        assert!(!params.targets.is_empty());
        assert!(params.timeout.is_none_or(|timeout| !timeout.is_zero()));
    }
});
