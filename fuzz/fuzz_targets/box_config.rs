//! Fuzz target: see `coolstream::harness::box_config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::box_config(data));
