//! The webhook state → Prometheus text, pure (the `prometheus` crate's data
//! model and encoder, as `exposition` does for the polled data). Rendered
//! when a scrape finds the state changed since the last render.

use prometheus::TextEncoder;
use prometheus::proto::MetricType;

use super::payload::{AlertKind, Detail};
use super::state::State;
use crate::exposition::Family;

const PUSHED: &str = "From Meta's Flows webhooks (pushed, in force until a newer event).";

/// Renders every webhook-derived series.
pub fn render(state: &State) -> String {
    let mut out = String::new();
    let encoder = TextEncoder::new();
    let mut emit = |family: Family| {
        if family.0.get_metric().is_empty() {
            return;
        }
        if let Err(e) = encoder.encode_utf8(&[family.0], &mut out) {
            tracing::error!(error = %e, "cannot encode webhook metrics");
        }
    };
    let gauge =
        |name: &str, help: &str| Family::new(name, &format!("{help} {PUSHED}"), MetricType::GAUGE);

    let mut active = gauge(
        "whatsapp_flows_alert_active",
        "1 while the flow's alert is ACTIVATED, 0 after DEACTIVATED.",
    );
    let mut threshold = gauge(
        "whatsapp_flows_alert_threshold",
        "The alert's threshold in base units: a ratio for error rates and availability, seconds for latency.",
    );
    let mut changed = gauge(
        "whatsapp_flows_alert_last_change_timestamp_seconds",
        "entry.time of the event in force for the flow's alert.",
    );
    let mut error_ratio = gauge(
        "whatsapp_flows_webhook_error_ratio",
        "Error rate the last error-rate event reported (error_rate / 100); source is endpoint or client.",
    );
    let mut type_ratio = gauge(
        "whatsapp_flows_webhook_error_type_ratio",
        "Share of the errors of one type in the last error-rate event (error_rate / 100 of errors[]).",
    );
    let mut type_errors = gauge(
        "whatsapp_flows_webhook_error_type_errors",
        "Errors of one type in the last error-rate event's window (error_count of errors[]).",
    );
    let mut p50 = gauge(
        "whatsapp_flows_webhook_latency_p50_seconds",
        "Median endpoint latency the last ENDPOINT_LATENCY event reported.",
    );
    let mut p90 = gauge(
        "whatsapp_flows_webhook_latency_p90_seconds",
        "90th percentile endpoint latency the last ENDPOINT_LATENCY event reported.",
    );
    let mut requests = gauge(
        "whatsapp_flows_webhook_latency_requests",
        "Requests in the window of the last ENDPOINT_LATENCY event (requests_count).",
    );
    let mut availability = gauge(
        "whatsapp_flows_webhook_availability_ratio",
        "Endpoint availability the last ENDPOINT_AVAILABILITY event reported (availability / 100).",
    );

    for ((flow, kind), r) in &state.alerts {
        let labels = [("flow_id", flow.as_str()), ("alert", kind.label())];
        active.gauge(&labels, if r.active { 1.0 } else { 0.0 });
        if let Some(t) = r.threshold {
            threshold.gauge(&labels, t);
        }
        changed.gauge(&labels, r.time as f64);
        match &r.detail {
            Detail::ErrorRate { ratio, errors } => {
                let source = if *kind == AlertKind::ClientErrorRate {
                    "client"
                } else {
                    "endpoint"
                };
                let labels = [("flow_id", flow.as_str()), ("source", source)];
                if let Some(v) = ratio {
                    error_ratio.gauge(&labels, *v);
                }
                for e in errors {
                    let labels = [labels[0], labels[1], ("error_type", e.error_type.as_str())];
                    if let Some(v) = e.ratio {
                        type_ratio.gauge(&labels, v);
                    }
                    if let Some(v) = e.count {
                        type_errors.gauge(&labels, v);
                    }
                }
            }
            Detail::Latency {
                p50_seconds,
                p90_seconds,
                requests: n,
            } => {
                let labels = [("flow_id", flow.as_str())];
                if let Some(v) = p50_seconds {
                    p50.gauge(&labels, *v);
                }
                if let Some(v) = p90_seconds {
                    p90.gauge(&labels, *v);
                }
                if let Some(v) = n {
                    requests.gauge(&labels, *v);
                }
            }
            Detail::Availability { ratio } => {
                if let Some(v) = ratio {
                    availability.gauge(&[("flow_id", flow.as_str())], *v);
                }
            }
        }
    }
    for f in [
        active,
        threshold,
        changed,
        error_ratio,
        type_ratio,
        type_errors,
        p50,
        p90,
        requests,
        availability,
    ] {
        emit(f);
    }

    let mut status_changes = Family::new(
        "whatsapp_flows_status_changes_total",
        &format!(
            "FLOW_STATUS_CHANGE events by old and new status (from=\"NONE\": the flow was created). {PUSHED}"
        ),
        MetricType::COUNTER,
    );
    for ((flow, from, to), n) in &state.status_changes {
        status_changes.counter(
            &[
                ("flow_id", flow.as_str()),
                ("from", from.as_str()),
                ("to", to.as_str()),
            ],
            *n as f64,
        );
    }
    emit(status_changes);
    let mut expiry = Family::new(
        "whatsapp_flows_version_expiry_warnings_total",
        &format!(
            "FLOW_VERSION_EXPIRY_WARNING events: the flow's version is about to freeze. {PUSHED}"
        ),
        MetricType::COUNTER,
    );
    for (flow, n) in &state.expiry_warnings {
        expiry.counter(&[("flow_id", flow.as_str())], *n as f64);
    }
    emit(expiry);
    let mut last = Family::new(
        "whatsapp_flows_exporter_webhook_last_received_timestamp_seconds",
        "When the exporter last received a webhook for the WABA (any field); a WABA that falls silent, for example unsubscribed, stops moving it.",
        MetricType::GAUGE,
    );
    for (waba, at) in &state.last_received {
        last.gauge(&[("waba_id", waba.as_str())], *at as f64);
    }
    emit(last);
    out
}
