//! The chunked decoder: never a panic, the same body and verdict whether the bytes come whole, byte by byte or in random splits.
#![no_main]

#[path = "../../oracle/mod.rs"]
mod oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oracle::chunked(data));
