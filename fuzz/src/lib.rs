//! Invariant checks for the exporter's pure parsers, one function per fuzz
//! target. Each takes the raw input bytes, runs the parser and asserts what must
//! hold for any input, not only that nothing panics. The fuzz targets call them
//! under libFuzzer; the exporter's `cargo test` feeds the seed corpus
//! (`fuzz/corpus/<target>/`) through the same functions, so the checks run on
//! every machine even where cargo-fuzz cannot.

use flows_exporter::config::Config;
use flows_exporter::error::Redactor;
use flows_exporter::flowdata::{self, LatencyHistogram, PointSamples};
use flows_exporter::graph::wire;
use flows_exporter::model::{Granularity, MetricKind};

/// A Graph string the parsers cut (`truncate`) may be this long in bytes: the
/// limit plus the three bytes of `…`.
fn within(s: &str, limit: usize) -> bool {
    s.len() <= limit + '…'.len_utf8()
}

/// A secret the checks redact: no parsed text may carry it.
const SECRET: &str = "EAAfuzz-secret-token";

fn redactor() -> Redactor {
    Redactor::new([SECRET])
}

fn check_no_secret(what: &str, debug: &str) {
    assert!(
        !debug.contains(SECRET),
        "{what} carries the secret: {debug}"
    );
}

fn check_value(v: f64, what: &str) {
    assert!(
        v.is_finite() && v >= 0.0,
        "{what}: {v} is not finite and >= 0"
    );
}

/// Buckets are le = 1..=10, cumulative counts never decrease, and `count` (the
/// `+Inf` bucket) is at least the last bucket.
pub fn check_histogram(h: &LatencyHistogram) {
    assert_eq!(h.buckets.len(), 10, "{h:?}");
    let mut previous = 0;
    for (i, (le, c)) in h.buckets.iter().enumerate() {
        assert_eq!(*le, (i + 1) as f64, "{h:?}");
        assert!(*c >= previous, "buckets not cumulative: {h:?}");
        previous = *c;
    }
    assert!(h.count >= previous, "count below the last bucket: {h:?}");
}

/// A metric answer, parsed as the answer to every metric and granularity of
/// the flow it names: when it parses, period starts are unique and in time
/// order, every value is finite and >= 0 (counts whole, the error rate at most
/// 1), no key carries the secret, and the samples it flattens to keep those
/// properties (histograms stay cumulative). An error never carries the secret.
pub fn metric_answer(data: &[u8]) {
    let flow_id = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "761204397754120".to_owned());
    let redact = redactor();
    // Every metric and granularity, so one input is checked as the answer to each query.
    for metric in MetricKind::ALL {
        for g in Granularity::ALL {
            let points = match wire::parse_metric_answer(data, &flow_id, metric, g, &redact) {
                Ok(points) => points,
                Err(e) => {
                    check_no_secret("error", &format!("{e:?}"));
                    continue;
                }
            };
            assert!(points.windows(2).all(|w| w[0].start < w[1].start));
            for p in &points {
                for (key, v) in &p.values {
                    check_value(*v, key);
                    check_no_secret("key", key);
                    if metric == MetricKind::RequestErrorRate {
                        assert!(*v <= 1.0, "error rate {v}");
                    } else {
                        assert_eq!(v.fract(), 0.0, "count {v}");
                    }
                }
                if metric == MetricKind::RequestError {
                    let (folded, _) = flowdata::fold_error_types(p.values.clone(), 3);
                    assert!(folded.len() <= flowdata::KNOWN_ERROR_TYPES.len() + 3 + 1);
                }
                match flowdata::point_samples(metric, &p.values) {
                    Ok(PointSamples::None) | Err(_) => {}
                    Ok(PointSamples::Single(v)) => check_value(v, "single"),
                    Ok(PointSamples::ByLabel(_, values)) => {
                        for (label, v) in values {
                            check_value(v, &label);
                        }
                    }
                    Ok(PointSamples::Histogram(h)) => check_histogram(&h),
                }
                if let Ok(h) = flowdata::latency_histogram(&p.values) {
                    check_histogram(&h);
                }
            }
        }
    }
}

/// A flow listing page: every flow id is a non-empty run of digits (it goes into
/// a URL path), every flow carries the WABA asked for, names and other strings
/// are bounded, and nothing carries the secret.
pub fn flows_page(data: &[u8]) {
    let page = match wire::parse_flows_page(data, "102290129340398", &redactor()) {
        Ok(page) => page,
        Err(e) => return check_no_secret("error", &format!("{e:?}")),
    };
    // The cursor only ever goes back to Graph, in the next page's query.
    check_no_secret("flows", &format!("{:?}", page.flows));
    check_no_secret("skipped entries", &format!("{:?}", page.skipped));
    for f in &page.flows {
        assert!(!f.id.is_empty() && f.id.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(f.waba_id, "102290129340398");
        assert!(within(&f.name, wire::MAX_NAME_BYTES));
        assert!(within(f.status.as_str(), wire::MAX_FIELD_BYTES));
        assert!(within(&f.data_api_version, wire::MAX_FIELD_BYTES));
        assert!(within(&f.can_send_message, wire::MAX_FIELD_BYTES));
    }
}

/// An error answer, under the statuses Graph uses: it always classifies, keeps
/// the status, bounds what it copies from the body, and classifies from the code
/// exactly as `classify` does.
pub fn graph_error(data: &[u8]) {
    for status in [200, 400, 401, 403, 404, 429, 500, 503] {
        let e = flows_exporter::error::parse_error(status, data, &redactor());
        check_no_secret("error", &format!("{e:?}"));
        assert_eq!(e.http_status, Some(status));
        assert!(
            within(&e.message, 300),
            "message too long: {}",
            e.message.len()
        );
        if let Some(t) = &e.fbtrace_id {
            assert!(within(t, 64), "fbtrace_id too long: {}", t.len());
        }
        if e.code.is_none() && status >= 500 {
            assert_eq!(e.class, flows_exporter::error::ErrorClass::Transient);
        }
        let _ = e.to_string();
    }
}

/// A rate-limit header: every reading is finite and >= 0 (they become gauges and
/// drive the slow-down), and the ids copied from it are bounded.
pub fn usage_headers(data: &[u8]) {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let app = wire::parse_app_usage(header);
    let business = wire::parse_business_usage(header, &redactor());
    check_no_secret("usage", &format!("{business:?}"));
    for u in app.iter().chain(&business) {
        check_value(u.call_count, "call_count");
        check_value(u.total_cputime, "total_cputime");
        check_value(u.total_time, "total_time");
        if let Some(m) = u.regain_minutes {
            check_value(m, "estimated_time_to_regain_access");
        }
        assert!(within(&u.business_id, 32) && within(&u.kind, 64));
    }
}

/// A config file: a valid one polls something, with limits inside the ranges
/// the config documents; an invalid one has a message to show.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            assert!(!(c.wabas.is_empty() && c.flows.is_empty()));
            assert!(!c.granularities.is_empty());
            assert!((1..=64).contains(&c.graph.max_concurrency));
            assert!(c.graph.max_retries <= 10);
            assert!(!c.graph.timeout.is_zero());
            assert!(!c.graph.base_url.ends_with('/'));
            for g in &c.granularities {
                assert!(g.lookback.is_none_or(|d| !d.is_zero()));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A webhook body: when it parses, every label value taken from it is
/// bounded, error types are bounded, numbers are finite; planning and
/// applying it twice applies it once (the second time every flows change is
/// a duplicate and nothing changes), and the rendered text has only finite
/// values.
pub fn webhook_payload(data: &[u8]) {
    use flows_exporter::webhook::payload::{self, Detail, Event, MAX_ERROR_TYPES, MAX_LABEL_LEN};
    use flows_exporter::webhook::state::State;
    let Ok(p) = payload::parse(data) else {
        return;
    };
    let finite = |v: &Option<f64>| assert!(v.is_none_or(f64::is_finite), "{v:?}");
    for entry in &p.entries {
        for change in &entry.changes {
            assert!(change.field.len() <= MAX_LABEL_LEN);
            assert_eq!(change.key.len(), 64);
            match &change.event {
                Event::Alert(a) => {
                    assert!(!a.flow_id.is_empty() && a.flow_id.len() <= MAX_LABEL_LEN);
                    finite(&a.threshold);
                    match &a.detail {
                        Detail::ErrorRate { ratio, errors } => {
                            finite(ratio);
                            assert!(errors.len() <= MAX_ERROR_TYPES + 1);
                            for e in errors {
                                assert!(e.error_type.len() <= MAX_LABEL_LEN);
                                finite(&e.ratio);
                                finite(&e.count);
                            }
                        }
                        Detail::Latency {
                            p50_seconds,
                            p90_seconds,
                            requests,
                        } => {
                            finite(p50_seconds);
                            finite(p90_seconds);
                            finite(requests);
                        }
                        Detail::Availability { ratio } => finite(ratio),
                    }
                }
                Event::StatusChange { flow_id, old, new } => {
                    assert!(flow_id.len() <= MAX_LABEL_LEN && new.len() <= MAX_LABEL_LEN);
                    assert!(old.as_ref().is_none_or(|o| o.len() <= MAX_LABEL_LEN));
                }
                _ => {}
            }
        }
    }
    let mut state = State::default();
    let first = state.plan(&p, 1_000);
    state.apply(&first);
    let after = state.clone();
    let second = state.plan(&p, 1_001);
    assert!(second.seen.is_empty() && second.alerts.is_empty() && second.statuses.is_empty());
    assert!(second.calls.is_empty() && second.pages.is_empty());
    // Every call counted at most once per event kind.
    for stats in state.pages.values() {
        let calls = state.calls.len() as u64;
        assert!(stats.started.values().sum::<u64>() <= calls);
        assert!(stats.ended.values().sum::<u64>() <= calls);
    }
    assert_eq!(
        second.tally.duplicates as usize,
        first.seen.len() + first.tally.duplicates as usize
    );
    state.apply(&second);
    assert_eq!(state.alerts, after.alerts);
    assert_eq!(state.status_changes, after.status_changes);
    let text = flows_exporter::webhook::render::render(&state);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a sample value");
        assert!(v.is_finite(), "{line}");
    }
}

/// The signature check: the first byte says how long the header is, the
/// rest is the body. Only the header the secret makes for that body passes
/// (in either hex case); the header made for the body always passes, and
/// never for a body with one byte changed.
pub fn webhook_signature(data: &[u8]) {
    use flows_exporter::webhook::AppSecrets;
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (header, body) = rest.split_at(n);
    let secrets = AppSecrets::parse("fuzz-app-secret,other-app").expect("two secrets");
    let made = AppSecrets::sign("fuzz-app-secret", body);
    let passes = secrets.verify(Some(header), body).is_ok();
    let h = header.trim_ascii();
    let expected = h.eq_ignore_ascii_case(made.as_bytes())
        || h.eq_ignore_ascii_case(AppSecrets::sign("other-app", body).as_bytes());
    assert_eq!(passes, expected, "header {header:?}");
    assert!(secrets.verify(Some(made.as_bytes()), body).is_ok());
    if let Some(first) = body.first() {
        let mut changed = body.to_vec();
        changed[0] = first.wrapping_add(1);
        assert!(secrets.verify(Some(made.as_bytes()), &changed).is_err());
    }
}

/// A call-metrics intake body: when it is accepted, its texts are bounded,
/// every figure is finite and not negative, the quality ratios are within
/// 0..1, and the body forwarded to Meta reads back as the same call.
pub fn call_metrics_intake(data: &[u8]) {
    use flows_exporter::callmetrics::{self, MAX_TEXT};
    let Ok(m) = callmetrics::parse_intake(data) else {
        return;
    };
    assert!(!m.call_id.is_empty() && m.call_id.len() <= MAX_TEXT);
    assert!(m.end_call_subreason.len() <= MAX_TEXT);
    assert!(m.call_ended_time > 0);
    let a = &m.audio;
    for x in [
        a.jitter,
        a.round_trip_time,
        a.jitter_buffer_delay,
        a.total_samples_duration,
    ] {
        assert!(x.is_finite() && x >= 0.0, "{x}");
    }
    let q = callmetrics::quality(a);
    for r in [q.packet_loss, q.concealed].into_iter().flatten() {
        assert!((0.0..=1.0).contains(&r), "{r}");
    }
    if let Some(d) = q.jitter_buffer_delay {
        assert!(d.is_finite() && d >= 0.0);
    }
    let forwarded = callmetrics::forward_body(&m).to_string();
    let back =
        callmetrics::parse_intake(forwarded.as_bytes()).expect("the forwarded body reads back");
    assert_eq!(back.call_id, m.call_id);
    assert_eq!(back.end_call_reason, m.end_call_reason);
    assert_eq!(back.call_ended_time, m.call_ended_time);
    assert_eq!(back.audio.packets_received, m.audio.packets_received);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
    assert!(close(
        back.audio.jitter_buffer_delay,
        m.audio.jitter_buffer_delay
    ));
    assert!(close(
        back.audio.total_samples_duration,
        m.audio.total_samples_duration
    ));
}
