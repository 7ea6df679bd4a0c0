//! Graph misbehaving the way production Graphs do, tried as an adversary
//! would: one flow that hangs, answers that never end, answers that cannot be
//! true, answers that would make the exporter publish without bound, and text
//! that echoes the token. Each test asserts the exact `/metrics` state and the
//! Graph calls made, and that the healthy flows keep exact, fresh values.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flows_exporter::exporter::{Job, Readiness};
use flows_exporter::model::{Granularity, MetricKind};
use flows_exporter::sandbox::{
    Fault, FaultTarget, Sandbox, SandboxFlow, Traffic, Transport, UsageHeader,
};

use crate::faults::{Rig, data_lines, per_cell};
use crate::support::*;

/// PUBLISHED, normal traffic, WABA_1: the flow most faults are aimed at.
const FLOW: &str = "1180349906393871";
/// Another PUBLISHED flow of WABA_1 (values as JSON strings).
const OTHER: &str = "1312058623344795";
/// The six flows the realistic sandbox has polled, in id order.
const POLLED: [&str; 6] = [
    "1180349906393871",
    "1312058623344795",
    "1467393620448117",
    "1726044182937705",
    "839201746158334",
    "947325160880432",
];

fn flow_metrics(flow: &str) -> FaultTarget {
    FaultTarget::Metrics {
        flow_id: Some(flow.to_owned()),
        metric: None,
        granularity: None,
    }
}

fn cell_of(flow: &str, metric: MetricKind) -> FaultTarget {
    FaultTarget::Metrics {
        flow_id: Some(flow.to_owned()),
        metric: Some(metric),
        granularity: None,
    }
}

fn answer(status: u16, body: String) -> Fault {
    Fault {
        status,
        body,
        delay: Duration::ZERO,
        times: None,
    }
}

/// `flow_failing_metrics` as (flow, class) -> count.
fn failing(text: &str) -> BTreeMap<(String, String), f64> {
    samples(text, "whatsapp_flows_exporter_flow_failing_metrics{")
        .iter()
        .map(|line| {
            let label = |k: &str| {
                line.split(&format!("{k}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .expect("label")
                    .to_owned()
            };
            let v = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("value");
            ((label("flow_id"), label("class")), v)
        })
        .collect()
}

fn expect_failing(pairs: &[(&str, &str, f64)]) -> BTreeMap<(String, String), f64> {
    pairs
        .iter()
        .map(|(f, c, n)| (((*f).to_owned(), (*c).to_owned()), *n))
        .collect()
}

/// Graph calls of each flow since `from` (an index into the sandbox's log).
fn calls_per_flow(rig: &Rig, from: usize) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for (flow, _, _) in &rig.sandbox.metric_requests()[from..] {
        *calls.entry(flow.clone()).or_default() += 1;
    }
    calls
}

/// Every data line of these flows, from a scrape.
fn lines_of(text: &str, flows: &[&str]) -> Vec<String> {
    data_lines(text)
        .into_iter()
        .filter(|l| {
            flows
                .iter()
                .any(|f| l.contains(&format!("flow_id=\"{f}\"")))
        })
        .collect()
}

/// Every cell of these flows was answered in the poll that ended at `t`.
fn assert_fresh(text: &str, flows: &[&str], t: f64) {
    let success = per_cell(
        text,
        "whatsapp_flows_exporter_last_success_timestamp_seconds",
    );
    let stale = per_cell(text, "whatsapp_flows_data_stale");
    for flow in flows {
        for m in MetricKind::ALL {
            let key = ((*flow).to_owned(), m.label().to_owned());
            assert_eq!(success.get(&key), Some(&t), "{key:?} answered now");
            assert_eq!(stale.get(&key), Some(&0.0), "{key:?} not stale");
        }
    }
}

fn healthy_except(bad: &[&str]) -> Vec<&'static str> {
    POLLED.into_iter().filter(|f| !bad.contains(f)).collect()
}

/// One flow whose calls never answer costs one deadline (1 s here) and its own
/// cells: it is called once, its other metrics are not attempted, and every
/// other flow is polled in full with exact, fresh values. Start-up with it is
/// ready in about a deadline, not after minutes.
#[tokio::test]
async fn a_hanging_flow_costs_one_deadline_and_nothing_else() {
    let rig = Rig::start().await;
    let (before, _) = rig.scrape().await;
    let healthy = healthy_except(&[FLOW]);
    rig.sandbox
        .set_flow_latency(FLOW, Duration::from_secs(3600));
    let t1 = rig.tick();
    let from = rig.sandbox.metric_requests().len();
    let started = Instant::now();
    let (logs, slowest) = rig.poll_while_scraping().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the poll took {took:?}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let calls = calls_per_flow(&rig, from);
    assert_eq!(calls.get(FLOW), Some(&1), "called once: {calls:?}");
    for flow in &healthy {
        assert_eq!(calls.get(*flow), Some(&5), "{flow}: {calls:?}");
    }
    let (text, _) = rig.scrape().await;
    assert_eq!(
        failing(&text),
        expect_failing(&[(FLOW, "network", 1.0), (FLOW, "not_attempted", 4.0)])
    );
    assert_eq!(lines_of(&text, &healthy), lines_of(&before, &healthy));
    assert_eq!(
        lines_of(&text, &[FLOW]),
        lines_of(&before, &[FLOW]),
        "kept, stale"
    );
    assert_fresh(&text, &healthy, t1);
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"flow_timed_out\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"poll_halted\"}"
        ),
        Some(0.0)
    );
    let said: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains(&format!("flow {FLOW}")) && l.contains("ran out of time"))
        .collect();
    assert_eq!(said.len(), 1, "the reason is in the log: {logs:#?}");

    // A new exporter starting while the flow hangs is ready in about a deadline.
    let fresh = Rig::start_with("", false).await;
    fresh
        .sandbox
        .set_flow_latency(FLOW, Duration::from_secs(3600));
    let started = Instant::now();
    fresh.exporter.startup().await;
    assert_eq!(fresh.exporter.readiness(), Readiness::Ready);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// Two flows whose answers trickle forever (a byte every 50 ms): each costs
/// one call and one deadline, and two flows are not Graph as a whole, so the
/// poll goes on and every other flow is fresh.
#[tokio::test]
async fn two_trickling_flows_do_not_stop_the_poll() {
    let rig = Rig::start().await;
    let (before, _) = rig.scrape().await;
    let bad = [FLOW, "1467393620448117"];
    let healthy = healthy_except(&bad);
    for flow in bad {
        rig.sandbox.inject_transport(
            flow_metrics(flow),
            Transport::Trickle {
                every: Duration::from_millis(50),
            },
            None,
        );
    }
    let t1 = rig.tick();
    let from = rig.sandbox.metric_requests().len();
    let started = Instant::now();
    rig.poll_while_scraping().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let calls = calls_per_flow(&rig, from);
    for flow in bad {
        assert_eq!(calls.get(flow), Some(&1), "{flow}: {calls:?}");
    }
    let (text, _) = rig.scrape().await;
    assert_eq!(
        failing(&text),
        expect_failing(&[
            (bad[0], "network", 1.0),
            (bad[0], "not_attempted", 4.0),
            (bad[1], "network", 1.0),
            (bad[1], "not_attempted", 4.0),
        ])
    );
    assert_eq!(lines_of(&text, &healthy), lines_of(&before, &healthy));
    assert_fresh(&text, &healthy, t1);
}

/// An HOUR answer for `flow` of `metric` with these data points (JSON).
fn hour_answer(id: &str, metric: MetricKind, granularity: &str, points: &str) -> String {
    format!(
        r#"{{"id":"{id}","metric":{{"name":"{}","granularity":"{granularity}","data_points":[{points}]}}}}"#,
        metric.api_name()
    )
}

/// A settled hour (ended 09:00, trusted 3 h later at the pinned noon).
const SETTLED: &str = "2024-01-30T08:00:00+0000";

fn point(key: &str, value: &str) -> String {
    format!(r#"{{"timestamp":"{SETTLED}","data":[{{"key":"{key}","value":{value}}}]}}"#)
}

/// Answers that cannot be true answers to the question asked are malformed:
/// the cell keeps its last good value, marked stale; nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_cannot_be_true_are_refused() {
    let count = MetricKind::RequestCount;
    let two = format!("{},{}", point("value", "10"), point("value", "20"));
    let cases: Vec<(&str, MetricKind, String)> = vec![
        (
            "a period twice",
            count,
            hour_answer(FLOW, count, "HOUR", &two),
        ),
        (
            "an error ratio of 7.5",
            MetricKind::RequestErrorRate,
            hour_answer(
                FLOW,
                MetricKind::RequestErrorRate,
                "HOUR",
                &point("value", "7.5"),
            ),
        ),
        (
            "a request count of 2.5",
            count,
            hour_answer(FLOW, count, "HOUR", &point("value", "2.5")),
        ),
        (
            "an error count of 0.5",
            MetricKind::RequestError,
            hour_answer(
                FLOW,
                MetricKind::RequestError,
                "HOUR",
                &point("timeout_error", "0.5"),
            ),
        ),
        (
            "checks of 1.5",
            MetricKind::Availability,
            hour_answer(
                FLOW,
                MetricKind::Availability,
                "HOUR",
                &point("succeeded", "1.5"),
            ),
        ),
        (
            "another flow's id",
            count,
            hour_answer(OTHER, count, "HOUR", &point("value", "10")),
        ),
        (
            "another metric",
            count,
            hour_answer(
                FLOW,
                MetricKind::Availability,
                "HOUR",
                &point("value", "10"),
            ),
        ),
        (
            "another granularity",
            count,
            hour_answer(FLOW, count, "DAY", &point("value", "10")),
        ),
        (
            "no id",
            count,
            format!(
                r#"{{"metric":{{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":[{}]}}}}"#,
                point("value", "10")
            ),
        ),
    ];
    for (name, metric, body) in cases {
        let rig = Rig::start().await;
        let (before, _) = rig.scrape().await;
        rig.sandbox.inject(cell_of(FLOW, metric), answer(200, body));
        let t1 = rig.tick();
        rig.exporter.poll(Granularity::Hour).await;
        let (text, _) = rig.scrape().await;
        assert_eq!(
            failing(&text),
            expect_failing(&[(FLOW, "malformed", 1.0)]),
            "{name}"
        );
        assert_eq!(
            data_lines(&text),
            data_lines(&before),
            "{name}: nothing shown changes"
        );
        assert_eq!(
            cell(
                &text,
                "whatsapp_flows_data_stale",
                FLOW,
                "hour",
                metric.label()
            ),
            Some(1.0),
            "{name}"
        );
        assert_fresh(&text, &healthy_except(&[FLOW]), t1);
    }
}

/// A 2xx answer that carries a Graph error object is that error: 139006 is
/// the insufficient-data state (not malformed), and 190 is a rejected token
/// that stops the poll.
#[tokio::test]
async fn an_error_object_in_a_2xx_answer_is_that_error() {
    let rig = Rig::start().await;
    rig.sandbox.inject(
        flow_metrics(FLOW),
        answer(
            200,
            Sandbox::graph_error_body(139006, None, "Not enough data to provide flow metrics"),
        ),
    );
    rig.tick();
    rig.exporter.poll(Granularity::Hour).await;
    let (text, _) = rig.scrape().await;
    assert!(failing(&text).is_empty(), "{:?}", failing(&text));
    for m in MetricKind::ALL {
        assert_eq!(
            cell(
                &text,
                "whatsapp_flows_insufficient_data",
                FLOW,
                "hour",
                m.label()
            ),
            Some(1.0)
        );
    }

    rig.sandbox.clear_faults();
    rig.sandbox.inject(
        FaultTarget::Metrics {
            flow_id: None,
            metric: None,
            granularity: None,
        },
        answer(
            200,
            Sandbox::graph_error_body(190, Some(463), "Session has expired"),
        ),
    );
    let from = rig.sandbox.metric_requests().len();
    rig.tick();
    rig.exporter.poll(Granularity::Hour).await;
    let (text, _) = rig.scrape().await;
    assert_eq!(
        rig.sandbox.metric_requests().len() - from,
        1,
        "the poll stops"
    );
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_token_valid"),
        Some(0.0)
    );
    assert_eq!(
        failing_by_class(&text),
        [
            ("not_attempted".to_owned(), 29.0),
            ("token".to_owned(), 1.0)
        ]
        .into()
    );
}

/// 10,000 error types Meta never documented, in one period of one flow: the
/// documented four, the ten largest others, and `other` holding the rest.
#[tokio::test]
async fn error_types_are_bounded_per_flow() {
    let rig = Rig::start().await;
    let data: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"key":"hostile_{i:05}","value":{}}}"#, 1 + i % 13))
        .collect();
    let total: u64 = (0..10_000u64).map(|i| 1 + i % 13).sum();
    let body = hour_answer(
        FLOW,
        MetricKind::RequestError,
        "HOUR",
        &format!(r#"{{"timestamp":"{SETTLED}","data":[{}]}}"#, data.join(",")),
    );
    rig.sandbox
        .inject(cell_of(FLOW, MetricKind::RequestError), answer(200, body));
    rig.tick();
    rig.exporter.poll(Granularity::Hour).await;
    let (text, _) = rig.scrape().await;
    let series: Vec<String> = samples(
        &text,
        &format!("whatsapp_flows_endpoint_request_errors{{flow_id=\"{FLOW}\",granularity=\"hour\""),
    );
    assert_eq!(series.len(), 4 + 10 + 1, "{series:#?}");
    let sum: f64 = series
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sum, total as f64, "summed, not dropped");
    assert!(series.iter().any(|l| l.contains("error_type=\"other\"")));
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_error_types_folded_total"),
        Some(9990.0)
    );
    assert!(failing(&text).is_empty());
}

/// Usage headers naming 100 new business ids on every answer: the exporter
/// keeps ten besides the configured WABAs, so the series stop growing.
#[tokio::test]
async fn usage_headers_with_new_ids_stay_bounded() {
    let rig = Rig::start().await;
    rig.sandbox
        .set_business_usage_header(UsageHeader::FreshIds(100));
    let usage_series = |text: &str| {
        samples(text, "whatsapp_flows_exporter_rate_limit_usage_ratio{")
            .iter()
            .filter(|l| l.contains("scope=\"business_use_case\""))
            .count()
    };
    let mut counts = Vec::new();
    for _ in 0..3 {
        rig.tick();
        rig.exporter.poll(Granularity::Hour).await;
        let (text, _) = rig.scrape().await;
        counts.push(usage_series(&text));
        assert!(
            samples(
                &text,
                "whatsapp_flows_exporter_rate_limit_regain_access_seconds"
            )
            .len()
                <= 12
        );
    }
    // The two configured WABAs (from start-up) and ten others, three figures each.
    assert_eq!(counts, vec![36, 36, 36]);
}

/// Eight flows whose names are 6 MB each: names are cut, so /metrics stays small.
#[tokio::test]
async fn huge_flow_names_are_cut() {
    let rig = Rig::start_with("", false).await;
    rig.sandbox.set_page_size(1);
    let huge = "N".repeat(6 << 20);
    for i in 0..8u64 {
        rig.sandbox.add_flow(SandboxFlow {
            id: (700_000_000_000_000 + i).to_string(),
            name: huge.clone(),
            waba_id: WABA_1.to_owned(),
            status: "DRAFT".to_owned(),
            data_api_version: "3.0".to_owned(),
            can_send_message: "AVAILABLE".to_owned(),
            traffic: Traffic::Normal { base_per_hour: 10 },
        });
    }
    rig.exporter.discover().await;
    let (text, _) = rig.scrape().await;
    let info: Vec<String> = samples(&text, "whatsapp_flows_flow_info")
        .into_iter()
        .filter(|l| l.contains("flow_id=\"7000"))
        .collect();
    assert_eq!(info.len(), 8, "every flow is listed");
    for line in &info {
        assert!(line.len() < 600, "{} bytes", line.len());
    }
    assert!(text.len() < 200_000, "/metrics is {} bytes", text.len());
}

/// A listing entry whose id is not a Graph id is skipped and counted; the rest
/// of the WABA is kept.
#[tokio::test]
async fn a_listing_entry_that_is_not_a_flow_is_skipped() {
    let rig = Rig::start().await;
    let page = serde_json::json!({"data": [
        {"id": FLOW, "name": "Appointment booking", "status": "PUBLISHED", "data_api_version": "3.0"},
        {"id": "../../me?x=", "name": "bad", "status": "PUBLISHED"},
        {"id": OTHER, "name": "Lead qualification", "status": "PUBLISHED", "data_api_version": "3.1"},
    ]})
    .to_string();
    rig.sandbox.inject(
        FaultTarget::FlowsList {
            waba_id: Some(WABA_1.to_owned()),
        },
        answer(200, page),
    );
    rig.tick();
    rig.exporter.discover().await;
    let (text, _) = rig.scrape().await;
    assert!(samples(&text, "whatsapp_flows_exporter_discovery_failing").is_empty());
    assert_eq!(
        value(
            &text,
            &format!("whatsapp_flows_exporter_discovery_skipped_entries{{waba_id=\"{WABA_1}\"}}")
        ),
        Some(1.0)
    );
    let waba_1: Vec<String> = samples(&text, "whatsapp_flows_flow_info")
        .into_iter()
        .filter(|l| l.contains(&format!("waba_id=\"{WABA_1}\"")))
        .collect();
    assert_eq!(waba_1.len(), 2, "{waba_1:#?}");
}

/// A paging chain that never ends is cut at limits.listing_pages, and the
/// flows of the pages read are kept.
#[tokio::test]
async fn endless_paging_is_cut_and_keeps_what_was_read() {
    let rig = Rig::start_with("[limits]\nlisting_pages = 20\n", true).await;
    let (before, _) = rig.scrape().await;
    rig.sandbox.set_endless_paging(true);
    let listed = |rig: &Rig| {
        rig.exporter.telemetry().graph_requests(
            flows_exporter::error::Endpoint::Flows,
            flows_exporter::error::Outcome::Success,
        )
    };
    let calls_before = listed(&rig);
    rig.tick();
    rig.exporter.discover().await;
    let (text, _) = rig.scrape().await;
    assert_eq!(listed(&rig) - calls_before, 40, "20 pages for each WABA");
    assert_eq!(
        samples(&text, "whatsapp_flows_flow_info"),
        samples(&before, "whatsapp_flows_flow_info"),
        "every flow of the pages read is kept"
    );
    for waba in [WABA_1, WABA_2] {
        assert_eq!(
            value(
                &text,
                &format!("whatsapp_flows_exporter_discovery_truncated{{waba_id=\"{waba}\"}}")
            ),
            Some(1.0)
        );
    }
    assert!(samples(&text, "whatsapp_flows_exporter_discovery_failing").is_empty());
}

/// Graph's texts echo the token everywhere it can: a long error message with
/// the token past the cut point, the fbtrace_id, the x-fb-trace-id header, a
/// usage header's business id and type, an error-type key, a flow name. None
/// of it reaches a log line (at any level), /metrics or the landing page.
#[tokio::test]
async fn the_token_never_comes_back_out() {
    let rig = Rig::start_with("", false).await;
    let t = TOKEN;
    rig.sandbox.set_trace_header(Some(format!("trace-{t}")));
    rig.sandbox
        .set_business_usage_header(UsageHeader::Fixed(format!(
            r#"{{"{t}":[{{"type":"{t}","call_count":10,"total_cputime":1,"total_time":1}}]}}"#
        )));
    rig.sandbox.add_flow(SandboxFlow {
        id: "700000000000001".to_owned(),
        name: format!("Flow named {t}"),
        waba_id: WABA_2.to_owned(),
        status: t.to_owned(),
        data_api_version: t.to_owned(),
        can_send_message: t.to_owned(),
        traffic: Traffic::Normal { base_per_hour: 100 },
    });
    let long = format!("{}{t} and more", "x".repeat(290));
    rig.sandbox.inject(
        cell_of(FLOW, MetricKind::RequestCount),
        answer(
            500,
            serde_json::json!({"error": {"message": long, "code": 1, "fbtrace_id": t}}).to_string(),
        ),
    );
    rig.sandbox.inject(
        cell_of(FLOW, MetricKind::RequestError),
        answer(
            200,
            hour_answer(FLOW, MetricKind::RequestError, "HOUR", &point(t, "3")),
        ),
    );
    rig.sandbox.inject(
        cell_of(OTHER, MetricKind::RequestCount),
        answer(
            200,
            hour_answer(
                OTHER,
                MetricKind::RequestCount,
                "HOUR",
                &point("value", &format!("\"{t}\"")),
            ),
        ),
    );
    let (_guard, logs) = capture_logs();
    let exporter = rig.exporter.clone();
    async move {
        exporter.startup().await;
    }
    .await;
    let (text, _) = rig.scrape().await;
    let landing = http()
        .get(format!("{}/", rig.server.base))
        .send()
        .await
        .expect("landing page")
        .text()
        .await
        .expect("body");
    let logged = logs.text();
    assert!(
        logged.contains("metric poll failed"),
        "the failures are logged"
    );
    assert!(logged.contains("<redacted>"), "{logged}");
    for (what, out) in [
        ("logs", &logged),
        ("/metrics", &text),
        ("landing page", &landing),
    ] {
        assert!(!out.contains(t), "the token is in the {what}");
        // Nor a piece of it long enough to matter.
        assert!(
            !out.contains(&t[..10]),
            "a piece of the token is in the {what}"
        );
    }
    assert!(!format!("{:?}", rig.exporter.snapshot()).contains(t));
}

/// A scheduled tick that overlaps the start-up poll does not make start-up skip
/// that granularity: start-up waits for it, then polls every flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_during_start_up_does_not_make_it_ready_early() {
    let rig = Rig::start_with("", false).await;
    rig.sandbox.set_latency(Duration::from_millis(50));
    let ex = rig.exporter.clone();
    let tick = tokio::spawn(async move { ex.run_job(Job::Poll(Granularity::Hour)).await });
    let ex = rig.exporter.clone();
    let startup = tokio::spawn(async move { ex.startup().await });
    startup.await.expect("start-up");
    assert!(tick.await.expect("the tick"), "the tick ran");
    assert_eq!(rig.exporter.readiness(), Readiness::Ready);
    let (text, _) = rig.scrape().await;
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_skipped_ticks_total{poll=\"hour\"}"
        ),
        Some(0.0),
        "start-up skipped nothing"
    );
    // Every polled cell was answered by start-up's own poll.
    assert_eq!(per_cell(&text, "whatsapp_flows_data_stale").len(), 30);
    assert!(failing(&text).is_empty());
}

/// Graph unreachable from the start: discovery lists nothing, so nothing is
/// polled. Not ready, and /-/ready, the landing page and the metrics say why;
/// no poll counts as a success, and the token is neither valid nor invalid.
#[tokio::test]
async fn nothing_listed_is_not_ready_and_says_why() {
    let sb = realistic().await;
    let base_url = sb.base_url.clone();
    drop(sb);
    // Wait until the stopped sandbox's port refuses.
    let addr = base_url.trim_start_matches("http://").to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ex = exporter(&base_url);
    ex.startup().await;
    let server = start_server(ex.clone()).await;
    let ready = http()
        .get(format!("{}/-/ready", server.base))
        .send()
        .await
        .expect("/-/ready");
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.expect("body");
    assert!(
        why.starts_with("not ready: discovery listed no flows to poll")
            && why.contains(&format!("WABA {WABA_1}: network")),
        "{why}"
    );
    let landing = http()
        .get(format!("{}/", server.base))
        .send()
        .await
        .expect("/")
        .text()
        .await
        .expect("body");
    assert!(
        landing.contains("Ready: no: discovery listed no flows"),
        "{landing}"
    );
    assert!(landing.contains("failing: network"), "{landing}");
    let text = scrape(&ex);
    assert_eq!(value(&text, "whatsapp_flows_exporter_token_valid"), None);
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_metrics_api_available"),
        None
    );
    for poll in ["hour", "day", "lifetime", "discovery"] {
        assert_eq!(
            value(
                &text,
                &format!(
                    "whatsapp_flows_exporter_polls_total{{poll=\"{poll}\",result=\"success\"}}"
                )
            ),
            Some(0.0),
            "{poll}"
        );
    }
}
