//! Graph errors: each class ends in its own visible state, the last good data
//! stays (marked stale), and the token never leaks.

use std::time::Duration;

use flows_exporter::exporter::Readiness;
use flows_exporter::model::Granularity;
use flows_exporter::sandbox::{Fault, FaultTarget, Sandbox, Traffic};

use crate::support::*;

fn all_metrics() -> FaultTarget {
    FaultTarget::Metrics {
        flow_id: None,
        metric: None,
        granularity: None,
    }
}

fn fault(status: u16, body: String) -> Fault {
    Fault {
        status,
        body,
        delay: Duration::ZERO,
        times: None,
    }
}

fn flow_with(
    sb: &RunningSandbox,
    pred: impl Fn(&flows_exporter::sandbox::SandboxFlow) -> bool,
) -> String {
    sb.sandbox
        .flows()
        .into_iter()
        .find(|f| pred(f))
        .expect("realistic data has such a flow")
        .id
}

#[tokio::test]
async fn insufficient_data_is_a_state_with_no_numbers() {
    let sb = realistic().await;
    let id = flow_with(&sb, |f| f.traffic == Traffic::BelowThreshold);
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let text = scrape(&ex);
    let mine: Vec<String> = samples(&text, "whatsapp_flows_")
        .into_iter()
        .filter(|l| l.contains(&format!("flow_id=\"{id}\"")))
        .collect();
    let insufficient: Vec<&String> = mine
        .iter()
        .filter(|l| l.starts_with("whatsapp_flows_insufficient_data{"))
        .collect();
    assert_eq!(
        insufficient.len(),
        15,
        "5 metrics x 3 granularities: {mine:#?}"
    );
    assert!(insufficient.iter().all(|l| l.ends_with(" 1")));
    assert!(
        !mine
            .iter()
            .any(|l| l.starts_with("whatsapp_flows_endpoint_")),
        "no numbers may be invented for a flow under the threshold: {mine:#?}"
    );
    assert!(
        !mine
            .iter()
            .any(|l| l.starts_with("whatsapp_flows_exporter_flow_errors_total")),
        "139006 is a state, not an error"
    );
    assert_eq!(
        mine.iter()
            .filter(|l| l.starts_with("whatsapp_flows_exporter_last_success_timestamp_seconds"))
            .count(),
        15
    );
    // Other flows are not insufficient.
    let other = flow_with(&sb, |f| {
        f.status == "PUBLISHED" && matches!(f.traffic, Traffic::Normal { .. })
    });
    assert_eq!(
        cell(
            &text,
            "whatsapp_flows_insufficient_data",
            &other,
            "hour",
            "endpoint_request_count"
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn wrong_token_is_loud_and_never_leaks() {
    let sb = realistic().await;
    let wrong = "EAAwrong-token-5zK1";
    let ex = exporter_with(&config_text(&sb.base_url, ""), wrong);
    ex.startup().await;
    // Start-up ends, but nothing was polled: not ready, and it says why.
    match ex.readiness() {
        Readiness::NotReady(why) => assert!(
            why.contains("discovery listed no flows")
                && why.contains(&format!("WABA {WABA_1}: token")),
            "{why}"
        ),
        Readiness::Ready => panic!("ready although discovery listed nothing"),
    }
    let text = scrape(&ex);
    for poll in ["hour", "day", "lifetime"] {
        assert_eq!(
            value(
                &text,
                &format!(
                    "whatsapp_flows_exporter_polls_total{{poll=\"{poll}\",result=\"success\"}}"
                )
            ),
            Some(0.0),
            "{poll}: a poll of nothing is no success"
        );
        assert_eq!(
            value(
                &text,
                &format!(
                    "whatsapp_flows_exporter_polls_total{{poll=\"{poll}\",result=\"failed\"}}"
                )
            ),
            Some(1.0),
            "{poll}"
        );
    }
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_token_valid"),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_requests_total{endpoint=\"flows\",outcome=\"token\"}"
        ),
        Some(2.0),
        "one call per WABA, no retry storm"
    );
    assert!(samples(&text, "whatsapp_flows_flow_info").is_empty());
    assert!(!text.contains(wrong), "the token leaked into /metrics");
    assert!(!text.contains(TOKEN));
    let landing = format!("{:?}", ex.snapshot());
    assert!(
        !landing.contains(wrong),
        "the token leaked into the snapshot"
    );
    assert!(
        !format!("{ex:?}").contains(wrong),
        "the token leaked into Debug"
    );
}

#[tokio::test]
async fn token_expiring_mid_run_halts_the_poll_and_keeps_last_good_data() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let before = scrape(&ex);
    let flow = flow_with(&sb, |f| {
        f.status == "PUBLISHED" && matches!(f.traffic, Traffic::Normal { .. })
    });
    let series =
        format!("whatsapp_flows_endpoint_requests{{flow_id=\"{flow}\",granularity=\"hour\"}}");
    let good = value(&before, &series).expect("a value before");

    sb.sandbox.set_token("EAArotated");
    let calls_before = sb.sandbox.request_count();
    ex.poll(Granularity::Hour).await;
    let after = scrape(&ex);
    assert_eq!(
        sb.sandbox.request_count() - calls_before,
        1,
        "the poll stops at the first 190"
    );
    assert_eq!(
        value(&after, "whatsapp_flows_exporter_token_valid"),
        Some(0.0)
    );
    assert_eq!(value(&after, &series), Some(good), "last good value kept");
    assert_eq!(
        cell(
            &after,
            "whatsapp_flows_data_stale",
            &flow,
            "hour",
            "endpoint_request_count"
        ),
        Some(1.0)
    );
    // The one call made says token; the 29 the poll did not make say so.
    assert_eq!(
        failing_by_class(&after),
        [
            ("not_attempted".to_owned(), 29.0),
            ("token".to_owned(), 1.0)
        ]
        .into()
    );
    assert_eq!(
        value(
            &after,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"poll_halted\"}"
        ),
        Some(29.0)
    );

    sb.sandbox.set_token(TOKEN);
    ex.poll(Granularity::Hour).await;
    let recovered = scrape(&ex);
    assert_eq!(
        value(&recovered, "whatsapp_flows_exporter_token_valid"),
        Some(1.0)
    );
    assert_eq!(
        cell(
            &recovered,
            "whatsapp_flows_data_stale",
            &flow,
            "hour",
            "endpoint_request_count"
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn transient_errors_are_retried_then_marked_stale() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let flow = flow_with(&sb, |f| {
        f.status == "PUBLISHED" && matches!(f.traffic, Traffic::Normal { .. })
    });
    let series =
        format!("whatsapp_flows_endpoint_requests{{flow_id=\"{flow}\",granularity=\"day\"}}");
    let good = value(&scrape(&ex), &series).expect("value");

    // One 500 per call is absorbed by a retry: nothing goes stale.
    sb.sandbox.inject(
        FaultTarget::Metrics {
            flow_id: Some(flow.clone()),
            metric: None,
            granularity: None,
        },
        Fault {
            times: Some(1),
            ..fault(
                500,
                Sandbox::graph_error_body(1, None, "An unknown error occurred"),
            )
        },
    );
    ex.poll(Granularity::Day).await;
    let text = scrape(&ex);
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_retries_total{endpoint=\"metric\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        cell(
            &text,
            "whatsapp_flows_data_stale",
            &flow,
            "day",
            "endpoint_request_count"
        ),
        Some(0.0)
    );

    // A lasting 503 without a Graph error: retried, then stale with the old value.
    sb.sandbox.inject(
        FaultTarget::Metrics {
            flow_id: Some(flow.clone()),
            metric: None,
            granularity: None,
        },
        fault(503, "<html>Service Unavailable</html>".into()),
    );
    ex.poll(Granularity::Day).await;
    let text = scrape(&ex);
    assert_eq!(value(&text, &series), Some(good));
    assert_eq!(
        cell(
            &text,
            "whatsapp_flows_data_stale",
            &flow,
            "day",
            "endpoint_request_count"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "whatsapp_flows_exporter_flow_errors_total{{flow_id=\"{flow}\",class=\"transient\"}}"
            )
        ),
        Some(5.0)
    );
    // Other flows are unaffected.
    let other = flow_with(&sb, |f| {
        f.id != flow && f.status == "PUBLISHED" && matches!(f.traffic, Traffic::Normal { .. })
    });
    assert_eq!(
        cell(
            &text,
            "whatsapp_flows_data_stale",
            &other,
            "day",
            "endpoint_request_count"
        ),
        Some(0.0)
    );

    sb.sandbox.clear_faults();
    ex.poll(Granularity::Day).await;
    let text = scrape(&ex);
    assert_eq!(
        cell(
            &text,
            "whatsapp_flows_data_stale",
            &flow,
            "day",
            "endpoint_request_count"
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn metrics_api_gone_is_a_distinct_state() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    sb.sandbox.inject(
        all_metrics(),
        fault(
            400,
            Sandbox::graph_error_body(
                100,
                None,
                "(#100) Tried accessing nonexisting field (metric) on node type (WhatsAppBusinessAccountFlow)",
            ),
        ),
    );
    let calls_before = sb.sandbox.request_count();
    ex.poll(Granularity::Lifetime).await;
    let text = scrape(&ex);
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_metrics_api_available"),
        Some(0.0)
    );
    assert_eq!(
        sb.sandbox.request_count() - calls_before,
        1,
        "no endless calls to a gone API"
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_requests_total{endpoint=\"metric\",outcome=\"api_gone\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn throttling_is_retried_then_pauses_all_calls() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    sb.sandbox.inject(
        all_metrics(),
        fault(
            400,
            Sandbox::graph_error_body(4, None, "Application request limit reached"),
        ),
    );
    let calls_before = sb.sandbox.request_count();
    ex.poll(Granularity::Hour).await;
    let text = scrape(&ex);
    // max_retries = 2: the first call is tried three times, then the poll halts.
    assert_eq!(sb.sandbox.request_count() - calls_before, 3);
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_requests_total{endpoint=\"metric\",outcome=\"throttled\"}"
        ),
        Some(3.0)
    );
    assert!(
        samples(&text, "whatsapp_flows_data_stale{")
            .iter()
            .any(|l| l.ends_with(" 1"))
    );
}

#[tokio::test]
async fn malformed_answers_are_counted_and_keep_last_good_data() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let flow = flow_with(&sb, |f| {
        f.status == "PUBLISHED" && matches!(f.traffic, Traffic::Normal { .. })
    });
    let series = format!(
        "whatsapp_flows_endpoint_request_latency_seconds_count{{flow_id=\"{flow}\",granularity=\"hour\"}}"
    );
    let good = value(&scrape(&ex), &series).expect("value");
    let target = || FaultTarget::Metrics {
        flow_id: Some(flow.clone()),
        metric: Some(flows_exporter::model::MetricKind::LatencySecondsCeil),
        granularity: None,
    };
    let bodies = [
        (200, "{\"metric\": {\"data_points\": [".to_string()),
        (200, "[1,2,3]".to_string()),
        (
            200,
            format!(
                "{{\"id\":\"{flow}\",\"metric\":{{\"name\":\"ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL\",\"granularity\":\"HOUR\",\"data_points\":[{{\"timestamp\":\"2024-01-30T07:00:00+0000\",\"data\":[{{\"key\":\"11\",\"value\":3}}]}}]}}}}"
            ),
        ),
        (
            200,
            format!(
                "{{\"id\":\"{flow}\",\"metric\":{{\"name\":\"ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL\",\"granularity\":\"HOUR\",\"data_points\":[{{\"timestamp\":\"2024-01-30T07:00:00+0000\",\"data\":[{{\"key\":\"1\",\"value\":\"-4\"}}]}}]}}}}"
            ),
        ),
    ];
    for (i, (status, body)) in bodies.into_iter().enumerate() {
        sb.sandbox.clear_faults();
        sb.sandbox.inject(target(), fault(status, body));
        ex.poll(Granularity::Hour).await;
        let text = scrape(&ex);
        assert_eq!(
            value(&text, &series),
            Some(good),
            "case {i}: last good value kept"
        );
        assert_eq!(
            value(
                &text,
                &format!(
                    "whatsapp_flows_exporter_flow_errors_total{{flow_id=\"{flow}\",class=\"malformed\"}}"
                )
            ),
            Some((i + 1) as f64),
            "case {i}"
        );
        assert_eq!(
            cell(
                &text,
                "whatsapp_flows_data_stale",
                &flow,
                "hour",
                "endpoint_request_latency_seconds_ceil"
            ),
            Some(1.0),
            "case {i}"
        );
    }
}
