//! End-to-end tests of the sandbox over real sockets: a server on 127.0.0.1:0 and a
//! minimal HTTP/1.1 client, so what is tested is what the exporter will see.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

const TOKEN: &str = "EAAsandboxtoken";
const APPOINTMENTS: &str = "1180349906393871";
const LEAD_QUALIFICATION: &str = "1312058623344795";
const SPRING_SURVEY: &str = "1054620873421660";
const LOYALTY: &str = "1467393620448117";
const FEEDBACK: &str = "839201746158334";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 30, 12, 0, 0)
        .single()
        .expect("valid instant")
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

fn realistic() -> Sandbox {
    Sandbox::realistic(TOKEN, Clock::fixed(now()))
}

/// A sandbox serving on a free local port.
struct Running {
    sandbox: Sandbox,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl Running {
    async fn start(sandbox: Sandbox) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandbox.clone().serve(listener, async {
            // A dropped sender also means stop.
            let _ = stopped.await;
        }));
        Running {
            sandbox,
            addr,
            stop,
            task,
        }
    }

    async fn get(&self, path_and_query: &str) -> HttpAnswer {
        get(self.addr, path_and_query, Some(TOKEN)).await
    }

    async fn metric(&self, flow: &str, name: &str, granularity: &str, window: &str) -> HttpAnswer {
        let path =
            format!("/v23.0/{flow}?fields=metric.name({name}).granularity({granularity}){window}");
        self.get(&path).await
    }

    /// Stops the server and checks that `serve` returned cleanly.
    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve stops in time")
            .expect("serve task did not panic");
        result.expect("serve returns Ok");
    }
}

#[derive(Debug)]
struct HttpAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpAnswer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("body is JSON")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `(timestamp, [(key, value)])` of a metric answer, values read as numbers whether
    /// they came as JSON numbers or strings.
    fn points(&self) -> Vec<(String, Vec<(String, f64)>)> {
        let json = self.json();
        let points = json["metric"]["data_points"]
            .as_array()
            .expect("data_points array");
        points
            .iter()
            .map(|p| {
                let data = p["data"]
                    .as_array()
                    .expect("data array")
                    .iter()
                    .map(|kv| {
                        let value = match &kv["value"] {
                            Value::String(s) => s.parse().expect("numeric string"),
                            v => v.as_f64().expect("numeric value"),
                        };
                        (kv["key"].as_str().expect("key").to_owned(), value)
                    })
                    .collect();
                (p["timestamp"].as_str().expect("timestamp").to_owned(), data)
            })
            .collect()
    }
}

/// One HTTP/1.1 GET over a fresh connection, read to the end.
async fn get(addr: SocketAddr, path_and_query: &str, token: Option<&str>) -> HttpAnswer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");

    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn points_of(
    sandbox: &Sandbox,
    flow: &str,
    metric: MetricKind,
    granularity: Granularity,
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
) -> Vec<ServedPoint> {
    sandbox.data_points(flow, metric, granularity, since, until)
}

fn value(data: &[(String, f64)], key: &str) -> f64 {
    data.iter().find(|(k, _)| k == key).map_or(0.0, |(_, v)| *v)
}

fn total(data: &[(String, f64)]) -> f64 {
    data.iter().map(|(_, v)| v).sum()
}

#[tokio::test]
async fn paging_visits_every_flow_across_pages_including_an_empty_one() {
    let server = Running::start(realistic()).await;
    let waba = REALISTIC_WABA_IDS[0];
    let mut path = format!("/v23.0/{waba}/flows?fields=id,name,status");
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut empty_pages_with_next = 0;
    loop {
        let answer = server.get(&path).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let json = answer.json();
        let data = json["data"].as_array().expect("data");
        pages += 1;
        for flow in data {
            assert_eq!(
                flow.as_object().map(|o| o.len()),
                Some(3),
                "only the requested fields: {flow}"
            );
            seen.push(flow["id"].as_str().expect("id").to_owned());
        }
        let Some(next) = json["paging"]["next"].as_str() else {
            break;
        };
        if data.is_empty() {
            empty_pages_with_next += 1;
        }
        // The exporter's job: keep the path and query, swap Meta's host for ours.
        let rest = next
            .strip_prefix("https://graph.facebook.com")
            .expect("next names Meta's host");
        assert!(rest.contains("after="), "{next}");
        path = rest.to_owned();
    }

    let expected: Vec<String> = server
        .sandbox
        .flows()
        .into_iter()
        .filter(|f| f.waba_id == waba)
        .map(|f| f.id)
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(expected.len(), 5);
    // 2 + empty + 2 + 1.
    assert_eq!(pages, 4);
    assert_eq!(empty_pages_with_next, 1);
    server.stop().await;
}

#[tokio::test]
async fn listing_serves_health_status_and_respects_limit() {
    let server = Running::start(realistic()).await;
    let waba = REALISTIC_WABA_IDS[1];
    let answer = server
        .get(&format!(
            "/v23.0/{waba}/flows?fields=id,status,data_api_version,health_status&limit=10"
        ))
        .await;
    let json = answer.json();
    let data = json["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    assert!(json["paging"].get("next").is_none(), "one page only");
    let store_locator = &data[2];
    assert_eq!(store_locator["status"], "BLOCKED");
    assert_eq!(
        store_locator["health_status"]["can_send_message"],
        "BLOCKED"
    );
    let entities = store_locator["health_status"]["entities"]
        .as_array()
        .expect("entities");
    assert_eq!(entities[0]["entity_type"], "FLOW");
    assert_eq!(entities[0]["id"], store_locator["id"]);
    assert_eq!(entities[1]["entity_type"], "WABA");
    assert_eq!(entities[1]["id"], waba);

    let unknown = server.get("/v23.0/123456789012345/flows?fields=id").await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["error"]["code"], 100);
    assert_eq!(unknown.json()["error"]["error_subcode"], 33);
    server.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_rejected_without_echoing_it() {
    let server = Running::start(realistic()).await;
    let path = format!(
        "/v23.0/{APPOINTMENTS}?fields=metric.name(ENDPOINT_REQUEST_COUNT).granularity(DAY)"
    );
    for token in [Some("EAAwrongsecret42"), None] {
        let answer = get(server.addr, &path, token).await;
        assert_eq!(answer.status, 401);
        let error = &answer.json()["error"];
        assert_eq!(error["code"], 190);
        assert_eq!(error["type"], "OAuthException");
        assert!(
            error["fbtrace_id"]
                .as_str()
                .is_some_and(|t| t.starts_with('A'))
        );
        assert!(!answer.body.contains("EAAwrongsecret42"));
        assert!(!answer.body.contains(TOKEN));
    }

    server.sandbox.set_token("EAAnewtoken");
    assert_eq!(server.get(&path).await.status, 401, "the old token is gone");
    assert_eq!(
        get(server.addr, &path, Some("EAAnewtoken")).await.status,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn latency_buckets_sum_to_the_request_count_of_the_same_period() {
    let server = Running::start(realistic()).await;
    for granularity in ["HOUR", "DAY", "LIFETIME"] {
        let window = ".since(2024-01-28).until(2024-01-29)";
        let counts = server
            .metric(APPOINTMENTS, "ENDPOINT_REQUEST_COUNT", granularity, window)
            .await
            .points();
        let latency = server
            .metric(
                APPOINTMENTS,
                "ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL",
                granularity,
                window,
            )
            .await
            .points();
        assert!(!counts.is_empty());
        assert_eq!(counts.len(), latency.len());
        for ((t1, count), (t2, buckets)) in counts.iter().zip(&latency) {
            assert_eq!(t1, t2);
            assert_eq!(total(buckets), value(count, "value"), "{granularity} {t1}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn day_points_sum_their_hours() {
    let server = Running::start(realistic()).await;
    // The DAY period of 2024-01-28 runs from 08:00 UTC that day to 08:00 UTC the next.
    let day = server
        .metric(
            APPOINTMENTS,
            "ENDPOINT_REQUEST_ERROR",
            "DAY",
            ".since(2024-01-28).until(2024-01-28)",
        )
        .await
        .points();
    let hours = server
        .metric(
            APPOINTMENTS,
            "ENDPOINT_REQUEST_ERROR",
            "HOUR",
            ".since(2024-01-28).until(2024-01-29)",
        )
        .await
        .points();
    assert_eq!(day.len(), 1);
    assert_eq!(day[0].0, "2024-01-28T08:00:00+0000");
    let in_day: Vec<_> = hours
        .iter()
        .filter(|(t, _)| {
            t.as_str() >= "2024-01-28T08:00:00+0000" && t.as_str() < "2024-01-29T08:00:00+0000"
        })
        .collect();
    assert_eq!(in_day.len(), 24);
    for key in ERROR_KEY_NAMES {
        let summed: f64 = in_day.iter().map(|(_, data)| value(data, key)).sum();
        assert_eq!(value(&day[0].1, key), summed, "{key}");
    }

    // The error rate of a day is recomputed from the day's sums.
    let rate = server
        .metric(
            APPOINTMENTS,
            "ENDPOINT_REQUEST_ERROR_RATE",
            "DAY",
            ".since(2024-01-28).until(2024-01-28)",
        )
        .await
        .points();
    let count = server
        .metric(
            APPOINTMENTS,
            "ENDPOINT_REQUEST_COUNT",
            "DAY",
            ".since(2024-01-28).until(2024-01-28)",
        )
        .await
        .points();
    let expected = total(&day[0].1) / value(&count[0].1, "value");
    assert!((value(&rate[0].1, "value") - expected).abs() < 1e-12);
    server.stop().await;
}

const ERROR_KEY_NAMES: [&str; 4] = [
    "timeout_error",
    "unexpected_http_status_code",
    "cannot_be_served",
    "no_http_response_error",
];

#[tokio::test]
async fn served_values_are_what_data_points_reports() {
    let server = Running::start(realistic()).await;
    for metric in MetricKind::ALL {
        for granularity in Granularity::ALL {
            let served = server
                .metric(APPOINTMENTS, metric.api_name(), granularity.api_name(), "")
                .await
                .points();
            let expected: Vec<(String, Vec<(String, f64)>)> = points_of(
                &server.sandbox,
                APPOINTMENTS,
                metric,
                granularity,
                None,
                None,
            )
            .into_iter()
            .map(|(t, data)| (t.format("%Y-%m-%dT%H:%M:%S+0000").to_string(), data))
            .collect();
            assert!(!expected.is_empty(), "{metric} {granularity}");
            assert_eq!(served, expected, "{metric} {granularity}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn string_values_are_json_strings() {
    let server = Running::start(realistic()).await;
    for name in [
        "ENDPOINT_REQUEST_COUNT",
        "ENDPOINT_REQUEST_ERROR_RATE",
        "ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL",
    ] {
        let answer = server.metric(LEAD_QUALIFICATION, name, "DAY", "").await;
        let json = answer.json();
        let points = json["metric"]["data_points"].as_array().expect("points");
        assert!(!points.is_empty());
        for point in points {
            for kv in point["data"].as_array().expect("data") {
                let text = kv["value"].as_str().expect("value is a JSON string");
                text.parse::<f64>().expect("and holds a number");
            }
        }
    }
    // A normal flow sends numbers.
    let answer = server
        .metric(APPOINTMENTS, "ENDPOINT_REQUEST_COUNT", "DAY", "")
        .await;
    assert!(answer.json()["metric"]["data_points"][0]["data"][0]["value"].is_u64());
    server.stop().await;
}

#[tokio::test]
async fn below_threshold_and_draft_flows_answer_139006() {
    let server = Running::start(realistic()).await;
    for flow in [FEEDBACK, SPRING_SURVEY] {
        let answer = server
            .metric(flow, "ENDPOINT_REQUEST_COUNT", "DAY", "")
            .await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.json()["error"]["code"], 139006);
        assert!(
            points_of(
                &server.sandbox,
                flow,
                MetricKind::RequestCount,
                Granularity::Day,
                None,
                None
            )
            .is_empty()
        );
    }
    // Publishing the draft gives it data.
    server.sandbox.set_status(SPRING_SURVEY, "PUBLISHED");
    let answer = server
        .metric(SPRING_SURVEY, "ENDPOINT_REQUEST_COUNT", "DAY", "")
        .await;
    assert_eq!(answer.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn every_answer_carries_usage_and_version_headers() {
    let server = Running::start(realistic()).await;
    let ok = server
        .get(&format!(
            "/v21.0/{APPOINTMENTS}?fields=metric.name(ENDPOINT_REQUEST_COUNT).granularity(HOUR)"
        ))
        .await;
    let error = server.get("/v21.0/999?fields=id").await;
    for answer in [&ok, &error] {
        assert_eq!(answer.header("facebook-api-version"), Some("v21.0"));
        assert_eq!(
            answer.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        assert!(answer.header("x-fb-trace-id").is_some());
        let app: Value = serde_json::from_str(answer.header("x-app-usage").expect("x-app-usage"))
            .expect("X-App-Usage is JSON");
        for key in ["call_count", "total_cputime", "total_time"] {
            assert!(app[key].as_u64().is_some_and(|n| n < 100), "{key}");
        }
        let business: Value = serde_json::from_str(
            answer
                .header("x-business-use-case-usage")
                .expect("x-business-use-case-usage"),
        )
        .expect("X-Business-Use-Case-Usage is JSON");
        assert!(business.is_object());
    }
    let business: Value =
        serde_json::from_str(ok.header("x-business-use-case-usage").unwrap_or_default())
            .expect("JSON");
    let entry = &business[REALISTIC_WABA_IDS[0]][0];
    assert_eq!(entry["type"], "whatsapp_business_management");
    assert_eq!(entry["estimated_time_to_regain_access"], 0);
    // An error's trace id in the body is the one in the header.
    assert_eq!(
        error.json()["error"]["fbtrace_id"].as_str(),
        error.header("x-fb-trace-id")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_fault_for_one_call_fires_once() {
    let server = Running::start(realistic()).await;
    server.sandbox.inject(
        FaultTarget::Metrics {
            flow_id: Some(APPOINTMENTS.to_owned()),
            metric: None,
            granularity: Some(Granularity::Day),
        },
        Fault {
            status: 400,
            body: Sandbox::graph_error_body(80008, None, "Too many calls"),
            delay: Duration::ZERO,
            times: Some(1),
        },
    );
    let hour = server
        .metric(APPOINTMENTS, "ENDPOINT_REQUEST_COUNT", "HOUR", "")
        .await;
    assert_eq!(hour.status, 200, "other granularities are untouched");
    let first = server
        .metric(APPOINTMENTS, "ENDPOINT_REQUEST_COUNT", "DAY", "")
        .await;
    assert_eq!(first.status, 400);
    assert_eq!(first.json()["error"]["code"], 80008);
    assert!(
        first.header("x-app-usage").is_some(),
        "faults carry the headers too"
    );
    let second = server
        .metric(APPOINTMENTS, "ENDPOINT_REQUEST_COUNT", "DAY", "")
        .await;
    assert_eq!(second.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn later_faults_win_until_cleared() {
    let server = Running::start(realistic()).await;
    let waba = REALISTIC_WABA_IDS[0];
    let fault = |status: u16| Fault {
        status,
        body: Sandbox::graph_error_body(2, None, "An unexpected error has occurred."),
        delay: Duration::ZERO,
        times: None,
    };
    server
        .sandbox
        .inject(FaultTarget::FlowsList { waba_id: None }, fault(500));
    server.sandbox.inject(
        FaultTarget::FlowsList {
            waba_id: Some(waba.to_owned()),
        },
        fault(503),
    );
    let path = format!("/v23.0/{waba}/flows?fields=id");
    for _ in 0..3 {
        let answer = server.get(&path).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.json()["error"]["is_transient"], true);
    }
    let other = server
        .get(&format!("/v23.0/{}/flows?fields=id", REALISTIC_WABA_IDS[1]))
        .await;
    assert_eq!(other.status, 500);
    server.sandbox.clear_faults();
    assert_eq!(server.get(&path).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn answers_are_deterministic() {
    let server = Running::start(realistic()).await;
    let other = Running::start(realistic()).await;
    let path = format!(
        "/v23.0/{APPOINTMENTS}?fields=metric.name(ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL).granularity(HOUR).since(2024-01-20)"
    );
    let first = server.get(&path).await.body;
    assert_eq!(server.get(&path).await.body, first);
    assert_eq!(other.get(&path).await.body, first);
    server.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_graph_errors() {
    let server = Running::start(realistic()).await;

    let no_version = server.get(&format!("/{APPOINTMENTS}?fields=id")).await;
    assert_eq!(no_version.status, 400);
    assert_eq!(no_version.json()["error"]["code"], 2500);
    assert!(
        no_version.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Unknown path components"))
    );

    let unknown_flow = server
        .metric("111111111111111", "ENDPOINT_REQUEST_COUNT", "DAY", "")
        .await;
    assert_eq!(unknown_flow.status, 400);
    assert_eq!(unknown_flow.json()["error"]["code"], 100);
    assert_eq!(unknown_flow.json()["error"]["error_subcode"], 33);

    let unknown_metric = server.metric(APPOINTMENTS, "ENDPOINT_CPU", "DAY", "").await;
    assert_eq!(unknown_metric.json()["error"]["code"], 100);
    assert!(
        unknown_metric.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("(#100) Param name must be one of {"))
    );

    let bare = server
        .get(&format!("/v23.0/{APPOINTMENTS}?fields=id"))
        .await;
    assert_eq!(bare.json(), serde_json::json!({ "id": APPOINTMENTS }));

    // Lower case is accepted and echoed upper case.
    let lower = server
        .metric(
            APPOINTMENTS,
            "endpoint_request_count",
            "day",
            ".since(2024-01-28).until(2024-01-29)",
        )
        .await;
    assert_eq!(lower.json()["metric"]["name"], "ENDPOINT_REQUEST_COUNT");
    assert_eq!(lower.json()["metric"]["granularity"], "DAY");
    assert_eq!(lower.json()["id"], APPOINTMENTS);
    assert_eq!(lower.points().len(), 2);

    // Percent-encoded queries, as HTTP clients send them, work the same.
    let encoded = server
        .get(&format!(
            "/v23.0/{APPOINTMENTS}?fields=metric.name%28ENDPOINT_REQUEST_COUNT%29.granularity%28DAY%29.since%282024-01-28%29.until%282024-01-29%29"
        ))
        .await;
    assert_eq!(encoded.body, lower.body);
    server.stop().await;
}

#[tokio::test]
async fn availability_only_for_data_api_version_3() {
    let server = Running::start(realistic()).await;
    let old = server
        .metric(LOYALTY, "ENDPOINT_AVAILABILITY", "DAY", "")
        .await;
    assert_eq!(old.status, 200);
    assert_eq!(old.json()["metric"]["data_points"], serde_json::json!([]));

    let hours = server
        .metric(APPOINTMENTS, "ENDPOINT_AVAILABILITY", "HOUR", "")
        .await
        .points();
    assert!(!hours.is_empty());
    for (_, data) in &hours {
        assert_eq!(total(data), 12.0);
        assert!(data.iter().all(|(k, _)| k == "succeeded" || k == "failed"));
    }
    server.stop().await;
}

#[tokio::test]
async fn newest_data_lags_and_today_is_partial() {
    let sandbox = realistic();
    let hours = points_of(
        &sandbox,
        APPOINTMENTS,
        MetricKind::RequestCount,
        Granularity::Hour,
        None,
        None,
    );
    let newest = hours.last().expect("hours").0;
    // The clock says 12:00; the 09:00-10:00 hour is the newest ended two hours ago.
    assert_eq!(newest, now() - TimeDelta::hours(3));
    assert_eq!(
        hours.first().map(|h| h.0),
        Some(now() - TimeDelta::hours(12) - TimeDelta::days(30))
    );

    let days = points_of(
        &sandbox,
        APPOINTMENTS,
        MetricKind::RequestCount,
        Granularity::Day,
        None,
        None,
    );
    let (today, data) = days.last().expect("days");
    assert_eq!(*today, now() - TimeDelta::hours(4));
    let since_eight: f64 = hours
        .iter()
        .filter(|(t, _)| t >= today)
        .map(|(_, d)| value(d, "value"))
        .sum();
    assert_eq!(value(data, "value"), since_eight);
    assert_eq!(days.len(), 91, "90 days back to today, both included");

    // LIFETIME is one point at since 08:00 UTC, the sum of the DAY points.
    let lifetime = points_of(
        &sandbox,
        APPOINTMENTS,
        MetricKind::RequestCount,
        Granularity::Lifetime,
        Some(date(2024, 1, 1)),
        None,
    );
    assert_eq!(lifetime.len(), 1);
    assert_eq!(
        lifetime[0].0,
        Utc.with_ymd_and_hms(2024, 1, 1, 8, 0, 0)
            .single()
            .expect("instant")
    );
    let days_since: f64 = points_of(
        &sandbox,
        APPOINTMENTS,
        MetricKind::RequestCount,
        Granularity::Day,
        Some(date(2024, 1, 1)),
        None,
    )
    .iter()
    .map(|(_, d)| value(d, "value"))
    .sum();
    assert_eq!(value(&lifetime[0].1, "value"), days_since);

    // An old `since` is clamped; `until` before `since` gives nothing.
    let clamped = points_of(
        &sandbox,
        APPOINTMENTS,
        MetricKind::RequestCount,
        Granularity::Hour,
        Some(date(2020, 1, 1)),
        None,
    );
    assert_eq!(clamped, hours);
    assert!(
        points_of(
            &sandbox,
            APPOINTMENTS,
            MetricKind::RequestCount,
            Granularity::Day,
            Some(date(2024, 1, 29)),
            Some(date(2024, 1, 28))
        )
        .is_empty()
    );
}

#[test]
fn the_data_set_has_the_awkward_cases_consumers_must_handle() {
    let sandbox = realistic();
    let flows: Vec<String> = sandbox
        .flows()
        .into_iter()
        .filter(data::has_enough_data)
        .map(|f| f.id)
        .collect();
    let latency = |flow: &str| {
        points_of(
            &sandbox,
            flow,
            MetricKind::LatencySecondsCeil,
            Granularity::Hour,
            None,
            None,
        )
    };

    let with_slow_tail = flows
        .iter()
        .filter(|f| latency(f).iter().any(|(_, d)| value(d, "10+") > 0.0))
        .count();
    assert!(with_slow_tail > 0, "some flow has 10+ second requests");
    assert!(with_slow_tail < flows.len(), "and some flow never has");

    // A missing middle bucket: a key absent while a slower one is present.
    let has_gap = latency(APPOINTMENTS).iter().any(|(_, data)| {
        let present: Vec<bool> = data::LATENCY_KEYS
            .iter()
            .map(|k| data.iter().any(|(key, _)| key == k))
            .collect();
        (1..present.len()).any(|i| !present[i] && present[i + 1..].iter().any(|p| *p))
    });
    assert!(has_gap);

    let errors = points_of(
        &sandbox,
        APPOINTMENTS,
        MetricKind::RequestError,
        Granularity::Hour,
        None,
        None,
    );
    assert!(
        errors.iter().any(|(_, d)| d.len() < 4 && !d.is_empty()),
        "some error keys absent"
    );
    assert!(
        errors.iter().all(|(_, d)| d.iter().all(|(_, v)| *v > 0.0)),
        "only non-zero keys"
    );
}

#[tokio::test]
async fn logs_metric_calls_counts_requests_and_waits_out_latency() {
    let server = Running::start(realistic()).await;
    server
        .metric(APPOINTMENTS, "ENDPOINT_REQUEST_COUNT", "DAY", "")
        .await;
    server
        .metric(LOYALTY, "endpoint_availability", "hour", "")
        .await;
    server
        .get(&format!("/v23.0/{}/flows", REALISTIC_WABA_IDS[0]))
        .await;
    assert_eq!(
        server.sandbox.metric_requests(),
        [
            (
                APPOINTMENTS.to_owned(),
                MetricKind::RequestCount,
                Granularity::Day
            ),
            (
                LOYALTY.to_owned(),
                MetricKind::Availability,
                Granularity::Hour
            ),
        ]
    );
    assert_eq!(server.sandbox.request_count(), 3);

    server.sandbox.set_latency(Duration::from_millis(60));
    let started = Instant::now();
    server
        .get(&format!("/v23.0/{APPOINTMENTS}?fields=id"))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(server.sandbox.request_count(), 4);
    server.stop().await;
}

#[tokio::test]
async fn generated_flows_spread_over_both_wabas() {
    let sandbox = Sandbox::generated(1000, TOKEN, Clock::fixed(now()));
    let flows = sandbox.flows();
    assert_eq!(flows.len(), 1000);
    assert_eq!(flows[7].id, "900000000000007");
    assert_eq!(flows[7].name, "Generated flow 7");
    let in_first = flows
        .iter()
        .filter(|f| f.waba_id == REALISTIC_WABA_IDS[0])
        .count();
    assert_eq!(in_first, 500);

    let server = Running::start(sandbox).await;
    let page = server
        .get(&format!(
            "/v23.0/{}/flows?fields=id&limit=100",
            REALISTIC_WABA_IDS[1]
        ))
        .await;
    assert_eq!(page.json()["data"].as_array().map(Vec::len), Some(100));
    let next = page.json()["paging"]["next"]
        .as_str()
        .map(str::to_owned)
        .expect("next");
    assert!(next.contains("limit=100"));
    let answer = server
        .metric("900000000000999", "ENDPOINT_REQUEST_COUNT", "DAY", "")
        .await;
    assert_eq!(answer.status, 200);
    server.stop().await;
}

#[test]
fn debug_never_shows_the_token() {
    let text = format!("{:?}", realistic());
    assert!(!text.contains(TOKEN));
    assert!(text.contains("Sandbox"));
}

/// The raw bytes a GET gets before the server closes (or resets) the connection.
async fn get_raw(addr: SocketAddr, path_and_query: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    raw
}

#[tokio::test]
async fn transport_faults_shape_how_the_answer_travels() {
    let server = Running::start(realistic()).await;
    let path = format!(
        "/v23.0/{APPOINTMENTS}?fields=metric.name(ENDPOINT_REQUEST_COUNT).granularity(DAY)"
    );
    let target = || FaultTarget::Metrics {
        flow_id: Some(APPOINTMENTS.to_owned()),
        metric: None,
        granularity: None,
    };
    let whole = server.get(&path).await;
    let length = whole.body.len();

    server
        .sandbox
        .inject_transport(target(), Transport::Reset, Some(1));
    assert!(
        get_raw(server.addr, &path).await.is_empty(),
        "no answer at all"
    );

    server.sandbox.inject_transport(
        target(),
        Transport::TruncatedBody { after_bytes: 10 },
        Some(1),
    );
    let raw = String::from_utf8(get_raw(server.addr, &path).await).expect("UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("the head arrives");
    assert!(
        head.contains(&format!("content-length: {length}")),
        "{head}"
    );
    assert_eq!(body.len(), 10, "then the connection closes");

    server.sandbox.inject_transport(
        target(),
        Transport::StallBody {
            after_bytes: 10,
            stall: Duration::from_millis(300),
        },
        Some(1),
    );
    let started = Instant::now();
    let stalled = server.get(&path).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(stalled.body, whole.body, "all of it, late");

    server
        .sandbox
        .inject_transport(target(), Transport::Oversized { bytes: 300_000 }, Some(1));
    let raw = get_raw(server.addr, &path).await;
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(raw.len() - head_end > 300_000, "the whole padding is sent");

    assert_eq!(server.get(&path).await.body, whole.body, "used up");
    server.stop().await;
}

#[tokio::test]
async fn business_usage_header_can_be_omitted_or_fixed() {
    let server = Running::start(realistic()).await;
    let path = format!(
        "/v23.0/{APPOINTMENTS}?fields=metric.name(ENDPOINT_REQUEST_COUNT).granularity(DAY)"
    );
    server
        .sandbox
        .set_business_usage_header(UsageHeader::Omitted);
    let answer = server.get(&path).await;
    assert_eq!(answer.header("x-business-use-case-usage"), None);
    assert!(answer.header("x-app-usage").is_some());

    let fixed = Sandbox::throttled_usage(REALISTIC_WABA_IDS[0], 2.0);
    server
        .sandbox
        .set_business_usage_header(UsageHeader::Fixed(fixed.clone()));
    let answer = server.get(&path).await;
    assert_eq!(
        answer.header("x-business-use-case-usage"),
        Some(fixed.as_str())
    );
    let usage: Value = serde_json::from_str(&fixed).expect("JSON");
    assert_eq!(
        usage[REALISTIC_WABA_IDS[0]][0]["estimated_time_to_regain_access"],
        2.0
    );

    server
        .sandbox
        .set_business_usage_header(UsageHeader::Computed);
    let answer = server.get(&path).await;
    assert!(
        answer
            .header("x-business-use-case-usage")
            .is_some_and(|h| h.contains("\"estimated_time_to_regain_access\":0"))
    );
    server.stop().await;
}

#[tokio::test]
async fn the_knobs_for_hostile_graphs() {
    let server = Running::start(realistic()).await;
    let path = format!(
        "/v23.0/{APPOINTMENTS}?fields=metric.name(ENDPOINT_REQUEST_COUNT).granularity(DAY)"
    );

    // One flow's calls are slow; the listing and other flows are not.
    server
        .sandbox
        .set_flow_latency(APPOINTMENTS, Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(server.get(&path).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    server
        .get(&format!("/v23.0/{}/flows", REALISTIC_WABA_IDS[0]))
        .await;
    assert!(started.elapsed() < Duration::from_millis(300));
    server
        .sandbox
        .set_flow_latency(APPOINTMENTS, Duration::ZERO);

    // Fresh business ids on every answer.
    server
        .sandbox
        .set_business_usage_header(UsageHeader::FreshIds(50));
    let ids = |answer: &HttpAnswer| -> Vec<String> {
        let header = answer.header("x-business-use-case-usage").expect("header");
        let usage: Value = serde_json::from_str(header).expect("JSON");
        usage.as_object().expect("object").keys().cloned().collect()
    };
    let first = ids(&server.get(&path).await);
    let second = ids(&server.get(&path).await);
    assert_eq!((first.len(), second.len()), (50, 50));
    assert!(
        first.iter().all(|id| !second.contains(id)),
        "never the same id twice"
    );
    server
        .sandbox
        .set_business_usage_header(UsageHeader::Computed);

    // The trace id header says what it is told.
    server
        .sandbox
        .set_trace_header(Some("trace-told".to_owned()));
    assert_eq!(
        server.get(&path).await.header("x-fb-trace-id"),
        Some("trace-told")
    );
    server.sandbox.set_trace_header(None);

    // Endless paging: past the last flow, a next page with a new cursor.
    server.sandbox.set_endless_paging(true);
    let mut cursors = std::collections::BTreeSet::new();
    let mut next = format!("/v23.0/{}/flows?limit=100", REALISTIC_WABA_IDS[1]);
    for _ in 0..5 {
        let page = server.get(&next).await.json();
        let url = page["paging"]["next"].as_str().expect("always a next page");
        let after = page["paging"]["cursors"]["after"]
            .as_str()
            .expect("cursor")
            .to_owned();
        assert!(cursors.insert(after), "a fresh cursor");
        next = url
            .strip_prefix("https://graph.facebook.com")
            .expect("Graph's host")
            .to_owned();
    }
    server.sandbox.set_endless_paging(false);

    // A trickling answer: one byte at a time, never ending.
    server.sandbox.inject_transport(
        FaultTarget::Metrics {
            flow_id: Some(APPOINTMENTS.to_owned()),
            metric: None,
            granularity: None,
        },
        Transport::Trickle {
            every: Duration::from_millis(10),
        },
        Some(1),
    );
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("a trickle never ends"),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => {}
        }
    }
    let body_start = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    // About 50 bytes of body in 500 ms (chunked framing adds some).
    let body = got.len() - body_start;
    assert!((20..400).contains(&body), "{body} bytes in 500 ms");
    drop(stream);
    server.stop().await;
}
