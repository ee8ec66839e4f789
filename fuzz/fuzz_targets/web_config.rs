//! Fuzzes the web config parser (TLS, basic auth, bearer tokens): any text is a web config or
//! an error naming the file; it never panics. Certificate paths resolve under a directory that
//! does not exist, so nothing is read from disk.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let base = std::path::Path::new("/nonexistent/synwatch-fuzz");
    if let Err(error) = synwatch_http::WebSecurity::parse(text, "web.yml", base) {
        let message = error.to_string();
        assert!(message.contains("web.yml"), "{message}");
    }
});
