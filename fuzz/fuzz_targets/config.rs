//! Fuzzes the exporter's config parser: any text is either a config or an error that names
//! the file, a line and a column; it never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = synwatch_exporter::config::parse(text, "fuzz.yaml") {
        let message = error.to_string();
        let mut parts = message.splitn(4, ':');
        assert_eq!(parts.next(), Some("fuzz.yaml"), "{message}");
        for part in [parts.next(), parts.next()] {
            let number = part.and_then(|part| part.parse::<usize>().ok());
            assert!(number.is_some_and(|number| number >= 1), "no line:column in {message}");
        }
    }
});
