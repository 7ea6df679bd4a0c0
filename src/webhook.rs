//! The webhook receiver: Meta's signed webhooks in, durable state out.
//!
//! [`Receiver::receive`] checks the `X-Hub-Signature-256` of the raw body
//! ([`signature`]) before anything else; a signed body is parsed
//! ([`payload`]), its changes are decided against the state in force
//! ([`state::State::plan`]: duplicates, order), and the body and the plan
//! are written in one durable transaction ([`crate::store::Store`]) before
//! the state in memory changes and the caller answers 200. A signed body
//! that cannot be understood is stored too (Meta would resend it for days).
//! [`Receiver::handshake`] answers the subscription check.
//!
//! The state renders into `/metrics` ([`render`]) when a scrape finds it
//! changed; the receiver's own counters ([`Metrics`]) render with it.
//! `signature`, `payload`, `state` and `render` are pure; this module and
//! the store do the I/O.

pub mod calls;
pub mod payload;
pub mod render;
pub mod signature;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tracing::{debug, info, warn};

use crate::config::Secret;
use crate::model::Clock;
use crate::store::{Raw, Store, StoreError};
pub use signature::{AppSecrets, SignatureError};
use state::{State, StatusRecord};

/// Largest body accepted (Meta sends up to 3 MB).
pub const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// Longest `hub.challenge` echoed back.
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// What a POST came to.
#[derive(Debug)]
pub enum Received {
    /// Signed and stored; answer 200.
    Accepted(Accepted),
    /// Not signed by a configured secret; nothing stored. Answer 401.
    BadSignature(SignatureError),
    /// Signed, but could not be stored; answer 500 so that Meta sends it again.
    Failed(StoreError),
}

/// A stored payload.
#[derive(Debug, Default)]
pub struct Accepted {
    /// It parsed as a webhook envelope.
    pub understood: bool,
    /// Flow statuses it put in force.
    pub statuses: Vec<(String, StatusRecord)>,
}

/// See [`Receiver::summary`].
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// (flow id, alert label, Unix seconds of the activation).
    pub active: Vec<(String, &'static str, i64)>,
    /// (WABA id, Unix seconds).
    pub last_received: Vec<(String, i64)>,
}

/// What a subscription check came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Answer 200 with this body.
    Verified(String),
    /// Answer 403.
    Refused,
}

/// The `result` label of `webhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    Accepted,
    BadSignature,
    TooLarge,
    Unparsed,
    Verified,
    VerifyRefused,
    StoreFailed,
}

impl RequestResult {
    pub const ALL: [RequestResult; 7] = [
        RequestResult::Accepted,
        RequestResult::BadSignature,
        RequestResult::TooLarge,
        RequestResult::Unparsed,
        RequestResult::Verified,
        RequestResult::VerifyRefused,
        RequestResult::StoreFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RequestResult::Accepted => "accepted",
            RequestResult::BadSignature => "bad_signature",
            RequestResult::TooLarge => "too_large",
            RequestResult::Unparsed => "unparsed",
            RequestResult::Verified => "verified",
            RequestResult::VerifyRefused => "verify_refused",
            RequestResult::StoreFailed => "store_failed",
        }
    }
}

/// The receiver's own metrics, in a registry of its own, rendered with the
/// webhook state.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    events: IntCounterVec,
    duplicates: IntCounter,
    out_of_order: IntCounter,
    duration: Histogram,
    connections: IntGauge,
    shed: IntCounterVec,
    pruned: IntCounter,
    intakes: IntCounterVec,
    forwarded: IntCounterVec,
    outbox_items: prometheus::IntGaugeVec,
    outbox_oldest: prometheus::Gauge,
}

/// The `result` label of `messenger_call_metrics_intake_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeLabel {
    Accepted,
    Duplicate,
    Unauthorized,
    UnknownPage,
    Invalid,
    StoreFailed,
}

impl IntakeLabel {
    pub const ALL: [IntakeLabel; 6] = [
        IntakeLabel::Accepted,
        IntakeLabel::Duplicate,
        IntakeLabel::Unauthorized,
        IntakeLabel::UnknownPage,
        IntakeLabel::Invalid,
        IntakeLabel::StoreFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            IntakeLabel::Accepted => "accepted",
            IntakeLabel::Duplicate => "duplicate",
            IntakeLabel::Unauthorized => "unauthorized",
            IntakeLabel::UnknownPage => "unknown_page",
            IntakeLabel::Invalid => "invalid",
            IntakeLabel::StoreFailed => "store_failed",
        }
    }
}

const NS: &str = "whatsapp_flows_exporter";

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "webhook_requests_total",
                "Requests to the webhook route by result: accepted (signed, stored), unparsed (signed and stored, but not a webhook envelope), bad_signature, too_large, verified and verify_refused (subscription checks), store_failed (answered 500; Meta sends it again).",
            )
            .namespace(NS),
            &["result"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "webhook_events_total",
                "Webhook changes received (duplicates excepted) by field and event; fields other than flows are acknowledged and counted (event=\"not_processed\"), flows events not known are kept and counted as event=\"unknown\", ones missing what they need as event=\"malformed\".",
            )
            .namespace(NS),
            &["field", "event"],
        )
        .expect("valid metric");
        let duplicates = IntCounter::with_opts(
            Opts::new(
                "webhook_duplicates_total",
                "Webhook changes received again (same WABA, time and content) and not applied again.",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        let out_of_order = IntCounter::with_opts(
            Opts::new(
                "webhook_out_of_order_total",
                "Webhook events older (by entry.time) than the event in force for their flow and alert or status; kept, not put in force.",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_request_duration_seconds",
                "Time from a webhook request's body read to its answer (signature check, parse, durable write).",
            )
            .namespace(NS)
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let connections = IntGauge::with_opts(
            Opts::new(
                "webhook_http_connections",
                "Connections open on the webhook listener.",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        let shed = IntCounterVec::new(
            Opts::new(
                "webhook_http_connections_shed_total",
                "Connections of the webhook listener closed or refused at its connection limit, by reason (idle, stalled, busy).",
            )
            .namespace(NS),
            &["reason"],
        )
        .expect("valid metric");
        let pruned = IntCounter::with_opts(
            Opts::new(
                "webhook_payloads_pruned_total",
                "Raw webhook payloads removed from storage past the retention.",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        let intakes = IntCounterVec::new(
            Opts::new(
                "messenger_call_metrics_intake_total",
                "Call-metrics posts from the business's client, by result: accepted (stored, queued for Meta), duplicate (the call's metrics came before), unauthorized, unknown_page, invalid (400 naming the field), store_failed.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let forwarded = IntCounterVec::new(
            Opts::new(
                "messenger_call_metrics_forwarded_total",
                "Attempts to relay call metrics to Graph's call_metrics, by Page and result: sent, already_submitted (done), outside_window, invalid_call_id, invalid_page_id, permission, expired (not sent: 24 h after the call ended) are final; in_progress, transient, throttled, token and unknown are retried.",
            ),
            &["page_id", "result"],
        )
        .expect("valid metric");
        let outbox_items = prometheus::IntGaugeVec::new(
            Opts::new(
                "messenger_call_metrics_outbox",
                "Call-metrics items in the relay's outbox by state: pending, done, failed (kept for storage.retention).",
            ),
            &["state"],
        )
        .expect("valid metric");
        let outbox_oldest = prometheus::Gauge::with_opts(Opts::new(
            "messenger_call_metrics_outbox_oldest_pending_age_seconds",
            "Age of the oldest call-metrics item still pending; 0 when none.",
        ))
        .expect("valid metric");
        for c in [
            Box::new(intakes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(forwarded.clone()),
            Box::new(outbox_items.clone()),
            Box::new(outbox_oldest.clone()),
            Box::new(requests.clone()),
            Box::new(events.clone()),
            Box::new(duplicates.clone()),
            Box::new(out_of_order.clone()),
            Box::new(duration.clone()),
            Box::new(connections.clone()),
            Box::new(shed.clone()),
            Box::new(pruned.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        for r in RequestResult::ALL {
            requests.with_label_values(&[r.label()]);
        }
        for reason in ["idle", "stalled", "busy"] {
            shed.with_label_values(&[reason]);
        }
        for r in IntakeLabel::ALL {
            intakes.with_label_values(&[r.label()]);
        }
        Metrics {
            registry,
            requests,
            events,
            duplicates,
            out_of_order,
            duration,
            connections,
            shed,
            pruned,
            intakes,
            forwarded,
            outbox_items,
            outbox_oldest,
        }
    }

    /// Counts one call-metrics post.
    pub fn intake(&self, result: IntakeLabel) {
        self.intakes.with_label_values(&[result.label()]).inc();
    }

    /// Counts one relay attempt.
    pub fn forwarded(&self, page_id: &str, result: crate::callmetrics::RelayResult) {
        self.forwarded
            .with_label_values(&[page_id, result.label()])
            .inc();
    }

    /// Reads a relay counter (tests).
    pub fn forwarded_count(&self, page_id: &str, result: crate::callmetrics::RelayResult) -> u64 {
        self.forwarded
            .with_label_values(&[page_id, result.label()])
            .get()
    }

    /// Sets the outbox gauges.
    pub fn set_outbox(&self, summary: &crate::store::OutboxSummary, now: i64) {
        use crate::callmetrics::OutboxState;
        for (state, n) in [
            (OutboxState::Pending, summary.pending),
            (OutboxState::Done, summary.done),
            (OutboxState::Failed, summary.failed),
        ] {
            self.outbox_items
                .with_label_values(&[state.label()])
                .set(n as i64);
        }
        self.outbox_oldest.set(
            summary
                .oldest_pending
                .map_or(0.0, |t| (now - t).max(0) as f64),
        );
    }

    /// Counts one request to the webhook route.
    pub fn request(&self, result: RequestResult) {
        self.requests.with_label_values(&[result.label()]).inc();
    }

    /// Reads a request counter (tests, benchmarks).
    pub fn requests(&self, result: RequestResult) -> u64 {
        self.requests.with_label_values(&[result.label()]).get()
    }
}

impl Metrics {
    /// See [`crate::server::HttpCounters`].
    pub fn set_connections(&self, open: usize) {
        self.connections.set(open as i64);
    }

    pub fn shed(&self, why: crate::server::Shed) {
        self.shed.with_label_values(&[why.label()]).inc();
    }

    // The webhook route has no basic auth; only a path no route has applies
    // the web config's.
    pub fn auth(&self, _result: crate::web::AuthResult) {}
}

/// The rendered webhook state, and the state version it is of.
#[derive(Debug, Default)]
struct Rendered {
    version: u64,
    text: Arc<String>,
}

/// What the receiver needs from the configuration.
#[derive(Debug)]
pub struct Settings {
    pub secrets: AppSecrets,
    /// `None`: subscription checks are refused (the receiver can still sit
    /// behind another receiver that forwards payloads).
    pub verify_token: Option<Secret>,
    /// How long raw payloads and duplicate keys are kept.
    pub retention: Duration,
    /// The bearer token of the call-metrics intake; `None`: the intake is off.
    pub intake_token: Option<Secret>,
    /// The Pages (`[[pages]]`) whose call metrics are taken in.
    pub pages: std::collections::BTreeSet<String>,
    /// A call with no `terminate` stops counting as active after this long.
    pub call_timeout: Duration,
}

impl Settings {
    /// Settings for `secrets`, with the defaults for the rest (tests, demo).
    pub fn new(secrets: AppSecrets) -> Settings {
        Settings {
            secrets,
            verify_token: None,
            retention: crate::config::DEFAULT_RETENTION,
            intake_token: None,
            pages: Default::default(),
            call_timeout: crate::config::DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// What a call-metrics post came to.
#[derive(Debug)]
pub enum IntakeResult {
    /// Stored (and queued for Meta): 202.
    Accepted,
    /// This call's metrics were taken in before: 202, nothing done again.
    Duplicate,
    /// No or a wrong bearer token: 401.
    Unauthorized,
    /// A Page not configured: 404.
    UnknownPage,
    /// 400, naming the field.
    Invalid(crate::callmetrics::FieldError),
    /// Could not be stored: 500.
    Failed(StoreError),
}

/// The webhook receiver.
#[derive(Debug)]
pub struct Receiver {
    settings: Settings,
    store: Arc<dyn Store>,
    clock: Clock,
    state: Mutex<State>,
    /// Bumped by every change of `state`.
    version: AtomicU64,
    rendered: Mutex<Rendered>,
    metrics: Metrics,
    /// When a bad signature was last logged (at most one line a minute).
    bad_logged: Mutex<Option<Instant>>,
    /// Woken when an intake queues an item for the relay.
    outbox: tokio::sync::Notify,
}

impl Receiver {
    /// A receiver over `store`, with the state it holds.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Result<Arc<Receiver>, StoreError> {
        let state = store.load()?;
        info!(
            store = %store.describe(),
            alerts = state.alerts.len(),
            statuses = state.statuses.len(),
            remembered_changes = state.seen.len(),
            app_secrets = settings.secrets.len(),
            "webhook state loaded"
        );
        Ok(Arc::new(Receiver {
            settings,
            store,
            clock,
            state: Mutex::new(state),
            version: AtomicU64::new(1),
            rendered: Mutex::new(Rendered::default()),
            metrics: Metrics::new(),
            bad_logged: Mutex::new(None),
            outbox: tokio::sync::Notify::new(),
        }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flow statuses in force, for the exporter at start-up.
    pub fn statuses(&self) -> Vec<(String, StatusRecord)> {
        self.state()
            .statuses
            .iter()
            .map(|(f, s)| (f.clone(), s.clone()))
            .collect()
    }

    /// What the landing page shows: the alerts active now (flow, alert, since)
    /// and when each WABA last sent a webhook.
    pub fn summary(&self) -> Summary {
        let state = self.state();
        Summary {
            active: state
                .alerts
                .iter()
                .filter(|(_, r)| r.active)
                .map(|((flow, kind), r)| (flow.clone(), kind.label(), r.time))
                .collect(),
            last_received: state
                .last_received
                .iter()
                .map(|(w, t)| (w.clone(), *t))
                .collect(),
        }
    }

    /// A copy of the state (tests).
    pub fn snapshot(&self) -> State {
        self.state().clone()
    }

    /// The subscription check: `hub.mode=subscribe`, the verify token, and a
    /// challenge to echo.
    pub fn handshake(&self, query: &str) -> Handshake {
        let (mut mode, mut token, mut challenge) = (None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "hub.mode" => mode = Some(v.into_owned()),
                "hub.verify_token" => token = Some(v.into_owned()),
                "hub.challenge" => challenge = Some(v.into_owned()),
                _ => {}
            }
        }
        let ok = match (&self.settings.verify_token, mode, token, challenge) {
            (Some(expected), Some(mode), Some(token), Some(challenge))
                if mode == "subscribe"
                    && signature::same_secret(token.as_bytes(), expected.expose().as_bytes())
                    && !challenge.is_empty()
                    && challenge.len() <= MAX_CHALLENGE_LEN
                    && challenge.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(challenge)
            }
            _ => None,
        };
        match ok {
            Some(challenge) => {
                self.metrics.request(RequestResult::Verified);
                info!("webhook subscription verified");
                Handshake::Verified(challenge)
            }
            None => {
                self.metrics.request(RequestResult::VerifyRefused);
                if self.settings.verify_token.is_none() {
                    warn!(
                        "webhook subscription check refused: no verify token is configured (webhooks.verify_token_env or verify_token_file)"
                    );
                } else {
                    warn!("webhook subscription check refused: wrong mode, token or challenge");
                }
                Handshake::Refused
            }
        }
    }

    /// A POST: checks the signature, then stores and applies the payload.
    /// Blocking work (hashing a large body, the durable write) runs on the
    /// blocking pool.
    pub async fn receive(
        self: &Arc<Self>,
        signature: Option<Vec<u8>>,
        body: bytes::Bytes,
    ) -> Received {
        let started = Instant::now();
        let me = self.clone();
        let received =
            tokio::task::spawn_blocking(move || me.receive_blocking(signature.as_deref(), &body))
                .await
                .unwrap_or_else(|e| {
                    // A panic in there is a bug; the payload was not stored.
                    Received::Failed(StoreError(format!("the webhook task failed: {e}")))
                });
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        received
    }

    fn receive_blocking(&self, signature: Option<&[u8]>, body: &[u8]) -> Received {
        if let Err(e) = self.settings.secrets.verify(signature, body) {
            self.metrics.request(RequestResult::BadSignature);
            self.log_bad_signature(e);
            return Received::BadSignature(e);
        }
        let received_at = self.clock.now().timestamp();
        let parsed = payload::parse(body);
        let mut state = self.state();
        let raw = Raw {
            received_at,
            body,
            understood: parsed.is_ok(),
        };
        let committed = match &parsed {
            // A shared store plans against the rows every replica sees.
            Ok(p) if self.store.shared() => {
                self.store
                    .commit_planned(Some(raw), &state::Touched::of(p), &mut |current| {
                        current.plan(p, received_at)
                    })
            }
            Ok(p) => {
                let plan = state.plan(p, received_at);
                self.store.commit(Some(raw), &plan).map(|()| plan)
            }
            Err(_) => {
                let plan = state::Plan {
                    received_at,
                    ..state::Plan::default()
                };
                self.store.commit(Some(raw), &plan).map(|()| plan)
            }
        };
        let plan = match committed {
            Ok(plan) => plan,
            Err(e) => {
                drop(state);
                self.metrics.request(RequestResult::StoreFailed);
                warn!(error = %e, bytes = body.len(), "cannot store a signed webhook; answering 500 so that Meta sends it again");
                return Received::Failed(e);
            }
        };
        state.apply(&plan);
        if !plan.is_empty() {
            self.version.fetch_add(1, Ordering::Release);
        }
        drop(state);
        let understood = match parsed {
            Ok(_) => {
                self.metrics.request(RequestResult::Accepted);
                true
            }
            Err(e) => {
                self.metrics.request(RequestResult::Unparsed);
                warn!(error = %e, bytes = body.len(), "signed webhook is not a webhook envelope; stored as received");
                false
            }
        };
        let tally = &plan.tally;
        for (field, event) in &tally.events {
            self.metrics.events.with_label_values(&[field, event]).inc();
        }
        self.metrics.duplicates.inc_by(tally.duplicates);
        self.metrics.out_of_order.inc_by(tally.out_of_order);
        for why in &tally.malformed {
            warn!(why = %why, "flows webhook event without what it needs; stored, not applied");
        }
        for name in &tally.unknown {
            info!(event = %name, "flows webhook event of a kind this exporter does not know; stored and counted");
        }
        debug!(
            bytes = body.len(),
            changes = plan.seen.len(),
            duplicates = tally.duplicates,
            out_of_order = tally.out_of_order,
            "webhook stored"
        );
        Received::Accepted(Accepted {
            understood,
            statuses: plan.statuses,
        })
    }

    fn log_bad_signature(&self, e: SignatureError) {
        let mut last = self.bad_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            warn!(why = %e, "webhook refused: bad signature (logged at most once a minute; see webhook_requests_total{{result=\"bad_signature\"}})");
        } else {
            debug!(why = %e, "webhook refused: bad signature");
        }
    }

    /// Wakes the relay when an intake queued an item.
    pub fn outbox_notify(&self) -> &tokio::sync::Notify {
        &self.outbox
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A call-metrics post for `page_id` with this `Authorization` header.
    pub async fn intake(
        self: &Arc<Self>,
        page_id: String,
        authorization: Option<Vec<u8>>,
        body: bytes::Bytes,
    ) -> IntakeResult {
        let authorized = match (&self.settings.intake_token, &authorization) {
            (Some(token), Some(header)) => header
                .strip_prefix(b"Bearer ")
                .is_some_and(|t| signature::same_secret(t.trim_ascii(), token.expose().as_bytes())),
            _ => false,
        };
        if !authorized {
            self.metrics.intake(IntakeLabel::Unauthorized);
            return IntakeResult::Unauthorized;
        }
        if !self.settings.pages.contains(&page_id) {
            self.metrics.intake(IntakeLabel::UnknownPage);
            return IntakeResult::UnknownPage;
        }
        let metrics = match crate::callmetrics::parse_intake(&body) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.intake(IntakeLabel::Invalid);
                debug!(page_id = %page_id, error = %e, "call metrics refused");
                return IntakeResult::Invalid(e);
            }
        };
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let now = me.clock.now().timestamp();
            let mut state = me.state();
            let key = (page_id.clone(), metrics.call_id.clone());
            let committed = if me.store.shared() {
                me.store.commit_planned(
                    None,
                    &state::Touched::intake(&page_id, &metrics.call_id),
                    &mut |current| {
                        if current.intakes.contains(&key) {
                            state::Plan::default()
                        } else {
                            current.plan_intake(&page_id, metrics.clone(), now)
                        }
                    },
                )
            } else if state.intakes.contains(&key) {
                Ok(state::Plan::default())
            } else {
                let plan = state.plan_intake(&page_id, metrics, now);
                me.store.commit(None, &plan).map(|()| plan)
            };
            let plan = match committed {
                Ok(plan) if plan.intake.is_none() => return IntakeResult::Duplicate,
                Ok(plan) => plan,
                Err(e) => {
                    warn!(error = %e, page_id = %page_id, "cannot store call metrics; answering 500");
                    return IntakeResult::Failed(e);
                }
            };
            state.apply(&plan);
            me.version.fetch_add(1, Ordering::Release);
            IntakeResult::Accepted
        })
        .await
        .unwrap_or_else(|e| {
            IntakeResult::Failed(StoreError(format!("the intake task failed: {e}")))
        });
        match &result {
            IntakeResult::Accepted => {
                self.metrics.intake(IntakeLabel::Accepted);
                self.outbox.notify_one();
            }
            IntakeResult::Duplicate => self.metrics.intake(IntakeLabel::Duplicate),
            _ => self.metrics.intake(IntakeLabel::StoreFailed),
        }
        result
    }

    /// Ages out calls with no `terminate` within the call timeout.
    pub fn age_calls(&self) -> Result<(), StoreError> {
        let now = self.clock.now().timestamp();
        let cutoff = now - self.settings.call_timeout.as_secs() as i64;
        let mut state = self.state();
        let plan = state.plan_aging(now, cutoff);
        if plan.calls.is_empty() {
            return Ok(());
        }
        let plan = if self.store.shared() {
            // Decided again on the shared rows: another replica may have
            // seen these calls end meanwhile.
            let touched = state::Touched {
                calls: plan.calls.keys().cloned().collect(),
                pages: plan.pages.keys().cloned().collect(),
                ..state::Touched::default()
            };
            self.store.commit_planned(None, &touched, &mut |current| {
                current.plan_aging(now, cutoff)
            })?
        } else {
            self.store.commit(None, &plan)?;
            plan
        };
        state.apply(&plan);
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// For a shared store: takes in what other replicas wrote (the whole
    /// state in force, read again). Nothing to do for an embedded one.
    pub fn refresh(&self) -> Result<(), StoreError> {
        if !self.store.shared() {
            return Ok(());
        }
        let fresh = self.store.load()?;
        let mut state = self.state();
        if *state != fresh {
            *state = fresh;
            self.version.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Removes raw payloads and duplicate keys past the retention.
    pub fn prune(&self) -> Result<crate::store::Pruned, StoreError> {
        let cutoff = self.clock.now().timestamp() - self.settings.retention.as_secs() as i64;
        let pruned = self.store.prune(cutoff)?;
        self.state().forget_seen_before(cutoff);
        self.state().forget_calls_before(cutoff);
        self.metrics.pruned.inc_by(pruned.raw_events);
        if pruned.raw_events > 0 || pruned.seen_keys > 0 {
            info!(
                payloads = pruned.raw_events,
                duplicate_keys = pruned.seen_keys,
                "pruned webhook storage past the retention"
            );
        }
        Ok(pruned)
    }

    /// Appends the webhook series and the receiver's metrics to `out`,
    /// rendering the state again only if it changed since the last scrape.
    pub fn render_into(&self, out: &mut Vec<u8>) {
        let version = self.version.load(Ordering::Acquire);
        let text = {
            let mut rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
            if rendered.version != version {
                let state = self.state();
                // Read again under the state lock: a change applied meanwhile
                // is in this render, and may render once more next time.
                let version = self.version.load(Ordering::Acquire);
                rendered.text = Arc::new(render::render(&state));
                rendered.version = version;
            }
            rendered.text.clone()
        };
        out.extend_from_slice(text.as_bytes());
        if let Err(e) = TextEncoder::new().encode(&self.metrics.registry.gather(), out) {
            tracing::error!(error = %e, "cannot encode webhook metrics");
        }
    }
}
