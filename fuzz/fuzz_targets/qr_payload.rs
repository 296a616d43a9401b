//! Fuzz target: see `tally_fuzz::qr_payload`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::qr_payload(data));
