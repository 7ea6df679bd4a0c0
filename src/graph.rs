//! The only module that talks to the Graph API: listing a WABA's flows (following
//! paging against the configured base URL) and fetching one metric of one flow.
//!
//! Every answer's rate-limit headers are recorded and fed to the client's
//! [`Governor`], which every attempt asks first: it may wait (pacing, usage
//! slowdown, a short throttle pause) or refuse (a long throttle pause, usage at
//! the stop threshold, the WABA's call budget) without calling Graph. Every call
//! is counted by endpoint and outcome; transient failures are retried with
//! bounded, jittered backoff. A throttled answer pauses the whole client, not
//! one call, because further calls would only extend the penalty.

pub mod wire;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use reqwest::Url;
use tracing::{debug, info};

use crate::config::{Config, Secret};
use crate::error::{ApiHealth, CallError, Endpoint, ErrorClass, GraphError, Outcome, Validity};
use crate::model::{DataPoint, Flow, Granularity, MetricKind};
use crate::ratelimit::{Decision, Governor, Refusal, WaitReason, waba_key};
use crate::telemetry::Telemetry;

/// The largest answer body read; anything bigger is refused as malformed.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The longest a call waits for a throttle pause to end; a longer pause fails
/// calls at once without calling Graph.
pub const MAX_IN_CALL_WAIT: Duration = Duration::from_secs(60);
/// A listing longer than this many pages is treated as a paging loop.
const MAX_PAGES: usize = 1000;
const FLOW_FIELDS: &str = "id,name,status,categories,data_api_version,endpoint_uri,health_status";

/// A Graph API client bound to one base URL, version and token.
pub struct GraphClient {
    http: reqwest::Client,
    base_url: String,
    api_version: String,
    /// Swapped in place when the token file is rotated (`set_token`).
    token: RwLock<Secret>,
    max_retries: u32,
    retry_backoff: Duration,
    telemetry: Arc<Telemetry>,
    /// Shared with the client a reload builds, so usage, a throttle pause and
    /// the calls of the last hour (the budget) survive it.
    governor: Arc<Mutex<Governor>>,
    served_version: Mutex<Option<String>>,
    /// What Graph's answers said of the token and the Metrics API; this
    /// client owns it and publishes it (`token_valid`, `metrics_api_available`).
    health: Mutex<ApiHealth>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("base_url", &self.base_url)
            .field("api_version", &self.api_version)
            .field("token", &self.token())
            .finish_non_exhaustive()
    }
}

/// The governor's single throttle-retry slot, held by one call while it waits
/// out a pause to try again; given back when the call's next attempt ended or
/// the call was dropped (cancelled, refused).
struct ThrottleRetry<'a>(&'a GraphClient);

impl Drop for ThrottleRetry<'_> {
    fn drop(&mut self) {
        self.0.governor().release_throttle_retry();
    }
}

impl GraphClient {
    /// A client for `config.graph`, governed by `config.rate_limit`.
    pub fn new(
        config: &Config,
        token: Secret,
        telemetry: Arc<Telemetry>,
    ) -> anyhow::Result<GraphClient> {
        let governor = Governor::new(config.rate_limit.clone(), MAX_IN_CALL_WAIT, &config.wabas);
        GraphClient::with_governor(config, token, telemetry, Arc::new(Mutex::new(governor)))
    }

    /// A client for a reloaded `config` that shares this client's governor: a
    /// reload must not forget the calls of the last hour, or it would reset the
    /// budget, nor a throttle pause. The governor takes the new `[rate_limit]`
    /// settings only when the reload is applied ([`GraphClient::reconfigure`]).
    pub fn rebuilt(&self, config: &Config, token: Secret) -> anyhow::Result<GraphClient> {
        let client = GraphClient::with_governor(
            config,
            token,
            self.telemetry.clone(),
            self.governor.clone(),
        )?;
        *client.health.lock().unwrap_or_else(|e| e.into_inner()) = self.health();
        Ok(client)
    }

    /// Applies a reloaded `[rate_limit]` section and WABA list to the governor,
    /// keeping what it has observed.
    pub fn reconfigure(&self, config: &Config) {
        self.governor()
            .reconfigure(config.rate_limit.clone(), &config.wabas);
    }

    fn with_governor(
        config: &Config,
        token: Secret,
        telemetry: Arc<Telemetry>,
        governor: Arc<Mutex<Governor>>,
    ) -> anyhow::Result<GraphClient> {
        let cfg = &config.graph;
        // reqwest is built without a bundled crypto provider; install ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("flows-exporter/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(cfg.max_concurrency)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(GraphClient {
            http,
            base_url: cfg.base_url.clone(),
            api_version: cfg.api_version.clone(),
            token: RwLock::new(token),
            max_retries: cfg.max_retries,
            retry_backoff: cfg.retry_backoff,
            telemetry,
            governor,
            served_version: Mutex::new(None),
            health: Mutex::new(ApiHealth::default()),
        })
    }

    /// Replaces the access token for the calls from now on (a rotated token
    /// file). Returns whether it differs from the one in use.
    pub fn set_token(&self, token: Secret) -> bool {
        let mut current = self.token.write().unwrap_or_else(|e| e.into_inner());
        if *current == token {
            return false;
        }
        *current = token;
        true
    }

    /// What Graph's answers said of the token and the Metrics API so far.
    pub fn health(&self) -> ApiHealth {
        *self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Graph rejected the token in use (code 190) and accepted nothing since.
    pub fn token_rejected(&self) -> bool {
        self.health().token == Validity::Rejected
    }

    /// Counts one attempt and updates (and publishes) what it says of the
    /// token and the Metrics API.
    fn answered(&self, endpoint: Endpoint, outcome: Outcome, took: Duration) {
        self.telemetry.observe_request(endpoint, outcome, took);
        let health = {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            *health = health.after(endpoint, outcome);
            *health
        };
        self.telemetry.set_api_health(health);
    }

    fn token(&self) -> Secret {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lists every flow of a WABA, following `paging.next` cursors against the
    /// configured base URL until Graph gives no next page.
    pub async fn list_flows(&self, waba_id: &str) -> Result<Vec<Flow>, CallError> {
        let mut flows = Vec::new();
        let mut after: Option<String> = None;
        let mut seen_cursors = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let mut url = self.url(&format!("{waba_id}/flows"))?;
            url.query_pairs_mut().append_pair("fields", FLOW_FIELDS);
            if let Some(a) = &after {
                url.query_pairs_mut().append_pair("after", a);
            }
            let page = self
                .call(Endpoint::Flows, waba_id, url, |body| {
                    wire::parse_flows_page(body, waba_id)
                })
                .await?;
            flows.extend(page.flows);
            match page.next_after {
                Some(next) if seen_cursors.insert(next.clone()) => after = Some(next),
                Some(_) => {
                    return Err(GraphError::malformed(
                        "flow listing repeats a paging cursor (paging loop)",
                    )
                    .into());
                }
                None => return Ok(flows),
            }
        }
        Err(GraphError::malformed(format!("flow listing has more than {MAX_PAGES} pages")).into())
    }

    /// Fetches one metric of one flow for one granularity, from `since` on.
    /// `waba_id` is the flow's WABA (empty when unknown), whose budget the call
    /// counts against.
    pub async fn fetch_metric(
        &self,
        waba_id: &str,
        flow_id: &str,
        metric: MetricKind,
        granularity: Granularity,
        since: Option<NaiveDate>,
    ) -> Result<Vec<DataPoint>, CallError> {
        self.fetch_metric_window(waba_id, flow_id, metric, granularity, since, None)
            .await
    }

    /// Fetches one metric of one flow for one granularity between two dates
    /// (`since(...)` and `until(...)`; either may be left to Graph's default).
    /// Whether Graph treats `until` as inclusive is undocumented: callers that
    /// need an exact window ask a day more and filter the answer.
    pub async fn fetch_metric_window(
        &self,
        waba_id: &str,
        flow_id: &str,
        metric: MetricKind,
        granularity: Granularity,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
    ) -> Result<Vec<DataPoint>, CallError> {
        let mut fields = format!(
            "metric.name({}).granularity({})",
            metric.api_name(),
            granularity.api_name()
        );
        if let Some(s) = since {
            fields.push_str(&format!(".since({})", s.format("%Y-%m-%d")));
        }
        if let Some(u) = until {
            fields.push_str(&format!(".until({})", u.format("%Y-%m-%d")));
        }
        let mut url = self.url(flow_id)?;
        url.query_pairs_mut().append_pair("fields", &fields);
        self.call(Endpoint::Metric, waba_key(waba_id), url, |body| {
            wire::parse_metric_answer(body, metric, granularity)
        })
        .await
    }

    fn url(&self, path: &str) -> Result<Url, GraphError> {
        Url::parse(&format!("{}/{}/{}", self.base_url, self.api_version, path))
            .map_err(|e| GraphError::new(ErrorClass::InvalidRequest, format!("bad URL: {e}")))
    }

    fn governor(&self) -> std::sync::MutexGuard<'_, Governor> {
        self.governor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the client stays paused after throttling, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        self.governor().paused_for(Instant::now())
    }

    /// Sets the live rate-limit gauges (calls in the last hour and budget per
    /// WABA, whether its calls are refused, the pause left) to their values now.
    /// Called on scrape; takes the governor's lock briefly and never calls Graph.
    pub fn publish_rate_limit_state(&self) {
        let now = Instant::now();
        let (states, paused) = {
            let mut g = self.governor();
            (g.states(now), g.paused_for(now))
        };
        self.telemetry
            .set_rate_limit_state(&states, paused.unwrap_or(Duration::ZERO));
    }

    /// Asks the governor until it lets this attempt go (sleeping as it says, each
    /// wait counted by reason) or refuses it (counted as a call saved).
    async fn admit(&self, endpoint: Endpoint, waba: &str) -> Result<(), Refusal> {
        let mut waited: Vec<WaitReason> = Vec::new();
        loop {
            let now = Instant::now();
            let decision = self.governor().decide(waba, now);
            match decision {
                Decision::Go { probe } => {
                    if probe {
                        info!(waba_id = %waba, endpoint = endpoint.label(), "rate-limit usage at or above stop_at: one probe call to refresh it");
                    }
                    return Ok(());
                }
                Decision::Wait { until, reason } => {
                    let wait = until.saturating_duration_since(now);
                    tokio::time::sleep(wait).await;
                    let first = !waited.contains(&reason);
                    if first {
                        waited.push(reason);
                    }
                    self.telemetry.rate_limit_waited(reason, wait, first);
                }
                Decision::Refuse(refusal) => {
                    self.telemetry.call_refused(refusal);
                    return Err(refusal);
                }
            }
        }
    }

    /// One logical call: attempts with retries, each admitted by the governor,
    /// telemetry for each attempt. `waba` is the WABA the call counts against.
    async fn call<T>(
        &self,
        endpoint: Endpoint,
        waba: &str,
        url: Url,
        parse: impl Fn(&[u8]) -> Result<T, GraphError>,
    ) -> Result<T, CallError> {
        let mut attempt: u32 = 0;
        // Held while this call waits to retry after throttling (see
        // `Governor::claim_throttle_retry`); given back when dropped.
        let mut throttle_retry: Option<ThrottleRetry<'_>> = None;
        let mut last_error: Option<GraphError> = None;
        loop {
            if let Err(refusal) = self.admit(endpoint, waba).await {
                // A retry the governor refused ends the call with the error
                // that called for the retry: Graph was called, and failed.
                return Err(match last_error {
                    Some(e) => CallError::Failed(e),
                    None => CallError::Refused(refusal),
                });
            }
            let started = Instant::now();
            let (result, header_trace) = self.attempt(&url).await;
            // The retry after throttling, if this was one, has been made.
            drop(throttle_retry.take());
            let result = result.and_then(|body| parse(&body)).map_err(|mut e| {
                // An answer without a Graph error envelope (a proxy's 5xx, garbage,
                // a body cut off) still has the trace id header Meta support asks for.
                if e.fbtrace_id.is_none() {
                    e.fbtrace_id = header_trace;
                }
                e
            });
            let result = result.map_err(|e| self.redact(e));
            let outcome = match &result {
                Ok(_) => Outcome::Success,
                Err(e) => Outcome::Failed(e.class),
            };
            self.answered(endpoint, outcome, started.elapsed());
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            debug!(endpoint = endpoint.label(), path = url.path(), attempt, error = %e, "graph call failed");
            if !e.class.is_retryable() {
                return Err(e.into());
            }
            // Throttling: the pause is client-wide and the retry's admission waits
            // it out (or is refused when it is too long); no sleep here.
            if attempt >= self.max_retries {
                return Err(e.into());
            }
            let wait = match (e.class, e.regain_after) {
                (ErrorClass::Throttled, _) => match self.paused_for() {
                    Some(left) if left > MAX_IN_CALL_WAIT => return Err(e.into()),
                    _ => {
                        if !self.governor().claim_throttle_retry() {
                            // Another throttled call is already waiting to try
                            // again; one retry tells for all of them.
                            return Err(e.into());
                        }
                        throttle_retry = Some(ThrottleRetry(self));
                        Duration::ZERO
                    }
                },
                _ => self.backoff(attempt),
            };
            self.telemetry.retry(endpoint.label());
            tokio::time::sleep(wait).await;
            last_error = Some(e);
            attempt += 1;
        }
    }

    /// Exponential backoff with up to 50 % jitter: backoff * 2^attempt * [0.5, 1].
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.retry_backoff.saturating_mul(1 << attempt.min(10));
        base.mul_f64(jitter())
    }

    /// One HTTP exchange: status, headers, capped body; with the `x-fb-trace-id`
    /// header when an answer came.
    async fn attempt(&self, url: &Url) -> (Result<bytes::Bytes, GraphError>, Option<String>) {
        let response = match self
            .http
            .get(url.clone())
            .bearer_auth(self.token().expose())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return (
                    Err(GraphError::new(ErrorClass::Network, network_message(&e))),
                    None,
                );
            }
        };
        let status = response.status().as_u16();
        let trace = response
            .headers()
            .get("x-fb-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(|t| t.chars().take(64).collect());
        let regain = self.record_headers(response.headers());
        let body = match read_capped(response).await {
            Ok(b) => b,
            Err(e) => return (Err(e), trace),
        };
        if (200..300).contains(&status) {
            self.governor().answered();
            return (Ok(body), trace);
        }
        let mut e = crate::error::parse_error(status, &body);
        if e.class == ErrorClass::Throttled {
            e.regain_after = regain;
            let pause =
                self.governor()
                    .throttled(Instant::now(), regain, self.retry_backoff, jitter());
            debug!(
                pause_ms = pause.as_millis() as u64,
                regain_given = regain.is_some(),
                "Graph throttled; pausing every call"
            );
        } else {
            self.governor().answered();
        }
        (Err(e), trace)
    }

    /// Records rate-limit usage and the served API version; returns the longest
    /// `estimated_time_to_regain_access`, if any is above zero.
    fn record_headers(&self, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        let mut regain: Option<Duration> = None;
        let mut app = None;
        if let Some(u) = headers
            .get("x-app-usage")
            .and_then(|v| v.to_str().ok())
            .and_then(wire::parse_app_usage)
        {
            self.telemetry.record_usage(&u);
            app = Some(u.fraction());
        }
        let mut business = Vec::new();
        if let Some(h) = headers
            .get("x-business-use-case-usage")
            .and_then(|v| v.to_str().ok())
        {
            for u in wire::parse_business_usage(h) {
                self.telemetry.record_usage(&u);
                if let Some(m) = u.regain_minutes.filter(|m| *m > 0.0) {
                    let d = Duration::from_secs_f64(m.min(24.0 * 60.0) * 60.0);
                    regain = Some(regain.map_or(d, |r| r.max(d)));
                }
                business.push((u.business_id.clone(), u.fraction()));
            }
        }
        if app.is_some() || !business.is_empty() {
            self.governor().observe(app, &business, Instant::now());
        }
        if let Some(v) = headers
            .get("facebook-api-version")
            .and_then(|v| v.to_str().ok())
        {
            // Bounded before anything else: it becomes a label value.
            let v: String = v.chars().take(16).collect();
            let mut served = self
                .served_version
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if served.as_deref() != Some(v.as_str()) {
                if v != self.api_version {
                    info!(configured = %self.api_version, served = %v, "Graph served a different API version than configured");
                }
                self.telemetry.set_served_version(&self.api_version, &v);
                *served = Some(v);
            }
        }
        regain
    }

    /// Graph error messages are echoed into logs and metrics; make sure the token
    /// never travels with them, whatever a hostile answer contains.
    fn redact(&self, mut e: GraphError) -> GraphError {
        let token = self.token();
        let t = token.expose();
        if !t.is_empty() && e.message.contains(t) {
            e.message = e.message.replace(t, "<redacted>");
        }
        e
    }
}

/// A factor in [0.5, 1] from the clock's low bits: enough to keep clients that
/// were throttled together from retrying together.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    0.5 + (nanos % 1000) as f64 / 2000.0
}

/// A reqwest error described without the URL's query (which holds no secret, but
/// is long) and with the kind of failure first.
fn network_message(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut msg = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

async fn read_capped(mut response: reqwest::Response) -> Result<bytes::Bytes, GraphError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(GraphError::malformed(format!(
            "answer body is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    let mut buf = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(GraphError::malformed(format!(
                        "answer body is larger than {MAX_BODY_BYTES} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err(GraphError::new(
                    ErrorClass::Network,
                    format!("answer body cut off: {}", network_message(&e)),
                ));
            }
        }
    }
}
