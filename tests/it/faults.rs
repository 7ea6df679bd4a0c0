//! The fault matrix: every way Graph can fail, injected through the sandbox, each
//! checked the same way by `check_fault`: `/metrics` keeps answering fast through the
//! real HTTP server while the fault is active, healthy flows keep exact data, the
//! affected cells keep their last good values marked stale with their last success
//! time unchanged, the error class shows as a metric and in one log line (with the
//! `fbtrace_id` when Graph sent one), and the next poll after the fault clears
//! recovers on its own.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::{Clock, Granularity, MetricKind};
use flows_exporter::sandbox::{Fault, FaultTarget, Sandbox, Transport, UsageHeader};
use tokio::net::TcpListener;
use tracing::instrument::WithSubscriber;

use crate::support::*;

/// The flow faults are aimed at: PUBLISHED, normal traffic, all five metrics.
const FLOW: &str = "1180349906393871";
/// A `/metrics` answer slower than this while Graph misbehaves is a failure.
const SCRAPE_BUDGET: Duration = Duration::from_millis(500);

/// Which cells a fault hits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    /// `FLOW`'s request count only (for slow faults, so the matrix stays fast).
    Cell,
    /// Every metric of `FLOW`.
    Flow,
    /// Every call.
    All,
}

#[derive(Debug, Clone)]
enum Inject {
    Fault {
        status: u16,
        body: String,
        delay: Duration,
    },
    Transport(Transport),
    /// A Graph error with this usage header on every answer while it lasts.
    Throttle {
        fault: Fault,
        usage: UsageHeader,
    },
    /// Nothing listens on Graph's address any more.
    StopGraph,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    scope: Scope,
    inject: Inject,
    class: &'static str,
    /// The failure log line carries an `fbtrace_id` (body or `x-fb-trace-id`).
    trace: bool,
    /// Graph calls the faulted poll makes to the cells the fault hits.
    calls: Option<u64>,
    /// A live gauge that reads 0 during the fault and 1 after recovery.
    gauge: Option<&'static str>,
    /// How long to wait after clearing before the recovery poll (a client pause).
    settle: Duration,
    /// Text the failure log line must contain.
    says: Option<&'static str>,
    /// What the failure means for the rest of the poll.
    effect: Effect,
}

/// What a case's failure means for the cells the poll has not called yet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Effect {
    /// Nothing: every hit cell is called and fails alone.
    Alone,
    /// The poll stops after this many hit cells (in call order): every other
    /// cell is not attempted.
    Halts(usize),
    /// The hit cells time out: the other cells of their flows are not attempted.
    FlowTimesOut,
    /// Graph throttles the WABA: its first hit cell has the class, the WABA's
    /// other cells are not attempted.
    PausesWaba,
}

impl Case {
    fn new(name: impl Into<String>, scope: Scope, inject: Inject, class: &'static str) -> Case {
        Case {
            name: name.into(),
            scope,
            inject,
            class,
            trace: true,
            calls: None,
            gauge: None,
            settle: Duration::ZERO,
            says: None,
            effect: Effect::Alone,
        }
    }

    fn says(mut self, text: &'static str) -> Case {
        self.says = Some(text);
        self
    }

    fn calls(mut self, n: u64) -> Case {
        self.calls = Some(n);
        self
    }

    fn no_trace(mut self) -> Case {
        self.trace = false;
        self
    }

    /// The first call's answer stops the poll: one cell has the class, the
    /// others were not attempted.
    fn halting(mut self) -> Case {
        self.effect = Effect::Halts(1);
        self
    }

    /// A network failure of every call: the poll stops after three in a row
    /// (three connection failures, or failures of three different flows).
    fn unreachable(mut self) -> Case {
        self.effect = Effect::Halts(3);
        self
    }

    /// The call runs out of time: its flow is not called again in the poll.
    fn times_out(mut self) -> Case {
        self.effect = Effect::FlowTimesOut;
        self
    }

    /// Graph throttles the WABA: its other calls are not made in the poll.
    fn pauses_waba(mut self) -> Case {
        self.effect = Effect::PausesWaba;
        self
    }
}

fn target(scope: Scope) -> FaultTarget {
    FaultTarget::Metrics {
        flow_id: (scope != Scope::All).then(|| FLOW.to_owned()),
        metric: (scope == Scope::Cell).then_some(MetricKind::RequestCount),
        granularity: None,
    }
}

fn graph_error(status: u16, code: u32, subcode: Option<u32>, message: &str) -> Inject {
    Inject::Fault {
        status,
        body: Sandbox::graph_error_body(code, subcode, message),
        delay: Duration::ZERO,
    }
}

fn answer(status: u16, body: &str) -> Inject {
    Inject::Fault {
        status,
        body: body.to_owned(),
        delay: Duration::ZERO,
    }
}

fn matrix() -> Vec<Case> {
    use Scope::*;
    // max_retries = 1: a retried class makes two calls per metric.
    let mut cases = vec![
        Case::new("connect refused", All, Inject::StopGraph, "network")
            .no_trace()
            .unreachable()
            .says("cannot connect"),
        // Every call hangs: the calls of three flows time out (one attempt each:
        // the deadline is the timeout), then the poll stops rather than spend
        // 30 cells x 1 s.
        Case::new(
            "Graph hangs",
            All,
            Inject::Fault {
                status: 200,
                body: "{}".into(),
                delay: Duration::from_secs(3),
            },
            "network",
        )
        .no_trace()
        .unreachable()
        .calls(3)
        .says("timed out"),
        Case::new(
            "timeout",
            Cell,
            Inject::Fault {
                status: 200,
                body: "{}".into(),
                delay: Duration::from_secs(2),
            },
            "network",
        )
        .no_trace()
        .times_out()
        .calls(1)
        .says("timed out"),
        Case::new(
            "body stalls mid-way",
            Cell,
            Inject::Transport(Transport::StallBody {
                after_bytes: 40,
                stall: Duration::from_secs(2),
            }),
            "network",
        )
        .times_out()
        .says("answer body cut off: timed out"),
        Case::new(
            "connection reset",
            Cell,
            Inject::Transport(Transport::Reset),
            "network",
        )
        .no_trace()
        .calls(2),
        Case::new(
            "body cut off before its content-length",
            Cell,
            Inject::Transport(Transport::TruncatedBody { after_bytes: 40 }),
            "network",
        )
        .calls(2),
        Case::new(
            "oversized body",
            Cell,
            // 1 GiB, streamed lazily: only a reader that stops at the cap ends
            // this fast and without a gigabyte of memory.
            Inject::Transport(Transport::Oversized { bytes: 1 << 30 }),
            "malformed",
        )
        .says("larger than 8388608 bytes")
        .calls(1),
        Case::new(
            "HTTP 500 with a Graph error",
            Flow,
            graph_error(500, 2, None, "Service temporarily unavailable"),
            "transient",
        )
        .calls(10),
        Case::new(
            "HTTP 502 without a Graph error",
            Flow,
            answer(502, "<html><body>Bad Gateway</body></html>"),
            "transient",
        )
        .calls(10),
        Case::new(
            "truncated JSON",
            Flow,
            answer(
                200,
                r#"{"id":"1180349906393871","metric":{"name":"ENDPOINT_REQUEST_COUNT","data_po"#,
            ),
            "malformed",
        )
        .calls(5),
        Case::new(
            "invalid JSON",
            Flow,
            answer(200, "<!DOCTYPE html><html>Sorry, something went wrong.</html>"),
            "malformed",
        )
        .calls(5),
        Case::new(
            "valid JSON of the wrong shape",
            Flow,
            answer(
                200,
                r#"{"data":[{"id":"1180349906393871"}],"paging":{"cursors":{}}}"#,
            ),
            "malformed",
        )
        .calls(5),
        Case::new(
            "valid JSON, data_points of the wrong type",
            Flow,
            answer(
                200,
                r#"{"id":"1180349906393871","metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":{"timestamp":"2024-01-30T08:00:00+0000"}}}"#,
            ),
            "malformed",
        )
        .calls(5),
        Case::new(
            "permission 10",
            Flow,
            graph_error(
                403,
                10,
                None,
                "(#10) Application does not have permission for this action",
            ),
            "permission",
        )
        .calls(5),
        Case::new(
            "permission 200",
            Flow,
            graph_error(
                403,
                200,
                None,
                "(#200) Requires whatsapp_business_management permission to manage the object",
            ),
            "permission",
        )
        .calls(5),
        Case {
            gauge: Some("whatsapp_flows_exporter_token_valid"),
            ..Case::new(
                "190 token expired mid-run",
                All,
                graph_error(
                    401,
                    190,
                    Some(463),
                    "Error validating access token: Session has expired on Tuesday, 30-Jan-24 04:00:00 PST.",
                ),
                "token",
            )
            .halting()
            .calls(1)
        },
        Case {
            gauge: Some("whatsapp_flows_exporter_metrics_api_available"),
            ..Case::new(
                "100 unknown field metric (Metrics API gone)",
                All,
                graph_error(
                    400,
                    100,
                    None,
                    "(#100) Tried accessing nonexisting field (metric) on node type (WhatsAppFlow)",
                ),
                "api_gone",
            )
            .halting()
            .calls(1)
        },
    ];
    for (code, subcode, status) in [
        (4, None, 400),
        (17, Some(2446079), 400),
        (32, None, 429),
        (613, Some(1996), 400),
        (80007, None, 400),
        (80008, Some(2494055), 429),
    ] {
        let fault = Fault {
            status,
            body: Sandbox::graph_error_body(code, subcode, "Too many calls"),
            delay: Duration::ZERO,
            times: None,
        };
        // 80007 and 80008 throttle one WABA: its first call fails (no retry:
        // the WABA is paused), its other calls are not made, and the other
        // WABA's first call is throttled in turn. The others throttle the app:
        // one retry after a short pause, then the poll stops.
        let waba = code >= 80000;
        let shape = |case: Case| {
            if waba {
                case.pauses_waba().calls(2)
            } else {
                case.halting().calls(2)
            }
        };
        let class = if waba { "waba_throttled" } else { "throttled" };
        // Without a usage header: jittered backoff (10-20 ms), then the pause.
        cases.push(Case {
            settle: Duration::from_millis(60),
            ..shape(Case::new(
                format!("throttled {code} without X-Business-Use-Case-Usage"),
                All,
                Inject::Throttle {
                    fault: fault.clone(),
                    usage: UsageHeader::Omitted,
                },
                class,
            ))
        });
        // With it: 0.005 minutes (0.3 s) to regain access (waited once in the
        // call for the app), then paused for as long.
        cases.push(Case {
            settle: Duration::from_millis(400),
            ..shape(Case::new(
                format!("throttled {code} with estimated_time_to_regain_access"),
                All,
                Inject::Throttle {
                    fault,
                    usage: UsageHeader::Fixed(Sandbox::throttled_usage(WABA_1, 0.005)),
                },
                class,
            ))
        });
    }
    cases
}

/// Log lines written while a future runs, at WARN and above.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish()
    }

    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A sandbox, an exporter with a clock the test moves, and its HTTP server.
pub struct Rig {
    pub sandbox: Sandbox,
    running: Option<RunningSandbox>,
    addr: SocketAddr,
    pub exporter: Arc<Exporter>,
    pub server: RunningServer,
    http: reqwest::Client,
    /// The exporter's clock is `now() + minutes`; the sandbox's stays at `now()`,
    /// so Graph serves the same data and only the exporter's own times move.
    minutes: Arc<AtomicI64>,
}

impl Rig {
    pub async fn start() -> Rig {
        Rig::start_with("", true).await
    }

    /// A rig whose config ends with `extra`; `startup`: run the start-up
    /// discovery and polls before returning.
    pub async fn start_with(extra: &str, startup: bool) -> Rig {
        let running = realistic().await;
        let sandbox = running.sandbox.clone();
        let addr: SocketAddr = running
            .base_url
            .trim_start_matches("http://")
            .parse()
            .expect("sandbox address");
        let text = format!(
            r#"
[graph]
base_url = "{}"
api_version = "v23.0"
max_concurrency = 1
max_retries = 1
retry_backoff = "10ms"
timeout = "1s"
deadline = "1s"

[[wabas]]
id = "{WABA_1}"

[[wabas]]
id = "{WABA_2}"

[granularity.day]
enabled = false

[granularity.lifetime]
enabled = false
{extra}
"#,
            running.base_url
        );
        let minutes = Arc::new(AtomicI64::new(0));
        let offset = minutes.clone();
        let clock =
            Clock::from_fn(move || now() + TimeDelta::minutes(offset.load(Ordering::Relaxed)));
        let config = Config::parse(&text).expect("fault config is valid");
        let exporter = Exporter::new(config, Secret::new(TOKEN), clock).expect("exporter");
        if startup {
            exporter.startup().await;
        }
        let server = start_server(exporter.clone()).await;
        Rig {
            sandbox,
            running: Some(running),
            addr,
            exporter,
            server,
            http: http(),
            minutes,
        }
    }

    /// Moves the exporter's clock a minute on and returns the new Unix time.
    pub fn tick(&self) -> f64 {
        let m = self.minutes.fetch_add(1, Ordering::Relaxed) + 1;
        (now() + TimeDelta::minutes(m)).timestamp() as f64
    }

    pub async fn scrape(&self) -> (String, Duration) {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}/metrics", self.server.base))
            .send()
            .await
            .expect("/metrics answers");
        assert!(response.status().is_success());
        let text = response.text().await.expect("/metrics body");
        (text, started.elapsed())
    }

    /// One hour poll with logs captured, scraping `/metrics` over HTTP all the while.
    /// Returns the logs and the slowest scrape.
    pub async fn poll_while_scraping(&self) -> (Vec<String>, Duration) {
        let logs = Logs::default();
        let exporter = self.exporter.clone();
        let poll = tokio::spawn(
            async move { exporter.poll(Granularity::Hour).await }
                .with_subscriber(logs.subscriber()),
        );
        let mut slowest = Duration::ZERO;
        loop {
            let finished = poll.is_finished();
            let (_, took) = self.scrape().await;
            slowest = slowest.max(took);
            if finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        poll.await.expect("the poll does not panic");
        (logs.lines(), slowest)
    }

    async fn inject(&mut self, case: &Case) {
        let target = target(case.scope);
        match &case.inject {
            Inject::Fault {
                status,
                body,
                delay,
            } => self.sandbox.inject(
                target,
                Fault {
                    status: *status,
                    body: body.clone(),
                    delay: *delay,
                    times: None,
                },
            ),
            Inject::Transport(t) => self.sandbox.inject_transport(target, t.clone(), None),
            Inject::Throttle { fault, usage } => {
                self.sandbox.set_business_usage_header(usage.clone());
                self.sandbox.inject(target, fault.clone());
            }
            Inject::StopGraph => {
                drop(self.running.take());
                // The listener closes in the sandbox's task; wait until it has, so
                // the poll meets a refusal, not a backlog nobody accepts.
                let deadline = Instant::now() + Duration::from_secs(5);
                while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                    assert!(Instant::now() < deadline, "the sandbox does not stop");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn clear(&mut self) {
        self.sandbox.clear_faults();
        self.sandbox
            .set_business_usage_header(UsageHeader::Computed);
        if self.running.is_none() {
            let listener = TcpListener::bind(self.addr)
                .await
                .expect("rebind the stopped sandbox's address");
            self.running = Some(start_sandbox_on(self.sandbox.clone(), listener));
        }
    }
}

/// A per-cell family of the hour granularity, by (flow_id, metric label).
pub fn per_cell(text: &str, family: &str) -> BTreeMap<(String, String), f64> {
    let prefix = format!("{family}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, v) = rest.rsplit_once("} ")?;
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
            };
            if label("granularity").as_deref() != Some("hour") {
                return None;
            }
            Some(((label("flow_id")?, label("metric")?), v.parse().ok()?))
        })
        .collect()
}

/// The data lines: every value and period start shown, whatever its flow.
pub fn data_lines(text: &str) -> Vec<String> {
    let mut lines = samples(text, "whatsapp_flows_endpoint_");
    lines.extend(samples(
        text,
        "whatsapp_flows_data_period_start_timestamp_seconds",
    ));
    lines
}

/// The polled cells in the order a poll calls them (one call at a time):
/// metric by metric, each over every flow in id order.
fn call_order(cells: &[(String, String)]) -> Vec<(String, String)> {
    let flows: std::collections::BTreeSet<&String> = cells.iter().map(|(f, _)| f).collect();
    MetricKind::ALL
        .iter()
        .flat_map(|m| {
            flows
                .iter()
                .map(|flow| ((*flow).clone(), m.label().to_owned()))
        })
        .collect()
}

/// The class each cell shows after the faulted poll (`None`: healthy), from
/// the case's scope and effect, walking the cells in call order.
fn expected_classes(
    case: &Case,
    cells: &[(String, String)],
    waba_of: &BTreeMap<String, String>,
) -> BTreeMap<(String, String), Option<&'static str>> {
    let mut out = BTreeMap::new();
    let mut hit = 0;
    let mut halted = false;
    let mut timed_out: std::collections::BTreeSet<String> = Default::default();
    let mut paused: std::collections::BTreeSet<&str> = Default::default();
    for (flow, metric) in call_order(cells) {
        let waba = waba_of.get(&flow).map(String::as_str).unwrap_or("unknown");
        let class = if halted || timed_out.contains(&flow) || paused.contains(waba) {
            Some("not_attempted")
        } else if affected(case.scope, &flow, &metric) {
            hit += 1;
            match case.effect {
                Effect::Halts(n) if hit >= n => halted = true,
                Effect::FlowTimesOut => {
                    timed_out.insert(flow.clone());
                }
                Effect::PausesWaba => {
                    paused.insert(waba);
                }
                _ => {}
            }
            Some(case.class)
        } else {
            None
        };
        out.insert((flow, metric), class);
    }
    out
}

fn affected(scope: Scope, flow: &str, metric: &str) -> bool {
    match scope {
        Scope::Cell => flow == FLOW && metric == "endpoint_request_count",
        Scope::Flow => flow == FLOW,
        Scope::All => true,
    }
}

async fn check_fault(case: &Case) -> Duration {
    let name = &case.name;
    let mut rig = Rig::start().await;
    let t0 = now().timestamp() as f64;
    let (healthy, _) = rig.scrape().await;
    let data = data_lines(&healthy);
    let had_value = per_cell(
        &healthy,
        "whatsapp_flows_data_period_start_timestamp_seconds",
    );
    let cells: Vec<(String, String)> = per_cell(&healthy, "whatsapp_flows_data_stale")
        .into_keys()
        .collect();
    assert_eq!(cells.len(), 30, "{name}: 6 polled flows x 5 metrics");
    assert!(had_value.contains_key(&(FLOW.to_owned(), "endpoint_request_count".to_owned())));
    assert!(samples(&healthy, "whatsapp_flows_exporter_flow_failing_metrics").is_empty());

    // The fault.
    rig.inject(case).await;
    let t1 = rig.tick();
    let calls_before = rig.sandbox.metric_requests().len();
    let (logs, slowest) = rig.poll_while_scraping().await;
    assert!(
        slowest < SCRAPE_BUDGET,
        "{name}: /metrics took {slowest:?} while Graph failed"
    );
    if let Some(calls) = case.calls {
        let made = rig.sandbox.metric_requests()[calls_before..]
            .iter()
            .filter(|(flow, metric, _)| affected(case.scope, flow, metric.label()))
            .count() as u64;
        assert_eq!(made, calls, "{name}: Graph calls in the faulted poll");
    }
    let (text, _) = rig.scrape().await;
    assert_eq!(
        data_lines(&text),
        data,
        "{name}: every value shown is still exactly the last good one"
    );
    let stale = per_cell(&text, "whatsapp_flows_data_stale");
    let success = per_cell(
        &text,
        "whatsapp_flows_exporter_last_success_timestamp_seconds",
    );
    // By (flow, class): the cells called have the case's class, those the
    // poll did not make are not_attempted, the others are fresh.
    let waba_of: BTreeMap<String, String> = rig
        .sandbox
        .flows()
        .into_iter()
        .map(|f| (f.id, f.waba_id))
        .collect();
    let expected = expected_classes(case, &cells, &waba_of);
    let mut failing: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for ((flow, metric), class) in &expected {
        let key = (flow.clone(), metric.clone());
        if let Some(class) = class {
            *failing.entry((flow.clone(), class)).or_default() += 1.0;
            let stale_now = if had_value.contains_key(&key) {
                1.0
            } else {
                0.0
            };
            assert_eq!(stale.get(&key), Some(&stale_now), "{name}: stale {key:?}");
            assert_eq!(
                success.get(&key),
                Some(&t0),
                "{name}: age of {key:?} shows the last success"
            );
        } else {
            assert_eq!(stale.get(&key), Some(&0.0), "{name}: healthy {key:?}");
            assert_eq!(success.get(&key), Some(&t1), "{name}: healthy {key:?}");
        }
    }
    let hit = expected
        .values()
        .filter(|c| **c == Some(case.class))
        .count();
    let mut expected_failing: Vec<String> = failing
        .iter()
        .map(|((flow, class), n)| {
            format!(
                "whatsapp_flows_exporter_flow_failing_metrics{{flow_id=\"{flow}\",class=\"{class}\"}} {n}"
            )
        })
        .collect();
    expected_failing.sort();
    let mut shown_failing = samples(&text, "whatsapp_flows_exporter_flow_failing_metrics");
    shown_failing.sort();
    assert_eq!(shown_failing, expected_failing, "{name}: failing metrics");
    for ((flow, class), n) in &failing {
        assert_eq!(
            value(
                &text,
                &format!(
                    "whatsapp_flows_exporter_flow_errors_total{{flow_id=\"{flow}\",class=\"{class}\"}}"
                )
            ),
            Some(*n),
            "{name}: errors counted"
        );
    }
    if let Some(gauge) = case.gauge {
        assert_eq!(value(&text, gauge), Some(0.0), "{name}: {gauge}");
    }

    // One log line per failed call, with the class and, when Graph sent one, the
    // trace id.
    let failures: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("metric poll failed"))
        .collect();
    let expected_lines = hit;
    assert_eq!(failures.len(), expected_lines, "{name}: {logs:#?}");
    for line in &failures {
        assert!(
            line.contains(&format!("class=\"{}\"", case.class))
                || line.contains(&format!("class={}", case.class)),
            "{name}: {line}"
        );
        assert_eq!(
            line.contains("fbtrace_id=Some(\"A"),
            case.trace,
            "{name}: trace id in {line}"
        );
        assert!(!line.contains(TOKEN), "{name}: the token leaked: {line}");
        if let Some(text) = case.says {
            assert!(line.contains(text), "{name}: {line}");
        }
    }

    // Recovery: the next poll after the fault clears.
    rig.clear().await;
    tokio::time::sleep(case.settle).await;
    let t2 = rig.tick();
    rig.exporter.poll(Granularity::Hour).await;
    let (text, _) = rig.scrape().await;
    assert_eq!(data_lines(&text), data, "{name}: recovered values");
    let stale = per_cell(&text, "whatsapp_flows_data_stale");
    assert!(stale.values().all(|v| *v == 0.0), "{name}: {stale:?}");
    let success = per_cell(
        &text,
        "whatsapp_flows_exporter_last_success_timestamp_seconds",
    );
    assert!(success.values().all(|t| *t == t2), "{name}: {success:?}");
    assert!(
        samples(&text, "whatsapp_flows_exporter_flow_failing_metrics").is_empty(),
        "{name}: nothing fails after recovery"
    );
    if let Some(gauge) = case.gauge {
        assert_eq!(value(&text, gauge), Some(1.0), "{name}: {gauge} after");
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_matrix() {
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for case in matrix() {
        let took = Instant::now();
        slowest = slowest.max(check_fault(&case).await);
        eprintln!("fault matrix: {} ({:?})", case.name, took.elapsed());
    }
    eprintln!(
        "fault matrix: {} cases in {:?}; slowest scrape {slowest:?}",
        matrix().len(),
        started.elapsed()
    );
}

/// 139006 coming and going is a state, not a failure: while it lasts the flow shows
/// no numbers (none are invented), nothing is stale or failing; when it goes, the
/// exact values are back at the next poll. Other flows never change.
#[tokio::test]
async fn insufficient_data_flapping_on_and_off() {
    let rig = Rig::start().await;
    let (healthy, _) = rig.scrape().await;
    let data = data_lines(&healthy);
    let others: Vec<String> = data.iter().filter(|l| !l.contains(FLOW)).cloned().collect();
    for flap in 0..2 {
        rig.sandbox.inject(
            target(Scope::Flow),
            Fault {
                status: 400,
                body: Sandbox::graph_error_body(
                    139006,
                    None,
                    "Not enough data to provide flow metrics",
                ),
                delay: Duration::ZERO,
                times: None,
            },
        );
        let t = rig.tick();
        let (_, slowest) = rig.poll_while_scraping().await;
        assert!(slowest < SCRAPE_BUDGET);
        let (text, _) = rig.scrape().await;
        assert_eq!(
            data_lines(&text),
            others,
            "flap {flap}: no numbers for {FLOW}"
        );
        let insufficient = per_cell(&text, "whatsapp_flows_insufficient_data");
        let stale = per_cell(&text, "whatsapp_flows_data_stale");
        let success = per_cell(
            &text,
            "whatsapp_flows_exporter_last_success_timestamp_seconds",
        );
        for metric in MetricKind::ALL {
            let key = (FLOW.to_owned(), metric.label().to_owned());
            assert_eq!(insufficient.get(&key), Some(&1.0), "flap {flap}: {key:?}");
            assert_eq!(stale.get(&key), Some(&0.0), "flap {flap}: {key:?}");
            assert_eq!(success.get(&key), Some(&t), "139006 is an answer");
        }
        assert!(samples(&text, "whatsapp_flows_exporter_flow_failing_metrics").is_empty());
        assert!(samples(&text, "whatsapp_flows_exporter_flow_errors_total").is_empty());

        rig.sandbox.clear_faults();
        rig.tick();
        rig.exporter.poll(Granularity::Hour).await;
        let (text, _) = rig.scrape().await;
        assert_eq!(
            data_lines(&text),
            data,
            "flap {flap}: the exact values are back"
        );
        assert!(
            per_cell(&text, "whatsapp_flows_insufficient_data")
                .iter()
                .filter(|((flow, _), _)| flow == FLOW)
                .all(|(_, v)| *v == 0.0)
        );
    }
}

/// Graph throttles the app with a long estimated_time_to_regain_access: the client
/// stops calling Graph at once (no retry, no waiting inside the poll) and pauses;
/// polls during the pause make no Graph call at all, count the calls saved, and
/// keep every value.
#[tokio::test]
async fn long_throttle_pauses_every_call() {
    let rig = Rig::start().await;
    let (healthy, _) = rig.scrape().await;
    let data = data_lines(&healthy);
    rig.sandbox
        .set_business_usage_header(UsageHeader::Fixed(Sandbox::throttled_usage(WABA_1, 5.0)));
    rig.sandbox.inject(
        target(Scope::All),
        Fault {
            status: 400,
            body: Sandbox::graph_error_body(4, None, "Application request limit reached"),
            delay: Duration::ZERO,
            times: None,
        },
    );
    let before = rig.sandbox.request_count();
    let started = Instant::now();
    rig.tick();
    rig.poll_while_scraping().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a 5-minute wait is a pause, not a sleep in the poll"
    );
    assert_eq!(rig.sandbox.request_count() - before, 1, "no retry");
    let (text, _) = rig.scrape().await;
    assert_eq!(
        value(
            &text,
            &format!(
                "whatsapp_flows_exporter_rate_limit_regain_access_seconds{{business_id=\"{WABA_1}\",type=\"whatsapp_business_management\"}}"
            )
        ),
        Some(300.0)
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"poll_halted\"}"
        ),
        Some(29.0)
    );

    // Graph would answer now, but the pause holds: not one call.
    rig.sandbox.clear_faults();
    rig.sandbox.set_business_usage_header(UsageHeader::Computed);
    let before = rig.sandbox.request_count();
    rig.tick();
    rig.exporter.poll(Granularity::Hour).await;
    assert_eq!(
        rig.sandbox.request_count(),
        before,
        "no call during the pause"
    );
    let (text, _) = rig.scrape().await;
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"throttle_pause\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"poll_halted\"}"
        ),
        Some(58.0)
    );
    assert_eq!(data_lines(&text), data, "every value kept");
    assert_eq!(
        failing_by_class(&text),
        [
            ("not_attempted".to_owned(), 29.0),
            ("throttle_pause".to_owned(), 1.0)
        ]
        .into(),
        "the one call refused for the pause, the others not attempted"
    );
}

/// Graph throttles one WABA (80007) for five minutes: that WABA's other calls
/// are not made, in this poll and while the pause lasts, and its values are
/// kept, marked stale; the other WABA is polled in full, fresh, every time.
#[tokio::test]
async fn a_throttled_waba_stops_only_its_own_calls() {
    let rig = Rig::start().await;
    let (healthy, _) = rig.scrape().await;
    let data = data_lines(&healthy);
    let flows = rig.sandbox.flows();
    let waba_1_flows: Vec<&str> = flows
        .iter()
        .filter(|f| f.waba_id == WABA_1 && !matches!(f.status.as_str(), "DRAFT" | "DEPRECATED"))
        .map(|f| f.id.as_str())
        .collect();
    assert_eq!(waba_1_flows.len(), 3);
    rig.sandbox
        .set_business_usage_header(UsageHeader::Fixed(Sandbox::throttled_usage(WABA_1, 5.0)));
    for flow in &waba_1_flows {
        rig.sandbox.inject(
            FaultTarget::Metrics {
                flow_id: Some((*flow).to_owned()),
                metric: None,
                granularity: None,
            },
            Fault {
                status: 400,
                body: Sandbox::graph_error_body(80007, None, "WABA rate limit hit"),
                delay: Duration::ZERO,
                times: None,
            },
        );
    }
    let calls_by_waba = |calls: &[(String, MetricKind, Granularity)]| {
        let w1 = calls
            .iter()
            .filter(|(f, _, _)| waba_1_flows.contains(&f.as_str()))
            .count();
        (w1, calls.len() - w1)
    };
    let waba_1_cells = |text: &str| -> BTreeMap<String, f64> {
        let mut by_class = BTreeMap::new();
        for line in samples(text, "whatsapp_flows_exporter_flow_failing_metrics{") {
            if waba_1_flows.iter().any(|f| line.contains(f)) {
                let class = line
                    .split("class=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next());
                let v: f64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("value");
                *by_class
                    .entry(class.expect("class").to_owned())
                    .or_default() += v;
            } else {
                panic!("a flow of the other WABA fails: {line}");
            }
        }
        by_class
    };
    let before = rig.sandbox.metric_requests().len();
    let t1 = rig.tick();
    rig.poll_while_scraping().await;
    let (w1, w2) = calls_by_waba(&rig.sandbox.metric_requests()[before..]);
    assert_eq!(
        (w1, w2),
        (1, 15),
        "one call for the throttled WABA, every call for the other"
    );
    let (text, _) = rig.scrape().await;
    assert_eq!(data_lines(&text), data, "every value kept");
    assert_eq!(
        waba_1_cells(&text),
        [
            ("not_attempted".to_owned(), 14.0),
            ("waba_throttled".to_owned(), 1.0)
        ]
        .into()
    );
    let fresh = per_cell(
        &text,
        "whatsapp_flows_exporter_last_success_timestamp_seconds",
    );
    for ((flow, _), t) in &fresh {
        let expected = if waba_1_flows.contains(&flow.as_str()) {
            now().timestamp() as f64
        } else {
            t1
        };
        assert_eq!(*t, expected, "{flow}");
    }
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"waba_paused\"}"
        ),
        Some(14.0)
    );
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_rate_limit_pause_seconds"),
        Some(0.0),
        "the app is not paused"
    );
    assert_eq!(
        value(
            &text,
            &format!("whatsapp_flows_exporter_rate_limit_refusing{{waba_id=\"{WABA_1}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            &format!("whatsapp_flows_exporter_rate_limit_refusing{{waba_id=\"{WABA_2}\"}}")
        ),
        Some(0.0)
    );

    // Graph would answer now, but the WABA's pause holds: not one call for it.
    rig.sandbox.clear_faults();
    rig.sandbox.set_business_usage_header(UsageHeader::Computed);
    let before = rig.sandbox.metric_requests().len();
    let t2 = rig.tick();
    rig.exporter.poll(Granularity::Hour).await;
    let (w1, w2) = calls_by_waba(&rig.sandbox.metric_requests()[before..]);
    assert_eq!((w1, w2), (0, 15));
    let (text, _) = rig.scrape().await;
    assert_eq!(
        waba_1_cells(&text),
        [
            ("not_attempted".to_owned(), 14.0),
            ("waba_throttle_pause".to_owned(), 1.0)
        ]
        .into()
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_graph_calls_saved_total{reason=\"waba_throttle_pause\"}"
        ),
        Some(1.0)
    );
    let fresh = per_cell(
        &text,
        "whatsapp_flows_exporter_last_success_timestamp_seconds",
    );
    assert!(
        fresh
            .iter()
            .filter(|((flow, _), _)| !waba_1_flows.contains(&flow.as_str()))
            .all(|(_, t)| *t == t2)
    );
}

/// The same faults on the flows listing of one WABA: discovery keeps the flows it
/// knew, the other WABA is listed as usual, the failure shows as
/// `discovery_failing{class}` with the listing's last success time kept and one log
/// line, and the next discovery after the fault clears recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_fault_matrix() {
    let faults: Vec<(&str, Inject, &str, bool)> = vec![
        (
            "reset",
            Inject::Transport(Transport::Reset),
            "network",
            false,
        ),
        (
            "stalled body",
            Inject::Transport(Transport::StallBody {
                after_bytes: 10,
                stall: Duration::from_secs(2),
            }),
            "network",
            true,
        ),
        (
            "body cut off",
            Inject::Transport(Transport::TruncatedBody { after_bytes: 10 }),
            "network",
            true,
        ),
        (
            "oversized body",
            Inject::Transport(Transport::Oversized {
                bytes: flows_exporter::graph::MAX_BODY_BYTES + 1,
            }),
            "malformed",
            true,
        ),
        ("502", answer(502, "Bad Gateway"), "transient", true),
        (
            "invalid JSON",
            answer(200, "{\"data\": [{"),
            "malformed",
            true,
        ),
        (
            "wrong shape",
            answer(200, "{\"data\": {\"id\": \"1\"}}"),
            "malformed",
            true,
        ),
        (
            "permission 200",
            graph_error(403, 200, None, "(#200) Permissions error"),
            "permission",
            true,
        ),
        (
            "token 190",
            graph_error(401, 190, Some(463), "Session has expired"),
            "token",
            true,
        ),
        (
            "throttled 4",
            graph_error(400, 4, None, "Application request limit reached"),
            "throttled",
            true,
        ),
        (
            "throttled 80008",
            graph_error(400, 80008, None, "Too many calls"),
            "waba_throttled",
            true,
        ),
    ];
    let listing = |text: &str| {
        let mut lines = samples(text, "whatsapp_flows_flow_info");
        lines.extend(samples(text, "whatsapp_flows_exporter_discovered_flows"));
        lines
    };
    let last_listed = |text: &str, waba: &str| {
        value(
            text,
            &format!(
                "whatsapp_flows_exporter_discovery_last_success_timestamp_seconds{{waba_id=\"{waba}\"}}"
            ),
        )
    };
    for (name, inject, class, trace) in faults {
        let rig = Rig::start().await;
        let t0 = now().timestamp() as f64;
        let (healthy, _) = rig.scrape().await;
        let flows = listing(&healthy);
        let target = FaultTarget::FlowsList {
            waba_id: Some(WABA_1.to_owned()),
        };
        match inject {
            Inject::Transport(t) => rig.sandbox.inject_transport(target, t, None),
            Inject::Fault {
                status,
                body,
                delay,
            } => rig.sandbox.inject(
                target,
                Fault {
                    status,
                    body,
                    delay,
                    times: None,
                },
            ),
            other => panic!("{name}: not a listing fault: {other:?}"),
        }
        let t1 = rig.tick();
        let logs = Logs::default();
        let exporter = rig.exporter.clone();
        let discovery = tokio::spawn(
            async move { exporter.discover().await }.with_subscriber(logs.subscriber()),
        );
        let mut slowest = Duration::ZERO;
        loop {
            let finished = discovery.is_finished();
            slowest = slowest.max(rig.scrape().await.1);
            if finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        discovery.await.expect("discovery does not panic");
        assert!(slowest < SCRAPE_BUDGET, "{name}: /metrics took {slowest:?}");
        let (text, _) = rig.scrape().await;
        assert_eq!(listing(&text), flows, "{name}: known flows kept");
        assert_eq!(last_listed(&text, WABA_1), Some(t0), "{name}");
        // Throttling of the app pauses the whole client, but this pause
        // (backoff, no estimate from Graph) is short, so the other WABA's
        // listing waits it out and is listed rather than failing fast; a
        // throttled WABA pauses that WABA's calls only.
        let failing_wabas: &[&str] = &[WABA_1];
        let expected: Vec<String> = failing_wabas
            .iter()
            .map(|waba| {
                format!(
                    "whatsapp_flows_exporter_discovery_failing{{waba_id=\"{waba}\",class=\"{class}\"}} 1"
                )
            })
            .collect();
        assert_eq!(
            samples(&text, "whatsapp_flows_exporter_discovery_failing"),
            expected,
            "{name}"
        );
        assert_eq!(last_listed(&text, WABA_2), Some(t1), "{name}");
        let waits = value(
            &text,
            "whatsapp_flows_exporter_rate_limit_waits_total{reason=\"throttle\"}",
        );
        match class {
            // WABA_1's retry and WABA_2's listing each waited for the pause once.
            "throttled" => assert_eq!(waits, Some(2.0), "{name}"),
            // No retry for WABA_1, no pause for WABA_2.
            "waba_throttled" => assert_eq!(waits, Some(0.0), "{name}"),
            _ => {}
        }
        let lines: Vec<String> = logs
            .lines()
            .into_iter()
            .filter(|l| l.contains("cannot list flows") && l.contains(WABA_1))
            .collect();
        assert_eq!(lines.len(), 1, "{name}: {lines:#?}");
        assert_eq!(
            lines[0].contains("fbtrace_id=Some(\"A"),
            trace,
            "{name}: {}",
            lines[0]
        );

        rig.sandbox.clear_faults();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let t2 = rig.tick();
        rig.exporter.discover().await;
        let (text, _) = rig.scrape().await;
        assert_eq!(listing(&text), flows, "{name}: recovered");
        assert_eq!(last_listed(&text, WABA_1), Some(t2), "{name}");
        assert!(
            samples(&text, "whatsapp_flows_exporter_discovery_failing").is_empty(),
            "{name}"
        );
    }
}
