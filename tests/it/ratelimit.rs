//! Rate-limit discipline through the sandbox and real scrapes: usage between the
//! thresholds spaces calls, usage at the stop threshold refuses them but for one
//! probe per cool-down and recovers when usage drops, and a per-WABA budget is
//! never exceeded while other WABAs poll on. Each asserts the exact calls that
//! reached Graph and the metric state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flows_exporter::exporter::Exporter;
use flows_exporter::model::{Granularity, MetricKind};
use flows_exporter::sandbox::{Sandbox, SandboxFlow, Traffic, UsageHeader};
use tracing::instrument::WithSubscriber;

use crate::faults::Logs;
use crate::support::*;

const REFUSED_LINE: &str = "rate limit refused calls";

/// A realistic sandbox and an exporter polling only the hour granularity, with
/// these `[rate_limit]` keys.
async fn setup(rate_limit: &str) -> (RunningSandbox, Arc<Exporter>) {
    let sb = realistic().await;
    let extra = format!(
        "[granularity.day]\nenabled = false\n[granularity.lifetime]\nenabled = false\n[rate_limit]\n{rate_limit}\n"
    );
    let ex = exporter_with(&config_text(&sb.base_url, &extra), TOKEN);
    (sb, ex)
}

/// Metric calls that reached the sandbox since `from` (an index into its log),
/// by WABA: (WABA_1, WABA_2).
fn calls_since(sandbox: &Sandbox, from: usize) -> (usize, usize) {
    let waba: HashMap<String, String> = sandbox
        .flows()
        .into_iter()
        .map(|f| (f.id, f.waba_id))
        .collect();
    let log = sandbox.metric_requests();
    let count = |w: &str| {
        log[from..]
            .iter()
            .filter(|(flow, _, _)| waba.get(flow).map(String::as_str) == Some(w))
            .count()
    };
    (count(WABA_1), count(WABA_2))
}

/// One hour poll; returns the WARN lines it logged and the metric calls it made
/// by WABA.
async fn poll(sb: &RunningSandbox, ex: &Exporter) -> (Vec<String>, (usize, usize)) {
    let from = sb.sandbox.metric_requests().len();
    let logs = Logs::default();
    ex.poll(Granularity::Hour)
        .with_subscriber(logs.subscriber())
        .await;
    (logs.lines(), calls_since(&sb.sandbox, from))
}

/// `/metrics` over HTTP: the scrape answers whatever the rate limit does.
async fn scrape_http(server: &RunningServer) -> String {
    let response = http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("/metrics answers");
    assert!(response.status().is_success());
    response.text().await.expect("/metrics body")
}

fn live(text: &str, series: &str) -> f64 {
    value(text, &format!("whatsapp_flows_exporter_{series}"))
        .unwrap_or_else(|| panic!("no sample {series}"))
}

/// `rate_limit_refusing` for (WABA_1, WABA_2).
fn assert_refusing(text: &str, expected: (f64, f64)) {
    let refusing = |waba: &str| live(text, &format!("rate_limit_refusing{{waba_id=\"{waba}\"}}"));
    assert_eq!((refusing(WABA_1), refusing(WABA_2)), expected, "refusing");
}

fn refused_lines(logs: &[String]) -> Vec<&String> {
    logs.iter().filter(|l| l.contains(REFUSED_LINE)).collect()
}

/// The flows of WABA_1 the realistic sandbox has polled, in poll order.
const WABA_1_FLOWS: [&str; 3] = ["1180349906393871", "1312058623344795", "947325160880432"];

/// Usage at 80 % (between slow_down_at 0.75 and stop_at 0.95, max_delay 200 ms):
/// WABA_1's calls go out about 50 ms apart, every call is still made, and the
/// waits show as usage_slowdown.
#[tokio::test]
async fn usage_between_the_thresholds_spaces_calls() {
    let (sb, ex) = setup(
        "slow_down_at = 0.75\nstop_at = 0.95\nmax_delay = \"200ms\"\nmin_call_interval = \"0s\"",
    )
    .await;
    sb.sandbox
        .set_business_usage_header(UsageHeader::Fixed(Sandbox::business_usage(WABA_1, 80)));
    ex.discover().await;
    // The listing's pages wait too; count the poll's waits alone.
    let before = scrape(&ex);
    let (logs, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (15, 15), "every call is made, only later");
    assert!(refused_lines(&logs).is_empty(), "{logs:#?}");
    let text = scrape(&ex);
    assert_eq!(
        live(
            &text,
            &format!(
                "rate_limit_usage_ratio{{business_id=\"{WABA_1}\",kind=\"call_count\",scope=\"business_use_case\",type=\"whatsapp_business_management\"}}"
            )
        ),
        0.8
    );
    // Ten of WABA_1's calls follow another WABA_1 call at once, so at least
    // those wait; WABA_2's do not, and no wait is longer than the 50 ms gap.
    let delta = |series: &str| live(&text, series) - live(&before, series);
    let waits = delta("rate_limit_waits_total{reason=\"usage_slowdown\"}");
    let waited = delta("rate_limit_wait_seconds_total{reason=\"usage_slowdown\"}");
    assert!((10.0..=15.0).contains(&waits), "{waits} waits");
    assert!(
        waited >= 0.2 && waited <= waits * 0.05 + 1e-6,
        "{waited} s over {waits} waits"
    );
    assert_eq!(
        live(&text, "rate_limit_waits_total{reason=\"throttle\"}"),
        0.0
    );
    assert_eq!(
        live(&text, "rate_limit_waits_total{reason=\"pacing\"}"),
        0.0
    );
    for reason in ["usage_high", "budget"] {
        assert_eq!(
            live(
                &text,
                &format!("graph_calls_saved_total{{reason=\"{reason}\"}}")
            ),
            0.0
        );
    }
    assert!(
        samples(&text, "whatsapp_flows_data_stale")
            .iter()
            .all(|l| l.ends_with(" 0"))
    );
}

/// Usage at 96 % (stop_at 0.95): after the answer that says so, no call for that
/// WABA until the cool-down lets exactly one probe through; the other WABA polls
/// on; refused cells keep their values marked stale, the refusals are counted and
/// logged once per poll; when usage drops, the probe's answer lets every call go.
#[tokio::test]
async fn usage_at_the_stop_threshold_refuses_calls_but_one_probe_per_cool_down() {
    let cool_down = Duration::from_secs(1);
    let (sb, ex) = setup("cool_down = \"1s\"\nmin_call_interval = \"0s\"").await;
    ex.discover().await;
    ex.poll(Granularity::Hour).await;
    let server = start_server(ex.clone()).await;
    let healthy = scrape_http(&server).await;
    let values = |text: &str| samples(text, "whatsapp_flows_endpoint_request_count");

    sb.sandbox
        .set_business_usage_header(UsageHeader::Fixed(Sandbox::business_usage(WABA_1, 96)));
    let (logs, calls) = poll(&sb, &ex).await;
    assert_eq!(
        calls,
        (1, 15),
        "the first answer says 96 %: WABA_1 stops, WABA_2 goes on"
    );
    let text = scrape_http(&server).await;
    assert_eq!(values(&text), values(&healthy), "every value kept");
    assert_eq!(
        live(&text, "graph_calls_saved_total{reason=\"usage_high\"}"),
        14.0
    );
    assert_refusing(&text, (1.0, 0.0));
    for flow in WABA_1_FLOWS {
        for metric in MetricKind::ALL {
            let first = flow == WABA_1_FLOWS[0] && metric == MetricKind::ALL[0];
            assert_eq!(
                cell(
                    &text,
                    "whatsapp_flows_data_stale",
                    flow,
                    "hour",
                    metric.label()
                ),
                Some(if first { 0.0 } else { 1.0 }),
                "{flow} {metric:?}"
            );
        }
    }
    let mut failing = samples(&text, "whatsapp_flows_exporter_flow_failing_metrics");
    failing.sort();
    assert_eq!(
        failing,
        [
            "whatsapp_flows_exporter_flow_failing_metrics{flow_id=\"1180349906393871\",class=\"usage_high\"} 4",
            "whatsapp_flows_exporter_flow_failing_metrics{flow_id=\"1312058623344795\",class=\"usage_high\"} 5",
            "whatsapp_flows_exporter_flow_failing_metrics{flow_id=\"947325160880432\",class=\"usage_high\"} 5",
        ]
    );
    let lines = refused_lines(&logs);
    assert_eq!(lines.len(), 1, "logged once per poll: {logs:#?}");
    assert!(
        lines[0].contains(&format!("usage_high waba {WABA_1}: 14")),
        "{}",
        lines[0]
    );
    assert!(
        !logs.iter().any(|l| l.contains("metric poll failed")),
        "no line per refused call: {logs:#?}"
    );

    // Within the cool-down: not one call for WABA_1.
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (0, 15));

    // After it: exactly one probe; usage is still 96 %, so that is all.
    tokio::time::sleep(cool_down).await;
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (1, 15), "one probe");
    let text = scrape_http(&server).await;
    assert_eq!(
        live(&text, "graph_calls_saved_total{reason=\"usage_high\"}"),
        14.0 + 15.0 + 14.0
    );

    // Usage drops: the next probe's answer lets every call through.
    sb.sandbox.set_business_usage_header(UsageHeader::Computed);
    tokio::time::sleep(cool_down).await;
    let (logs, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (15, 15), "recovered");
    assert!(refused_lines(&logs).is_empty(), "{logs:#?}");
    let text = scrape_http(&server).await;
    assert!(samples(&text, "whatsapp_flows_exporter_flow_failing_metrics").is_empty());
    assert!(
        samples(&text, "whatsapp_flows_data_stale")
            .iter()
            .all(|l| l.ends_with(" 0"))
    );
    assert_eq!(
        live(
            &text,
            &format!("rate_limit_refusing{{waba_id=\"{WABA_1}\"}}")
        ),
        0.0
    );
}

/// waba_calls_per_hour = 35 with more calls needed: exactly 35 calls for WABA_1
/// reach Graph (listing included) and no more, however many polls run; WABA_2,
/// which needs fewer, is polled in full meanwhile.
#[tokio::test]
async fn a_waba_call_budget_is_never_exceeded_and_other_wabas_poll_on() {
    let budget = 35;
    let (sb, ex) = setup(&format!(
        "waba_calls_per_hour = {budget}\nmin_call_interval = \"0s\""
    ))
    .await;
    // Two more flows for WABA_1: 25 metric calls a poll against WABA_2's 15.
    for id in ["1500000000000001", "1500000000000002"] {
        sb.sandbox.add_flow(SandboxFlow {
            id: id.to_owned(),
            name: format!("Extra {id}"),
            waba_id: WABA_1.to_owned(),
            status: "PUBLISHED".to_owned(),
            data_api_version: "3.0".to_owned(),
            can_send_message: "AVAILABLE".to_owned(),
            traffic: Traffic::Normal { base_per_hour: 100 },
        });
    }
    ex.discover().await;
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (25, 15));
    let text = scrape(&ex);
    let used = |text: &str, waba: &str| {
        live(text, &format!("waba_calls_last_hour{{waba_id=\"{waba}\"}}")) as usize
    };
    // The listing's pages count against the listed WABA.
    let listing_1 = used(&text, WABA_1) - 25;
    let listing_2 = used(&text, WABA_2) - 15;
    assert!(listing_1 >= 1 && listing_2 >= 1);

    let (logs, calls) = poll(&sb, &ex).await;
    let left = budget - listing_1 - 25;
    assert_eq!(calls, (left, 15), "WABA_1 gets what is left; WABA_2 all");
    let text = scrape(&ex);
    assert_eq!(used(&text, WABA_1), budget);
    assert_eq!(used(&text, WABA_2), listing_2 + 30);
    for waba in [WABA_1, WABA_2] {
        assert_eq!(
            live(&text, &format!("waba_call_budget{{waba_id=\"{waba}\"}}")),
            budget as f64
        );
    }
    assert_refusing(&text, (1.0, 0.0));
    let refused = (25 - left) as f64;
    assert_eq!(
        live(&text, "graph_calls_saved_total{reason=\"budget\"}"),
        refused
    );
    assert_eq!(
        live(&text, "graph_calls_saved_total{reason=\"poll_halted\"}"),
        0.0
    );
    let failing: f64 = samples(&text, "whatsapp_flows_exporter_flow_failing_metrics")
        .iter()
        .map(|l| {
            assert!(l.contains("class=\"budget\""), "{l}");
            l.rsplit_once(' ')
                .expect("sample")
                .1
                .parse::<f64>()
                .expect("number")
        })
        .sum();
    assert_eq!(
        failing, refused,
        "the refused cells show the budget as cause"
    );
    let lines = refused_lines(&logs);
    assert_eq!(lines.len(), 1, "{logs:#?}");
    assert!(lines[0].contains(&format!("budget waba {WABA_1}: {}", 25 - left)));

    // Another poll in the same hour: nothing for WABA_1; WABA_2 now reaches its
    // own budget and stops there too.
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (0, budget - listing_2 - 30));
    let text = scrape(&ex);
    assert_eq!(used(&text, WABA_1), budget);
    assert_eq!(used(&text, WABA_2), budget);
}

/// A reload that rebuilds the Graph client (here: a new timeout) keeps the calls
/// of the last hour: the budget is not handed out afresh.
#[tokio::test]
async fn a_reload_does_not_reset_the_budget() {
    let budget = 20;
    let sb = realistic().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let path = dir.path().join("config.toml");
    let text = |timeout: u32| {
        format!(
            "[graph]\nbase_url = \"{}\"\naccess_token_file = \"{}\"\nmax_concurrency = 1\n\
             timeout = \"{timeout}s\"\n[[wabas]]\nid = \"{WABA_1}\"\n[[wabas]]\nid = \"{WABA_2}\"\n\
             [granularity.day]\nenabled = false\n[granularity.lifetime]\nenabled = false\n\
             [rate_limit]\nwaba_calls_per_hour = {budget}\nmin_call_interval = \"0s\"\n",
            sb.base_url,
            token_file.display()
        )
    };
    std::fs::write(&path, text(5)).expect("config file");
    let config = flows_exporter::config::Config::load(&path).expect("valid config");
    let ex = Exporter::new(
        config,
        flows_exporter::config::Secret::new(TOKEN),
        flows_exporter::model::Clock::fixed(now()),
    )
    .expect("exporter");
    ex.discover().await;
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (15, 15));
    let used = |waba: &str| {
        live(
            &scrape(&ex),
            &format!("waba_calls_last_hour{{waba_id=\"{waba}\"}}"),
        ) as usize
    };
    let used_1 = used(WABA_1);
    assert!(used_1 > 15 && used_1 < budget, "listing pages count too");

    std::fs::write(&path, text(6)).expect("config file");
    ex.reload().expect("the new config is valid");
    assert_eq!(used(WABA_1), used_1, "the count survives the reload");
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls.0, budget - used_1, "only what was left of the budget");
    assert_eq!(used(WABA_1), budget);
}

/// Eight calls in flight and no spacing between calls, and Graph throttles
/// every one with 0.3 s to regain access: the first throttled answer pauses the
/// whole client, so the calls already sent are all Graph sees until the pause
/// ends, and the poll stops instead of each call retrying on its own (which
/// would be 30 calls x 3 attempts). Once the fault clears and the pause is over,
/// the next poll is whole again.
#[tokio::test]
async fn throttling_with_many_calls_in_flight_pauses_them_all() {
    let sb = realistic().await;
    let concurrency = 8;
    let text = format!(
        "[graph]\nbase_url = \"{}\"\nmax_concurrency = {concurrency}\nmax_retries = 2\n\
         retry_backoff = \"10ms\"\ntimeout = \"5s\"\n\
         [[wabas]]\nid = \"{WABA_1}\"\n[[wabas]]\nid = \"{WABA_2}\"\n\
         [granularity.day]\nenabled = false\n[granularity.lifetime]\nenabled = false\n\
         [rate_limit]\nmin_call_interval = \"0s\"\n",
        sb.base_url
    );
    let ex = exporter_with(&text, TOKEN);
    ex.discover().await;
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (15, 15), "a clean first poll");

    // Slow answers, so that all eight calls are in flight together.
    sb.sandbox.set_latency(Duration::from_millis(30));
    sb.sandbox
        .set_business_usage_header(UsageHeader::Fixed(Sandbox::throttled_usage(WABA_1, 0.005)));
    sb.sandbox.inject(
        flows_exporter::sandbox::FaultTarget::Metrics {
            flow_id: None,
            metric: None,
            granularity: None,
        },
        flows_exporter::sandbox::Fault {
            status: 429,
            body: Sandbox::graph_error_body(4, None, "Application request limit reached"),
            delay: Duration::ZERO,
            times: None,
        },
    );
    let (_, (c1, c2)) = poll(&sb, &ex).await;
    let made = c1 + c2;
    // The calls in flight, plus at most one throttled call retrying after
    // each pause (max_retries = 2).
    assert!(
        (1..=concurrency + 2).contains(&made),
        "{made} calls reached Graph while it throttled"
    );
    let text = scrape(&ex);
    assert!(live(&text, "graph_calls_saved_total{reason=\"poll_halted\"}") > 0.0);
    assert!(
        samples(&text, "whatsapp_flows_data_stale")
            .iter()
            .any(|l| l.ends_with(" 1")),
        "throttled cells are stale"
    );

    sb.sandbox.clear_faults();
    sb.sandbox.set_business_usage_header(UsageHeader::Computed);
    sb.sandbox.set_latency(Duration::ZERO);
    // The pause (0.3 s) is waited out inside the poll, not skipped. WABA_2 is
    // whole at once; WABA_1 was reported at 100 %, so its first call is the
    // probe whose answer shows the usage down (calls decided before that
    // answer are refused as usage_high), and the next poll is whole.
    let (_, (c1, c2)) = poll(&sb, &ex).await;
    assert!(c1 >= 1, "the probe");
    assert_eq!(c2, 15);
    let (_, calls) = poll(&sb, &ex).await;
    assert_eq!(calls, (15, 15), "whole again after the pause");
    assert!(
        samples(&scrape(&ex), "whatsapp_flows_data_stale")
            .iter()
            .all(|l| l.ends_with(" 0"))
    );
    eprintln!("calls while throttled: {made}");
}
