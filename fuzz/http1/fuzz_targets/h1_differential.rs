//! Request heads against httparse plus the RFC 9112 framing rules: what Switchyard accepts reads the same, what it refuses the rules refuse.
#![no_main]

#[path = "../../oracle/mod.rs"]
mod oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oracle::differential(data));
