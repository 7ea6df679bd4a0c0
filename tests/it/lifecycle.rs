//! Scheduling and process lifecycle: skipped ticks, the cron loop, the `demo`
//! and `serve` binaries, graceful shutdown on SIGTERM (also with a poll stuck
//! on Graph), reloading on SIGHUP, and logs without secrets.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flows_exporter::exporter::Job;
use flows_exporter::model::Granularity;
use flows_exporter::sandbox::{Fault, FaultTarget};
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test]
async fn a_tick_during_a_running_poll_is_skipped_and_counted() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.discover().await;
    sb.sandbox.set_latency(Duration::from_millis(100));
    let (first, second) = tokio::join!(ex.run_job(Job::Poll(Granularity::Hour)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ex.run_job(Job::Poll(Granularity::Hour)).await
    });
    assert!(first, "the first tick runs");
    assert!(!second, "the second tick is skipped while the first runs");
    // A different job is not blocked by the running one.
    assert!(ex.run_job(Job::Poll(Granularity::Lifetime)).await);
    let text = scrape(&ex);
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_skipped_ticks_total{poll=\"hour\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_polls_total{poll=\"hour\",result=\"success\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn cron_jobs_poll_and_shutdown_is_graceful() {
    let sb = realistic().await;
    let text = config_text(
        &sb.base_url,
        r#"
[discovery]
schedule = "0 0 0 1 1 *"
[granularity.hour]
schedule = "* * * * * *"
[granularity.day]
enabled = false
[granularity.lifetime]
enabled = false
"#,
    );
    let ex = exporter_with(&text, TOKEN);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stop = CancellationToken::new();
    let run = tokio::spawn(flows_exporter::app::run(ex.clone(), listener, stop.clone()));
    // The start-up poll plus at least one cron tick (a 1 s schedule).
    wait_for("a cron tick to poll", Duration::from_secs(20), || {
        value(
            &scrape(&ex),
            "whatsapp_flows_exporter_polls_total{poll=\"hour\",result=\"success\"}",
        )
        .is_some_and(|n| n >= 2.0)
    })
    .await;
    stop.cancel();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("shutdown within the bound")
        .expect("task")
        .expect("run ends without error");
    assert!(started.elapsed() < Duration::from_secs(15));
    let out = scrape(&ex);
    let polls = value(
        &out,
        "whatsapp_flows_exporter_polls_total{poll=\"hour\",result=\"success\"}",
    )
    .expect("hour polls counted");
    // Start-up poll plus at least one cron tick.
    assert!(polls >= 2.0, "only {polls} hour polls");
    assert!(ex.is_ready());
}

async fn wait_ready(base: &str) {
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/-/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn demo_serves_realistic_metrics_and_stops_on_sigterm() {
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
            .args(["demo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    // Read every line (not just up to the URL): the demo must not see its
    // stdout closed under it.
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        let mut url_tx = Some(url_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.trim().strip_prefix("metrics:") {
                if let Some(tx) = url_tx.take() {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        }
    });
    let metrics_url = tokio::time::timeout(Duration::from_secs(30), url_rx)
        .await
        .expect("demo prints its URLs within 30 s")
        .expect("demo prints the metrics URL");
    let base = metrics_url.trim_end_matches("/metrics").to_owned();
    wait_ready(&base).await;
    // The sandbox plays Meta at once: its first round of signed webhooks
    // (alerts raised, a status change, an expiry warning, a duplicate).
    let text = metrics_until(&base, "the demo's first webhooks", |t| {
        !samples(t, "whatsapp_flows_alert_active{").is_empty()
            && value(t, "whatsapp_flows_exporter_webhook_duplicates_total").is_some_and(|n| n > 0.0)
    })
    .await;
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_webhook_requests_total{result=\"bad_signature\"}"
        ),
        Some(0.0)
    );
    assert!(!samples(&text, "whatsapp_flows_webhook_latency_p90_seconds{").is_empty());
    // The simulated business's first call: placed, ended, its metrics taken
    // in and relayed to the sandbox's call_metrics.
    let text = metrics_until(&base, "the demo's first relayed call", |t| {
        samples(t, "messenger_call_metrics_forwarded_total{")
            .iter()
            .any(|l| l.contains("result=\"sent\""))
    })
    .await;
    assert!(!samples(&text, "messenger_calls_started_total{").is_empty());
    assert!(!samples(&text, "messenger_calls_ended_total{").is_empty());
    assert!(
        samples(&text, "whatsapp_flows_flow_info{").len() >= 8,
        "demo flows: {text}"
    );
    assert!(
        samples(
            &text,
            "whatsapp_flows_endpoint_request_latency_seconds_bucket{"
        )
        .len()
            >= 11
    );
    assert!(
        text.contains("source=\"static\""),
        "the demo has a static flow"
    );
    let (ok, printed) = promtool_check(&text);
    assert!(ok && printed.is_empty(), "promtool: {printed}");

    signal(&child.0, "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    assert!(status.success(), "demo exited with {status}");
    reader.join().expect("stdout reader");
}

#[tokio::test]
async fn serve_reads_the_token_from_env_and_never_logs_it() {
    let sb = realistic().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[graph]\nbase_url = \"{}\"\naccess_token_env = \"FLOWS_TEST_TOKEN\"\n[[wabas]]\nid = \"{WABA_1}\"\n",
            sb.base_url
        ),
    )
    .expect("write config");
    // The wrong token: every call fails with 190, and the logs must say so
    // without ever showing the token.
    let wrong = "EAAserve-wrong-token-Zq8";
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("FLOWS_TEST_TOKEN", wrong)
            .env("FLOWS_EXPORTER_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let shared = Arc::new(Mutex::new(String::new()));
    let reader = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut all = shared.lock().expect("logs");
                all.push_str(&line);
                all.push('\n');
            }
        })
    };
    // Wait until the token error is logged, then stop.
    wait_for(
        "the token error to be logged",
        Duration::from_secs(20),
        || shared.lock().expect("logs").contains("class=token"),
    )
    .await;
    assert!(sb.sandbox.request_count() > 0, "serve called Graph");
    signal(&child.0, "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
    reader.join().expect("log reader");
    let logs = shared.lock().expect("logs").clone();
    assert!(logs.contains("token"), "the token error is logged: {logs}");
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(
        !logs.contains(wrong),
        "the token leaked into the logs:\n{logs}"
    );
}

/// `flows-exporter serve --config path [--web.config.file web]` with its
/// stderr collected; the config must listen on port 0 (and the web config
/// must not ask for TLS). Returns the process, its base URL and the log so
/// far (shared with the thread that reads it).
async fn serve(
    path: &std::path::Path,
    web: Option<&std::path::Path>,
) -> (Proc, String, Arc<Mutex<String>>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flows-exporter"));
    command.args(["serve", "--config"]).arg(path);
    if let Some(web) = web {
        command.arg("--web.config.file").arg(web);
    }
    let mut child = Proc(
        command
            .env("FLOWS_EXPORTER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve"),
    );
    let logs = collect_stderr(&mut child.0);
    let log_text = || logs.lock().expect("logs").clone();
    wait_for("serve to log its address", Duration::from_secs(20), || {
        log_text().contains("serving /metrics")
    })
    .await;
    let text = log_text();
    let address = text
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the address is logged")
        .to_owned();
    (child, format!("http://{address}"), logs)
}

/// Scrapes `/metrics` until `done` holds for the text (at most 20 s) and
/// returns that text.
async fn metrics_until(base: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = get_metrics(base).await;
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_metrics(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_new_is_bad() {
    let sb = realistic().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("write token");
    let path = dir.path().join("config.toml");
    let config = |listen: &str, extra: &str, wabas: &[&str]| {
        let mut text = format!(
            "[server]\nlisten = \"{listen}\"\n[graph]\nbase_url = \"{}\"\naccess_token_file = \"{}\"\nmax_retries = 0\n{extra}\n[discovery]\nschedule = \"0 0 0 1 1 *\"\n",
            sb.base_url,
            token.display()
        );
        for w in wabas {
            text.push_str(&format!("[[wabas]]\nid = \"{w}\"\n"));
        }
        text
    };
    std::fs::write(&path, config("127.0.0.1:0", "", &[WABA_1])).expect("write config");
    let (mut child, base, logs) = serve(&path, None).await;
    wait_ready(&base).await;
    let waba_2_flow = sb
        .sandbox
        .flows()
        .into_iter()
        .find(|f| f.waba_id == WABA_2)
        .expect("WABA 2 has flows")
        .id;
    let has_waba_2 = |text: &str| text.contains(&format!("flow_id=\"{waba_2_flow}\""));
    let before = get_metrics(&base).await;
    assert!(!has_waba_2(&before));

    // A bad config: refused, logged with its key, counted; nothing changes.
    std::fs::write(&path, config("127.0.0.1:0", "bogus = 1", &[WABA_1, WABA_2]))
        .expect("write config");
    signal(&child.0, "HUP");
    let text = metrics_until(&base, "the SIGHUP reload to fail", |text| {
        value(
            text,
            "whatsapp_flows_exporter_config_reloads_total{result=\"failure\"}",
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_config_last_reload_successful"
        ),
        Some(0.0)
    );
    assert_eq!(
        samples(&text, "whatsapp_flows_flow_info"),
        samples(&before, "whatsapp_flows_flow_info")
    );
    let log = logs.lock().expect("logs").clone();
    assert!(
        log.contains("SIGHUP") && log.contains("graph.bogus"),
        "the failure names the key:\n{log}"
    );

    // A good one, which also asks for another address: applied, except the
    // address, which needs a restart and says so.
    std::fs::write(&path, config("127.0.0.1:1", "", &[WABA_1, WABA_2])).expect("write config");
    signal(&child.0, "HUP");
    let text = metrics_until(&base, "WABA 2 to appear", has_waba_2).await;
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_config_last_reload_successful"
        ),
        Some(1.0)
    );
    let log = logs.lock().expect("logs").clone();
    assert!(log.contains("needs a restart"), "{log}");

    signal(&child.0, "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
    let log = logs.lock().expect("logs").clone();
    assert!(
        !log.contains(TOKEN),
        "the token leaked into the logs:\n{log}"
    );
}

/// SIGHUP reads the web config file again too: a header added to it is sent
/// from the next request on, and one removed is no longer sent.
#[tokio::test]
async fn sighup_reloads_the_web_config_file_too() {
    let sb = realistic().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("write token");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[graph]\nbase_url = \"{}\"\naccess_token_file = \"{}\"\nmax_retries = 0\n[discovery]\nschedule = \"0 0 0 1 1 *\"\n[[wabas]]\nid = \"{WABA_1}\"\n",
            sb.base_url,
            token.display()
        ),
    )
    .expect("write config");
    let web = dir.path().join("web.yml");
    let headers =
        |name: &str, value: &str| format!("http_server_config:\n  headers:\n    {name}: {value}\n");
    std::fs::write(&web, headers("X-Frame-Options", "deny")).expect("write web config");
    let (mut child, base, _logs) = serve(&path, Some(&web)).await;
    let client = http();
    let healthy = || async {
        client
            .get(format!("{base}/-/healthy"))
            .send()
            .await
            .expect("GET /-/healthy")
            .headers()
            .clone()
    };
    let before = healthy().await;
    assert_eq!(before["x-frame-options"], "deny");
    assert!(before.get("x-content-type-options").is_none());

    std::fs::write(&web, headers("X-Content-Type-Options", "nosniff")).expect("write web config");
    signal(&child.0, "HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let h = healthy().await;
        if h.get("x-content-type-options").is_some() {
            break h;
        }
        assert!(Instant::now() < deadline, "the new header never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after["x-content-type-options"], "nosniff");
    assert!(after.get("x-frame-options").is_none(), "{after:?}");
    assert_eq!(
        value(
            &get_metrics(&base).await,
            "whatsapp_flows_exporter_config_last_reload_successful"
        ),
        Some(1.0)
    );

    signal(&child.0, "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
}

#[tokio::test]
async fn sigterm_during_a_poll_stuck_on_graph_exits_0_within_the_bound() {
    let sb = realistic().await;
    // Every metric call hangs far longer than the shutdown grace period.
    sb.sandbox.inject(
        FaultTarget::Metrics {
            flow_id: None,
            metric: None,
            granularity: None,
        },
        Fault {
            status: 200,
            body: "{}".into(),
            delay: Duration::from_secs(300),
            times: None,
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("write token");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[graph]\nbase_url = \"{}\"\naccess_token_file = \"{}\"\ntimeout = \"600s\"\n[[wabas]]\nid = \"{WABA_1}\"\n",
            sb.base_url,
            token.display()
        ),
    )
    .expect("write config");
    let (mut child, base, _logs) = serve(&path, None).await;
    wait_for("a metric call in flight", Duration::from_secs(20), || {
        !sb.sandbox.metric_requests().is_empty()
    })
    .await;
    // Scrapes are still answered while the poll hangs.
    assert!(
        get_metrics(&base)
            .await
            .contains("whatsapp_flows_flow_info{")
    );

    let started = Instant::now();
    signal(&child.0, "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}: longer than the grace period",
        started.elapsed()
    );
}
