//! One-shot backfill: the history Graph still serves (30 days of HOUR, 90 days
//! of DAY), for every flow, written as the same series the live exporter
//! serves, into an OpenMetrics file (for `promtool tsdb create-blocks-from
//! openmetrics`) or to a remote-write receiver.
//!
//! ```text
//! window (plan per granularity) ──► graph (one call per flow x metric x granularity x chunk)
//!        ──► series (History: points → flowdata samples) ──► sink (openmetrics file | remote_write)
//! ```
//!
//! Order and memory: families are written one after the other (OpenMetrics
//! forbids interleaving them), so the outer loop is the metric; inside it each
//! flow and granularity is fetched chunk by chunk, oldest first, into one
//! `History` and written whole before it is dropped. A producer task fetches up
//! to `graph.max_concurrency` histories ahead of the writer, through a channel
//! of the same size, so memory holds at most about twice that many histories
//! (each at most one granularity's window of one metric of one flow: 744 hours
//! or 91 days), whatever the number of flows; the period-start family is
//! spilled to a temporary file. A sample's timestamp is the start of its
//! period, as Graph gives it.
//!
//! Errors per window: 139006 and other per-flow failures are reported and the
//! window skipped (nothing is invented); throttling waits as Graph says and
//! tries again; an invalid token, the Metrics API gone, throttling that does
//! not end, or a receiver that rejects samples stop the run.

pub mod openmetrics;
pub mod progress;
pub mod remote_write;
pub mod series;
pub mod sink;
pub mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{Config, Secret};
use crate::error::{CallError, Endpoint, ErrorClass, Outcome};
use crate::flowdata;
use crate::graph::GraphClient;
use crate::model::{Clock, Granularity, MetricKind};
use crate::poll::{Halt, PollPolicy, SkipReason, Target};
use crate::ratelimit::{Refusal, waba_key};
use crate::snapshot::{FailureClass, Snapshot};
use crate::telemetry::Telemetry;

use self::progress::Progress;
use self::series::History;
use self::sink::{FileSink, RemoteSink, RemoteStats, RemoteWriteConfig};
use self::window::{Chunk, Plan};

/// Default most periods one Graph call asks for: a week of hours (90 days of
/// DAY fit in one call). Graph's metric answers have no paging, so shorter
/// windows keep each answer small and bound what one failed call loses.
pub const DEFAULT_CHUNK_PERIODS: u32 = 168;

/// How many times one call waits out throttling before the run gives up.
const MAX_THROTTLE_WAITS: u32 = 10;
/// The longest single wait for throttling to end.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(3600);

/// Where the backfilled samples go.
#[derive(Debug, Clone)]
pub enum Output {
    File(PathBuf),
    RemoteWrite(RemoteWriteConfig),
}

/// What to backfill.
#[derive(Debug, Clone)]
pub struct Options {
    pub since: NaiveDate,
    pub until: NaiveDate,
    /// `None`: every granularity enabled in the config except LIFETIME.
    pub granularities: Option<Vec<Granularity>>,
    pub chunk_periods: u32,
    pub output: Output,
}

/// A date on the command line: a calendar date, or days before today (UTC),
/// so a command keeps working the day it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateArg {
    Date(NaiveDate),
    DaysAgo(u32),
}

impl DateArg {
    /// The date, with `today` (UTC) for relative ones.
    pub fn resolve(self, today: NaiveDate) -> NaiveDate {
        match self {
            DateArg::Date(d) => d,
            DateArg::DaysAgo(n) => today - chrono::Days::new(u64::from(n)),
        }
    }
}

/// Parses `YYYY-MM-DD`, `today`, `yesterday` or `-Nd` (N days ago).
pub fn parse_date_arg(s: &str) -> Result<DateArg, String> {
    let s = s.trim();
    match s {
        "today" => return Ok(DateArg::DaysAgo(0)),
        "yesterday" => return Ok(DateArg::DaysAgo(1)),
        _ => {}
    }
    if let Some(days) = s.strip_prefix('-').and_then(|r| r.strip_suffix('d')) {
        return days
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= 36_500)
            .map(DateArg::DaysAgo)
            .ok_or_else(|| format!("`{s}` is not a number of days like -7d"));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(DateArg::Date)
        .map_err(|_| format!("`{s}` is not a date: write YYYY-MM-DD, today, yesterday or -7d"))
}

/// Parses `hour`, `day` (and refuses `lifetime`, which has no history).
pub fn parse_granularity(s: &str) -> Result<Granularity, String> {
    match Granularity::ALL
        .into_iter()
        .find(|g| g.label().eq_ignore_ascii_case(s.trim()))
    {
        Some(Granularity::Lifetime) => Err(
            "lifetime has a single data point and no history; backfill hour and/or day".to_owned(),
        ),
        Some(g) => Ok(g),
        None => Err(format!("`{s}` is not a granularity (hour, day)")),
    }
}

/// A window that was not written, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub flow_id: String,
    pub metric: MetricKind,
    pub granularity: Granularity,
    pub chunk: Chunk,
    pub class: FailureClass,
    pub message: String,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flow {} {} {} {}..{}: {}",
            self.flow_id,
            self.granularity,
            self.metric.label(),
            self.chunk.since,
            self.chunk.until,
            self.message
        )
    }
}

/// Per granularity, for the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GranularitySummary {
    /// The dates fetched, after clamping.
    pub window: Option<(NaiveDate, NaiveDate)>,
    /// Distinct period starts written (bounded by the window, not the flows).
    pub period_starts: BTreeSet<i64>,
    /// Data points written (flow x metric x period).
    pub points: u64,
}

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub flows: usize,
    pub granularities: BTreeMap<Granularity, GranularitySummary>,
    pub samples: u64,
    /// Skipped windows by class.
    pub skipped: BTreeMap<FailureClass, u64>,
    /// Skipped windows by flow and class, with the first of them.
    pub skipped_by_flow: BTreeMap<(String, FailureClass), (u64, Skip)>,
    /// Graph calls by outcome (`success` or an error class).
    pub graph_calls: BTreeMap<String, u64>,
    pub throttle_waits: u64,
    pub remote: Option<RemoteStats>,
    pub output: Option<PathBuf>,
    pub elapsed: Duration,
}

/// Windows skipped because Graph answered 139006.
const INSUFFICIENT: FailureClass = FailureClass::Graph(ErrorClass::InsufficientData);

/// The exit status of a backfill that ran to the end but lost windows to
/// errors (not to 139006); `--allow-partial` makes it 0.
pub const EXIT_PARTIAL: u8 = 3;

/// Flows listed one by one under "skipped" in the summary.
const MAX_SKIP_LINES: usize = 20;

impl Summary {
    pub fn graph_calls_total(&self) -> u64 {
        self.graph_calls.values().sum()
    }

    /// Windows lost to errors: skipped for any reason but 139006 (too few
    /// requests, which is what Graph has, not a loss).
    pub fn lost(&self) -> u64 {
        self.skipped
            .iter()
            .filter(|(class, _)| **class != INSUFFICIENT)
            .map(|(_, n)| n)
            .sum()
    }

    fn record_skip(&mut self, skip: Skip) {
        *self.skipped.entry(skip.class).or_default() += 1;
        self.skipped_by_flow
            .entry((skip.flow_id.clone(), skip.class))
            .or_insert((0, skip))
            .0 += 1;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backfill finished in {:.1}s", self.elapsed.as_secs_f64())?;
        writeln!(f, "  flows:       {}", self.flows)?;
        for (g, s) in &self.granularities {
            let window = match s.window {
                Some((a, b)) => format!("{a}..{b}"),
                None => "nothing served".to_owned(),
            };
            let range = match (s.period_starts.first(), s.period_starts.last()) {
                (Some(a), Some(b)) => format!(", {} .. {}", fmt_unix(*a), fmt_unix(*b)),
                _ => String::new(),
            };
            writeln!(
                f,
                "  {g:<5}        window {window}: {} periods{range}, {} data points",
                s.period_starts.len(),
                s.points
            )?;
        }
        writeln!(f, "  samples:     {}", self.samples)?;
        let skipped: u64 = self.skipped.values().sum();
        if skipped == 0 {
            writeln!(f, "  skipped:     none")?;
        } else {
            let by_class: Vec<String> = self
                .skipped
                .iter()
                .map(|(class, n)| match *class {
                    INSUFFICIENT => {
                        format!("{n} insufficient data (139006, fewer than 250 requests)")
                    }
                    other => format!("{n} {}", other.label()),
                })
                .collect();
            writeln!(
                f,
                "  skipped:     {skipped} windows: {}",
                by_class.join(", ")
            )?;
            for ((flow, class), (n, first)) in self.skipped_by_flow.iter().take(MAX_SKIP_LINES) {
                if *class == INSUFFICIENT {
                    writeln!(
                        f,
                        "               flow {flow}: {n} windows, insufficient data (139006)"
                    )?;
                } else {
                    writeln!(
                        f,
                        "               flow {flow}: {n} windows, {}; first: {first}",
                        class.label()
                    )?;
                }
            }
            if self.skipped_by_flow.len() > MAX_SKIP_LINES {
                writeln!(
                    f,
                    "               ... and {} more flows (see the log)",
                    self.skipped_by_flow.len() - MAX_SKIP_LINES
                )?;
            }
        }
        let calls: Vec<String> = self
            .graph_calls
            .iter()
            .map(|(outcome, n)| format!("{n} {outcome}"))
            .collect();
        writeln!(
            f,
            "  Graph calls: {} ({}), {} throttling waits",
            self.graph_calls_total(),
            calls.join(", "),
            self.throttle_waits
        )?;
        if let Some(r) = &self.remote {
            writeln!(
                f,
                "  remote write: {} samples in {} requests ({} bytes), {} retries",
                r.samples, r.requests, r.bytes, r.retries
            )?;
        }
        if let Some(path) = &self.output {
            writeln!(f, "  written to:  {}", path.display())?;
        }
        Ok(())
    }
}

fn fmt_unix(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%MZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// What fetching one history produced.
#[derive(Debug)]
struct Fetched {
    history: History,
    skipped: Vec<Skip>,
    throttle_waits: u64,
}

/// Plans every granularity asked for; clamps are logged as warnings.
fn plans(
    config: &Config,
    options: &Options,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<Plan>> {
    let granularities: Vec<Granularity> = match &options.granularities {
        Some(list) => {
            let mut list = list.clone();
            list.sort();
            list.dedup();
            list
        }
        None => config
            .granularities
            .iter()
            .map(|g| g.granularity)
            .filter(|g| *g != Granularity::Lifetime)
            .collect(),
    };
    if granularities.is_empty() {
        anyhow::bail!(
            "no granularity to backfill: enable hour or day in the config, or pass --granularity"
        );
    }
    let mut plans = Vec::new();
    for g in granularities {
        let trust_after = config.granularity(g).map_or_else(
            || Config::default_granularity(g).trust_after,
            |c| c.trust_after,
        );
        let plan = window::plan(
            g,
            options.since,
            options.until,
            now,
            trust_after,
            options.chunk_periods,
        )
        .map_err(anyhow::Error::msg)?;
        for clamp in &plan.clamps {
            warn!(granularity = g.label(), "{clamp}");
        }
        if plan.window.is_none() {
            warn!(
                granularity = g.label(),
                "nothing of the window is served for this granularity"
            );
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// Runs a backfill to the end. The token is only sent to Graph.
pub async fn run(
    config: &Config,
    token: Secret,
    clock: Clock,
    options: Options,
    progress: Arc<Progress>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let now = clock.now();
    let plans = plans(config, &options, now)?;
    let telemetry = Arc::new(Telemetry::new());
    let client = Arc::new(GraphClient::new(config, token, telemetry.clone())?);

    // The flows, as the live exporter finds them.
    let wabas = config.owned_wabas();
    let mut results = Vec::with_capacity(wabas.len());
    for waba in &wabas {
        let listing = client
            .list_flows(waba)
            .await
            .map_err(|e| anyhow::anyhow!("cannot list the flows of WABA {waba}: {e}"))?;
        for why in listing.skipped.iter().take(5) {
            warn!(waba_id = %waba, why = %why, "listing entry skipped: not a flow");
        }
        if let Some(t) = listing.truncated {
            warn!(waba_id = %waba, flows = listing.flows.len(), why = %t.describe(), "flow listing cut short; backfilling the flows of the pages read");
        }
        results.push((waba.clone(), Ok(listing)));
    }
    let mut snapshot = Snapshot::default();
    snapshot.apply_discovery(&config.owned_flows(), results, now);
    // (flow id, WABA id): calls count against the flow's WABA's budget.
    let flows: Vec<(String, String)> = snapshot
        .polled_flows()
        .into_iter()
        .map(|f| (f.id, f.waba_id))
        .collect();
    info!(
        flows = flows.len(),
        not_polled = snapshot.flows.len() - flows.len(),
        "flows to backfill (DRAFT and DEPRECATED flows have no endpoint traffic)"
    );

    let mut summary = Summary {
        flows: flows.len(),
        ..Summary::default()
    };
    for p in &plans {
        summary.granularities.insert(
            p.granularity,
            GranularitySummary {
                window: p.window,
                ..GranularitySummary::default()
            },
        );
    }
    let calls: usize =
        plans.iter().map(|p| p.chunks.len()).sum::<usize>() * flows.len() * MetricKind::ALL.len();
    progress.start(calls as u64);

    let mut sink = match &options.output {
        Output::File(path) => Sink::File(FileSink::create(path)?),
        Output::RemoteWrite(cfg) => Sink::Remote(RemoteSink::new(cfg.clone())?),
    };

    // Producer: fetches histories in the order they are written, a few ahead.
    let concurrency = config.graph.max_concurrency.max(1);
    let (tx, mut rx) = mpsc::channel::<Result<Fetched, Stopped>>(concurrency);
    let jobs: Vec<(MetricKind, (String, String), Plan)> = MetricKind::ALL
        .into_iter()
        .flat_map(|m| {
            let plans = &plans;
            flows.iter().flat_map(move |f| {
                plans
                    .iter()
                    .filter(|p| !p.chunks.is_empty())
                    .map(move |p| (m, f.clone(), p.clone()))
            })
        })
        .collect();
    let fetcher = Arc::new(Fetcher {
        client: client.clone(),
        policy: Mutex::new(PollPolicy::new()),
        progress: progress.clone(),
        retry_backoff: config.graph.retry_backoff,
        unknown_error_types: config.limits.unknown_error_types,
    });
    let producer = {
        tokio::spawn(async move {
            let mut fetches = futures_util::stream::iter(jobs)
                .map(|(metric, (flow_id, waba_id), plan)| {
                    let fetcher = fetcher.clone();
                    async move {
                        let flow = FlowRef { flow_id, waba_id };
                        fetch_history(&fetcher, flow, metric, &plan).await
                    }
                })
                .buffered(concurrency);
            while let Some(fetched) = fetches.next().await {
                let fatal = fetched.is_err();
                if tx.send(fetched).await.is_err() || fatal {
                    return;
                }
            }
        })
    };

    // Consumer: writes each history whole, one family after the other.
    let outcome = consume(&mut rx, &mut sink, &mut summary, &progress).await;
    drop(rx);
    producer.abort();
    let _ = producer.await;
    outcome?;

    match sink {
        Sink::File(file) => {
            let written = file.finish()?;
            debug_assert_eq!(written, summary.samples);
            if let Output::File(path) = &options.output {
                summary.output = Some(path.clone());
            }
        }
        Sink::Remote(remote) => {
            summary.remote = Some(remote.finish().await?);
        }
    }
    progress.finish();
    for outcome in Outcome::all() {
        let n = telemetry.graph_requests(Endpoint::Metric, outcome)
            + telemetry.graph_requests(Endpoint::Flows, outcome);
        if n > 0 {
            summary.graph_calls.insert(outcome.label().to_owned(), n);
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

enum Sink {
    File(FileSink),
    Remote(RemoteSink),
}

async fn consume(
    rx: &mut mpsc::Receiver<Result<Fetched, Stopped>>,
    sink: &mut Sink,
    summary: &mut Summary,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut family: Option<MetricKind> = None;
    while let Some(fetched) = rx.recv().await {
        let fetched = fetched.map_err(|stop| {
            anyhow::anyhow!(
                "backfill stopped: {}{}{}",
                stop.halt.describe(),
                match &stop.error {
                    Some(e) => format!(": {e}"),
                    None => String::new(),
                },
                match stop.halt {
                    Halt::Token =>
                        " (put a valid token where graph.access_token_env or _file says)",
                    Halt::ApiGone => " (set graph.api_version to a version that serves it)",
                    Halt::Throttled =>
                        " (Graph kept throttling; run again later, the backfill is idempotent)",
                    Halt::Unreachable | Halt::Failing =>
                        " (run again once Graph answers; the backfill is idempotent)",
                }
            )
        })?;
        let h = &fetched.history;
        if family != Some(h.metric) {
            family = Some(h.metric);
            if let Sink::File(file) = sink {
                file.family(flowdata::family(h.metric))?;
            }
        }
        let written = match sink {
            Sink::File(file) => file.history(h)?,
            Sink::Remote(remote) => remote.history(h).await?,
        };
        summary.samples += written;
        progress.samples_written(written);
        if let Some(g) = summary.granularities.get_mut(&h.granularity) {
            g.points += h.points.len() as u64;
            g.period_starts.extend(h.points.iter().map(|(t, _)| *t));
        }
        summary.throttle_waits += fetched.throttle_waits;
        for skip in fetched.skipped {
            summary.record_skip(skip);
        }
    }
    Ok(())
}

/// A flow to fetch, with the WABA its calls count against.
struct FlowRef {
    flow_id: String,
    waba_id: String,
}

/// What every fetch of a run shares.
struct Fetcher {
    client: Arc<GraphClient>,
    /// One policy for the whole run, as for one live poll.
    policy: Mutex<PollPolicy>,
    progress: Arc<Progress>,
    retry_backoff: Duration,
    unknown_error_types: usize,
}

/// Why the run stopped: the policy the live polls use says Graph as a whole
/// fails, with the error that made it say so.
#[derive(Debug)]
struct Stopped {
    halt: Halt,
    error: Option<CallError>,
}

/// Fetches every chunk of one flow, metric and granularity, oldest first.
/// Throttling (of the app or the WABA) is waited out as Graph says, a few
/// times. Then every result goes to the [`PollPolicy`] the live polls use,
/// shared by all fetches of the run: a window it says not to call (the flow
/// timed out, its WABA is throttled) and a failed window are skipped; when it
/// says Graph as a whole fails, the run stops.
async fn fetch_history(
    run: &Fetcher,
    flow: FlowRef,
    metric: MetricKind,
    plan: &Plan,
) -> Result<Fetched, Stopped> {
    let Fetcher {
        client,
        policy,
        progress,
        retry_backoff,
        unknown_error_types,
    } = run;
    let (retry_backoff, unknown_error_types) = (*retry_backoff, *unknown_error_types);
    let FlowRef { flow_id, waba_id } = flow;
    let target = Target {
        flow_id: &flow_id,
        waba: waba_key(&waba_id),
    };
    let g = plan.granularity;
    let mut points = Vec::new();
    let mut skipped = Vec::new();
    let mut throttle_waits = 0;
    let lock = || policy.lock().unwrap_or_else(|e| e.into_inner());
    for chunk in &plan.chunks {
        let skip = |class: FailureClass, message: String| Skip {
            flow_id: flow_id.clone(),
            metric,
            granularity: g,
            chunk: *chunk,
            class,
            message,
        };
        let verdict = lock().check(target);
        match verdict {
            Some(SkipReason::PollHalted(halt)) => return Err(Stopped { halt, error: None }),
            Some(reason) => {
                progress.call_done();
                let s = skip(
                    FailureClass::NotAttempted,
                    format!("not attempted ({})", reason.label()),
                );
                debug!(window = %s, "window skipped");
                skipped.push(s);
                continue;
            }
            None => {}
        }
        let mut waits = 0u32;
        let answer = loop {
            let answer = client
                .fetch_metric_window(
                    &waba_id,
                    &flow_id,
                    metric,
                    g,
                    Some(chunk.since),
                    Some(chunk.query_until()),
                )
                .await;
            let regain = match &answer {
                Err(CallError::Failed(e))
                    if matches!(e.class, ErrorClass::Throttled | ErrorClass::WabaThrottled) =>
                {
                    Some(e.regain_after)
                }
                Err(CallError::Refused(Refusal::ThrottlePause | Refusal::WabaThrottlePause)) => {
                    Some(client.waba_paused_for(&waba_id))
                }
                _ => None,
            };
            match (answer, regain) {
                (Err(e), Some(regain)) if waits < MAX_THROTTLE_WAITS => {
                    let wait = throttle_wait(regain, retry_backoff, waits);
                    warn!(flow_id = %flow_id, metric = metric.api_name(), granularity = g.label(), wait_s = wait.as_secs_f64(), error = %e, "throttled by Graph; waiting as it says");
                    tokio::time::sleep(wait).await;
                    waits += 1;
                    throttle_waits += 1;
                }
                (other, _) => break other,
            }
        };
        progress.call_done();
        let halt = {
            let mut policy = lock();
            policy.record(target, answer.as_ref().map(|_| ()));
            policy.halt()
        };
        match answer {
            Ok(answer) => match chunk_points(metric, plan, chunk, answer, unknown_error_types) {
                Ok(kept) => points.extend(kept),
                Err(message) => {
                    let s = skip(FailureClass::Graph(ErrorClass::Malformed), message);
                    warn!(error = %s, "window skipped: malformed answer");
                    skipped.push(s);
                }
            },
            Err(e) if halt.is_some() => {
                return Err(Stopped {
                    halt: halt.unwrap_or(Halt::Failing),
                    error: Some(e),
                });
            }
            Err(CallError::Failed(e)) if e.class == ErrorClass::InsufficientData => {
                let s = skip(INSUFFICIENT, "insufficient data (139006)".to_owned());
                debug!(window = %s, "window skipped: fewer than 250 requests");
                skipped.push(s);
            }
            Err(e) => {
                let s = skip(FailureClass::from(&e), e.to_string());
                warn!(window = %s, fbtrace_id = ?e.fbtrace_id(), "window skipped");
                skipped.push(s);
            }
        }
    }
    // Chunks are disjoint and in time order; sort anyway in case an answer was
    // not, and keep one point per period start.
    points.sort_by_key(|(t, _)| *t);
    points.dedup_by_key(|(t, _)| *t);
    Ok(Fetched {
        history: History {
            flow_id,
            granularity: g,
            metric,
            points,
        },
        skipped,
        throttle_waits,
    })
}

/// The kept points of one chunk's answer, flattened; an error if any kept
/// point is not what Meta documents (the whole chunk is then skipped).
fn chunk_points(
    metric: MetricKind,
    plan: &Plan,
    chunk: &Chunk,
    answer: Vec<crate::model::DataPoint>,
    unknown_error_types: usize,
) -> Result<Vec<(i64, flowdata::PointSamples)>, String> {
    answer
        .into_iter()
        .filter(|p| plan.keeps(chunk, p.start))
        .map(|p| {
            let values = if metric == MetricKind::RequestError {
                flowdata::fold_error_types(p.values, unknown_error_types).0
            } else {
                p.values
            };
            flowdata::point_samples(metric, &values).map(|s| (p.start.timestamp(), s))
        })
        .collect()
}

/// How long to wait after throttling: Graph's `estimated_time_to_regain_access`
/// when it gave one, else a doubling backoff; at most an hour at a time.
pub fn throttle_wait(regain: Option<Duration>, backoff: Duration, waits: u32) -> Duration {
    regain
        .unwrap_or_else(|| backoff.saturating_mul(2u32.saturating_pow(waits + 1)))
        .min(MAX_THROTTLE_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_waits_follow_graph_then_back_off() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            throttle_wait(Some(minute * 7), Duration::from_secs(2), 0),
            minute * 7
        );
        assert_eq!(
            throttle_wait(Some(minute * 600), Duration::ZERO, 0),
            MAX_THROTTLE_WAIT
        );
        assert_eq!(
            throttle_wait(None, Duration::from_secs(2), 0),
            Duration::from_secs(4)
        );
        assert_eq!(
            throttle_wait(None, Duration::from_secs(2), 2),
            Duration::from_secs(16)
        );
        assert_eq!(
            throttle_wait(None, Duration::from_secs(2), 40),
            MAX_THROTTLE_WAIT
        );
    }

    #[test]
    fn dates_are_calendar_dates_or_days_before_today() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 6).expect("date");
        let at = |s: &str| parse_date_arg(s).map(|d| d.resolve(today));
        assert_eq!(
            at("2026-11-30"),
            Ok(NaiveDate::from_ymd_opt(2026, 11, 30).expect("date"))
        );
        assert_eq!(at("today"), Ok(today));
        assert_eq!(
            at("yesterday"),
            Ok(NaiveDate::from_ymd_opt(2026, 12, 5).expect("date"))
        );
        assert_eq!(
            at("-7d"),
            Ok(NaiveDate::from_ymd_opt(2026, 11, 29).expect("date"))
        );
        for bad in ["-7", "7d", "-xd", "2026-13-01", "last week"] {
            assert!(parse_date_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn granularities_parse_and_lifetime_is_refused() {
        assert_eq!(parse_granularity("hour"), Ok(Granularity::Hour));
        assert_eq!(parse_granularity(" DAY "), Ok(Granularity::Day));
        assert!(
            parse_granularity("lifetime")
                .expect_err("refused")
                .contains("no history")
        );
        assert!(parse_granularity("week").is_err());
    }
}
