//! Fuzz target: see `coolstream::harness::node_input` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::node_input(data));
