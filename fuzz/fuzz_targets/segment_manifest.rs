//! Fuzz target: see `coolstream::harness::segment_manifest` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::segment_manifest(data));
