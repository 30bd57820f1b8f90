//! The response-head parser: never a panic, the same head whether the bytes come whole, byte by byte or in random splits (first byte: a HEAD request or not).
#![no_main]

#[path = "../../oracle/mod.rs"]
mod oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oracle::response_head(data));
