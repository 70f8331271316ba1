//! Fuzz target: see `coolstream::harness::nat_soap` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::nat_soap(data));
