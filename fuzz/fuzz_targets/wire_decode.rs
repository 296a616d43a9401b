//! Fuzz target: see `tally_fuzz::wire_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::wire_decode(data));
