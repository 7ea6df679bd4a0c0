//! The binary's config handling: bad configs name the key and exit non-zero.

use std::process::Command;

/// `check-config` on `text`, with a token in the environment.
fn check_config(text: &str) -> (bool, String, String) {
    check_config_with(text, Some("EAAcheck-token"))
}

fn check_config_with(text: &str, token: Option<&str>) -> (bool, String, String) {
    check_config_env(text, token, &[])
}

/// `check-config` with the token (or none) and these variables set (a value
/// of `None` removes one).
fn check_config_env(
    text: &str,
    token: Option<&str>,
    vars: &[(&str, Option<&str>)],
) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_flows-exporter"));
    command.args(["check-config", "--config.file"]).arg(&path);
    match token {
        Some(t) => command.env("WHATSAPP_ACCESS_TOKEN", t),
        None => command.env_remove("WHATSAPP_ACCESS_TOKEN"),
    };
    for (k, v) in vars {
        match v {
            Some(v) => command.env(k, v),
            None => command.env_remove(k),
        };
    }
    let out = command.output().expect("run flows-exporter");
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

/// A config whose token cannot be read would make `serve` fail: check-config
/// says so on standard error and exits non-zero, naming the key.
#[test]
fn a_token_that_cannot_be_read_fails_the_check() {
    let (ok, stdout, stderr) = check_config_with("[[wabas]]\nid = \"1\"\n", None);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("graph.access_token_env")
            && stderr.contains("WHATSAPP_ACCESS_TOKEN is not set"),
        "{stderr}"
    );
    let (ok, _, stderr) = check_config_with(
        "[graph]\naccess_token_file = \"/nonexistent/token\"\n[[wabas]]\nid = \"1\"\n",
        Some("EAAx"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("graph.access_token_file") && stderr.contains("/nonexistent/token"),
        "{stderr}"
    );
}

/// Old duration keys still work: check-config passes and warns on standard
/// error with what to write instead.
#[test]
fn deprecated_keys_are_warned_about() {
    let (ok, _, stderr) = check_config("[graph]\ntimeout_seconds = 30\n[[wabas]]\nid = \"1\"\n");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("graph.timeout_seconds is deprecated; write graph.timeout = \"30s\""),
        "{stderr}"
    );
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

/// The shipped config with its `[webhooks]` example turned on: check-config
/// needs the app secret as serve does, names the key without it, and says
/// what it would receive with it (never the secret itself).
#[test]
fn the_shipped_webhooks_example_is_checked_like_serve_reads_it() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .expect("config.toml at the top level")
        .replace("# [webhooks]\n", "[webhooks]\n")
        .replace(
            "# listen = \"127.0.0.1:9879\"",
            "listen = \"127.0.0.1:9879\"",
        );
    assert!(
        text.contains("\n[webhooks]\n") && text.contains("\nlisten = \"127.0.0.1:9879\""),
        "the example is in config.toml"
    );
    let (ok, _, stderr) = check_config_env(&text, Some("EAAx"), &[("META_APP_SECRET", None)]);
    assert!(!ok);
    assert!(stderr.contains("webhooks.app_secret_env"), "{stderr}");
    let (ok, stdout, stderr) = check_config_env(
        &text,
        Some("EAAx"),
        &[
            ("META_APP_SECRET", Some("one-s3cret,two-s3cret")),
            ("META_WEBHOOK_VERIFY_TOKEN", None),
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("webhooks on 127.0.0.1:9879/webhooks (2 app secret(s), no verify token: subscription checks refused), 0 Page(s)"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));
}

/// `[[pages]]` need their token and the webhook receiver; errors name the key.
#[test]
fn pages_are_checked_like_wabas() {
    let base = "[[wabas]]\nid = \"1\"\n";
    let hooks = "[webhooks]\nlisten = \"127.0.0.1:9879\"\n";
    for (extra, key) in [
        ("[[pages]]\nid = \"2\"\naccess_token_env = \"P\"\n", "pages"),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9879\"\n[[pages]]\nid = \"2\"\n",
            "pages[0].access_token_env",
        ),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9879\"\n[[pages]]\nid = \"x2\"\naccess_token_env = \"P\"\n",
            "pages[0].id",
        ),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9879\"\n[[pages]]\nid = \"2\"\naccess_token_env = \"P\"\n[[pages]]\nid = \"2\"\naccess_token_env = \"Q\"\n",
            "pages[1].id",
        ),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9879\"\ncall_timeout = \"5s\"\n",
            "webhooks.call_timeout",
        ),
    ] {
        let e = flows_exporter::config::Config::parse(&format!("{base}{extra}")).expect_err(extra);
        assert_eq!(e.key, key, "{extra}: {e}");
    }
    let text =
        format!("{base}{hooks}[[pages]]\nid = \"2\"\naccess_token_env = \"PAGE_TWO_TOKEN\"\n");
    let (ok, _, stderr) = check_config_env(
        &text,
        Some("EAAx"),
        &[("META_APP_SECRET", Some("s")), ("PAGE_TWO_TOKEN", None)],
    );
    assert!(!ok);
    assert!(stderr.contains("pages[0].access_token_env"), "{stderr}");
    let (ok, stdout, stderr) = check_config_env(
        &text,
        Some("EAAx"),
        &[
            ("META_APP_SECRET", Some("s")),
            ("PAGE_TWO_TOKEN", Some("EAApage")),
            ("CALL_METRICS_INTAKE_TOKEN", Some("bearer")),
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("1 Page(s) with an intake token"),
        "{stdout}"
    );
}
