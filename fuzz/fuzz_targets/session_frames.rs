//! Fuzz target: see `tally_fuzz::session_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::session_frames(data));
