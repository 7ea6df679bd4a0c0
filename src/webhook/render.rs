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
    render_calls(state, &mut emit);
    out
}

/// The Messenger calling series: lifecycle from the `calls` webhooks,
/// quality from the call-metrics intake.
fn render_calls(state: &State, emit: &mut impl FnMut(Family)) {
    use super::calls::{ANSWER_DELAY_BUCKETS, DURATION_BUCKETS, Hist};
    use crate::callmetrics::{
        FIRST_AUDIO_BUCKETS, JITTER_BUCKETS, JITTER_BUFFER_BUCKETS, RATIO_BUCKETS,
    };
    let counter = |name: &str, help: &str| Family::new(name, help, MetricType::COUNTER);
    let histogram = |name: &str, help: &str| Family::new(name, help, MetricType::HISTOGRAM);
    let mut started = counter(
        "messenger_calls_started_total",
        "Calls connected (a `connect` webhook), by direction; each call once.",
    );
    let mut status = counter(
        "messenger_call_status_total",
        "`call_status` webhooks by status (ringing, accepted); each call and status once.",
    );
    let mut ended = counter(
        "messenger_calls_ended_total",
        "Calls terminated (a `terminate` webhook), by direction and status (completed, failed); each call once. direction=\"unknown\": the call aged out without its `connect`.",
    );
    let mut duration = histogram(
        "messenger_call_duration_seconds",
        "Duration of terminated calls as Meta reports it (from when the business connected); calls the business never connected have none.",
    );
    let mut answer = histogram(
        "messenger_call_answer_delay_seconds",
        "Time from a call's `connect` to its `call_status` accepted.",
    );
    let mut active = Family::new(
        "messenger_calls_active",
        "Calls connected and not yet terminated (a call with no `terminate` ages out after webhooks.call_timeout).",
        MetricType::GAUGE,
    );
    let mut media = counter(
        "messenger_call_media_updates_total",
        "`media_update` webhooks (SDP renegotiations).",
    );
    let mut aged = counter(
        "messenger_calls_aged_out_total",
        "Calls that had no `terminate` within webhooks.call_timeout and stopped counting as active.",
    );
    let mut jitter = histogram(
        "messenger_call_audio_jitter_seconds",
        "Inbound audio jitter of each call, from the call-metrics intake.",
    );
    let mut loss = histogram(
        "messenger_call_audio_packet_loss_ratio",
        "Inbound audio packets lost / (lost + received) of each call.",
    );
    let mut jbd = histogram(
        "messenger_call_audio_jitter_buffer_delay_seconds",
        "Average time an audio sample waited in the jitter buffer: jitterBufferDelay / (totalSamplesDuration x 48000).",
    );
    let mut concealed = histogram(
        "messenger_call_audio_concealed_samples_ratio",
        "Concealed audio samples / samples received, the received samples estimated as totalSamplesDuration x 48000 (at most 1).",
    );
    let mut first_audio = histogram(
        "messenger_call_first_audio_delay_seconds",
        "First audio packet received minus the call's `connect` timestamp (when the webhook was seen).",
    );
    let mut reasons = counter(
        "messenger_call_end_reasons_total",
        "Calls by end_call_reason, from the call-metrics intake.",
    );
    let mut active_by_page: std::collections::BTreeMap<&str, u64> =
        state.pages.keys().map(|p| (p.as_str(), 0)).collect();
    for ((page, _), record) in &state.calls {
        if record.is_active() {
            *active_by_page.entry(page.as_str()).or_default() += 1;
        }
    }
    for (page, n) in &active_by_page {
        active.gauge(&[("page_id", page)], *n as f64);
    }
    let hist = |f: &mut Family, labels: &[(&str, &str)], bounds: &[f64], h: &Hist| {
        f.histogram_sum(labels, &h.cumulative(bounds), h.count, Some(h.sum));
    };
    for (page, s) in &state.pages {
        let p = ("page_id", page.as_str());
        for (d, n) in &s.started {
            started.counter(&[p, ("direction", d)], *n as f64);
        }
        for (st, n) in &s.status {
            status.counter(&[p, ("status", st)], *n as f64);
        }
        for ((d, st), n) in &s.ended {
            ended.counter(&[p, ("direction", d), ("status", st)], *n as f64);
        }
        for (d, h) in &s.duration {
            hist(&mut duration, &[p, ("direction", d)], &DURATION_BUCKETS, h);
        }
        hist(&mut answer, &[p], &ANSWER_DELAY_BUCKETS, &s.answer_delay);
        media.counter(&[p], s.media_updates as f64);
        aged.counter(&[p], s.aged_out as f64);
        let q = &s.quality;
        hist(&mut jitter, &[p], &JITTER_BUCKETS, &q.jitter);
        hist(&mut loss, &[p], &RATIO_BUCKETS, &q.packet_loss);
        hist(
            &mut jbd,
            &[p],
            &JITTER_BUFFER_BUCKETS,
            &q.jitter_buffer_delay,
        );
        hist(&mut concealed, &[p], &RATIO_BUCKETS, &q.concealed);
        hist(
            &mut first_audio,
            &[p],
            &FIRST_AUDIO_BUCKETS,
            &q.first_audio_delay,
        );
        for (r, n) in &q.end_reasons {
            reasons.counter(&[p, ("reason", r)], *n as f64);
        }
    }
    for f in [
        started,
        status,
        ended,
        duration,
        answer,
        active,
        media,
        aged,
        jitter,
        loss,
        jbd,
        concealed,
        first_audio,
        reasons,
    ] {
        emit(f);
    }
}
