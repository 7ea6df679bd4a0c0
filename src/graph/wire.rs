//! Graph JSON as it travels on the wire, and the pure functions that turn it into
//! domain types: metric answers, flow listing pages, error envelopes and the
//! rate-limit usage headers. No I/O here; every function takes bytes or strings.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::model::{DataPoint, Flow, FlowSource, FlowStatus, Granularity, MetricKind};

use crate::error::{GraphError, Redactor};
use crate::ratelimit::Usage;

// ---- metric answers ----

#[derive(Debug, Deserialize)]
struct MetricAnswer {
    id: Option<Value>,
    metric: Option<WireMetric>,
}

#[derive(Debug, Deserialize)]
struct WireMetric {
    name: Option<String>,
    granularity: Option<String>,
    #[serde(default)]
    data_points: Vec<WirePoint>,
}

#[derive(Debug, Deserialize)]
struct WirePoint {
    timestamp: String,
    #[serde(default)]
    data: Vec<WireKv>,
}

#[derive(Debug, Deserialize)]
struct WireKv {
    key: String,
    value: Value,
}

/// Hostile text quoted in an error message is cut to this many bytes.
const QUOTE_BYTES: usize = 100;

/// Parses a successful metric answer to the question "`metric` of `flow_id` by
/// `granularity`" and refuses one that cannot be a true answer to it:
///
/// - the echoed `id`, `metric.name` and `metric.granularity` must be there and
///   match what was asked (names case-insensitively);
/// - each period start (`timestamp`) appears once;
/// - values are numbers or numeric strings, finite and not negative; counts
///   (requests, errors, latency buckets, availability checks) are whole
///   numbers and the error rate is a ratio from 0 to 1.
///
/// Keys are kept as sent (redacted); text quoted in an error is redacted, then cut.
pub fn parse_metric_answer(
    body: &[u8],
    flow_id: &str,
    metric: MetricKind,
    granularity: Granularity,
    redact: &Redactor,
) -> Result<Vec<DataPoint>, GraphError> {
    let quote = |s: &str| redact.cut(s, QUOTE_BYTES);
    let answer: MetricAnswer = serde_json::from_slice(body).map_err(|e| {
        GraphError::malformed(format!(
            "metric answer is not the expected JSON: {}",
            redact.cut(&e.to_string(), QUOTE_BYTES)
        ))
    })?;
    match &answer.id {
        Some(Value::String(id)) if id == flow_id => {}
        Some(other) => {
            return Err(GraphError::malformed(format!(
                "asked for flow {flow_id} but the answer is for {}",
                quote(&other.to_string())
            )));
        }
        None => return Err(GraphError::malformed("metric answer has no `id`")),
    }
    let m = answer
        .metric
        .ok_or_else(|| GraphError::malformed("metric answer has no `metric` object"))?;
    match &m.name {
        Some(name) if name.eq_ignore_ascii_case(metric.api_name()) => {}
        Some(name) => {
            return Err(GraphError::malformed(format!(
                "asked for {} but the answer is for {}",
                metric.api_name(),
                quote(name)
            )));
        }
        None => return Err(GraphError::malformed("metric answer has no `metric.name`")),
    }
    match &m.granularity {
        Some(g) if g.eq_ignore_ascii_case(granularity.api_name()) => {}
        Some(g) => {
            return Err(GraphError::malformed(format!(
                "asked for granularity {} but the answer is {}",
                granularity.api_name(),
                quote(g)
            )));
        }
        None => {
            return Err(GraphError::malformed(
                "metric answer has no `metric.granularity`",
            ));
        }
    }
    let mut points = Vec::with_capacity(m.data_points.len());
    for p in m.data_points {
        let start = parse_timestamp(&p.timestamp).ok_or_else(|| {
            GraphError::malformed(format!(
                "data point timestamp `{}` is not ISO 8601",
                quote(&p.timestamp)
            ))
        })?;
        let mut values = Vec::with_capacity(p.data.len());
        for kv in p.data {
            let v = parse_value(&kv.value).ok_or_else(|| {
                GraphError::malformed(format!(
                    "value for key `{}` is not a non-negative number: {}",
                    quote(&kv.key),
                    quote(&kv.value.to_string())
                ))
            })?;
            if let Some(wrong) = value_rule(metric).broken_by(v) {
                return Err(GraphError::malformed(format!(
                    "value for key `{}` of {} is {v}: {wrong}",
                    quote(&kv.key),
                    metric.api_name()
                )));
            }
            values.push((redact.clean(&kv.key), v));
        }
        points.push(DataPoint { start, values });
    }
    points.sort_by_key(|p| p.start);
    if let Some(w) = points.windows(2).find(|w| w[0].start == w[1].start) {
        return Err(GraphError::malformed(format!(
            "the answer has the period {} twice",
            w[0].start.format("%Y-%m-%dT%H:%M:%S%z")
        )));
    }
    Ok(points)
}

/// What a metric's values must be, beyond finite and not negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueRule {
    /// A number of requests or checks.
    Count,
    /// A ratio of failed to all requests.
    Ratio,
}

fn value_rule(metric: MetricKind) -> ValueRule {
    match metric {
        MetricKind::RequestErrorRate => ValueRule::Ratio,
        MetricKind::RequestCount
        | MetricKind::RequestError
        | MetricKind::LatencySecondsCeil
        | MetricKind::Availability => ValueRule::Count,
    }
}

impl ValueRule {
    /// Why `v` cannot be such a value, if it cannot.
    fn broken_by(self, v: f64) -> Option<&'static str> {
        match self {
            ValueRule::Count if v.fract() != 0.0 => Some("a count must be a whole number"),
            ValueRule::Ratio if v > 1.0 => Some("an error rate is a ratio from 0 to 1"),
            _ => None,
        }
    }
}

/// Graph sends `2024-01-28T08:00:00+0000`; accept `+00:00` and `Z` too.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z") {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .ok()
        .map(|n| n.and_utc())
}

/// A value is a JSON number or a string holding one (Meta's docs show both).
pub fn parse_value(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f.is_finite() && f >= 0.0).then_some(f)
}

// ---- flow listing ----

/// The longest flow name kept; longer ones are cut (they become a label).
pub const MAX_NAME_BYTES: usize = 256;
/// The longest status, health or version string kept.
pub const MAX_FIELD_BYTES: usize = 32;
/// The longest flow id taken from a listing (Graph ids are 15 to 17 digits).
const MAX_ID_DIGITS: usize = 32;

#[derive(Debug, Deserialize)]
struct FlowsPage {
    #[serde(default)]
    data: Vec<Value>,
    paging: Option<Paging>,
}

#[derive(Debug, Deserialize)]
struct Paging {
    cursors: Option<Cursors>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Cursors {
    after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireFlow {
    id: Option<Value>,
    name: Option<Value>,
    status: Option<Value>,
    data_api_version: Option<Value>,
    health_status: Option<WireHealth>,
}

#[derive(Debug, Default, Deserialize)]
struct WireHealth {
    can_send_message: Option<Value>,
}

/// One page of `GET /{waba}/flows`: its flows, the entries skipped because
/// they are not a flow this exporter can poll (with why, for the log), and the
/// `after` cursor of the next page, if Graph says there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub flows: Vec<Flow>,
    pub skipped: Vec<String>,
    pub next_after: Option<String>,
}

/// Parses a listing page. A page may be empty and still have a next page.
/// `paging.next` names Meta's host; only its `after` cursor is kept, so the
/// caller can ask the configured base URL for the next page. An entry whose
/// id is not a Graph id (it goes into a URL path) is skipped, not the page;
/// names and other strings are redacted and cut.
pub fn parse_flows_page(body: &[u8], waba_id: &str, redact: &Redactor) -> Result<Page, GraphError> {
    let page: FlowsPage = serde_json::from_slice(body).map_err(|e| {
        GraphError::malformed(format!(
            "flow listing is not the expected JSON: {}",
            redact.cut(&e.to_string(), QUOTE_BYTES)
        ))
    })?;
    let text = |v: Option<Value>, max: usize| match v {
        Some(Value::String(s)) => redact.cut(&s, max),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let mut flows = Vec::with_capacity(page.data.len());
    let mut skipped = Vec::new();
    for entry in page.data {
        let f: WireFlow = match serde_json::from_value(entry) {
            Ok(f) => f,
            Err(e) => {
                skipped.push(format!(
                    "not a flow object: {}",
                    redact.cut(&e.to_string(), QUOTE_BYTES)
                ));
                continue;
            }
        };
        let id = match f.id {
            Some(Value::String(id))
                if !id.is_empty()
                    && id.len() <= MAX_ID_DIGITS
                    && id.bytes().all(|b| b.is_ascii_digit()) =>
            {
                id
            }
            other => {
                let shown = other.map_or_else(|| "none".to_owned(), |v| v.to_string());
                skipped.push(format!(
                    "id {} is not a Graph id",
                    redact.cut(&shown, QUOTE_BYTES)
                ));
                continue;
            }
        };
        flows.push(Flow {
            name: text(f.name, MAX_NAME_BYTES),
            waba_id: waba_id.to_owned(),
            status: match text(f.status, MAX_FIELD_BYTES) {
                s if s.is_empty() => FlowStatus::Unknown,
                s => FlowStatus::parse(&s),
            },
            data_api_version: text(f.data_api_version, MAX_FIELD_BYTES),
            can_send_message: text(
                f.health_status.and_then(|h| h.can_send_message),
                MAX_FIELD_BYTES,
            ),
            source: FlowSource::Discovered,
            id,
        });
    }
    let next_after = match page.paging {
        Some(Paging {
            next: Some(next),
            cursors,
        }) => {
            let from_link = reqwest::Url::parse(&next).ok().and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "after")
                    .map(|(_, v)| v.into_owned())
            });
            let cursor = from_link.or_else(|| cursors.and_then(|c| c.after));
            Some(cursor.ok_or_else(|| {
                GraphError::malformed("flow listing has paging.next but no `after` cursor")
            })?)
        }
        _ => None,
    };
    Ok(Page {
        flows,
        skipped,
        next_after,
    })
}

// ---- rate-limit headers ----

fn field(v: &Value, name: &str) -> f64 {
    v.get(name).and_then(parse_value).unwrap_or(0.0)
}

/// Parses `X-App-Usage`; `None` when absent or unreadable.
pub fn parse_app_usage(header: &str) -> Option<Usage> {
    let v: Value = serde_json::from_str(header).ok()?;
    v.is_object().then(|| Usage {
        scope: "app",
        business_id: String::new(),
        kind: String::new(),
        call_count: field(&v, "call_count"),
        total_cputime: field(&v, "total_cputime"),
        total_time: field(&v, "total_time"),
        regain_minutes: None,
    })
}

/// Parses `X-Business-Use-Case-Usage`: an object of business id to a list of
/// use-case readings. Ids and types are redacted and cut: they become labels.
pub fn parse_business_usage(header: &str, redact: &Redactor) -> Vec<Usage> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(header) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (business_id, list) in map {
        let Value::Array(list) = list else { continue };
        for u in list {
            out.push(Usage {
                scope: "business_use_case",
                business_id: redact.cut(&business_id, 32),
                kind: redact.cut(u.get("type").and_then(Value::as_str).unwrap_or(""), 64),
                call_count: field(&u, "call_count"),
                total_cputime: field(&u, "total_cputime"),
                total_time: field(&u, "total_time"),
                regain_minutes: u
                    .get("estimated_time_to_regain_access")
                    .and_then(parse_value),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use chrono::TimeZone;

    fn parse(body: &str, metric: MetricKind, g: Granularity) -> Result<Vec<DataPoint>, GraphError> {
        parse_metric_answer(body.as_bytes(), "123", metric, g, &Redactor::none())
    }

    fn check_points(body: &str, metric: MetricKind, g: Granularity) -> Vec<DataPoint> {
        parse(body, metric, g).expect("parses")
    }

    /// An HOUR answer for flow 123 with these data points (JSON).
    fn hour_answer(metric: MetricKind, points: &str) -> String {
        format!(
            r#"{{"id":"123","metric":{{"name":"{}","granularity":"HOUR","data_points":[{points}]}}}}"#,
            metric.api_name()
        )
    }

    #[test]
    fn metric_answer_from_the_docs() {
        let body = r#"{"id":"123","metric":{"granularity":"DAY","name":"ENDPOINT_REQUEST_ERROR",
            "data_points":[{"timestamp":"2024-01-29T08:00:00+0000","data":[{"key":"unexpected_http_status_code","value":12}]},
                           {"timestamp":"2024-01-28T08:00:00+0000","data":[{"key":"timeout_error","value":5}]}]}}"#;
        let points = check_points(body, MetricKind::RequestError, Granularity::Day);
        assert_eq!(points.len(), 2);
        assert_eq!(
            points[0].start,
            Utc.with_ymd_and_hms(2024, 1, 28, 8, 0, 0).unwrap()
        );
        assert_eq!(points[0].values, vec![("timeout_error".to_string(), 5.0)]);
        assert_eq!(points[1].values[0].1, 12.0);
    }

    #[test]
    fn string_values_and_lower_case_echo() {
        let body = r#"{"id":"123","metric":{"granularity":"day","name":"endpoint_request_error_rate",
            "data_points":[{"timestamp":"2024-01-28T08:00:00+0000","data":[{"key":"value","value":"0.12625250501002"}]}]}}"#;
        let points = check_points(body, MetricKind::RequestErrorRate, Granularity::Day);
        assert_eq!(points[0].values[0].1, 0.12625250501002);
    }

    #[test]
    fn error_messages_quote_hostile_text_bounded() {
        let long = "x".repeat(100_000);
        let bodies = [
            format!(r#"{{"id":"123","metric":{{"name":"{long}","data_points":[]}}}}"#),
            format!(r#"{{"id":"{long}","metric":{{"name":"x","data_points":[]}}}}"#),
            hour_answer(
                MetricKind::RequestCount,
                &format!(r#"{{"timestamp":"{long}","data":[]}}"#),
            ),
            hour_answer(
                MetricKind::RequestCount,
                &format!(
                    r#"{{"timestamp":"2024-01-28T08:00:00+0000","data":[{{"key":"{long}","value":"{long}"}}]}}"#
                ),
            ),
        ];
        for body in bodies {
            let e =
                parse(&body, MetricKind::RequestCount, Granularity::Hour).expect_err("malformed");
            assert_eq!(e.class, ErrorClass::Malformed);
            assert!(e.message.len() < 400, "{} bytes", e.message.len());
        }
    }

    #[test]
    fn hostile_values_are_rejected() {
        for v in [
            r#""NaN""#, r#""-3""#, "-1", r#""abc""#, "null", "[1]", r#""inf""#,
        ] {
            let body = hour_answer(
                MetricKind::RequestCount,
                &format!(
                    r#"{{"timestamp":"2024-01-28T08:00:00+0000","data":[{{"key":"value","value":{v}}}]}}"#
                ),
            );
            let e = parse(&body, MetricKind::RequestCount, Granularity::Hour).expect_err(v);
            assert_eq!(e.class, ErrorClass::Malformed, "{v}");
        }
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let cases = [
            "",
            "{",
            "[]",
            r#"{"id":"123"}"#,
            r#"{"id":"123","metric":{"name":"ENDPOINT_AVAILABILITY","granularity":"HOUR","data_points":[]}}"#,
            r#"{"id":"123","metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"DAY","data_points":[]}}"#,
            r#"{"id":"123","metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":[{"timestamp":"yesterday","data":[]}]}}"#,
            r#"{"id":"123","metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":"no"}}"#,
            // Nothing echoed, or not what was asked.
            r#"{"metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":[]}}"#,
            r#"{"id":"999","metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":[]}}"#,
            r#"{"id":123,"metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":[]}}"#,
            r#"{"id":"123","metric":{"granularity":"HOUR","data_points":[]}}"#,
            r#"{"id":"123","metric":{"name":"ENDPOINT_REQUEST_COUNT","data_points":[]}}"#,
        ];
        for body in cases {
            let e = parse(body, MetricKind::RequestCount, Granularity::Hour).expect_err(body);
            assert_eq!(e.class, ErrorClass::Malformed, "{body}");
        }
    }

    #[test]
    fn impossible_answers_are_malformed() {
        let point = |t: &str, key: &str, v: &str| {
            format!(r#"{{"timestamp":"{t}","data":[{{"key":"{key}","value":{v}}}]}}"#)
        };
        let t1 = "2024-01-28T08:00:00+0000";
        let t2 = "2024-01-28T09:00:00+0000";
        let cases = [
            // The same period twice (the last one would silently win).
            (
                MetricKind::RequestCount,
                format!("{},{}", point(t1, "value", "1"), point(t1, "value", "2")),
            ),
            // The same instant written two ways is the same period.
            (
                MetricKind::RequestCount,
                format!(
                    "{},{}",
                    point(t1, "value", "1"),
                    point("2024-01-28T08:00:00Z", "value", "2")
                ),
            ),
            (MetricKind::RequestErrorRate, point(t1, "value", "7.5")),
            (MetricKind::RequestCount, point(t1, "value", "2.5")),
            (
                MetricKind::RequestError,
                point(t1, "timeout_error", "\"0.5\""),
            ),
            (MetricKind::LatencySecondsCeil, point(t1, "2", "1.25")),
            (MetricKind::Availability, point(t1, "succeeded", "3.1")),
        ];
        for (metric, points) in cases {
            let body = hour_answer(metric, &points);
            let e = parse(&body, metric, Granularity::Hour).expect_err(&body);
            assert_eq!(e.class, ErrorClass::Malformed, "{body}");
        }
        // The limits themselves are fine.
        let ok = [
            (MetricKind::RequestErrorRate, point(t1, "value", "1")),
            (MetricKind::RequestErrorRate, point(t1, "value", "0")),
            (MetricKind::RequestCount, point(t1, "value", "\"315\"")),
            (
                MetricKind::RequestCount,
                format!("{},{}", point(t1, "value", "1"), point(t2, "value", "2")),
            ),
        ];
        for (metric, points) in ok {
            let body = hour_answer(metric, &points);
            parse(&body, metric, Granularity::Hour).expect(&body);
        }
    }

    #[test]
    fn the_token_never_travels_in_keys_or_quotes() {
        let token = "EAAsecret-token-123456";
        let redact = Redactor::new([token]);
        let body = hour_answer(
            MetricKind::RequestError,
            &format!(
                r#"{{"timestamp":"2024-01-28T08:00:00+0000","data":[{{"key":"{token}","value":1}}]}}"#
            ),
        );
        let points = parse_metric_answer(
            body.as_bytes(),
            "123",
            MetricKind::RequestError,
            Granularity::Hour,
            &redact,
        )
        .expect("parses");
        assert_eq!(points[0].values[0].0, crate::error::REDACTED);
        let bad = hour_answer(
            MetricKind::RequestCount,
            &format!(r#"{{"timestamp":"{}{token}","data":[]}}"#, "y".repeat(90)),
        );
        let e = parse_metric_answer(
            bad.as_bytes(),
            "123",
            MetricKind::RequestCount,
            Granularity::Hour,
            &redact,
        )
        .expect_err("bad timestamp");
        assert!(!e.message.contains("EAAsecret"), "{}", e.message);
        let page = format!(
            r#"{{"data":[{{"id":"1","name":"{token}","status":"{token}"}},{{"id":"{token}"}}]}}"#
        );
        let page = parse_flows_page(page.as_bytes(), "9", &redact).expect("parses");
        assert_eq!(page.flows[0].name, crate::error::REDACTED);
        assert!(!format!("{page:?}").contains("EAAsecret"), "{page:?}");
        let usage = parse_business_usage(
            &format!(r#"{{"{token}":[{{"type":"{token}","call_count":1}}]}}"#),
            &redact,
        );
        assert!(!format!("{usage:?}").contains("EAAsecret"), "{usage:?}");
    }

    #[test]
    fn timestamps() {
        let want = Utc.with_ymd_and_hms(2024, 1, 28, 8, 0, 0).unwrap();
        assert_eq!(parse_timestamp("2024-01-28T08:00:00+0000"), Some(want));
        assert_eq!(parse_timestamp("2024-01-28T08:00:00+00:00"), Some(want));
        assert_eq!(parse_timestamp("2024-01-28T08:00:00Z"), Some(want));
        assert_eq!(parse_timestamp("2024-01-28T01:00:00-0700"), Some(want));
        assert_eq!(parse_timestamp("2024-01-28"), None);
    }

    #[test]
    fn flows_page_takes_cursor_from_next_link() {
        let body = r#"{"data":[{"id":"111","name":"A","status":"PUBLISHED","data_api_version":"3.0",
            "health_status":{"can_send_message":"LIMITED","entities":[]}}],
            "paging":{"cursors":{"before":"b","after":"QVFIUm"},
            "next":"https://graph.facebook.com/v23.0/999/flows?fields=id&after=QVFIUmxy%3D&limit=2"}}"#;
        let page = parse_flows_page(body.as_bytes(), "999", &Redactor::none()).expect("parses");
        assert_eq!(page.next_after.as_deref(), Some("QVFIUmxy="));
        assert_eq!(page.flows[0].status, FlowStatus::Published);
        assert_eq!(page.flows[0].can_send_message, "LIMITED");
        assert_eq!(page.flows[0].waba_id, "999");
    }

    #[test]
    fn empty_page_with_next_and_last_page() {
        let none = Redactor::none();
        let p = parse_flows_page(
            br#"{"data":[],"paging":{"cursors":{"after":"X"},"next":"https://graph.facebook.com/v1/9/flows"}}"#,
            "9",
            &none,
        )
        .expect("parses");
        assert!(p.flows.is_empty());
        assert_eq!(p.next_after.as_deref(), Some("X"));
        let last = parse_flows_page(
            br#"{"data":[],"paging":{"cursors":{"after":"X"}}}"#,
            "9",
            &none,
        )
        .expect("parses");
        assert_eq!(last.next_after, None);
        let e = parse_flows_page(br#"{"data":{"id":"1"}}"#, "9", &none).expect_err("bad shape");
        assert_eq!(e.class, ErrorClass::Malformed);
    }

    #[test]
    fn entries_that_are_not_flows_are_skipped_not_the_page() {
        let body =
            br#"{"data":[{"id":"../me"},{"id":"111","name":"A"},{"id":112},"text",{"name":"no id"},
            {"id":"113","name":"B","status":7}]}"#;
        let page = parse_flows_page(body, "9", &Redactor::none()).expect("parses");
        let ids: Vec<&str> = page.flows.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["111", "113"]);
        assert_eq!(page.skipped.len(), 4, "{:?}", page.skipped);
        assert_eq!(page.flows[1].status, FlowStatus::parse("7"));
    }

    #[test]
    fn long_names_and_statuses_are_cut() {
        let body = format!(
            r#"{{"data":[{{"id":"1","name":"{}","status":"{}","data_api_version":"{}"}}]}}"#,
            "n".repeat(6 << 20),
            "S".repeat(1000),
            "9".repeat(1000)
        );
        let page = parse_flows_page(body.as_bytes(), "9", &Redactor::none()).expect("parses");
        let f = &page.flows[0];
        assert!(f.name.len() <= MAX_NAME_BYTES + 3, "{}", f.name.len());
        assert!(f.status.as_str().len() <= MAX_FIELD_BYTES + 3);
        assert!(f.data_api_version.len() <= MAX_FIELD_BYTES + 3);
    }

    #[test]
    fn usage_headers() {
        let app = parse_app_usage(r#"{"call_count":28,"total_time":25,"total_cputime":"25"}"#)
            .expect("app");
        assert_eq!(
            (app.call_count, app.total_time, app.total_cputime),
            (28.0, 25.0, 25.0)
        );
        let buc = parse_business_usage(
            r#"{"102290129340398":[{"type":"whatsapp_business_management","call_count":95,"total_cputime":1,"total_time":2,"estimated_time_to_regain_access":7}]}"#,
            &Redactor::none(),
        );
        assert_eq!(buc.len(), 1);
        assert_eq!(buc[0].business_id, "102290129340398");
        assert_eq!(buc[0].kind, "whatsapp_business_management");
        assert_eq!(buc[0].call_count, 95.0);
        assert_eq!(buc[0].regain_minutes, Some(7.0));
        assert!(parse_business_usage("garbage", &Redactor::none()).is_empty());
        assert!(parse_app_usage("[]").is_none());
    }
}
