//! Fuzz target: see `coolstream::harness::http_request` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::http_request(data));
