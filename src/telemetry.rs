//! The exporter's own live metrics (`whatsapp_flows_exporter_*` that change
//! between polls): Graph calls by endpoint and outcome, their duration, polls,
//! skipped ticks, rate-limit usage, waits and budgets, build info and process
//! metrics. They live in
//! a registry the application owns (never the global one) and are rendered on
//! every scrape; they are few and cheap. Per-flow series are rendered once per
//! poll by `exposition`.

use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::{ApiHealth, Endpoint, Outcome, Validity};
use crate::poll::SkipReason;
use crate::ratelimit::{Refusal, Usage, WabaState, WaitReason};

/// How a finished poll went, as the `result` label of `polls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    /// Every call answered.
    Success,
    /// Some calls failed.
    Partial,
    /// No call succeeded.
    Failed,
}

impl PollResult {
    pub const ALL: [PollResult; 3] = [PollResult::Success, PollResult::Partial, PollResult::Failed];

    pub fn label(self) -> &'static str {
        match self {
            PollResult::Success => "success",
            PollResult::Partial => "partial",
            PollResult::Failed => "failed",
        }
    }

    /// The result of a poll of `total` calls of which `failed` failed.
    pub fn of(failed: usize, total: usize) -> PollResult {
        match failed {
            0 => PollResult::Success,
            n if n == total => PollResult::Failed,
            _ => PollResult::Partial,
        }
    }
}

const NS: &str = "whatsapp_flows_exporter";
/// Use-case types of one business id with usage series; more are dropped.
pub const MAX_USAGE_TYPES: usize = 4;

/// Live self-metrics of one exporter instance.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    graph_requests: IntCounterVec,
    graph_duration: HistogramVec,
    graph_retries: IntCounterVec,
    calls_saved: IntCounterVec,
    polls: IntCounterVec,
    poll_duration: HistogramVec,
    last_poll: GaugeVec,
    skipped_ticks: IntCounterVec,
    usage: GaugeVec,
    regain: GaugeVec,
    wait_seconds: CounterVec,
    waits: IntCounterVec,
    waba_calls: IntGaugeVec,
    waba_budget: IntGaugeVec,
    refusing: IntGaugeVec,
    /// The WABAs the three per-WABA rate-limit gauges have series for.
    rate_limit_wabas: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pause: Gauge,
    served_version: IntGaugeVec,
    token_valid: IntGaugeVec,
    api_available: IntGaugeVec,
    error_types_folded: IntCounter,
    http_connections: IntGauge,
    http_shed: IntCounterVec,
    http_auth: IntCounterVec,
    /// The (business id, type) pairs the usage gauges have series for.
    usage_series:
        std::sync::Mutex<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>>,
    exposition_bytes: IntGauge,
    reload_successful: IntGauge,
    reload_success_at: prometheus::Gauge,
    reloads: IntCounterVec,
    shard_ordinal: IntGauge,
    total_shards: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let graph_requests = IntCounterVec::new(
            opts(
                "graph_requests_total",
                "HTTP requests sent to the Graph API, by endpoint (flows listing or metric) and outcome (success or the error class).",
            ),
            &["endpoint", "outcome"],
        )
        .expect("valid metric");
        let graph_duration = HistogramVec::new(
            HistogramOpts::new(
                "graph_request_duration_seconds",
                "Duration of Graph API requests, including reading the answer.",
            )
            .namespace(NS)
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let graph_retries = IntCounterVec::new(
            opts(
                "graph_retries_total",
                "Graph API requests repeated after a transient error or throttling.",
            ),
            &["endpoint"],
        )
        .expect("valid metric");
        let calls_saved = IntCounterVec::new(
            opts(
                "graph_calls_saved_total",
                "Graph API calls not made, by reason. Refused by the rate limit: throttle_pause (the client is paused after Graph throttled the app, for longer than a call waits), waba_throttle_pause (the same for the call's WABA), usage_high (usage Graph reported is at or above rate_limit.stop_at), budget (the WABA used its rate_limit.waba_calls_per_hour). Not attempted by a poll: poll_halted (Graph as a whole fails: token, API gone, app throttled, unreachable), flow_timed_out (a call of the flow ran out of time in this poll), waba_paused (Graph throttled the flow's WABA in this poll).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let polls = IntCounterVec::new(
            opts(
                "polls_total",
                "Completed polls by poll (hour, day, lifetime, discovery) and result: success, partial (some calls failed) or failed (no call succeeded).",
            ),
            &["poll", "result"],
        )
        .expect("valid metric");
        let poll_duration = HistogramVec::new(
            HistogramOpts::new(
                "poll_duration_seconds",
                "Wall time of a complete poll, by poll (hour, day, lifetime, discovery).",
            )
            .namespace(NS)
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 180.0, 600.0, 1800.0]),
            &["poll"],
        )
        .expect("valid metric");
        let last_poll = GaugeVec::new(
            opts(
                "last_poll_timestamp_seconds",
                "Unix time at which the last poll of each kind finished, whatever its result.",
            ),
            &["poll"],
        )
        .expect("valid metric");
        let skipped_ticks = IntCounterVec::new(
            opts(
                "skipped_ticks_total",
                "Scheduled ticks skipped because the previous poll of the same kind was still running.",
            ),
            &["poll"],
        )
        .expect("valid metric");
        let usage = GaugeVec::new(
            opts(
                "rate_limit_usage_ratio",
                "Rate-limit usage Graph reported in X-App-Usage (scope app) or X-Business-Use-Case-Usage (scope business_use_case), as a ratio of the hourly allowance; Graph throttles at 1.",
            ),
            &["scope", "business_id", "type", "kind"],
        )
        .expect("valid metric");
        let regain = GaugeVec::new(
            opts(
                "rate_limit_regain_access_seconds",
                "estimated_time_to_regain_access from X-Business-Use-Case-Usage, in seconds; 0 when not throttled.",
            ),
            &["business_id", "type"],
        )
        .expect("valid metric");
        let wait_seconds = CounterVec::new(
            opts(
                "rate_limit_wait_seconds_total",
                "Time Graph calls waited before going out, by reason: pacing (rate_limit.min_call_interval), usage_slowdown (usage between rate_limit.slow_down_at and stop_at) or throttle (a throttle pause short enough to wait for). Summed over calls, so concurrent waits add up.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let waits = IntCounterVec::new(
            opts(
                "rate_limit_waits_total",
                "Graph calls that waited before going out, by reason (see rate_limit_wait_seconds_total).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let waba_calls = IntGaugeVec::new(
            opts(
                "waba_calls_last_hour",
                "Graph calls this exporter made for each WABA in the last 60 minutes (metric calls count against the flow's WABA, listings against the listed WABA; waba_id \"unknown\" for static flows of unknown WABA).",
            ),
            &["waba_id"],
        )
        .expect("valid metric");
        let waba_budget = IntGaugeVec::new(
            opts(
                "waba_call_budget",
                "rate_limit.waba_calls_per_hour: calls per WABA in any 60 minutes the exporter never exceeds. Absent when no budget is configured.",
            ),
            &["waba_id"],
        )
        .expect("valid metric");
        let refusing = IntGaugeVec::new(
            opts(
                "rate_limit_refusing",
                "1 while the exporter refuses Graph calls for this WABA (its call budget is used up, or usage is at or above rate_limit.stop_at and only a probe per cool_down goes out), else 0.",
            ),
            &["waba_id"],
        )
        .expect("valid metric");
        let pause = Gauge::with_opts(opts(
            "rate_limit_pause_seconds",
            "Seconds left of the pause every Graph call keeps after Graph throttled (estimated_time_to_regain_access, or backoff); 0 when not paused.",
        ))
        .expect("valid metric");
        let served_version = IntGaugeVec::new(
            opts(
                "graph_api_version_info",
                "The Graph API version configured and the one Graph said served the last call (facebook-api-version header).",
            ),
            &["configured", "served"],
        )
        .expect("valid metric");
        let token_valid = IntGaugeVec::new(
            opts(
                "token_valid",
                "1 once Graph accepted the access token (an answer with data or 139006), 0 after Graph rejected it (code 190) until it accepts it again; absent until Graph has answered a call with the token in use.",
            ),
            &[],
        )
        .expect("valid metric");
        let api_available = IntGaugeVec::new(
            opts(
                "metrics_api_available",
                "1 once a metric call was answered (data or 139006), 0 after Graph answered that the Flows Metrics API field does not exist (code 100 on `metric`) until a metric call is answered again; absent until Graph has answered a metric call.",
            ),
            &[],
        )
        .expect("valid metric");
        let http_connections = IntGauge::with_opts(opts(
            "http_connections",
            "Connections to the /metrics listener open now.",
        ))
        .expect("valid metric");
        let http_shed = IntCounterVec::new(
            opts(
                "http_connections_shed_total",
                "Connections the /metrics listener closed to make room for a new client when it had its maximum open, by reason: idle (no request head or TLS handshake yet, or none since the last answer), stalled (not reading its answer); busy counts new clients refused with 503 because every connection was being answered.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let http_auth = IntCounterVec::new(
            opts(
                "http_auth_checks_total",
                "Basic-auth checks of requests, by result: allowed, denied (401), limited (429 without a check: the client address failed too often lately).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for why in crate::server::Shed::ALL {
            http_shed.with_label_values(&[why.label()]);
        }
        for result in crate::web::AuthResult::ALL {
            http_auth.with_label_values(&[result.label()]);
        }
        let error_types_folded = IntCounter::with_opts(opts(
            "error_types_folded_total",
            "Error-type keys Meta does not document that were summed into error_type=\"other\" because a flow's period had more than limits.unknown_error_types of them.",
        ))
        .expect("valid metric");
        let exposition_bytes = IntGauge::with_opts(opts(
            "exposition_bytes",
            "Size in bytes of the per-flow part of /metrics as last rendered (uncompressed).",
        ))
        .expect("valid metric");
        // Prometheus' own names for the same thing, so the same alerts apply.
        let reload_successful = IntGauge::with_opts(opts(
            "config_last_reload_successful",
            "1 if the last configuration reload (SIGHUP or POST /-/reload) succeeded or none was tried, 0 if it failed and the configuration before it is still in use.",
        ))
        .expect("valid metric");
        let reload_success_at = prometheus::Gauge::with_opts(opts(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load: start-up or reload.",
        ))
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            opts(
                "config_reloads_total",
                "Configuration reloads tried, by result (success or failure).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let shard_ordinal = IntGauge::with_opts(opts(
            "shard_ordinal",
            "This replica's shard (--shard.index or cluster.shard_index, from 0): it discovers and polls the WABAs whose id hashes to it.",
        ))
        .expect("valid metric");
        let total_shards = IntGauge::with_opts(opts(
            "total_shards",
            "How many replicas share the WABAs (--shard.total or cluster.shard_total); 1 when one exporter polls them all.",
        ))
        .expect("valid metric");
        total_shards.set(1);
        let build_info = IntGaugeVec::new(
            opts(
                "build_info",
                "Always 1; labels say which flows-exporter build is running (as `flows-exporter --version` does).",
            ),
            &crate::version::labels().map(|(name, _)| name),
        )
        .expect("valid metric");
        build_info
            .with_label_values(&crate::version::labels().map(|(_, value)| value))
            .set(1);
        reload_successful.set(1);
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }

        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(graph_requests.clone()),
            Box::new(graph_duration.clone()),
            Box::new(graph_retries.clone()),
            Box::new(calls_saved.clone()),
            Box::new(polls.clone()),
            Box::new(poll_duration.clone()),
            Box::new(last_poll.clone()),
            Box::new(skipped_ticks.clone()),
            Box::new(usage.clone()),
            Box::new(regain.clone()),
            Box::new(wait_seconds.clone()),
            Box::new(waits.clone()),
            Box::new(waba_calls.clone()),
            Box::new(waba_budget.clone()),
            Box::new(refusing.clone()),
            Box::new(pause.clone()),
            Box::new(served_version.clone()),
            Box::new(token_valid.clone()),
            Box::new(api_available.clone()),
            Box::new(exposition_bytes.clone()),
            Box::new(error_types_folded.clone()),
            Box::new(http_connections.clone()),
            Box::new(http_shed.clone()),
            Box::new(http_auth.clone()),
            Box::new(reload_successful.clone()),
            Box::new(reload_success_at.clone()),
            Box::new(reloads.clone()),
            Box::new(shard_ordinal.clone()),
            Box::new(total_shards.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        Telemetry {
            registry,
            graph_requests,
            graph_duration,
            graph_retries,
            calls_saved,
            polls,
            poll_duration,
            last_poll,
            skipped_ticks,
            usage,
            regain,
            wait_seconds,
            waits,
            waba_calls,
            waba_budget,
            refusing,
            rate_limit_wabas: Default::default(),
            pause,
            served_version,
            token_valid,
            api_available,
            error_types_folded,
            http_connections,
            http_shed,
            http_auth,
            usage_series: Default::default(),
            exposition_bytes,
            reload_successful,
            reload_success_at,
            reloads,
            shard_ordinal,
            total_shards,
        }
    }

    /// Which shard this replica polls.
    pub fn set_shard(&self, shard: crate::shard::Shard) {
        self.shard_ordinal.set(i64::from(shard.index));
        self.total_shards.set(i64::from(shard.total));
    }

    /// One HTTP attempt to Graph ended.
    pub fn observe_request(&self, endpoint: Endpoint, outcome: Outcome, took: Duration) {
        self.graph_requests
            .with_label_values(&[endpoint.label(), outcome.label()])
            .inc();
        self.graph_duration
            .with_label_values(&[endpoint.label()])
            .observe(took.as_secs_f64());
    }

    /// What Graph last said of the access token and of the Metrics API; set
    /// by the Graph client, which owns that state.
    pub fn set_api_health(&self, health: ApiHealth) {
        for (gauge, validity) in [
            (&self.token_valid, health.token),
            (&self.api_available, health.metrics_api),
        ] {
            match validity {
                Validity::Unknown => {
                    let _ = gauge.remove_label_values::<&str>(&[]);
                }
                known => gauge
                    .with_label_values::<&str>(&[])
                    .set(i64::from(known == Validity::Accepted)),
            }
        }
    }

    /// `n` error-type keys were summed into `other`.
    pub fn error_types_folded(&self, n: usize) {
        self.error_types_folded.inc_by(n as u64);
    }

    /// Creates the series of every job and endpoint at 0, so that rates and
    /// alerts work before the first skip, retry or saved call.
    pub fn init(&self, jobs: &[&str]) {
        for job in jobs {
            self.skipped_ticks.with_label_values(&[job]);
            self.polls.with_label_values(&[job, "success"]);
        }
        for endpoint in ["flows", "metric"] {
            self.graph_retries.with_label_values(&[endpoint]);
            self.graph_requests
                .with_label_values(&[endpoint, "success"]);
        }
        for reason in Refusal::ALL
            .iter()
            .map(|r| r.label())
            .chain(SkipReason::LABELS)
        {
            self.calls_saved.with_label_values(&[reason]);
        }
        for reason in WaitReason::ALL {
            self.wait_seconds.with_label_values(&[reason.label()]);
            self.waits.with_label_values(&[reason.label()]);
        }
    }

    /// A call waited `took` for `reason`; `first`: the first wait of this call for
    /// this reason (a call that waits twice for one reason counts once).
    pub fn rate_limit_waited(&self, reason: WaitReason, took: Duration, first: bool) {
        self.wait_seconds
            .with_label_values(&[reason.label()])
            .inc_by(took.as_secs_f64());
        if first {
            self.waits.with_label_values(&[reason.label()]).inc();
        }
    }

    /// The governor's per-WABA state and the pause left, as of now.
    /// A WABA the governor no longer has (removed by a reload) loses its series;
    /// the others are overwritten in place, so a concurrent scrape never sees
    /// them missing.
    pub fn set_rate_limit_state(&self, states: &[(String, WabaState)], pause: Duration) {
        let mut shown = self
            .rate_limit_wabas
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shown.retain(|waba| {
            let kept = states.iter().any(|(w, _)| w == waba);
            if !kept {
                let _ = self.waba_calls.remove_label_values(&[waba]);
                let _ = self.waba_budget.remove_label_values(&[waba]);
                let _ = self.refusing.remove_label_values(&[waba]);
            }
            kept
        });
        for (waba, s) in states {
            shown.insert(waba.clone());
            if s.budget.is_none() {
                let _ = self.waba_budget.remove_label_values(&[waba]);
            }
            self.waba_calls
                .with_label_values(&[waba])
                .set(s.calls_last_hour as i64);
            if let Some(b) = s.budget {
                self.waba_budget
                    .with_label_values(&[waba])
                    .set(i64::from(b));
            }
            self.refusing
                .with_label_values(&[waba])
                .set(i64::from(s.refusing));
        }
        self.pause.set(pause.as_secs_f64());
    }

    pub fn retry(&self, endpoint: &str) {
        self.graph_retries.with_label_values(&[endpoint]).inc();
    }

    /// The governor refused a call.
    pub fn call_refused(&self, refusal: Refusal) {
        self.calls_saved.with_label_values(&[refusal.label()]).inc();
    }

    /// A poll's policy did not make `n` calls, for `reason`.
    pub fn calls_not_attempted(&self, reason: SkipReason, n: u64) {
        self.calls_saved
            .with_label_values(&[reason.label()])
            .inc_by(n);
    }

    /// One usage reading. A business id gets series for at most
    /// [`MAX_USAGE_TYPES`] use-case types; readings of more are dropped.
    pub fn record_usage(&self, u: &Usage) {
        if u.scope == "business_use_case" {
            let mut series = self.usage_series.lock().unwrap_or_else(|e| e.into_inner());
            let types = series.entry(u.business_id.clone()).or_default();
            if !types.contains(&u.kind) {
                if types.len() >= MAX_USAGE_TYPES {
                    return;
                }
                types.insert(u.kind.clone());
            }
        }
        for (kind, pct) in [
            ("call_count", u.call_count),
            ("total_cputime", u.total_cputime),
            ("total_time", u.total_time),
        ] {
            self.usage
                .with_label_values(&[u.scope, &u.business_id, &u.kind, kind])
                .set(pct / 100.0);
        }
        if u.scope == "business_use_case" {
            self.regain
                .with_label_values(&[&u.business_id, &u.kind])
                .set(u.regain_minutes.unwrap_or(0.0) * 60.0);
        }
    }

    /// Removes the usage series of business ids the governor forgot.
    pub fn forget_business_usage(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut series = self.usage_series.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            for kind_type in series.remove(id).unwrap_or_default() {
                for kind in ["call_count", "total_cputime", "total_time"] {
                    let _ = self.usage.remove_label_values(&[
                        "business_use_case",
                        id,
                        &kind_type,
                        kind,
                    ]);
                }
                let _ = self.regain.remove_label_values(&[id, &kind_type]);
            }
        }
    }

    pub fn set_served_version(&self, configured: &str, served: &str) {
        self.served_version.reset();
        self.served_version
            .with_label_values(&[configured, served])
            .set(1);
    }

    pub fn poll_finished(&self, job: &str, result: PollResult, took: Duration, at_unix: f64) {
        self.polls.with_label_values(&[job, result.label()]).inc();
        self.poll_duration
            .with_label_values(&[job])
            .observe(took.as_secs_f64());
        self.last_poll.with_label_values(&[job]).set(at_unix);
    }

    pub fn tick_skipped(&self, job: &str) {
        self.skipped_ticks.with_label_values(&[job]).inc();
    }

    /// A configuration was loaded and applied (at start-up, `reload` is false).
    pub fn config_loaded(&self, reload: bool, at_unix: f64) {
        if reload {
            self.reloads.with_label_values(&["success"]).inc();
        }
        self.reload_successful.set(1);
        self.reload_success_at.set(at_unix);
    }

    /// A reload was refused; the configuration before it stays.
    pub fn reload_failed(&self) {
        self.reloads.with_label_values(&["failure"]).inc();
        self.reload_successful.set(0);
    }

    pub fn set_exposition_bytes(&self, n: usize) {
        self.exposition_bytes.set(n as i64);
    }

    /// Appends the live metrics in the Prometheus text format.
    pub fn render(&self, out: &mut Vec<u8>) {
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&families, out) {
            tracing::error!(error = %e, "cannot encode exporter metrics");
        }
    }

    /// Reads a counter, for tests and the backfill's summary.
    pub fn graph_requests(&self, endpoint: Endpoint, outcome: Outcome) -> u64 {
        self.graph_requests
            .with_label_values(&[endpoint.label(), outcome.label()])
            .get()
    }
}

impl crate::server::HttpCounters for Telemetry {
    fn set_connections(&self, open: usize) {
        self.http_connections.set(open as i64);
    }

    fn shed(&self, why: crate::server::Shed) {
        self.http_shed.with_label_values(&[why.label()]).inc();
    }

    fn auth(&self, result: crate::web::AuthResult) {
        self.http_auth.with_label_values(&[result.label()]).inc();
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(id: &str, kind: &str) -> Usage {
        Usage {
            scope: "business_use_case",
            business_id: id.to_owned(),
            kind: kind.to_owned(),
            call_count: 10.0,
            total_cputime: 1.0,
            total_time: 2.0,
            regain_minutes: None,
        }
    }

    fn rendered(t: &Telemetry) -> String {
        let mut out = Vec::new();
        t.render(&mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn usage_series_are_bounded_and_forgotten() {
        let t = Telemetry::new();
        for i in 0..10 {
            t.record_usage(&usage("111", &format!("type_{i}")));
        }
        t.record_usage(&usage("222", "whatsapp_business_management"));
        let text = rendered(&t);
        let of = |text: &str, id: &str| {
            text.lines()
                .filter(|l| l.starts_with("whatsapp_flows_exporter_rate_limit_usage_ratio{"))
                .filter(|l| l.contains(&format!("business_id=\"{id}\"")))
                .count()
        };
        assert_eq!(
            of(&text, "111"),
            MAX_USAGE_TYPES * 3,
            "types per id are capped"
        );
        assert_eq!(of(&text, "222"), 3);
        t.forget_business_usage(&["111".to_owned()]);
        let text = rendered(&t);
        assert_eq!(of(&text, "111"), 0, "a forgotten id loses its series");
        assert!(!text.contains("regain_access_seconds{business_id=\"111\""));
        assert_eq!(of(&text, "222"), 3);
    }

    #[test]
    fn token_and_api_gauges_are_absent_until_graph_answered() {
        let t = Telemetry::new();
        let text = rendered(&t);
        assert!(
            !text.contains("\nwhatsapp_flows_exporter_token_valid "),
            "{text}"
        );
        t.set_api_health(ApiHealth {
            token: Validity::Rejected,
            metrics_api: Validity::Unknown,
        });
        let text = rendered(&t);
        assert!(text.contains("\nwhatsapp_flows_exporter_token_valid 0\n"));
        assert!(!text.contains("\nwhatsapp_flows_exporter_metrics_api_available "));
        t.set_api_health(ApiHealth {
            token: Validity::Accepted,
            metrics_api: Validity::Accepted,
        });
        let text = rendered(&t);
        assert!(text.contains("\nwhatsapp_flows_exporter_token_valid 1\n"));
        assert!(text.contains("\nwhatsapp_flows_exporter_metrics_api_available 1\n"));
    }
}
