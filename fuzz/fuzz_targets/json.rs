//! JSON escaping on arbitrary text: the escaped string is valid JSON, decodes back to the
//! input, and `escaped_len` agrees with what is written.
#![no_main]

use leftpad::http::json::{escaped_len, write_escaped};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut out = b"\"".to_vec();
    write_escaped(&mut out, text);
    assert_eq!(out.len() - 1, escaped_len(text));
    out.push(b'"');
    let back: String = serde_json::from_slice(&out).expect("valid JSON string");
    assert_eq!(back, text);
    // Go's escaping never leaves these raw.
    assert!(!out
        .iter()
        .any(|&b| b < 0x20 || b == b'<' || b == b'>' || b == b'&'));
});
