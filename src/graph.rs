//! The only module that talks to the Graph API: listing a WABA's flows (following
//! paging against the configured base URL) and fetching one metric of one flow.
//!
//! Every answer's rate-limit headers are recorded and fed to the client's
//! [`Governor`], which every attempt asks first: it may wait (pacing, usage
//! slowdown, a short throttle pause) or refuse (a long throttle pause, usage at
//! the stop threshold, the WABA's call budget) without calling Graph. Every call
//! is counted by endpoint and outcome; transient failures are retried with
//! bounded, jittered backoff, within the call's deadline (`graph.deadline`).
//! A throttled answer pauses the whole client (4, 17, 32, 613) or the calls of
//! its WABA (80007, 80008), not one call, because further calls would only
//! extend the penalty.
//!
//! Calls of polls hold a [`Slot`]: at most `graph.max_concurrency` are in
//! flight, shared by every poll of this client. A call still running after
//! [`STRAGGLER_AFTER`] gives its slot back when it can (at most as many such
//! stragglers again), so a few hanging calls cannot take the poll's
//! concurrency for their whole deadline.
//!
//! Every text that comes from Graph goes through the client's [`Redactor`]
//! before it is cut and before it reaches an error, a log line or a label: a
//! hostile answer cannot echo the token out.

pub mod wire;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use reqwest::Url;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

use crate::config::{Config, Secret};
use crate::error::{
    ApiHealth, CallError, Endpoint, ErrorClass, GraphError, MAX_MESSAGE_BYTES, MAX_TRACE_BYTES,
    NetworkKind, Outcome, Redactor, Validity,
};
use crate::model::{DataPoint, Granularity, Listing, MetricKind, Truncation};
use crate::ratelimit::{Decision, Governor, Refusal, WaitReason, waba_key};
use crate::telemetry::Telemetry;

/// The largest answer body read; anything bigger is refused as malformed.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The longest a call waits for a throttle pause to end; a longer pause fails
/// calls at once without calling Graph.
pub const MAX_IN_CALL_WAIT: Duration = Duration::from_secs(60);
/// A call of a poll still running after this long is a straggler: it gives its
/// slot back to the poll's other calls if the straggler lane has room.
pub const STRAGGLER_AFTER: Duration = Duration::from_secs(2);
/// How much longer than its own timeout an attempt may take before the call's
/// deadline cuts it off regardless.
const DEADLINE_BACKSTOP: Duration = Duration::from_millis(500);
const FLOW_FIELDS: &str = "id,name,status,categories,data_api_version,endpoint_uri,health_status";
/// The longest API version string taken from `facebook-api-version` (a label).
const MAX_VERSION_BYTES: usize = 16;

/// A Graph API client bound to one base URL, version and token.
pub struct GraphClient {
    http: reqwest::Client,
    base_url: String,
    api_version: String,
    /// Swapped in place when the token file is rotated (`set_token`).
    token: RwLock<Secret>,
    max_retries: u32,
    retry_backoff: Duration,
    timeout: Duration,
    deadline: Duration,
    listing_pages: usize,
    telemetry: Arc<Telemetry>,
    /// Shared with the client a reload builds, so usage, a throttle pause and
    /// the calls of the last hour (the budget) survive it.
    governor: Arc<Mutex<Governor>>,
    served_version: Mutex<Option<String>>,
    /// What Graph's answers said of the token and the Metrics API; this
    /// client owns it and publishes it (`token_valid`, `metrics_api_available`).
    health: Mutex<ApiHealth>,
    /// `graph.max_concurrency` calls in flight, for every poll of this client.
    slots: Arc<Semaphore>,
    /// As many again for calls past [`STRAGGLER_AFTER`].
    stragglers: Arc<Semaphore>,
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

/// A place among the calls in flight, held from before a call is decided on
/// until it ends (see [`GraphClient::slot`]).
#[derive(Debug)]
pub struct Slot {
    permit: OwnedSemaphorePermit,
    stragglers: Arc<Semaphore>,
}

impl Slot {
    /// Runs `call` in this slot; if it runs longer than [`STRAGGLER_AFTER`], it
    /// moves to the straggler lane when that has room, freeing the slot.
    async fn run<F: Future>(self, call: F) -> F::Output {
        let Slot { permit, stragglers } = self;
        let mut call = std::pin::pin!(call);
        tokio::select! {
            out = &mut call => return out,
            () = tokio::time::sleep(STRAGGLER_AFTER) => {}
        }
        // Whichever permit is kept is held until the call ends.
        let _held = match stragglers.try_acquire_owned() {
            Ok(straggler) => {
                drop(permit);
                straggler
            }
            Err(_) => permit,
        };
        call.await
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

/// What the rate-limit headers of one answer said about waiting.
#[derive(Debug, Default)]
struct Regain {
    /// The longest `estimated_time_to_regain_access` above zero.
    longest: Option<Duration>,
    /// By business id.
    by_id: HashMap<String, Duration>,
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
    /// What Graph said of the token and the Metrics API carries over while
    /// they stay the same.
    pub fn rebuilt(&self, config: &Config, token: Secret) -> anyhow::Result<GraphClient> {
        let mut health = self.health();
        if token != self.token() {
            health.token = Validity::Unknown;
        }
        if config.graph.api_version != self.api_version {
            health.metrics_api = Validity::Unknown;
        }
        let client = GraphClient::with_governor(
            config,
            token,
            self.telemetry.clone(),
            self.governor.clone(),
        )?;
        *client.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
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
            timeout: cfg.timeout,
            deadline: cfg.deadline,
            listing_pages: config.limits.listing_pages,
            telemetry,
            governor,
            served_version: Mutex::new(None),
            health: Mutex::new(ApiHealth::default()),
            slots: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
            stragglers: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
        })
    }

    /// Replaces the access token for the calls from now on (a rotated token
    /// file). Returns whether it differs from the one in use; a new token is
    /// neither valid nor invalid until Graph answered a call with it.
    pub fn set_token(&self, token: Secret) -> bool {
        {
            let mut current = self.token.write().unwrap_or_else(|e| e.into_inner());
            if *current == token {
                return false;
            }
            *current = token;
        }
        let health = {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            health.token = Validity::Unknown;
            *health
        };
        self.telemetry.set_api_health(health);
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

    /// Scrubs the token in use out of Graph's texts.
    pub fn redactor(&self) -> Redactor {
        let token = self.token();
        Redactor::new([token.expose()])
    }

    /// Waits for one of the `graph.max_concurrency` places among the calls in
    /// flight. A poll takes one before it decides on a call, so it decides with
    /// everything the calls before have taught it.
    pub async fn slot(&self) -> Slot {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the client never closes its semaphore");
        Slot {
            permit,
            stragglers: self.stragglers.clone(),
        }
    }

    /// Lists the flows of a WABA, following `paging.next` cursors against the
    /// configured base URL until Graph gives no next page, or `limits.listing_pages`
    /// were read, or a cursor comes back (a paging loop): then the flows of the
    /// pages read are kept and the listing says it was cut short. Entries that
    /// are not flows are skipped, not the listing.
    pub async fn list_flows(&self, waba_id: &str) -> Result<Listing, CallError> {
        let mut listing = Listing::default();
        let mut after: Option<String> = None;
        let mut seen_cursors = HashSet::new();
        for _ in 0..self.listing_pages {
            let mut url = self.url(&format!("{waba_id}/flows"))?;
            url.query_pairs_mut().append_pair("fields", FLOW_FIELDS);
            if let Some(a) = &after {
                url.query_pairs_mut().append_pair("after", a);
            }
            let page = self
                .call(Endpoint::Flows, waba_id, url, |body, redact| {
                    wire::parse_flows_page(body, waba_id, redact)
                })
                .await?;
            listing.flows.extend(page.flows);
            listing.skipped.extend(page.skipped);
            match page.next_after {
                Some(next) if seen_cursors.insert(next.clone()) => after = Some(next),
                Some(_) => {
                    listing.truncated = Some(Truncation::PagingLoop);
                    return Ok(listing);
                }
                None => return Ok(listing),
            }
        }
        listing.truncated = Some(Truncation::PageCap(self.listing_pages));
        Ok(listing)
    }

    /// Fetches one metric of one flow for one granularity, from `since` on, in
    /// a slot taken from [`GraphClient::slot`]. `waba_id` is the flow's WABA
    /// (empty when unknown), whose budget the call counts against.
    pub async fn fetch_metric(
        &self,
        slot: Slot,
        waba_id: &str,
        flow_id: &str,
        metric: MetricKind,
        granularity: Granularity,
        since: Option<NaiveDate>,
    ) -> Result<Vec<DataPoint>, CallError> {
        slot.run(self.metric_call(waba_id, flow_id, metric, granularity, since, None))
            .await
    }

    /// Fetches one metric of one flow for one granularity between two dates
    /// (`since(...)` and `until(...)`; either may be left to Graph's default),
    /// waiting for a slot first. Whether Graph treats `until` as inclusive is
    /// undocumented: callers that need an exact window ask a day more and
    /// filter the answer.
    pub async fn fetch_metric_window(
        &self,
        waba_id: &str,
        flow_id: &str,
        metric: MetricKind,
        granularity: Granularity,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
    ) -> Result<Vec<DataPoint>, CallError> {
        let slot = self.slot().await;
        slot.run(self.metric_call(waba_id, flow_id, metric, granularity, since, until))
            .await
    }

    async fn metric_call(
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
        self.call(Endpoint::Metric, waba_key(waba_id), url, |body, redact| {
            wire::parse_metric_answer(body, flow_id, metric, granularity, redact)
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

    /// How long the client stays paused after Graph throttled the app, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        self.governor().paused_for(Instant::now())
    }

    /// How long the calls of a flow of `waba_id` stay paused after Graph
    /// throttled the app or that WABA, if they are.
    pub fn waba_paused_for(&self, waba_id: &str) -> Option<Duration> {
        let now = Instant::now();
        let g = self.governor();
        g.paused_for(now)
            .max(g.waba_paused_for(waba_key(waba_id), now))
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
    /// telemetry for each attempt, all within `graph.deadline` (the time spent
    /// on attempts and backoff; the governor's waits do not count). `waba` is
    /// the WABA the call counts against.
    async fn call<T>(
        &self,
        endpoint: Endpoint,
        waba: &str,
        url: Url,
        parse: impl Fn(&[u8], &Redactor) -> Result<T, GraphError>,
    ) -> Result<T, CallError> {
        let mut attempt: u32 = 0;
        // Held while this call waits to retry after throttling (see
        // `Governor::claim_throttle_retry`); given back when dropped.
        let mut throttle_retry: Option<ThrottleRetry<'_>> = None;
        let mut last_error: Option<GraphError> = None;
        let mut spent = Duration::ZERO;
        loop {
            if let Err(refusal) = self.admit(endpoint, waba).await {
                // A retry the governor refused ends the call with the error
                // that called for the retry: Graph was called, and failed.
                return Err(match last_error {
                    Some(e) => CallError::Failed(e),
                    None => CallError::Refused(refusal),
                });
            }
            let redact = self.redactor();
            let started = Instant::now();
            // The attempt's own timeout is cut to what is left of the deadline,
            // so it ends the exchange as a timeout would (with the answer's
            // trace id if one came); the outer limit is only a backstop.
            let left = self.deadline.saturating_sub(spent);
            let limit = left.min(self.timeout);
            let (result, header_trace) = match tokio::time::timeout(
                limit + DEADLINE_BACKSTOP,
                self.attempt(&url, waba, &redact, limit),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => (
                    Err(GraphError::network(
                        NetworkKind::TimedOut,
                        format!(
                            "timed out: no answer within the call's deadline (graph.deadline, {}s)",
                            self.deadline.as_secs_f64()
                        ),
                    )),
                    None,
                ),
            };
            spent += started.elapsed();
            // The retry after throttling, if this was one, has been made.
            drop(throttle_retry.take());
            let result = result
                .and_then(|body| parse(&body, &redact))
                .map_err(|mut e| {
                    // An answer without a Graph error envelope (a proxy's 5xx,
                    // garbage, a body cut off) still has the trace id header
                    // Meta support asks for.
                    if e.fbtrace_id.is_none() {
                        e.fbtrace_id = header_trace;
                    }
                    e
                });
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
            if !e.class.is_retryable() || attempt >= self.max_retries {
                return Err(e.into());
            }
            // Throttling: the pause is client-wide and the retry's admission waits
            // it out (or is refused when it is too long); no sleep here.
            let wait = match e.class {
                ErrorClass::Throttled => match self.paused_for() {
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
            if spent + wait >= self.deadline {
                // No time for another attempt.
                return Err(e.into());
            }
            self.telemetry.retry(endpoint.label());
            tokio::time::sleep(wait).await;
            spent += wait;
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
    /// header when an answer came. A 2xx answer that carries a Graph error
    /// object is that error.
    async fn attempt(
        &self,
        url: &Url,
        waba: &str,
        redact: &Redactor,
        limit: Duration,
    ) -> (Result<bytes::Bytes, GraphError>, Option<String>) {
        let response = match self
            .http
            .get(url.clone())
            .bearer_auth(self.token().expose())
            .timeout(limit)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return (Err(network_error(&e, "", redact)), None),
        };
        let status = response.status().as_u16();
        let trace = response
            .headers()
            .get("x-fb-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(|t| redact.cut(t, MAX_TRACE_BYTES));
        let regain = self.record_headers(response.headers(), redact);
        let body = match read_capped(response, redact).await {
            Ok(b) => b,
            Err(e) => return (Err(e), trace),
        };
        let error = if (200..300).contains(&status) {
            crate::error::error_envelope(status, &body, redact)
        } else {
            Some(crate::error::parse_error(status, &body, redact))
        };
        let Some(mut e) = error else {
            self.governor().answered(waba);
            return (Ok(body), trace);
        };
        match e.class {
            ErrorClass::Throttled => {
                e.regain_after = regain.longest;
                let pause = self.governor().throttled(
                    Instant::now(),
                    regain.longest,
                    self.retry_backoff,
                    jitter(),
                );
                debug!(
                    pause_ms = pause.as_millis() as u64,
                    regain_given = regain.longest.is_some(),
                    "Graph throttled the app; pausing every call"
                );
            }
            ErrorClass::WabaThrottled => {
                let given = regain.by_id.get(waba).copied().or(regain.longest);
                e.regain_after = given;
                let pause = self.governor().throttled_waba(
                    waba,
                    Instant::now(),
                    given,
                    self.retry_backoff,
                    jitter(),
                );
                debug!(
                    waba_id = %waba,
                    pause_ms = pause.as_millis() as u64,
                    regain_given = given.is_some(),
                    "Graph throttled one WABA; pausing its calls"
                );
            }
            _ => self.governor().answered(waba),
        }
        (Err(e), trace)
    }

    /// Records rate-limit usage and the served API version; returns what the
    /// headers said about regaining access. Usage is kept for the configured
    /// WABAs and a few other ids only (the governor decides), so a header full
    /// of new ids cannot grow the series or the memory.
    fn record_headers(&self, headers: &reqwest::header::HeaderMap, redact: &Redactor) -> Regain {
        let mut regain = Regain::default();
        let app = headers
            .get("x-app-usage")
            .and_then(|v| v.to_str().ok())
            .and_then(wire::parse_app_usage);
        let business = headers
            .get("x-business-use-case-usage")
            .and_then(|v| v.to_str().ok())
            .map(|h| wire::parse_business_usage(h, redact))
            .unwrap_or_default();
        if app.is_some() || !business.is_empty() {
            let fractions: Vec<(String, f64)> = business
                .iter()
                .map(|u| (u.business_id.clone(), u.fraction()))
                .collect();
            let (forgotten, tracked): (Vec<String>, Vec<bool>) = {
                let mut g = self.governor();
                let forgotten = g.observe(
                    app.as_ref().map(|u| u.fraction()),
                    &fractions,
                    Instant::now(),
                );
                let tracked = business
                    .iter()
                    .map(|u| g.tracks_business(&u.business_id))
                    .collect();
                (forgotten, tracked)
            };
            if let Some(u) = &app {
                self.telemetry.record_usage(u);
            }
            for (u, tracked) in business.iter().zip(tracked) {
                if let Some(m) = u.regain_minutes.filter(|m| *m > 0.0) {
                    let d = Duration::from_secs_f64(m.min(24.0 * 60.0) * 60.0);
                    regain.longest = Some(regain.longest.map_or(d, |r| r.max(d)));
                    let e = regain.by_id.entry(u.business_id.clone()).or_insert(d);
                    *e = (*e).max(d);
                }
                if tracked {
                    self.telemetry.record_usage(u);
                }
            }
            self.telemetry.forget_business_usage(&forgotten);
        }
        if let Some(v) = headers
            .get("facebook-api-version")
            .and_then(|v| v.to_str().ok())
        {
            // Bounded before anything else: it becomes a label value.
            let v = redact.cut(v, MAX_VERSION_BYTES);
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

/// A reqwest error as a network failure: its kind (no connection, no answer in
/// time, a broken connection) and a message without the URL's query (which
/// holds no secret, but is long), redacted and cut all the same.
fn network_error(e: &reqwest::Error, context: &str, redact: &Redactor) -> GraphError {
    let (kind, what) = if e.is_timeout() {
        (NetworkKind::TimedOut, "timed out")
    } else if e.is_connect() {
        (NetworkKind::Connect, "cannot connect")
    } else {
        (NetworkKind::Broken, "request failed")
    };
    let mut msg = format!("{context}{what}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    GraphError::network(kind, redact.cut(&msg, MAX_MESSAGE_BYTES))
}

async fn read_capped(
    mut response: reqwest::Response,
    redact: &Redactor,
) -> Result<bytes::Bytes, GraphError> {
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
            Err(e) => return Err(network_error(&e, "answer body cut off: ", redact)),
        }
    }
}

/// Posts one call's metrics to `{base_url}/{api_version}/{page_id}/call_metrics`
/// with the Page's token: `Ok(true)` for `{"success": true}`, `Ok(false)` for
/// a 2xx answer that does not say so, else the Graph error (texts redacted).
/// One attempt: the relay's outbox decides about retries.
pub async fn post_call_metrics(
    http: &reqwest::Client,
    base_url: &str,
    api_version: &str,
    page_id: &str,
    token: &Secret,
    body: &str,
) -> Result<bool, GraphError> {
    let redact = Redactor::new([token.expose()]);
    let url = format!("{base_url}/{api_version}/{page_id}/call_metrics");
    let response = http
        .post(&url)
        .bearer_auth(token.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| network_error(&e, "call_metrics: ", &redact))?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| network_error(&e, "call_metrics: ", &redact))?;
    if let Some(e) = crate::error::error_envelope(status, &bytes, &redact) {
        return Err(e);
    }
    if !(200..300).contains(&status) {
        return Err(crate::error::parse_error(status, &bytes, &redact));
    }
    let success = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("success").and_then(serde_json::Value::as_bool))
        .unwrap_or(false);
    Ok(success)
}
