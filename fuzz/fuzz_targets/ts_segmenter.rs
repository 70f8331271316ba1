//! Fuzz target: see `coolstream::harness::ts_segmenter` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coolstream::harness::ts_segmenter(data));
