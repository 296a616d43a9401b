//! Fuzz target: see `tally_fuzz::validate_changes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::validate_changes(data));
