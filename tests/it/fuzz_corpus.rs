//! The fuzz targets' seed corpus, run through the same invariant checks the
//! fuzz targets use (`fuzz/src/lib.rs`), so every `cargo test` exercises them on
//! stable Rust without cargo-fuzz or libFuzzer.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; a target without seeds
/// is a mistake.
fn check_corpus(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        check(&data);
        seen += 1;
    }
    assert!(seen > 0, "no seeds in {}", dir.display());
}

#[test]
fn metric_answer_corpus() {
    check_corpus("metric_answer", checks::metric_answer);
}

#[test]
fn flows_page_corpus() {
    check_corpus("flows_page", checks::flows_page);
}

#[test]
fn graph_error_corpus() {
    check_corpus("graph_error", checks::graph_error);
}

#[test]
fn usage_headers_corpus() {
    check_corpus("usage_headers", checks::usage_headers);
}

#[test]
fn config_corpus() {
    check_corpus("config", checks::config);
}

#[test]
fn webhook_payload_corpus() {
    check_corpus("webhook_payload", checks::webhook_payload);
}

#[test]
fn webhook_signature_corpus() {
    check_corpus("webhook_signature", checks::webhook_signature);
}

#[test]
fn call_metrics_intake_corpus() {
    check_corpus("call_metrics_intake", checks::call_metrics_intake);
}
