//! Backfill end to end, with real parts: the sandbox serves history, the
//! backfill writes it, and a real Prometheus (from promtool-made blocks, or
//! through its remote-write receiver) or VictoriaMetrics answers queries with
//! exactly the sandbox's values at the period starts.
//!
//! The sandbox clock is pinned a few days before the real now (truncated to the
//! hour), so the samples are recent enough for the receivers' retention and
//! out-of-order windows, and the expected values come from `data_points`.

use std::collections::BTreeMap;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Days, DurationRound, NaiveDate, TimeDelta, Utc};
use flows_exporter::backfill::progress::Progress;
use flows_exporter::backfill::sink::{RemoteWriteConfig, RemoteWriteError};
use flows_exporter::backfill::{self, Options, Output, Summary};
use flows_exporter::config::{Config, Secret};
use flows_exporter::error::ErrorClass;
use flows_exporter::model::{Clock, Granularity, MetricKind};
use flows_exporter::sandbox::{Fault, FaultTarget, Sandbox, Traffic};
use flows_exporter::snapshot::FailureClass;
use serde_json::Value;

use crate::support::*;

/// Series key (`name{label="value",...}`, labels sorted) -> samples (unix s, value).
type Samples = BTreeMap<String, Vec<(i64, f64)>>;

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// A few days before now, on the hour: the sandbox's and the backfill's clock.
fn pinned_now() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::days(3))
        .duration_trunc(TimeDelta::hours(1))
        .expect("truncate")
}

struct Setup {
    sb: RunningSandbox,
    now: DateTime<Utc>,
    config: Config,
}

async fn setup() -> Setup {
    let now = pinned_now();
    let sb = start_sandbox(Sandbox::realistic(TOKEN, Clock::fixed(now))).await;
    let text = format!(
        r#"
[graph]
base_url = "{}"
max_concurrency = 4
max_retries = 2
retry_backoff = "10ms"
timeout = "10s"

[[wabas]]
id = "{WABA_1}"

[[wabas]]
id = "{WABA_2}"
"#,
        sb.base_url
    );
    let config = Config::parse(&text).expect("valid config");
    Setup { sb, now, config }
}

/// The window every test asks for: older than Graph serves, and up to today,
/// so both ends are clamped.
fn window(now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    (now.date_naive() - Days::new(100), now.date_naive())
}

async fn run(s: &Setup, output: Output) -> anyhow::Result<Summary> {
    let (since, until) = window(s.now);
    backfill::run(
        &s.config,
        Secret::new(TOKEN),
        Clock::fixed(s.now),
        Options {
            since,
            until,
            granularities: None,
            chunk_periods: backfill::DEFAULT_CHUNK_PERIODS,
            output,
        },
        Progress::hidden(),
    )
    .await
}

/// What the backfill must produce, computed straight from the sandbox's data
/// with the mapping the README documents (not with the exporter's code).
fn expected(s: &Setup) -> Samples {
    let sandbox = &s.sb.sandbox;
    let (since, until) = window(s.now);
    let mut out = Samples::new();
    let mut push = |name: &str, labels: &[(&str, &str)], t: i64, v: f64| {
        out.entry(key(name, labels)).or_default().push((t, v));
    };
    let flows = sandbox.flows();
    let with_data = flows
        .iter()
        .filter(|f| !matches!(f.status.as_str(), "DRAFT" | "DEPRECATED"))
        .filter(|f| f.traffic != Traffic::BelowThreshold);
    for flow in with_data {
        for (g, days, trust_hours) in [(Granularity::Hour, 30, 3), (Granularity::Day, 90, 6)] {
            let period = g.period().expect("has a period");
            let oldest = s.now.date_naive() - Days::new(days);
            for metric in MetricKind::ALL {
                let points = sandbox.data_points(&flow.id, metric, g, Some(since), Some(until));
                for (start, values) in points {
                    let settled = start + period + TimeDelta::hours(trust_hours) <= s.now;
                    let date = start.date_naive();
                    if !settled || date < oldest.max(since) || date > until {
                        continue;
                    }
                    let t = start.timestamp();
                    let get = |k: &str| {
                        values
                            .iter()
                            .filter(|(key, _)| key == k)
                            .map(|(_, v)| *v)
                            .sum::<f64>()
                    };
                    let base = [("flow_id", flow.id.as_str()), ("granularity", g.label())];
                    let with = |k: &'static str, v: &'static str| [base[0], base[1], (k, v)];
                    match metric {
                        MetricKind::RequestCount => {
                            push("whatsapp_flows_endpoint_requests", &base, t, get("value"));
                        }
                        MetricKind::RequestErrorRate => push(
                            "whatsapp_flows_endpoint_request_error_ratio",
                            &base,
                            t,
                            get("value"),
                        ),
                        MetricKind::RequestError => {
                            for ty in [
                                "cannot_be_served",
                                "no_http_response_error",
                                "timeout_error",
                                "unexpected_http_status_code",
                            ] {
                                push(
                                    "whatsapp_flows_endpoint_request_errors",
                                    &with("error_type", ty),
                                    t,
                                    get(ty),
                                );
                            }
                        }
                        MetricKind::Availability => {
                            for result in ["failed", "succeeded"] {
                                push(
                                    "whatsapp_flows_endpoint_availability_checks",
                                    &with("result", result),
                                    t,
                                    get(result),
                                );
                            }
                        }
                        MetricKind::LatencySecondsCeil => {
                            let name = "whatsapp_flows_endpoint_request_latency_seconds";
                            let mut cumulative = 0.0;
                            for le in 1..=10 {
                                cumulative += get(&le.to_string());
                                let le = le.to_string();
                                push(
                                    &format!("{name}_bucket"),
                                    &[base[0], base[1], ("le", le.as_str())],
                                    t,
                                    cumulative,
                                );
                            }
                            let count = cumulative + get("10+");
                            push(&format!("{name}_bucket"), &with("le", "+Inf"), t, count);
                            push(&format!("{name}_count"), &base, t, count);
                        }
                    }
                    push(
                        "whatsapp_flows_data_period_start_timestamp_seconds",
                        &[base[0], base[1], ("metric", metric.label())],
                        t,
                        t as f64,
                    );
                }
            }
        }
    }
    out
}

/// The sample counts per granularity of `expected`, to check the summary.
fn expected_total(samples: &Samples) -> u64 {
    samples.values().map(|v| v.len() as u64).sum()
}

/// The 139006 flow is skipped in every window and reported, never filled in.
fn check_summary(summary: &Summary, expected: &Samples, sandbox: &Sandbox) {
    assert_eq!(summary.samples, expected_total(expected), "{summary}");
    let polled = sandbox
        .flows()
        .iter()
        .filter(|f| !matches!(f.status.as_str(), "DRAFT" | "DEPRECATED"))
        .count();
    assert_eq!(summary.flows, polled);
    // HOUR: 31 dates in weeks = 5 chunks; DAY: one chunk; 5 metrics each.
    assert_eq!(
        summary
            .skipped
            .get(&FailureClass::Graph(ErrorClass::InsufficientData)),
        Some(&(5 * (5 + 1))),
        "{summary}"
    );
    assert_eq!(summary.skipped.len(), 1, "{summary}");
    let calls = (5 + 1) * 5 * polled as u64 + 2 + 3; // + listing pages
    assert!(summary.graph_calls_total() >= calls, "{summary}");
    let hour = &summary.granularities[&Granularity::Hour];
    assert!(
        hour.period_starts.len() >= 29 * 24,
        "30 days of hours: {summary}"
    );
    let day = &summary.granularities[&Granularity::Day];
    assert!(day.period_starts.len() >= 89, "90 days: {summary}");
    let text = summary.to_string();
    assert!(text.contains("insufficient data (139006"), "{text}");
}

// ---- real servers ----

async fn prometheus(dir: &Path, config: &str, extra: &[&str]) -> Server {
    let port = free_port();
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let mut args = vec![
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        "--storage.tsdb.retention.time=2y".to_owned(),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log.level=warn".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let mut server = Server::start("prometheus", &args, port, dir);
    server.wait_ready("/-/ready").await;
    server
}

/// Every raw sample of every flow-data family Prometheus holds, read with a
/// range selector that reaches past the window.
async fn query_prometheus(base: &str, at: DateTime<Utc>) -> Samples {
    let client = http();
    let mut out = Samples::new();
    let query =
        r#"{__name__=~"whatsapp_flows_(endpoint_.*|data_period_start_timestamp_seconds)"}[200d]"#;
    let text = client
        .get(url(
            &format!("{base}/api/v1/query"),
            &[("query", query), ("time", &at.timestamp().to_string())],
        ))
        .send()
        .await
        .expect("query")
        .text()
        .await
        .expect("body");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["status"], "success", "{body}");
    for series in body["data"]["result"].as_array().expect("matrix") {
        let labels = series["metric"].as_object().expect("labels");
        let name = labels["__name__"].as_str().expect("name");
        let rest: Vec<(&str, &str)> = labels
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| (k.as_str(), v.as_str().expect("label value")))
            .collect();
        let samples = series["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|p| {
                let t = p[0].as_f64().expect("time");
                let v: f64 = p[1].as_str().expect("value").parse().expect("number");
                (t as i64, v)
            })
            .collect();
        out.insert(key(name, &rest), samples);
    }
    out
}

fn url(base: &str, query: &[(&str, &str)]) -> reqwest::Url {
    let mut url = reqwest::Url::parse(base).expect("url");
    url.query_pairs_mut().extend_pairs(query);
    url
}

/// Queries until Prometheus answers exactly `want` or 15 s pass, and returns
/// the last answer. Samples appended through remote write into the
/// out-of-order head are not always all visible to the very next query under
/// load (seen once in nine runs on 2 cores), so the test waits for them
/// instead of racing Prometheus; a wrong value still fails after the wait.
async fn query_prometheus_until(base: &str, at: DateTime<Utc>, want: &Samples) -> Samples {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let got = query_prometheus(base, at).await;
        if &got == want || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Compares series by series, so a failure names the first series and
/// sample that differ.
fn assert_same(got: &Samples, want: &Samples) {
    assert_same_within(got, want, 0.0);
}

/// As `assert_same`, with values allowed to differ by `relative`.
fn assert_same_within(got: &Samples, want: &Samples, relative: f64) {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "series differ: {} got, {} expected; missing {missing:?}, unexpected {extra:?}",
        got.len(),
        want.len()
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.len(), w.len(), "number of samples of {k}");
        for ((gt, gv), (wt, wv)) in g.iter().zip(w) {
            let close = gv == wv || (gv - wv).abs() <= relative * wv.abs().max(gv.abs());
            assert!(
                gt == wt && close,
                "{k}: got {gv} at {gt}, expected {wv} at {wt}"
            );
        }
    }
}

#[tokio::test]
async fn file_imported_with_promtool_answers_promql_with_the_sandbox_values() {
    let _turn = real_servers().await;
    let s = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("flows.om");
    let summary = run(&s, Output::File(file.clone())).await.expect("backfill");
    let want = expected(&s);
    check_summary(&summary, &want, &s.sb.sandbox);

    let text = std::fs::read_to_string(&file).expect("output");
    assert!(text.ends_with("# EOF\n"));
    assert!(!dir.path().join("flows.om.partial").exists());

    // Idempotent: the same window again gives the same bytes.
    let again = dir.path().join("again.om");
    run(&s, Output::File(again.clone()))
        .await
        .expect("backfill");
    assert!(
        std::fs::read(&again).expect("again") == text.as_bytes(),
        "a re-run must write the same samples"
    );

    let blocks = dir.path().join("data");
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg("--max-block-duration=486h")
        .arg(&file)
        .arg(&blocks)
        .output()
        .expect("promtool must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "promtool refused the file: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom = prometheus(dir.path(), "global: {}\n", &[]).await;
    let got = query_prometheus(&prom.base, s.now).await;
    assert_same(&got, &want);
}

const OOO_100D: &str = "storage:\n  tsdb:\n    out_of_order_time_window: 100d\n";

fn remote(url: String) -> Output {
    Output::RemoteWrite(RemoteWriteConfig {
        url,
        auth: None,
        headers: vec![("X-Test".to_owned(), "backfill".to_owned())],
        batch_samples: 5000,
        max_retries: 1,
        retry_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
    })
}

#[tokio::test]
async fn remote_write_into_prometheus_with_an_out_of_order_window() {
    let _turn = real_servers().await;
    let s = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = prometheus(
        dir.path(),
        OOO_100D,
        &["--web.enable-remote-write-receiver"],
    )
    .await;
    let url = format!("{}/api/v1/write", prom.base);
    let summary = run(&s, remote(url.clone())).await.expect("backfill");
    let want = expected(&s);
    check_summary(&summary, &want, &s.sb.sandbox);
    let remote_stats = summary.remote.expect("remote stats");
    assert_eq!(remote_stats.samples, summary.samples);
    assert!(remote_stats.requests >= summary.samples / 5000);
    assert_same(
        &query_prometheus_until(&prom.base, s.now, &want).await,
        &want,
    );

    // Idempotent: the same samples again are accepted and change nothing.
    run(&s, remote(url)).await.expect("re-run");
    assert_same(
        &query_prometheus_until(&prom.base, s.now, &want).await,
        &want,
    );
}

#[tokio::test]
async fn a_receiver_rejecting_old_samples_stops_the_run_with_its_reason() {
    let _turn = real_servers().await;
    let s = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // No out-of-order window: once the newest hours are in, older days are
    // "out of bounds" for Prometheus.
    let prom = prometheus(
        dir.path(),
        "global: {}\n",
        &["--web.enable-remote-write-receiver"],
    )
    .await;
    let err = run(&s, remote(format!("{}/api/v1/write", prom.base)))
        .await
        .expect_err("Prometheus refuses samples older than its head");
    let rejected = err
        .downcast_ref::<RemoteWriteError>()
        .unwrap_or_else(|| panic!("a remote-write error, got: {err:#}"));
    let text = rejected.to_string();
    assert!(text.contains("HTTP 400"), "{text}");
    assert!(
        text.contains("out of bounds"),
        "the receiver's reason: {text}"
    );
    assert!(text.contains("out-of-order window"), "a hint: {text}");
}

#[tokio::test]
async fn remote_write_into_victoria_metrics() {
    let _turn = real_servers().await;
    let s = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut vm = Server::start(
        "victoria-metrics",
        &[
            format!("-httpListenAddr=127.0.0.1:{port}"),
            format!("-storageDataPath={}", dir.path().join("vm").display()),
            "-retentionPeriod=2y".to_owned(),
            "-loggerLevel=ERROR".to_owned(),
        ],
        port,
        dir.path(),
    );
    vm.wait_ready("/health").await;
    let summary = run(&s, remote(format!("{}/api/v1/write", vm.base)))
        .await
        .expect("backfill");
    let want = expected(&s);
    check_summary(&summary, &want, &s.sb.sandbox);

    let client = http();
    let flushed = client
        .get(format!("{}/internal/force_flush", vm.base))
        .send()
        .await
        .expect("flush");
    assert!(flushed.status().is_success());
    let text = client
        .get(url(
            &format!("{}/api/v1/export", vm.base),
            &[
                (
                    "match[]",
                    r#"{__name__=~"whatsapp_flows_(endpoint_.*|data_period_start_timestamp_seconds)"}"#,
                ),
                ("start", &(s.now - TimeDelta::days(200)).timestamp().to_string()),
                ("end", &s.now.timestamp().to_string()),
            ],
        ))
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let mut got = Samples::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let series: Value = serde_json::from_str(line).expect("json line");
        let labels = series["metric"].as_object().expect("labels");
        let name = labels["__name__"].as_str().expect("name");
        let rest: Vec<(&str, &str)> = labels
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| (k.as_str(), v.as_str().expect("label value")))
            .collect();
        let values = series["values"].as_array().expect("values");
        let stamps = series["timestamps"].as_array().expect("timestamps");
        let mut samples: Vec<(i64, f64)> = stamps
            .iter()
            .zip(values)
            .map(|(t, v)| (t.as_i64().expect("ms") / 1000, v.as_f64().expect("value")))
            .collect();
        samples.sort_by_key(|(t, _)| *t);
        got.insert(key(name, &rest), samples);
    }
    // VictoriaMetrics keeps about 12 significant digits of a float: a ratio
    // (0.06493506493506) may come back as 0.06493506494. Counts and
    // timestamps are exact.
    assert_same_within(&got, &want, 1e-11);
}

#[tokio::test]
async fn throttling_waits_and_retries_instead_of_skipping() {
    // Graph throttles the app (4) or the flow's WABA (80008); either way the
    // backfill waits as Graph says and asks again, and loses nothing.
    for (code, outcome) in [(4, "throttled"), (80008, "waba_throttled")] {
        let s = setup().await;
        // One call is throttled 4 times in a row: more than the client's own
        // attempts (1 + 2 retries), so the backfill must wait and ask again.
        s.sb.sandbox.inject(
            FaultTarget::Metrics {
                flow_id: Some("1180349906393871".to_owned()),
                metric: Some(MetricKind::RequestCount),
                granularity: Some(Granularity::Day),
            },
            Fault {
                status: 400,
                body: Sandbox::graph_error_body(code, None, "Too many calls"),
                delay: Duration::ZERO,
                times: Some(4),
            },
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = run(&s, Output::File(dir.path().join("t.om")))
            .await
            .expect("backfill");
        assert!(summary.throttle_waits >= 1, "{code}: {summary}");
        assert_eq!(
            summary.graph_calls.get(outcome),
            Some(&4),
            "{code}: {summary}"
        );
        assert_eq!(summary.lost(), 0, "{code}: {summary}");
        check_summary(&summary, &expected(&s), &s.sb.sandbox);
    }
}

/// The binary's exit status tells the truth: 0 when every window was written
/// or Graph had too few requests for it (139006), 3 when windows were lost to
/// errors (the file holds the rest; the summary names them), 0 for that with
/// --allow-partial, and 1 with no file when Graph as a whole fails half way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_status_says_whether_anything_was_lost() {
    let sb = start_sandbox(Sandbox::realistic(TOKEN, Clock::system())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token file");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[graph]\nbase_url = \"{}\"\naccess_token_file = \"{}\"\nmax_retries = 1\n\
             retry_backoff = \"10ms\"\ntimeout = \"2s\"\n\
             [[wabas]]\nid = \"{WABA_1}\"\n[[wabas]]\nid = \"{WABA_2}\"\n",
            sb.base_url,
            token.display()
        ),
    )
    .expect("config file");
    let today = Utc::now().date_naive();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.om"));
        let mut args: Vec<String> = [
            "backfill",
            "--config",
            &config.display().to_string(),
            "--granularity",
            "day",
            "--since",
            &(today - Days::new(5)).to_string(),
            "--until",
            &(today - Days::new(2)).to_string(),
            "--output",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        async move {
            let output = tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
                    .args(&args)
                    .stdin(Stdio::null())
                    .output()
                    .expect("the binary runs")
            })
            .await
            .expect("join");
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status.code(), printed, out.exists())
        }
    };

    let (code, printed, written) = run("clean", &[]).await;
    assert_eq!(code, Some(0), "{printed}");
    assert!(written);
    assert!(printed.contains("insufficient data (139006"), "{printed}");

    // Every call for one flow is refused for a missing permission.
    sb.sandbox.inject(
        FaultTarget::Metrics {
            flow_id: Some("1180349906393871".to_owned()),
            metric: None,
            granularity: None,
        },
        Fault {
            status: 403,
            body: Sandbox::graph_error_body(10, None, "(#10) Permission denied"),
            delay: Duration::ZERO,
            times: None,
        },
    );
    let (code, printed, written) = run("partial", &[]).await;
    assert_eq!(code, Some(i32::from(backfill::EXIT_PARTIAL)), "{printed}");
    assert!(written, "what was fetched is written");
    assert!(printed.contains("permission"), "{printed}");
    assert!(printed.contains("flow 1180349906393871"), "{printed}");
    assert!(printed.contains("backfill incomplete"), "{printed}");
    let (code, printed, _) = run("accepted", &["--allow-partial"]).await;
    assert_eq!(code, Some(0), "{printed}");
    sb.sandbox.clear_faults();

    // Graph breaks every connection from the second metric on: the policy
    // the live polls use says Graph fails, and the run stops without a file.
    sb.sandbox.inject_transport(
        FaultTarget::Metrics {
            flow_id: None,
            metric: Some(MetricKind::RequestError),
            granularity: None,
        },
        flows_exporter::sandbox::Transport::Reset,
        None,
    );
    let (code, printed, written) = run("stopped", &["--allow-partial"]).await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(!written, "no file that looks complete");
    assert!(printed.contains("backfill stopped"), "{printed}");
}

/// The backfill shards like the exporter: the shards write, together and
/// without overlap, what one whole run writes.
#[tokio::test]
async fn a_sharded_backfill_splits_the_work_without_overlap() {
    let s = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let whole = run(&s, Output::File(dir.path().join("whole.om")))
        .await
        .expect("backfill");
    let read = |name: &str| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(dir.path().join(name))
            .expect("file")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    // The fewest shards that put the two WABAs apart.
    let total = (2..10)
        .find(|t| {
            flows_exporter::shard::shard_of(WABA_1, *t)
                != flows_exporter::shard::shard_of(WABA_2, *t)
        })
        .expect("some total splits two WABAs");
    let mut flows = 0;
    let mut busy = 0;
    let mut union = std::collections::BTreeSet::new();
    for index in 0..total {
        let mut config = s.config.clone();
        config.shard = flows_exporter::shard::Shard::new(index, total).expect("shard");
        let (since, until) = window(s.now);
        let name = format!("shard{index}.om");
        let summary = backfill::run(
            &config,
            Secret::new(TOKEN),
            Clock::fixed(s.now),
            Options {
                since,
                until,
                granularities: None,
                chunk_periods: backfill::DEFAULT_CHUNK_PERIODS,
                output: Output::File(dir.path().join(&name)),
            },
            Progress::hidden(),
        )
        .await
        .expect("backfill");
        busy += usize::from(summary.flows > 0);
        flows += summary.flows;
        for line in read(&name) {
            assert!(union.insert(line.clone()), "written by both shards: {line}");
        }
    }
    assert_eq!(busy, 2, "each WABA's shard did work");
    assert_eq!(flows, whole.flows);
    assert_eq!(union, read("whole.om"));
}
