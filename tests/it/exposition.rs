//! The full `/metrics` text for known data, and its values cross-checked against
//! what the sandbox serves.

use chrono::Duration;
use expect_test::expect_file;
use flows_exporter::model::{Granularity, MetricKind};

use crate::support::*;

/// Masks the values that depend on wall time or the process (durations,
/// pacing waits, process_* metrics) and the build (build_info's labels other
/// than the version); everything else must match exactly.
fn normalize(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("whatsapp_flows_exporter_build_info{") {
                let version = l
                    .split(['{', ','])
                    .find(|p| p.starts_with("version=\""))
                    .and_then(|p| p.split('"').nth(1))
                    .unwrap_or("");
                return format!(
                    "whatsapp_flows_exporter_build_info{{<build>,version=\"{version}\"}} 1\n"
                );
            }
            let varies = !l.starts_with('#')
                && (l.starts_with("process_")
                    || l.starts_with("whatsapp_flows_exporter_rate_limit_wait")
                    || ((l.contains("_duration_seconds_bucket")
                        || l.contains("_duration_seconds_sum"))
                        && l.starts_with("whatsapp_flows_exporter_")));
            match (varies, l.rsplit_once(' ')) {
                (true, Some((series, _))) => format!("{series} <varies>\n"),
                _ => format!("{l}\n"),
            }
        })
        .collect()
}

#[tokio::test]
async fn full_exposition_after_the_first_poll() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    assert!(ex.is_ready());
    let text = scrape(&ex);

    let (ok, printed) = promtool_check(&text);
    assert!(ok, "promtool check metrics failed: {printed}");
    assert_eq!(printed, "", "promtool check metrics must report nothing");

    expect_file!["snapshots/realistic.prom"].assert_eq(&normalize(&text));
}

#[tokio::test]
async fn values_match_what_graph_served() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let text = scrape(&ex);
    let now = now();

    let polled: Vec<_> = sb
        .sandbox
        .flows()
        .into_iter()
        .filter(|f| !matches!(f.status.as_str(), "DRAFT" | "DEPRECATED"))
        .filter(|f| f.traffic != flows_exporter::sandbox::Traffic::BelowThreshold)
        .collect();
    assert!(
        polled.len() >= 4,
        "the realistic data set has several flows with data"
    );

    for flow in &polled {
        // HOUR: trusted 3 h after the hour ends (the default).
        let since = (now - Duration::days(2)).date_naive();
        let hours = sb.sandbox.data_points(
            &flow.id,
            MetricKind::RequestCount,
            Granularity::Hour,
            Some(since),
            None,
        );
        let (start, values) = hours
            .iter()
            .filter(|(s, _)| *s + Duration::hours(4) <= now)
            .max_by_key(|(s, _)| *s)
            .expect("a settled hour");
        let requests = values[0].1;
        let labels = format!("{{flow_id=\"{}\",granularity=\"hour\"}}", flow.id);
        assert_eq!(
            value(&text, &format!("whatsapp_flows_endpoint_requests{labels}")),
            Some(requests),
            "requests of {}",
            flow.id
        );
        assert_eq!(
            value(
                &text,
                &format!(
                    "whatsapp_flows_data_period_start_timestamp_seconds{{flow_id=\"{}\",granularity=\"hour\",metric=\"endpoint_request_count\"}}",
                    flow.id
                )
            ),
            Some(start.timestamp() as f64)
        );
        // The histogram's +Inf bucket and _count hold every request of the period.
        let inf = format!(
            "whatsapp_flows_endpoint_request_latency_seconds_bucket{{flow_id=\"{}\",granularity=\"hour\",le=\"+Inf\"}}",
            flow.id
        );
        assert_eq!(
            value(&text, &inf),
            Some(requests),
            "latency +Inf of {}",
            flow.id
        );
        assert_eq!(
            value(
                &text,
                &format!("whatsapp_flows_endpoint_request_latency_seconds_count{labels}")
            ),
            Some(requests)
        );
        // Each le bucket is the running sum of the per-second buckets Graph gave.
        let latency = sb.sandbox.data_points(
            &flow.id,
            MetricKind::LatencySecondsCeil,
            Granularity::Hour,
            Some(since),
            None,
        );
        let (_, buckets) = latency
            .iter()
            .find(|(s, _)| s == start)
            .expect("latency for the same hour");
        let mut running = 0.0;
        for le in 1..=10 {
            running += buckets
                .iter()
                .filter(|(k, _)| *k == le.to_string())
                .map(|(_, v)| v)
                .sum::<f64>();
            let series = format!(
                "whatsapp_flows_endpoint_request_latency_seconds_bucket{{flow_id=\"{}\",granularity=\"hour\",le=\"{le}\"}}",
                flow.id
            );
            assert_eq!(value(&text, &series), Some(running), "{series}");
        }
    }
    assert!(
        samples(&text, "whatsapp_flows_endpoint_request_latency_seconds_sum").is_empty(),
        "the latency sum is unknown and must not be published"
    );
}

#[tokio::test]
async fn string_values_are_read_as_numbers() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let text = scrape(&ex);
    let flow = sb
        .sandbox
        .flows()
        .into_iter()
        .find(|f| {
            matches!(
                f.traffic,
                flows_exporter::sandbox::Traffic::StringValues { .. }
            )
        })
        .expect("the realistic set has a flow with string values");
    let ratio = value(
        &text,
        &format!(
            "whatsapp_flows_endpoint_request_error_ratio{{flow_id=\"{}\",granularity=\"day\"}}",
            flow.id
        ),
    )
    .expect("error ratio of the string-valued flow");
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");
}
