//! Fuzz target: see `coolstream::harness::link_records` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::link_records(data));
