//! Fuzz target: see `coolstream::harness::node_partners` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::node_partners(data));
