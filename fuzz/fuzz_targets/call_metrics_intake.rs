//! Fuzz target: see `flows_exporter_fuzz::call_metrics_intake` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flows_exporter_fuzz::call_metrics_intake(data));
