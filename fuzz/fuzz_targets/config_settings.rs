//! Fuzz target: see `coolstream::harness::config_settings` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::config_settings(data));
