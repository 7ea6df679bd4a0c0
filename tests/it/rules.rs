//! The Prometheus rules in `dashboards/prometheus/`: `promtool check rules`,
//! `promtool test rules` on the shipped unit tests, and that those tests cover
//! every alert both firing and not firing. Also the test copy of the rules the
//! end-to-end test loads, with every `for:` shortened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::support::outcome;

pub fn rules_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/prometheus/alerts.yml")
}

fn rules_test_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/prometheus/alerts_test.yml")
}

pub fn rules_text() -> String {
    std::fs::read_to_string(rules_path()).expect("read alerts.yml")
}

/// The rules with every `for:` set to `for_`, so an alert fires within
/// seconds of its condition. The shipped file keeps one `for:` per line for
/// this (the same as `sed -E 's/^( *)for: .*/\1for: 1s/'`).
pub fn with_for(rules: &str, for_: &str) -> String {
    rules
        .lines()
        .map(|line| {
            let body = line.trim_start();
            match body.strip_prefix("for:") {
                Some(_) => format!("{}for: {for_}\n", &line[..line.len() - body.len()]),
                None => format!("{line}\n"),
            }
        })
        .collect()
}

/// The alert names of a rules file, in order (`- alert: Name` lines).
pub fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// The names recording rules write (`- record: name` lines), without repeats.
pub fn record_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_owned())
        .collect();
    names.dedup();
    names
}

/// Each alert's lines, from its `- alert:` line to the next rule.
fn alert_blocks(rules: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in rules.lines() {
        let t = line.trim();
        if t.starts_with("- alert:") || t.starts_with("- record:") || t.starts_with("- name:") {
            if let Some((name, body)) = current.take() {
                blocks.insert(name, body);
            }
            if let Some(name) = t.strip_prefix("- alert:") {
                current = Some((name.trim().to_owned(), String::new()));
            }
        }
        if let Some((_, body)) = current.as_mut() {
            body.push_str(t);
            body.push('\n');
        }
    }
    if let Some((name, body)) = current {
        blocks.insert(name, body);
    }
    blocks
}

/// For each alert name in a promtool test file: (cases where it must fire,
/// cases where it must not). `exp_alerts: []` is a not-firing case; any other
/// `exp_alerts:` (a list, or a YAML alias of one) is a firing case.
fn alert_cases(tests: &str) -> BTreeMap<String, (usize, usize)> {
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut alertname: Option<String> = None;
    for line in tests.lines() {
        let t = line.trim().trim_start_matches("- ");
        if let Some(name) = t.strip_prefix("alertname:") {
            alertname = Some(name.trim().to_owned());
        } else if let Some(rest) = t.strip_prefix("exp_alerts:") {
            let name = alertname
                .take()
                .expect("every exp_alerts follows its alertname in the test file");
            let entry = cases.entry(name).or_default();
            if rest.trim() == "[]" {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    cases
}

fn promtool(args: &[&str]) -> (bool, String) {
    outcome(
        &Command::new("promtool")
            .args(args)
            .output()
            .expect("promtool must be installed (the test command installs Debian's prometheus)"),
    )
}

#[test]
fn promtool_check_rules_passes() {
    let path = rules_path();
    let (ok, printed) = promtool(&["check", "rules", path.to_str().expect("utf-8 path")]);
    assert!(ok, "promtool check rules:\n{printed}");
    assert!(printed.contains("SUCCESS"), "{printed}");
}

#[test]
fn promtool_unit_tests_pass() {
    let path = rules_test_path();
    let (ok, printed) = promtool(&["test", "rules", path.to_str().expect("utf-8 path")]);
    assert!(ok, "promtool test rules:\n{printed}");
}

#[test]
fn unit_tests_cover_every_alert_firing_and_not_firing() {
    let rules = rules_text();
    let names = alert_names(&rules);
    assert!(names.len() >= 11, "alerts found: {names:?}");
    let tests = std::fs::read_to_string(rules_test_path()).expect("read alerts_test.yml");
    let cases = alert_cases(&tests);
    for name in &names {
        let (firing, quiet) = cases.get(name).copied().unwrap_or_default();
        assert!(firing > 0, "{name}: no promtool case where it fires");
        assert!(quiet > 0, "{name}: no promtool case where it does not fire");
    }
    // A misspelt alertname would make `exp_alerts: []` pass silently.
    for name in cases.keys() {
        assert!(
            names.contains(name),
            "the tests name an unknown alert {name}"
        );
    }
}

#[test]
fn every_alert_has_a_duration_severity_and_runbook() {
    let rules = rules_text();
    let blocks = alert_blocks(&rules);
    assert_eq!(
        blocks.len(),
        alert_names(&rules).len(),
        "alert names are unique"
    );
    for (name, body) in &blocks {
        assert!(
            name.starts_with("WhatsAppFlows"),
            "{name}: one prefix for all alerts"
        );
        assert!(
            body.lines().any(|l| l.starts_with("for:")),
            "{name}: no `for:`"
        );
        assert!(
            body.lines()
                .any(|l| l == "severity: critical" || l == "severity: warning"),
            "{name}: severity must be critical or warning"
        );
        for annotation in ["summary:", "description:", "runbook:"] {
            assert!(
                body.lines().any(|l| l.starts_with(annotation)),
                "{name}: no {annotation} annotation"
            );
        }
    }
}

#[test]
fn the_test_copy_shortens_every_for_and_nothing_else() {
    let rules = rules_text();
    let copy = with_for(&rules, "1s");
    let fors = |t: &str| {
        t.lines()
            .filter(|l| l.trim_start().starts_with("for:"))
            .map(|l| l.trim().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(fors(&copy).len(), alert_names(&rules).len());
    assert!(fors(&copy).iter().all(|l| l == "for: 1s"));
    assert_eq!(rules.lines().count(), copy.lines().count());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.yml");
    std::fs::write(&path, &copy).expect("write");
    let (ok, printed) = promtool(&["check", "rules", path.to_str().expect("utf-8 path")]);
    assert!(ok, "the test copy is valid too:\n{printed}");
}
