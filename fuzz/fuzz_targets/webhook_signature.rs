//! Fuzz target: see `flows_exporter_fuzz::webhook_signature` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flows_exporter_fuzz::webhook_signature(data));
