//! Fuzz target: see `coolstream::harness::control_request` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::control_request(data));
