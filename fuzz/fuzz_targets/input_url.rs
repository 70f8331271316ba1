//! Fuzz target: see `coolstream::harness::input_url` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::input_url(data));
