//! Fuzz target: see `coolstream::harness::wire_frame` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::wire_frame(data));
