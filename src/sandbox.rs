//! A sandbox Graph API: a real HTTP/1.1 server that imitates the parts of Meta's Graph
//! API this exporter calls (the flows listing of a WABA and the Flows Metrics API), for
//! the `demo` subcommand, the integration tests and the benchmark.
//!
//! It follows what Meta documents as closely as the documentation allows: bearer-token
//! checks with Graph error envelopes, cursor paging whose `next` names
//! graph.facebook.com, the metric answer shape, error 139006 for flows without enough
//! data, ingestion lag, and the rate-limit usage headers on every answer.
//! The numbers come from `data`, a deterministic traffic model; `graph` does the routing
//! and JSON; this module holds the shared state, the public knobs tests turn (faults,
//! latency, paging) and the hyper server.

pub mod business;
pub mod calling;
mod data;
mod graph;
pub mod meta;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::model::{Clock, Granularity, MetricKind};

/// The two WABAs of `Sandbox::realistic` (and of `Sandbox::generated`).
pub const REALISTIC_WABA_IDS: [&str; 2] = ["102290129340398", "104996122399160"];

/// One served data point: its period start and its `(key, value)` pairs, values as
/// numbers whether the flow sends them as JSON numbers or strings.
pub type ServedPoint = (DateTime<Utc>, Vec<(String, f64)>);

/// Flows per listing page unless set otherwise; Graph's usual default.
const DEFAULT_PAGE_SIZE: usize = 25;

/// How long open connections get to finish their requests after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (for example, out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A sandbox Graph API. Cheap to clone; clones share state, so a test can keep one
/// handle to turn knobs while another serves.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Clock,
    state: Mutex<State>,
    /// Requests answered, for `request_count`.
    answered: AtomicU64,
    /// Seeds each answer's `fbtrace_id`.
    serial: AtomicU64,
}

/// Everything a request can read or change; `graph` routes against it.
struct State {
    token: String,
    flows: Vec<SandboxFlow>,
    /// WABAs in order of first appearance; they stay known when their flows go.
    wabas: Vec<String>,
    page_size: usize,
    empty_page_after: Option<usize>,
    latency: Duration,
    /// Extra delay before the answers to one flow's metric calls.
    flow_latency: std::collections::HashMap<String, Duration>,
    /// The listing never ends: past the last flow, empty pages with fresh cursors.
    endless_paging: bool,
    /// What every answer sends as `x-fb-trace-id` instead of its own.
    trace_header: Option<String>,
    /// Checked newest first.
    faults: Vec<(FaultTarget, Fault)>,
    /// Checked newest first; each with how many calls it still answers.
    transports: Vec<(FaultTarget, Transport, Option<u32>)>,
    business_usage: UsageHeader,
    metric_log: Vec<(String, MetricKind, Granularity)>,
    usage: graph::Usage,
    calling: calling::Calling,
    /// Where the `calls` webhooks go: URL and app secret.
    webhook_target: Option<(String, String)>,
}

/// A flow the sandbox knows, with the traffic its endpoint gets.
#[derive(Debug, Clone)]
pub struct SandboxFlow {
    pub id: String,
    pub name: String,
    pub waba_id: String,
    /// `DRAFT`, `PUBLISHED`, `DEPRECATED`, `BLOCKED` or `THROTTLED`.
    pub status: String,
    pub data_api_version: String,
    /// `AVAILABLE`, `LIMITED` or `BLOCKED`.
    pub can_send_message: String,
    pub traffic: Traffic,
}

/// How a flow's metrics answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Numbers as JSON numbers, around `base_per_hour` requests an hour.
    Normal { base_per_hour: u32 },
    /// The same traffic, but every `value` is a JSON string (`"315"`, `"0.0412"`), as in
    /// one of Meta's reference examples.
    StringValues { base_per_hour: u32 },
    /// Fewer than 250 requests: every metric query answers error 139006.
    BelowThreshold,
}

/// An injected answer that replaces the normal one.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    /// Sent as is, usually built with `Sandbox::graph_error_body`.
    pub body: String,
    /// Added to the sandbox latency before answering.
    pub delay: Duration,
    /// How many calls it answers before it disappears; `None` until `clear_faults`.
    pub times: Option<u32>,
}

/// How an answer travels, for faults below the Graph level: the answer (normal or an
/// injected `Fault`) is decided as usual, then delivered this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The connection is closed without an answer, as by a reset.
    Reset,
    /// Status, headers (with the full `content-length`) and the first `after_bytes`
    /// bytes of the body, then nothing for `stall`, then the rest.
    StallBody { after_bytes: usize, stall: Duration },
    /// Status, headers (with the full `content-length`) and the first `after_bytes`
    /// bytes of the body, then the connection is closed.
    TruncatedBody { after_bytes: usize },
    /// Status, headers (chunked), then the body one byte every `every`, and
    /// after the body whitespace at the same pace, forever: an answer that
    /// never ends but never stalls either.
    Trickle { every: Duration },
    /// A 200 that starts like a metric answer and goes on with whitespace to `bytes`
    /// bytes in all, chunked (no `content-length`), so only a reader that caps what it
    /// reads is safe.
    Oversized { bytes: usize },
}

/// What the `X-Business-Use-Case-Usage` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageHeader {
    /// The sandbox's own count of calls per WABA (the default).
    Computed,
    /// No such header at all.
    Omitted,
    /// This value as is, e.g. with an `estimated_time_to_regain_access` above zero.
    Fixed(String),
    /// This many business ids no answer named before, at 10 % usage each.
    FreshIds(usize),
}

/// Which calls a fault answers; `None` matches anything.
///
/// Faults are checked after the token, the path and (for metrics) the `fields` syntax,
/// and before the flow or WABA is looked up.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultTarget {
    Metrics {
        flow_id: Option<String>,
        metric: Option<MetricKind>,
        granularity: Option<Granularity>,
    },
    FlowsList {
        waba_id: Option<String>,
    },
}

impl Sandbox {
    /// A sandbox with no flows.
    pub fn new(token: impl Into<String>, clock: Clock) -> Sandbox {
        let state = State {
            token: token.into(),
            flows: Vec::new(),
            wabas: Vec::new(),
            page_size: DEFAULT_PAGE_SIZE,
            empty_page_after: None,
            latency: Duration::ZERO,
            flow_latency: std::collections::HashMap::new(),
            endless_paging: false,
            trace_header: None,
            faults: Vec::new(),
            transports: Vec::new(),
            business_usage: UsageHeader::Computed,
            metric_log: Vec::new(),
            usage: graph::Usage::default(),
            calling: calling::Calling::default(),
            webhook_target: None,
        };
        Sandbox {
            inner: Arc::new(Inner {
                clock,
                state: Mutex::new(state),
                answered: AtomicU64::new(0),
                serial: AtomicU64::new(0),
            }),
        }
    }

    /// The demo data set: two WABAs whose flows cover every status, an old
    /// `data_api_version` without availability data, string values, a flow below the
    /// data threshold, and listing pages of two with an empty page after the first.
    pub fn realistic(token: impl Into<String>, clock: Clock) -> Sandbox {
        let [waba_1, waba_2] = REALISTIC_WABA_IDS;
        #[rustfmt::skip]
        let flows = [
            ("1180349906393871", "Appointment booking", waba_1, "PUBLISHED", "3.0", "AVAILABLE", Traffic::Normal { base_per_hour: 180 }),
            ("1312058623344795", "Lead qualification", waba_1, "PUBLISHED", "3.1", "AVAILABLE", Traffic::StringValues { base_per_hour: 60 }),
            ("947325160880432", "Order tracking", waba_1, "THROTTLED", "3.0", "LIMITED", Traffic::Normal { base_per_hour: 400 }),
            ("1054620873421660", "Spring sale survey", waba_1, "DRAFT", "3.0", "AVAILABLE", Traffic::Normal { base_per_hour: 25 }),
            ("2218760399112746", "Holiday promo 2025", waba_1, "DEPRECATED", "3.0", "BLOCKED", Traffic::Normal { base_per_hour: 50 }),
            ("1467393620448117", "Loyalty signup", waba_2, "PUBLISHED", "2.1", "AVAILABLE", Traffic::Normal { base_per_hour: 90 }),
            ("839201746158334", "Feedback form", waba_2, "PUBLISHED", "3.0", "AVAILABLE", Traffic::BelowThreshold),
            ("1726044182937705", "Store locator", waba_2, "BLOCKED", "3.0", "BLOCKED", Traffic::Normal { base_per_hour: 30 }),
        ];

        let sandbox = Sandbox::new(token, clock);
        for (id, name, waba_id, status, data_api_version, can_send_message, traffic) in flows {
            sandbox.add_flow(SandboxFlow {
                id: id.to_owned(),
                name: name.to_owned(),
                waba_id: waba_id.to_owned(),
                status: status.to_owned(),
                data_api_version: data_api_version.to_owned(),
                can_send_message: can_send_message.to_owned(),
                traffic,
            });
        }
        sandbox.set_page_size(2);
        sandbox.set_empty_page_after(Some(0));
        sandbox
    }

    /// `n_flows` PUBLISHED v3.0 flows spread round-robin over `n_wabas` WABAs
    /// (ids `300000000000000 + w`), ids `900000000000000 + i`: a solution
    /// provider's many accounts, for the sharding tests and benchmark.
    pub fn generated_wabas(
        n_flows: usize,
        n_wabas: usize,
        token: impl Into<String>,
        clock: Clock,
    ) -> Sandbox {
        let sandbox = Sandbox::new(token, clock);
        for i in 0..n_flows {
            sandbox.add_flow(SandboxFlow {
                id: (900_000_000_000_000 + i as u64).to_string(),
                name: format!("Generated flow {i}"),
                waba_id: Sandbox::generated_waba(i % n_wabas.max(1)),
                status: "PUBLISHED".into(),
                data_api_version: "3.0".into(),
                can_send_message: "AVAILABLE".into(),
                traffic: Traffic::Normal {
                    base_per_hour: 40 + (i as u32 % 7) * 60,
                },
            });
        }
        sandbox
    }

    /// The id of generated WABA number `w`.
    pub fn generated_waba(w: usize) -> String {
        (300_000_000_000_000 + w as u64).to_string()
    }

    /// `n_flows` PUBLISHED v3.0 flows alternating over the two realistic WABAs, with
    /// Normal traffic of varied volume: ids `900000000000000 + i`, names
    /// "Generated flow {i}". For benchmarks.
    pub fn generated(n_flows: usize, token: impl Into<String>, clock: Clock) -> Sandbox {
        let sandbox = Sandbox::new(token, clock);
        for i in 0..n_flows {
            sandbox.add_flow(SandboxFlow {
                id: (900_000_000_000_000 + i as u64).to_string(),
                name: format!("Generated flow {i}"),
                waba_id: REALISTIC_WABA_IDS[i % 2].to_owned(),
                status: "PUBLISHED".to_owned(),
                data_api_version: "3.0".to_owned(),
                can_send_message: "AVAILABLE".to_owned(),
                traffic: Traffic::Normal {
                    // 40..400 requests an hour, spread so neighbours differ.
                    base_per_hour: 40 + (i * 37 % 361) as u32,
                },
            });
        }
        sandbox
    }

    /// Adds a flow at the end of its WABA's listing, or replaces the flow with that id.
    pub fn add_flow(&self, flow: SandboxFlow) {
        let mut state = self.state();
        if !state.wabas.contains(&flow.waba_id) {
            state.wabas.push(flow.waba_id.clone());
        }
        match state.flows.iter_mut().find(|f| f.id == flow.id) {
            Some(existing) => *existing = flow,
            None => state.flows.push(flow),
        }
    }

    /// Removes a flow; its WABA stays known (and lists no flow if it was the last).
    pub fn remove_flow(&self, flow_id: &str) {
        self.state().flows.retain(|f| f.id != flow_id);
    }

    /// A Messenger Page that may place calls (`POST /{page}/calls`) and
    /// submit call metrics.
    pub fn add_page(&self, page_id: &str) {
        self.state().calling.pages.insert(page_id.to_owned());
    }

    /// The Page's app loses (or gets back) the calling capability.
    pub fn set_page_permission(&self, page_id: &str, allowed: bool) {
        let mut state = self.state();
        if allowed {
            state.calling.no_permission.remove(page_id);
        } else {
            state.calling.no_permission.insert(page_id.to_owned());
        }
    }

    /// The next `call_metrics` post is answered with this status and body.
    pub fn inject_call_metrics(&self, status: u16, body: &str) {
        self.state()
            .calling
            .injected
            .push((status, body.to_owned()));
    }

    /// How many `call_metrics` posts came, whatever their answer.
    pub fn call_metrics_posts(&self) -> u64 {
        self.state().calling.posts
    }

    /// The call_metrics bodies the sandbox accepted, in order.
    pub fn received_call_metrics(&self) -> Vec<serde_json::Value> {
        self.state().calling.received_metrics.clone()
    }

    /// The calls the sandbox placed.
    pub fn calls(&self) -> std::collections::BTreeMap<String, calling::SandboxCall> {
        self.state().calling.calls.clone()
    }

    /// Posts the `calls` webhooks to `url`, signed with `secret`.
    pub fn set_webhook_target(&self, url: &str, secret: &str) {
        self.state().webhook_target = Some((url.to_owned(), secret.to_owned()));
    }

    /// The consumer accepts a call the sandbox placed: its `accepted` webhook
    /// goes out. False for an unknown call.
    pub async fn accept_call(&self, call_id: &str) -> bool {
        let now = self.inner.clock.now().timestamp();
        let (webhook, target) = {
            let mut state = self.state();
            (
                state.calling.accept(call_id, now),
                state.webhook_target.clone(),
            )
        };
        match webhook {
            Some(body) => {
                deliver(target, vec![body]).await;
                true
            }
            None => false,
        }
    }

    pub fn set_status(&self, flow_id: &str, status: &str) {
        if let Some(flow) = self.state().flows.iter_mut().find(|f| f.id == flow_id) {
            status.clone_into(&mut flow.status);
        }
    }

    /// Flows per listing page when the request has no `limit`; at least one.
    pub fn set_page_size(&self, n: usize) {
        self.state().page_size = n.max(1);
    }

    /// Inserts an empty page (`data: []` with a `paging.next`) after the page with this
    /// index (counted from 0), when more flows follow it.
    pub fn set_empty_page_after(&self, page_index: Option<usize>) {
        self.state().empty_page_after = page_index;
    }

    /// A delay before every answer.
    pub fn set_latency(&self, d: Duration) {
        self.state().latency = d;
    }

    /// A delay before every answer to a metric call of this flow (on top of
    /// the latency of every answer); a very long one makes the flow hang.
    pub fn set_flow_latency(&self, flow_id: &str, d: Duration) {
        self.state().flow_latency.insert(flow_id.to_owned(), d);
    }

    /// Makes every WABA's listing endless: after its last flow, Graph keeps
    /// naming a next page, each with a cursor it never named before.
    pub fn set_endless_paging(&self, on: bool) {
        self.state().endless_paging = on;
    }

    /// What every later answer sends as `x-fb-trace-id` (None: its own).
    pub fn set_trace_header(&self, value: Option<String>) {
        self.state().trace_header = value;
    }

    pub fn set_token(&self, token: &str) {
        token.clone_into(&mut self.state().token);
    }

    /// Adds a fault. Later faults are checked first; one with `times: Some(n)` answers n
    /// matching calls, then disappears.
    pub fn inject(&self, target: FaultTarget, fault: Fault) {
        self.state().faults.push((target, fault));
    }

    /// Adds a transport fault. Later ones are checked first; with `times: Some(n)` it
    /// shapes n matching calls, then disappears.
    pub fn inject_transport(&self, target: FaultTarget, transport: Transport, times: Option<u32>) {
        self.state().transports.push((target, transport, times));
    }

    /// Removes every fault, transport faults included.
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.transports.clear();
    }

    /// What every later answer sends as `X-Business-Use-Case-Usage`.
    pub fn set_business_usage_header(&self, header: UsageHeader) {
        self.state().business_usage = header;
    }

    /// A `X-Business-Use-Case-Usage` value for one WABA at `percent` of its allowance
    /// (the highest of its three figures), not throttled.
    pub fn business_usage(waba_id: &str, percent: u32) -> String {
        serde_json::json!({ waba_id: [{
            "type": "whatsapp_business_management",
            "call_count": percent,
            "total_cputime": percent / 4,
            "total_time": percent / 2,
            "estimated_time_to_regain_access": 0,
        }]})
        .to_string()
    }

    /// A `X-Business-Use-Case-Usage` value for one WABA at full usage that asks to wait
    /// `regain_minutes` (Meta sends whole minutes; fractions make short test waits).
    pub fn throttled_usage(waba_id: &str, regain_minutes: f64) -> String {
        serde_json::json!({ waba_id: [{
            "type": "whatsapp_business_management",
            "call_count": 100,
            "total_cputime": 40,
            "total_time": 60,
            "estimated_time_to_regain_access": regain_minutes,
        }]})
        .to_string()
    }

    /// A Graph error envelope: `{"error": {"message", "type", "code", "error_subcode"?,
    /// "fbtrace_id"}}`, with `type` as Graph sets it for that code and `is_transient`
    /// for codes 1 and 2.
    pub fn graph_error_body(code: u32, subcode: Option<u32>, message: &str) -> String {
        // A fixed trace id per error keeps fault bodies comparable in tests.
        let seed = message
            .bytes()
            .fold(u64::from(code), |h, b| data::mix(h ^ u64::from(b)));
        graph::error_envelope(code, subcode, message, &graph::trace_id(seed)).to_string()
    }

    /// Requests answered so far, whatever the answer.
    pub fn request_count(&self) -> u64 {
        self.inner.answered.load(Ordering::Relaxed)
    }

    /// Every authorised, well-formed metric call in arrival order, including those a
    /// fault answered and those for unknown flows.
    pub fn metric_requests(&self) -> Vec<(String, MetricKind, Granularity)> {
        self.state().metric_log.clone()
    }

    /// Like `metric_requests`, but empties the log, so a long run (the soak
    /// benchmark) does not measure the sandbox's own log growing.
    pub fn take_metric_requests(&self) -> Vec<(String, MetricKind, Granularity)> {
        std::mem::take(&mut self.state().metric_log)
    }

    pub fn flows(&self) -> Vec<SandboxFlow> {
        self.state().flows.clone()
    }

    /// The exact data the sandbox serves for this flow/metric/granularity/date window,
    /// as of the clock's current reading. Empty for an unknown flow and for a flow that
    /// answers error 139006 instead.
    ///
    /// Window: a period is served when its start falls on a date from `since` to
    /// `until`, both inclusive (HOUR periods dated in UTC, DAY and LIFETIME by their
    /// 08:00 UTC start). `since` defaults to, and is clamped to, 30 days back for HOUR
    /// and 90 days back for DAY and LIFETIME; `until` defaults to the clock's date. Only
    /// hours that ended two hours ago or more are served; the newest DAY and the
    /// LIFETIME point sum the hours served so far. LIFETIME is one point stamped
    /// `since` 08:00 UTC.
    pub fn data_points(
        &self,
        flow_id: &str,
        metric: MetricKind,
        granularity: Granularity,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
    ) -> Vec<ServedPoint> {
        let flow = self.state().flows.iter().find(|f| f.id == flow_id).cloned();
        let Some(flow) = flow.filter(data::has_enough_data) else {
            return Vec::new();
        };
        let now = self.inner.clock.now();
        let window = data::Window::resolve(granularity, since, until, now.date_naive());
        data::points(&flow, metric, granularity, window, now)
            .into_iter()
            .map(|point| {
                let values = point
                    .data
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value.as_f64()))
                    .collect();
                (point.start, values)
            })
            .collect()
    }

    /// Serves on an already-bound listener until `shutdown` resolves, then lets open
    /// connections finish (for up to five seconds) and returns. Every connection task
    /// is owned here and awaited or aborted before returning.
    ///
    /// A failed `accept` is logged and retried, so the only error is the listener
    /// failing to say its address.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let addr = listener.local_addr()?;
        info!(%addr, "sandbox Graph API listening");
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let sandbox = self.clone();
                        let service = service_fn(move |req| {
                            let sandbox = sandbox.clone();
                            sandbox.answer(req)
                        });
                        let connection = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), service);
                        let connection = graceful.watch(connection);
                        connections.spawn(async move {
                            if let Err(err) = connection.await {
                                debug!(%peer, error = %err, "sandbox connection failed");
                            }
                        });
                    }
                    Err(err) => {
                        warn!(error = %err, "sandbox accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                // Reap finished connections so the set does not grow without bound.
                Some(finished) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(err) = finished {
                        error!(error = %err, "sandbox connection task failed");
                    }
                }
            }
        }

        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            warn!("sandbox connections still open after the grace period; closing them");
        }
        connections.shutdown().await;
        info!(%addr, "sandbox Graph API stopped");
        Ok(())
    }

    /// One HTTP exchange: route, wait out latency and fault delay, answer. An error
    /// makes hyper close the connection without an answer (`Transport::Reset`).
    async fn answer(self, req: Request<Incoming>) -> io::Result<Response<Body>> {
        if req.method() == hyper::Method::POST {
            return self.answer_calling(req).await;
        }
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let reply = self.handle(&graph::GraphRequest {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query().unwrap_or(""),
            authorization,
        });
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        self.inner.answered.fetch_add(1, Ordering::Relaxed);
        reply.into_response()
    }

    /// `POST /{version}/{page}/calls` and `/{version}/{page}/call_metrics`;
    /// the webhooks a call causes are delivered before the answer goes back
    /// (Meta sends them about then too).
    async fn answer_calling(self, req: Request<Incoming>) -> io::Result<Response<Body>> {
        use http_body_util::BodyExt as _;
        let authorized = {
            let token = self.state().token.clone();
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(format!("Bearer {token}").as_str())
        };
        let path: Vec<String> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let body = http_body_util::Limited::new(req.into_body(), 1024 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let now = self.inner.clock.now().timestamp();
        let (answer, target) = {
            let mut state = self.state();
            let answer = if !authorized {
                calling::Answer {
                    status: 401,
                    body: serde_json::json!({"error": {"message": "Error validating access token", "type": "OAuthException", "code": 190}}).to_string(),
                    webhooks: Vec::new(),
                }
            } else {
                match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                    [_, page, "calls"] => state.calling.calls(page, &json, now),
                    [_, page, "call_metrics"] => state.calling.call_metrics(page, &json, now),
                    _ => calling::Answer {
                        status: 400,
                        body: serde_json::json!({"error": {"message": "Unsupported post request.", "type": "GraphMethodException", "code": 100}}).to_string(),
                        webhooks: Vec::new(),
                    },
                }
            };
            (answer, state.webhook_target.clone())
        };
        deliver(target, answer.webhooks).await;
        self.inner.answered.fetch_add(1, Ordering::Relaxed);
        Reply {
            status: answer.status,
            headers: vec![("content-type", "application/json; charset=UTF-8".to_owned())],
            body: answer.body,
            delay: Duration::ZERO,
            transport: None,
        }
        .into_response()
    }

    /// Everything but the I/O: decides the answer and its headers.
    fn handle(&self, req: &graph::GraphRequest<'_>) -> Reply {
        let now = self.inner.clock.now();
        let trace_id = graph::trace_id(self.inner.serial.fetch_add(1, Ordering::Relaxed));
        let (routed, latency, trace_header) = {
            let mut state = self.state();
            let routed = graph::route(&mut state, req, &trace_id, now);
            let flow_latency = match &routed.answer {
                graph::Answer::Metric(query) => state
                    .flow_latency
                    .get(query.flow_id())
                    .copied()
                    .unwrap_or_default(),
                graph::Answer::Ready { .. } => Duration::ZERO,
            };
            (
                routed,
                state.latency + flow_latency,
                state.trace_header.clone(),
            )
        };
        // Generating a metric's hours happens outside the lock: a 90-day window is
        // thousands of hours, and the benchmark sends many queries at once.
        let (status, body, fault_delay) = match routed.answer {
            graph::Answer::Ready {
                status,
                body,
                delay,
            } => (status, body, delay),
            graph::Answer::Metric(query) => (200, graph::metric_body(&query, now), Duration::ZERO),
        };
        let (app_usage, business_usage) = {
            let mut state = self.state();
            let (app, computed) = state.usage.record(routed.waba.as_deref(), now);
            let business = match &state.business_usage {
                UsageHeader::Computed => Some(computed),
                UsageHeader::Omitted => None,
                UsageHeader::Fixed(value) => Some(value.clone()),
                UsageHeader::FreshIds(n) => {
                    let first = self.inner.serial.fetch_add(*n as u64, Ordering::Relaxed);
                    let ids: serde_json::Map<String, serde_json::Value> = (first
                        ..first + *n as u64)
                        .map(|i| {
                            (
                                (800_000_000_000_000 + i).to_string(),
                                serde_json::json!([{
                                    "type": "whatsapp_business_management",
                                    "call_count": 10,
                                    "total_cputime": 1,
                                    "total_time": 2,
                                    "estimated_time_to_regain_access": 0,
                                }]),
                            )
                        })
                        .collect();
                    Some(serde_json::Value::Object(ids).to_string())
                }
            };
            (app, business)
        };

        let mut headers = vec![
            ("content-type", "application/json; charset=UTF-8".to_owned()),
            ("facebook-api-version", routed.version),
            ("x-fb-trace-id", trace_header.unwrap_or(trace_id)),
            ("x-app-usage", app_usage),
        ];
        if let Some(value) = business_usage {
            headers.push(("x-business-use-case-usage", value));
        }
        if status == 401 {
            headers.push((
                "www-authenticate",
                r#"OAuth "Facebook Platform" "invalid_token" "Error validating access token""#
                    .to_owned(),
            ));
        }
        Reply {
            status,
            headers,
            body,
            delay: latency + fault_delay,
            transport: routed.transport,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough for a fake.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Posts `bodies`, signed, to the webhook target, in order; failures are logged.
async fn deliver(target: Option<(String, String)>, bodies: Vec<String>) {
    let Some((url, secret)) = target else {
        return;
    };
    let meta = meta::MetaWebhooks::new(url, secret);
    for body in bodies {
        match meta.post(&body).await {
            Ok(200) => {}
            Ok(status) => warn!(status, "sandbox: the receiver did not take a calls webhook"),
            Err(e) => warn!(error = %e, "sandbox: cannot deliver a calls webhook"),
        }
    }
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Sandbox")
            .field("token", &"<redacted>")
            .field("clock", &self.inner.clock)
            .field("flows", &state.flows.len())
            .field("wabas", &state.wabas)
            .field("page_size", &state.page_size)
            .field("empty_page_after", &state.empty_page_after)
            .field("latency", &state.latency)
            .field("faults", &state.faults.len())
            .field("request_count", &self.request_count())
            .finish()
    }
}

/// A decided answer, before it becomes an HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
    transport: Option<Transport>,
}

/// An answer body: whole, or streamed in parts when a transport fault shapes it.
type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Whitespace for `Transport::Oversized`, sent in pieces of this size.
static PADDING: [u8; 64 * 1024] = [b' '; 64 * 1024];

fn whole(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl Reply {
    fn into_response(self) -> io::Result<Response<Body>> {
        let mut status = self.status;
        let body = Bytes::from(self.body);
        let mut content_length = None;
        let body = match self.transport {
            None => whole(body),
            Some(Transport::Reset) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "injected connection reset",
                ));
            }
            Some(Transport::StallBody { after_bytes, stall }) => {
                content_length = Some(body.len());
                let head = body.slice(..after_bytes.min(body.len()));
                let tail = body.slice(head.len()..);
                let head = futures_util::stream::once(async move { Ok(Frame::data(head)) });
                let tail = futures_util::stream::once(async move {
                    tokio::time::sleep(stall).await;
                    Ok(Frame::data(tail))
                });
                StreamBody::new(head.chain(tail)).boxed_unsync()
            }
            Some(Transport::TruncatedBody { after_bytes }) => {
                content_length = Some(body.len());
                let head = body.slice(..after_bytes.min(body.len()));
                let head = futures_util::stream::once(async move { Ok(Frame::data(head)) });
                // hyper writes what it has before it polls the body again; the pause
                // lets the head and the first bytes leave before the cut.
                let cut = futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "injected truncation",
                    ))
                });
                StreamBody::new(head.chain(cut)).boxed_unsync()
            }
            Some(Transport::Trickle { every }) => {
                let mut sent = 0usize;
                let trickle = futures_util::stream::unfold((), move |()| {
                    let next = match body.get(sent) {
                        Some(b) => Bytes::copy_from_slice(&[*b]),
                        None => Bytes::from_static(b" "),
                    };
                    sent += 1;
                    async move {
                        tokio::time::sleep(every).await;
                        Some((Ok(Frame::data(next)), ()))
                    }
                });
                StreamBody::new(trickle).boxed_unsync()
            }
            Some(Transport::Oversized { bytes }) => {
                status = 200;
                let head = Bytes::from_static(
                    br#"{"id":"0","metric":{"name":"ENDPOINT_REQUEST_COUNT","granularity":"HOUR","data_points":["#,
                );
                let mut left = bytes.saturating_sub(head.len());
                let padding = std::iter::from_fn(move || {
                    let n = left.min(PADDING.len());
                    left -= n;
                    (n > 0).then(|| Ok(Frame::data(Bytes::from_static(&PADDING[..n]))))
                });
                let parts = futures_util::stream::iter(
                    std::iter::once(Ok(Frame::data(head))).chain(padding),
                );
                StreamBody::new(parts).boxed_unsync()
            }
        };
        let mut builder = Response::builder().status(status);
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.as_str());
        }
        if let Some(n) = content_length {
            builder = builder.header(header::CONTENT_LENGTH, n);
        }
        Ok(builder.body(body).unwrap_or_else(|err| {
            // Only an injected fault with an impossible status gets here.
            warn!(status, error = %err, "sandbox cannot build answer");
            let mut response = Response::new(whole(Bytes::from_static(b"{}")));
            *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            response
        }))
    }
}
