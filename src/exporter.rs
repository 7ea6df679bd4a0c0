//! The exporter itself: owns the configuration, the Graph client, the snapshot
//! and the rendered exposition. `discover` and `poll` fetch from Graph and swap
//! in a new snapshot; `run_job` adds the rule that a job still running makes the
//! next tick skip. The HTTP side only reads what was rendered last: scraping
//! never calls Graph.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures_util::StreamExt;
use tracing::{debug, info, warn};

use crate::config::{Config, Secret};
use crate::exposition::{self, Rendered};
use crate::flowdata;
use crate::graph::{ErrorClass, GraphClient, GraphError};
use crate::model::{Clock, DataPoint, Flow, Granularity, MetricKind};
use crate::poll;
use crate::snapshot::{CellStatus, Cells, Snapshot};
use crate::telemetry::Telemetry;

/// Network failures in a row (refused, reset, timed out, cut off) after which a
/// poll stops calling Graph: one flaky call fails one cell, but when Graph is
/// unreachable or hangs every call fails alike, and with timeouts and retries a
/// poll of every flow would otherwise take hours.
const NETWORK_HALT_AFTER: u32 = 3;

/// A scheduled unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    Discovery,
    Poll(Granularity),
}

impl Job {
    pub fn label(self) -> &'static str {
        match self {
            Job::Discovery => "discovery",
            Job::Poll(g) => g.label(),
        }
    }
}

/// What a scrape gets: the body in parts (served without copying) and whether
/// it is gzip-encoded.
#[derive(Debug)]
pub struct Scrape {
    pub parts: Vec<bytes::Bytes>,
    pub gzip: bool,
}

#[derive(Debug)]
pub struct Exporter {
    config: Config,
    client: GraphClient,
    clock: Clock,
    telemetry: Arc<Telemetry>,
    state: Mutex<Snapshot>,
    published: RwLock<Arc<Rendered>>,
    ready: AtomicBool,
    running: BTreeMap<Job, tokio::sync::Mutex<()>>,
}

impl Exporter {
    pub fn new(config: Config, token: Secret, clock: Clock) -> anyhow::Result<Arc<Exporter>> {
        let telemetry = Arc::new(Telemetry::new());
        let client = GraphClient::new(&config, token, telemetry.clone())?;
        let mut running = BTreeMap::new();
        running.insert(Job::Discovery, tokio::sync::Mutex::new(()));
        for g in &config.granularities {
            running.insert(Job::Poll(g.granularity), tokio::sync::Mutex::new(()));
        }
        let jobs: Vec<&str> = running.keys().map(|j| j.label()).collect();
        telemetry.init(&jobs);
        let exporter = Exporter {
            config,
            client,
            clock,
            telemetry,
            state: Mutex::new(Snapshot::default()),
            published: RwLock::new(Arc::new(Rendered::empty())),
            ready: AtomicBool::new(false),
            running,
        };
        Ok(Arc::new(exporter))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The jobs to schedule: discovery, then one per enabled granularity.
    pub fn jobs(&self) -> Vec<(Job, String)> {
        let mut jobs = vec![(Job::Discovery, self.config.discovery_schedule.clone())];
        for g in &self.config.granularities {
            jobs.push((Job::Poll(g.granularity), g.schedule.clone()));
        }
        jobs
    }

    /// True once the start-up discovery and first poll of every granularity ended.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Start-up: discover, then poll every granularity once, then report ready.
    pub async fn startup(&self) {
        self.run_job(Job::Discovery).await;
        for g in self.config.granularities.iter().map(|g| g.granularity) {
            self.run_job(Job::Poll(g)).await;
        }
        self.ready.store(true, Ordering::Release);
        info!("first poll finished; ready");
    }

    /// Runs a job unless the same job is still running, in which case the tick
    /// is skipped and counted. Returns whether it ran.
    pub async fn run_job(&self, job: Job) -> bool {
        let Some(lock) = self.running.get(&job) else {
            return false;
        };
        let Ok(_guard) = lock.try_lock() else {
            self.telemetry.tick_skipped(job.label());
            warn!(
                job = job.label(),
                "previous poll still running; tick skipped"
            );
            return false;
        };
        match job {
            Job::Discovery => self.discover().await,
            Job::Poll(g) => self.poll(g).await,
        }
        true
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists the flows of every configured WABA and swaps in the new flow set.
    pub async fn discover(&self) {
        let started = Instant::now();
        let mut results = Vec::with_capacity(self.config.wabas.len());
        let mut failed = 0;
        for waba in &self.config.wabas {
            let result = self.client.list_flows(waba).await;
            match &result {
                Ok(flows) => debug!(waba_id = %waba, flows = flows.len(), "listed flows"),
                Err(e) => {
                    failed += 1;
                    warn!(waba_id = %waba, class = e.class.label(), code = ?e.code, fbtrace_id = ?e.fbtrace_id, error = %e, "cannot list flows; keeping the flows known before");
                }
            }
            results.push((waba.clone(), result));
        }
        let now = self.clock.now();
        {
            let mut state = self.state();
            state.apply_discovery(&self.config.flows, results, now);
            let polled = state.flows.values().filter(|f| f.is_polled()).count();
            info!(flows = state.flows.len(), polled, "discovery finished");
        }
        self.render();
        let result = poll_result(failed, self.config.wabas.len());
        self.telemetry.poll_finished(
            Job::Discovery.label(),
            result,
            started.elapsed(),
            now.timestamp() as f64,
        );
    }

    /// Polls all five metrics of every polled flow for one granularity, with at
    /// most `max_concurrency` calls in flight, and swaps the result in whole.
    pub async fn poll(&self, granularity: Granularity) {
        let Some(gcfg) = self.config.granularity(granularity).cloned() else {
            return;
        };
        let started = Instant::now();
        let now = self.clock.now();
        let (flows, previous) = {
            let state = self.state();
            (
                state.polled_flows(),
                state.cells.get(&granularity).cloned().unwrap_or_default(),
            )
        };
        let since = poll::query_since(&gcfg, now);
        let halt: Mutex<Option<GraphError>> = Mutex::new(None);
        // Network failures in a row: Graph is unreachable or hangs for everyone.
        let network_streak = AtomicU32::new(0);
        let mut pairs = Vec::with_capacity(flows.len() * MetricKind::ALL.len());
        for flow in &flows {
            for metric in MetricKind::ALL {
                pairs.push((flow, metric));
            }
        }
        let calls: Vec<CallFuture<'_>> = pairs
            .into_iter()
            .map(|(flow, metric)| -> CallFuture<'_> {
                let halt = &halt;
                let network_streak = &network_streak;
                let gcfg = &gcfg;
                Box::pin(async move {
                    let halted = halt.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(e) = halted {
                        return (flow, metric, Err(e), false);
                    }
                    let answer = self
                        .client
                        .fetch_metric(&flow.waba_id, &flow.id, metric, granularity, since)
                        .await
                        .and_then(|points| {
                            choose_point(points, metric, granularity, gcfg.trust_after, now)
                        });
                    let streak = match &answer {
                        Err(e) if e.class == ErrorClass::Network => {
                            network_streak.fetch_add(1, Ordering::Relaxed) + 1
                        }
                        _ => {
                            network_streak.store(0, Ordering::Relaxed);
                            0
                        }
                    };
                    if let Err(e) = &answer {
                        if e.class.halts_poll() || streak >= NETWORK_HALT_AFTER {
                            let mut h = halt.lock().unwrap_or_else(|e| e.into_inner());
                            h.get_or_insert_with(|| e.clone());
                        }
                    }
                    (flow, metric, answer, true)
                })
            })
            .collect();
        // At most `max_concurrency` calls in flight; scoped to this poll.
        let answers: Vec<_> = futures_util::stream::iter(calls)
            .buffer_unordered(self.config.graph.max_concurrency)
            .collect()
            .await;

        let mut cells = Cells::new();
        let (mut failed, mut saved) = (0usize, 0u64);
        // Calls the rate limit refused, by (reason, WABA): logged once per poll.
        let mut refused: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (flow, metric, answer, attempted) in &answers {
            let key = (flow.id.clone(), *metric);
            let cell = poll::next_cell(previous.get(&key), answer.as_ref().cloned(), now);
            if let CellStatus::Failed(_) = cell.status {
                failed += 1;
            }
            match answer {
                Err(_) if !attempted => saved += 1,
                Err(e) if matches!(e.class, ErrorClass::Budget | ErrorClass::UsageHigh) => {
                    let waba = if flow.waba_id.is_empty() {
                        crate::ratelimit::UNKNOWN_WABA
                    } else {
                        flow.waba_id.as_str()
                    };
                    *refused.entry((e.class.label(), waba)).or_default() += 1;
                }
                Err(e) if e.class == ErrorClass::InsufficientData => {
                    debug!(flow_id = %flow.id, metric = metric.api_name(), granularity = granularity.label(), "insufficient data (139006)");
                }
                Err(e) => {
                    warn!(flow_id = %flow.id, metric = metric.api_name(), granularity = granularity.label(), class = e.class.label(), code = ?e.code, fbtrace_id = ?e.fbtrace_id, stale = cell.is_stale(), error = %e, "metric poll failed");
                }
                Ok(_) => {}
            }
            cells.insert(key, cell);
        }
        if saved > 0 {
            self.telemetry.calls_saved_by("poll_halted", saved);
            let reason = halt
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|e| e.class.label())
                .unwrap_or("unknown");
            warn!(
                granularity = granularity.label(),
                reason,
                calls_not_made = saved,
                "poll halted early"
            );
        }
        if !refused.is_empty() {
            let summary: Vec<String> = refused
                .iter()
                .map(|((reason, waba), n)| format!("{reason} waba {waba}: {n}"))
                .collect();
            warn!(
                granularity = granularity.label(),
                calls_not_made = refused.values().sum::<u64>(),
                refused = %summary.join(", "),
                "rate limit refused calls; their cells keep the last values, marked stale"
            );
        }
        let total = answers.len();
        {
            let mut state = self.state();
            state.apply_poll(granularity, cells, now);
        }
        self.render();
        let result = poll_result(failed, total);
        info!(
            granularity = granularity.label(),
            calls = total,
            failed,
            took_ms = started.elapsed().as_millis() as u64,
            result,
            "poll finished"
        );
        self.telemetry.poll_finished(
            granularity.label(),
            result,
            started.elapsed(),
            now.timestamp() as f64,
        );
    }

    /// Renders the snapshot once and publishes it for scrapes.
    pub fn render(&self) {
        let granularities: Vec<Granularity> = self
            .config
            .granularities
            .iter()
            .map(|g| g.granularity)
            .collect();
        let size_hint = self
            .published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .text
            .len();
        let text = {
            let state = self.state();
            exposition::render(&state, &granularities, size_hint)
        };
        self.telemetry.set_exposition_bytes(text.len());
        let rendered = Arc::new(Rendered::new(text));
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = rendered;
    }

    /// The `/metrics` body: the per-flow part rendered at the last poll, plus the
    /// live exporter metrics.
    pub fn scrape(&self, gzip: bool) -> Scrape {
        let rendered = self
            .published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut live = Vec::with_capacity(16 * 1024);
        self.client.publish_rate_limit_state();
        self.telemetry.render(&mut live);
        if gzip {
            Scrape {
                parts: vec![rendered.gzip_with(&live).into()],
                gzip: true,
            }
        } else {
            Scrape {
                parts: vec![rendered.text.clone(), live.into()],
                gzip: false,
            }
        }
    }

    /// A copy of the current snapshot, for tests.
    pub fn snapshot(&self) -> Snapshot {
        self.state().clone()
    }

    /// The landing page's rows, read under the lock without copying the snapshot.
    pub fn flow_rows(&self) -> Vec<FlowRow> {
        flow_rows(&self.state())
    }
}

/// One metric call of a poll: the flow, the metric, the answer, and whether
/// Graph was actually called (false when the poll had halted).
type CallOutput<'a> = (
    &'a Flow,
    MetricKind,
    Result<Option<DataPoint>, GraphError>,
    bool,
);
// Boxed so the poll future is `Send` (borrowing closures otherwise trip rustc's
// higher-ranked lifetime inference).
type CallFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = CallOutput<'a>> + Send + 'a>>;

fn poll_result(failed: usize, total: usize) -> &'static str {
    match failed {
        0 => "success",
        n if n == total => "failed",
        _ => "partial",
    }
}

/// Picks the period to show from an answer and checks that it can be shown.
fn choose_point(
    points: Vec<DataPoint>,
    metric: MetricKind,
    granularity: Granularity,
    trust_after: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<DataPoint>, GraphError> {
    let Some(point) = poll::select_period(&points, granularity, trust_after, now) else {
        return Ok(None);
    };
    // Flattened here as the exposition will, so a point it cannot show is a
    // malformed answer (counted, logged) rather than a silently missing series.
    flowdata::point_samples(metric, &point.values).map_err(GraphError::malformed)?;
    Ok(Some(point.clone()))
}

/// A row of the landing page: a flow and when Graph last answered it, per
/// granularity.
#[derive(Debug, Clone)]
pub struct FlowRow {
    pub flow: Flow,
    pub last_answer: BTreeMap<Granularity, Option<chrono::DateTime<chrono::Utc>>>,
}

/// The landing page's rows, in flow id order.
fn flow_rows(snapshot: &Snapshot) -> Vec<FlowRow> {
    snapshot
        .flows
        .values()
        .map(|f| {
            let mut last_answer = BTreeMap::new();
            for (g, cells) in &snapshot.cells {
                let t = MetricKind::ALL
                    .iter()
                    .filter_map(|m| cells.get(&(f.id.clone(), *m)))
                    .filter_map(|c| c.last_success)
                    .max();
                last_answer.insert(*g, t);
            }
            FlowRow {
                flow: f.clone(),
                last_answer,
            }
        })
        .collect()
}
