//! The binary's config handling: bad configs name the key and exit non-zero.

use std::process::Command;

fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("WHATSAPP_ACCESS_TOKEN")
        .output()
        .expect("run flows-exporter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .expect("config.toml at the top level");
    let (ok, stdout, stderr) = check_config(&text);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn bad_configs_name_the_key_and_fail() {
    let cases = [
        (
            "[server]\nlisten = \"localhost\"\n[[wabas]]\nid = \"1\"",
            "server.listen",
        ),
        (
            "[graph]\ntimeout_secs = 3\n[[wabas]]\nid = \"1\"",
            "graph.timeout_secs",
        ),
        (
            "[graph]\nmax_concurrency = 0\n[[wabas]]\nid = \"1\"",
            "graph.max_concurrency",
        ),
        ("[[wabas]]\nid = 5", "wabas[0].id"),
        (
            "[[wabas]]\nid = \"1\"\n[granularity.day]\nschedule = \"every day\"",
            "granularity.day.schedule",
        ),
        (
            "[[wabas]]\nid = \"1\"\n[granularity.hour]\nlookback = \"45d\"",
            "granularity.hour.lookback",
        ),
        (
            "[[wabas]]\nid = \"1\"\n[[flows]]\nid = \"abc\"",
            "flows[0].id",
        ),
        (
            "[graph]\nbase_url = \"graph.facebook.com\"\n[[wabas]]\nid = \"1\"",
            "graph.base_url",
        ),
    ];
    for (text, key) in cases {
        let (ok, stdout, stderr) = check_config(text);
        assert!(!ok, "accepted:\n{text}\n{stdout}");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "error for {key} does not name it: {stderr}"
        );
    }
}

#[test]
fn unreadable_config_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .args(["check-config", "--config", "/nonexistent/config.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/config.toml"));
}

#[test]
fn serve_without_a_token_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\n[[wabas]]\nid = \"1\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("WHATSAPP_ACCESS_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WHATSAPP_ACCESS_TOKEN is not set"),
        "{stderr}"
    );
}
