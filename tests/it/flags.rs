//! The command line as Prometheus exporters have it, through the binary:
//! `--version`, `--web.listen-address` (repeatable, winning over the file),
//! `--web.telemetry-path`, `--log.format`, `--log.level` (winning over
//! FLOWS_EXPORTER_LOG), `--config.file`, and `backfill --demo` with dates
//! relative to today.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

/// A free port on 127.0.0.1 (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `flows-exporter serve` with `args` against a sandbox; its stderr lines
/// collect in the returned buffer.
async fn serve(
    sb: &RunningSandbox,
    file_listen: u16,
    args: &[String],
    env: &[(&str, &str)],
) -> (Proc, Arc<Mutex<String>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{file_listen}\"\n[graph]\nbase_url = \"{}\"\n\
             access_token_env = \"FLOWS_TEST_TOKEN\"\n[[wabas]]\nid = \"{WABA_1}\"\n",
            sb.base_url
        ),
    )
    .expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_flows-exporter"));
    command
        .arg("serve")
        .arg("--config.file")
        .arg(&config)
        .args(args)
        .env("FLOWS_TEST_TOKEN", TOKEN)
        .env_remove("FLOWS_EXPORTER_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = Proc(command.spawn().expect("start serve"));
    let logs = collect_stderr(&mut child.0);
    (child, logs, dir)
}

async fn get(url: &str) -> Result<(u16, String), reqwest::Error> {
    let r = http().get(url).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

/// Waits until `url` answers 200 and returns the body.
async fn ready_body(url: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, body)) = get(url).await {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn version_says_what_build_this_is() {
    let out = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .arg("--version")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("flows-exporter {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for field in [
        "branch: ",
        "revision: ",
        "build date:",
        "rustc version:    rustc ",
        "platform:",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    assert!(text.contains(flows_exporter::version::REVISION));
    assert!(text.contains(flows_exporter::version::PLATFORM));
}

/// Two `--web.listen-address` flags win over `server.listen`; the exposition is
/// at `--web.telemetry-path` on both, `/metrics` is not, the file's address
/// is not listened on, and build_info carries what `--version` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_and_the_telemetry_path_win_over_the_file() {
    let sb = realistic().await;
    let (file_port, a, b) = (free_port(), free_port(), free_port());
    let args = [
        format!("--web.listen-address=127.0.0.1:{a}"),
        format!("--web.listen-address=127.0.0.1:{b}"),
        "--web.telemetry-path=/custom/metrics".to_owned(),
    ];
    let (_child, logs, _dir) = serve(&sb, file_port, &args, &[]).await;
    for port in [a, b] {
        let body = ready_body(&format!("http://127.0.0.1:{port}/custom/metrics")).await;
        assert!(
            body.contains("whatsapp_flows_exporter_build_info{"),
            "{port}"
        );
        let (status, _) = get(&format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("answers");
        assert_eq!(status, 404, "{port}: /metrics is not the telemetry path");
        let (_, landing) = get(&format!("http://127.0.0.1:{port}/"))
            .await
            .expect("landing");
        assert!(landing.contains("href=\"/custom/metrics\""), "{landing}");
        let info = samples(&body, "whatsapp_flows_exporter_build_info{");
        for (name, value) in flows_exporter::version::labels() {
            assert!(
                info[0].contains(&format!("{name}=\"{value}\"")),
                "{name}: {info:?}"
            );
        }
    }
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", file_port))
            .await
            .is_err(),
        "the file's address is not listened on"
    );
    let text = logs.lock().expect("logs").clone();
    assert!(
        text.contains(&format!("address=127.0.0.1:{a},127.0.0.1:{b}")),
        "{text}"
    );
}

/// logfmt by default: one `key=value` line per event; `--log.format json`:
/// one JSON object per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_formats() {
    let sb = realistic().await;
    for (format, json) in [(None, false), (Some("json"), true)] {
        let port = free_port();
        let mut args = vec![format!("--web.listen-address=127.0.0.1:{port}")];
        if let Some(f) = format {
            args.push(format!("--log.format={f}"));
        }
        let (_child, logs, _dir) = serve(&sb, free_port(), &args, &[]).await;
        ready_body(&format!("http://127.0.0.1:{port}/-/ready")).await;
        let text = logs.lock().expect("logs").clone();
        let line = text
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .expect("the start is logged");
        if json {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object");
            assert_eq!(v["message"], "serving /metrics", "{line}");
            assert_eq!(v["level"], "INFO", "{line}");
            assert!(
                text.lines()
                    .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            );
        } else {
            assert!(line.starts_with("ts="), "{line}");
            assert!(line.contains(" level=info "), "{line}");
            assert!(line.contains(" msg=\"serving /metrics\" "), "{line}");
            assert!(text.lines().all(|l| l.starts_with("ts=")), "{text}");
        }
    }
}

/// `--log.level warn` leaves out info and debug lines even when
/// FLOWS_EXPORTER_LOG asks for debug; `--log.level debug` has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_flag_wins_over_the_environment() {
    let sb = realistic().await;
    for (level, wants_debug) in [("warn", false), ("debug", true)] {
        let port = free_port();
        let args = [
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--log.level={level}"),
        ];
        let (_child, logs, _dir) =
            serve(&sb, free_port(), &args, &[("FLOWS_EXPORTER_LOG", "debug")]).await;
        ready_body(&format!("http://127.0.0.1:{port}/-/ready")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = logs.lock().expect("logs").clone();
        assert_eq!(
            text.contains(" level=debug "),
            wants_debug,
            "{level}: {text}"
        );
        assert_eq!(
            text.contains(" level=info "),
            wants_debug,
            "{level}: {text}"
        );
    }
}

/// `backfill --demo` with dates relative to today: no account, no config.
#[test]
fn backfill_from_the_demo_sandbox_in_one_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("flows.om");
    let run = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .args([
            "backfill",
            "--demo",
            "--since",
            "-3d",
            "--until",
            "yesterday",
            "--granularity",
            "day",
            "--output",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("the file");
    assert!(text.ends_with("# EOF\n"));
    assert!(
        text.contains("whatsapp_flows_endpoint_requests{"),
        "samples written"
    );
    assert!(printed.contains("flows:       7"), "{printed}");
}
