//! Query decoding on arbitrary text: never panics; what it accepts obeys the limits.
#![no_main]

use leftpad::app::query::{parse, Scratch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut scratch = Scratch::default();
    if let Ok(params) = parse(text, 1024, &mut scratch) {
        assert!(params.len <= 1024);
        assert!(params.str.len() <= text.len());
    }
});
