//! Graph JSON as it travels on the wire, and the pure functions that turn it into
//! domain types: metric answers, flow listing pages, error envelopes and the
//! rate-limit usage headers. No I/O here; every function takes bytes or strings.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::model::{DataPoint, Flow, FlowSource, FlowStatus, Granularity, MetricKind};

use crate::error::{GraphError, truncate};

// ---- metric answers ----

#[derive(Debug, Deserialize)]
struct MetricAnswer {
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

/// Parses a successful metric answer. The echoed name and granularity must match
/// what was asked; values may be numbers or numeric strings; every value must be
/// a finite, non-negative number.
pub fn parse_metric_answer(
    body: &[u8],
    metric: MetricKind,
    granularity: Granularity,
) -> Result<Vec<DataPoint>, GraphError> {
    let answer: MetricAnswer = serde_json::from_slice(body).map_err(|e| {
        GraphError::malformed(format!("metric answer is not the expected JSON: {e}"))
    })?;
    let m = answer
        .metric
        .ok_or_else(|| GraphError::malformed("metric answer has no `metric` object"))?;
    if let Some(name) = &m.name {
        if !name.eq_ignore_ascii_case(metric.api_name()) {
            return Err(GraphError::malformed(format!(
                "asked for {} but the answer is for {}",
                metric.api_name(),
                truncate(name, 100)
            )));
        }
    }
    if let Some(g) = &m.granularity {
        if !g.eq_ignore_ascii_case(granularity.api_name()) {
            return Err(GraphError::malformed(format!(
                "asked for granularity {} but the answer is {}",
                granularity.api_name(),
                truncate(g, 100)
            )));
        }
    }
    let mut points = Vec::with_capacity(m.data_points.len());
    for p in m.data_points {
        let start = parse_timestamp(&p.timestamp).ok_or_else(|| {
            GraphError::malformed(format!(
                "data point timestamp `{}` is not ISO 8601",
                truncate(&p.timestamp, 100)
            ))
        })?;
        let mut values = Vec::with_capacity(p.data.len());
        for kv in p.data {
            let v = parse_value(&kv.value).ok_or_else(|| {
                GraphError::malformed(format!(
                    "value for key `{}` is not a non-negative number: {}",
                    truncate(&kv.key, 100),
                    truncate(&kv.value.to_string(), 100)
                ))
            })?;
            values.push((kv.key, v));
        }
        points.push(DataPoint { start, values });
    }
    points.sort_by_key(|p| p.start);
    Ok(points)
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

#[derive(Debug, Deserialize)]
struct FlowsPage {
    #[serde(default)]
    data: Vec<WireFlow>,
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

#[derive(Debug, Deserialize)]
struct WireFlow {
    id: String,
    name: Option<String>,
    status: Option<String>,
    data_api_version: Option<Value>,
    health_status: Option<WireHealth>,
}

#[derive(Debug, Deserialize)]
struct WireHealth {
    can_send_message: Option<String>,
}

/// One page of `GET /{waba}/flows`: its flows and the `after` cursor of the next
/// page, if Graph says there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub flows: Vec<Flow>,
    pub next_after: Option<String>,
}

/// Parses a listing page. A page may be empty and still have a next page.
/// `paging.next` names Meta's host; only its `after` cursor is kept, so the
/// caller can ask the configured base URL for the next page.
pub fn parse_flows_page(body: &[u8], waba_id: &str) -> Result<Page, GraphError> {
    let page: FlowsPage = serde_json::from_slice(body).map_err(|e| {
        GraphError::malformed(format!("flow listing is not the expected JSON: {e}"))
    })?;
    let mut flows = Vec::with_capacity(page.data.len());
    for f in page.data {
        if f.id.is_empty() || !f.id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(GraphError::malformed(format!(
                "flow listing has an id that is not a Graph id: {:?}",
                f.id
            )));
        }
        let data_api_version = match f.data_api_version {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        flows.push(Flow {
            name: f.name.unwrap_or_default(),
            waba_id: waba_id.to_owned(),
            status: f
                .status
                .as_deref()
                .map(FlowStatus::parse)
                .unwrap_or(FlowStatus::Unknown),
            data_api_version,
            can_send_message: f
                .health_status
                .and_then(|h| h.can_send_message)
                .unwrap_or_default(),
            source: FlowSource::Discovered,
            id: f.id,
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
    Ok(Page { flows, next_after })
}

// ---- rate-limit headers ----

/// One usage reading from a rate-limit header, in percent of the hourly allowance.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// `app` for X-App-Usage, `business_use_case` for X-Business-Use-Case-Usage.
    pub scope: &'static str,
    /// The business object id (empty for app usage).
    pub business_id: String,
    /// The use-case `type` (empty for app usage).
    pub kind: String,
    pub call_count: f64,
    pub total_cputime: f64,
    pub total_time: f64,
    /// `estimated_time_to_regain_access`, in minutes.
    pub regain_minutes: Option<f64>,
}

impl Usage {
    /// The highest of the three percentages, as a fraction (1.0 = 100 %): Graph
    /// throttles when any of them reaches 100.
    pub fn fraction(&self) -> f64 {
        let pct = self.call_count.max(self.total_cputime).max(self.total_time);
        if pct.is_finite() {
            pct.max(0.0) / 100.0
        } else {
            0.0
        }
    }
}

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
/// use-case readings.
pub fn parse_business_usage(header: &str) -> Vec<Usage> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(header) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (business_id, list) in map {
        let Value::Array(list) = list else { continue };
        for u in list {
            out.push(Usage {
                scope: "business_use_case",
                business_id: truncate(&business_id, 32),
                kind: truncate(u.get("type").and_then(Value::as_str).unwrap_or(""), 64),
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

    fn check_points(body: &str, metric: MetricKind, g: Granularity) -> Vec<DataPoint> {
        parse_metric_answer(body.as_bytes(), metric, g).expect("parses")
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
        let body = r#"{"id":"1","metric":{"granularity":"day","name":"endpoint_request_error_rate",
            "data_points":[{"timestamp":"2024-01-28T08:00:00+0000","data":[{"key":"value","value":"0.12625250501002"}]}]}}"#;
        let points = check_points(body, MetricKind::RequestErrorRate, Granularity::Day);
        assert_eq!(points[0].values[0].1, 0.12625250501002);
    }

    #[test]
    fn error_messages_quote_hostile_text_bounded() {
        let long = "x".repeat(100_000);
        let bodies = [
            format!(r#"{{"metric":{{"name":"{long}","data_points":[]}}}}"#),
            format!(r#"{{"metric":{{"data_points":[{{"timestamp":"{long}","data":[]}}]}}}}"#),
            format!(
                r#"{{"metric":{{"data_points":[{{"timestamp":"2024-01-28T08:00:00+0000","data":[{{"key":"{long}","value":"{long}"}}]}}]}}}}"#
            ),
        ];
        for body in bodies {
            let e =
                parse_metric_answer(body.as_bytes(), MetricKind::RequestCount, Granularity::Hour)
                    .expect_err("malformed");
            assert_eq!(e.class, ErrorClass::Malformed);
            assert!(e.message.len() < 400, "{} bytes", e.message.len());
        }
    }

    #[test]
    fn hostile_values_are_rejected() {
        for v in [
            r#""NaN""#, r#""-3""#, "-1", r#""abc""#, "null", "[1]", r#""inf""#,
        ] {
            let body = format!(
                r#"{{"metric":{{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":[{{"timestamp":"2024-01-28T08:00:00+0000","data":[{{"key":"value","value":{v}}}]}}]}}}}"#
            );
            let e =
                parse_metric_answer(body.as_bytes(), MetricKind::RequestCount, Granularity::Hour)
                    .expect_err(v);
            assert_eq!(e.class, ErrorClass::Malformed, "{v}");
        }
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let cases = [
            "",
            "{",
            "[]",
            r#"{"id":"1"}"#,
            r#"{"metric":{"name":"ENDPOINT_AVAILABILITY","granularity":"HOUR","data_points":[]}}"#,
            r#"{"metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"DAY","data_points":[]}}"#,
            r#"{"metric":{"data_points":[{"timestamp":"yesterday","data":[]}]}}"#,
            r#"{"metric":{"data_points":"no"}}"#,
        ];
        for body in cases {
            let e =
                parse_metric_answer(body.as_bytes(), MetricKind::RequestCount, Granularity::Hour)
                    .expect_err(body);
            assert_eq!(e.class, ErrorClass::Malformed, "{body}");
        }
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
        let page = parse_flows_page(body.as_bytes(), "999").expect("parses");
        assert_eq!(page.next_after.as_deref(), Some("QVFIUmxy="));
        assert_eq!(page.flows[0].status, FlowStatus::Published);
        assert_eq!(page.flows[0].can_send_message, "LIMITED");
        assert_eq!(page.flows[0].waba_id, "999");
    }

    #[test]
    fn empty_page_with_next_and_last_page() {
        let p = parse_flows_page(
            br#"{"data":[],"paging":{"cursors":{"after":"X"},"next":"https://graph.facebook.com/v1/9/flows"}}"#,
            "9",
        )
        .expect("parses");
        assert!(p.flows.is_empty());
        assert_eq!(p.next_after.as_deref(), Some("X"));
        let last = parse_flows_page(br#"{"data":[],"paging":{"cursors":{"after":"X"}}}"#, "9")
            .expect("parses");
        assert_eq!(last.next_after, None);
        let e = parse_flows_page(br#"{"data":[{"id":"../me"}]}"#, "9").expect_err("bad id");
        assert_eq!(e.class, ErrorClass::Malformed);
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
        );
        assert_eq!(buc.len(), 1);
        assert_eq!(buc[0].business_id, "102290129340398");
        assert_eq!(buc[0].kind, "whatsapp_business_management");
        assert_eq!(buc[0].call_count, 95.0);
        assert_eq!(buc[0].regain_minutes, Some(7.0));
        assert!(parse_business_usage("garbage").is_empty());
        assert!(parse_app_usage("[]").is_none());
    }
}
