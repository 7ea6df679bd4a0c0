//! The exporter itself: owns the configuration, the Graph client, the snapshot
//! and the rendered exposition. `discover` and `poll` fetch from Graph and swap
//! in a new snapshot; `run_job` adds the rule that a job still running makes the
//! next tick skip, and reads a rotated token file again after Graph rejected the
//! token. `reload` reads the config file again and swaps the new configuration
//! in whole, or refuses it whole; a job finishes with the configuration it
//! started with. The HTTP side only reads what was rendered last: scraping
//! never calls Graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError, Secret, TokenSource};
use crate::error::{CallError, ErrorClass, GraphError};
use crate::exposition::{self, Rendered};
use crate::flowdata;
use crate::graph::GraphClient;
use crate::graph::Slot;
use crate::model::{Clock, DataPoint, Flow, Granularity, MetricKind};
use crate::poll::{self, CallOutcome, Dispatch, Halt, PollPolicy, SkipReason, Target};
use crate::ratelimit::waba_key;
use crate::snapshot::{CellStatus, Cells, Snapshot};
use crate::telemetry::{PollResult, Telemetry};

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

/// Why a reload was refused. The configuration in use stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read, is not valid, or its token cannot be read.
    #[error("{}: {error}", path.display())]
    Invalid { path: PathBuf, error: ConfigError },
    #[error(
        "this configuration was not read from a file (the demo's is built in); nothing to reload"
    )]
    NoFile,
    #[error("cannot build the Graph client: {0}")]
    Client(String),
}

impl ReloadError {
    /// The key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ReloadError::Invalid { error, .. } if !error.key.is_empty() => Some(&error.key),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Exporter {
    /// The configuration in use, replaced whole by `reload`. A job takes an
    /// `Arc` of it when it starts and finishes with that one; the app follows
    /// it (`subscribe`) to reschedule.
    config: watch::Sender<Arc<Config>>,
    /// The Graph client for `config.graph`; rebuilt when a reload changes it.
    client: RwLock<Arc<GraphClient>>,
    clock: Clock,
    telemetry: Arc<Telemetry>,
    state: Mutex<Snapshot>,
    published: RwLock<Arc<Rendered>>,
    /// What start-up has reached: `/-/ready` says it.
    progress: Mutex<Progress>,
    /// One per job that can exist, so a granularity enabled by a reload has one.
    running: BTreeMap<Job, tokio::sync::Mutex<()>>,
    /// Reloads one at a time (a SIGHUP and a POST at once).
    reloading: Mutex<()>,
    /// The webhook receiver, when there is one: its series are scraped with
    /// the exporter's, and the flow statuses it learns show in `flow_info`.
    webhooks: std::sync::OnceLock<Arc<crate::webhook::Receiver>>,
}

impl Exporter {
    pub fn new(config: Config, token: Secret, clock: Clock) -> anyhow::Result<Arc<Exporter>> {
        let telemetry = Arc::new(Telemetry::new());
        let client = GraphClient::new(&config, token, telemetry.clone())?;
        let mut running = BTreeMap::new();
        running.insert(Job::Discovery, tokio::sync::Mutex::new(()));
        for g in Granularity::ALL {
            running.insert(Job::Poll(g), tokio::sync::Mutex::new(()));
        }
        telemetry.init(&job_labels(&config));
        telemetry.set_shard(config.shard);
        telemetry.config_loaded(false, clock.now().timestamp() as f64);
        let exporter = Exporter {
            config: watch::Sender::new(Arc::new(config)),
            client: RwLock::new(Arc::new(client)),
            clock,
            telemetry,
            state: Mutex::new(Snapshot::default()),
            published: RwLock::new(Arc::new(Rendered::empty())),
            progress: Mutex::new(Progress::default()),
            running,
            reloading: Mutex::new(()),
            webhooks: std::sync::OnceLock::new(),
        };
        Ok(Arc::new(exporter))
    }

    /// The configuration in use now.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Sees every configuration a reload swaps in.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    fn client(&self) -> Arc<GraphClient> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The telemetry, to share with what counts beside the exporter (the HTTP
    /// transport).
    pub fn telemetry_handle(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// The jobs to schedule: discovery, then one per enabled granularity.
    pub fn jobs(&self) -> Vec<(Job, String)> {
        let config = self.config();
        let mut jobs = vec![(Job::Discovery, config.discovery_schedule.clone())];
        for g in &config.granularities {
            jobs.push((Job::Poll(g.granularity), g.schedule.clone()));
        }
        jobs
    }

    /// Ready once discovery has run and found the flows (or listed every WABA
    /// and found none), and every enabled granularity has had a poll that
    /// tried every flow: one the policy did not stop. Else why not.
    pub fn readiness(&self) -> Readiness {
        let progress = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !progress.discovered {
            return Readiness::NotReady("discovery has not finished".to_owned());
        }
        {
            let state = self.state();
            let failing: Vec<String> = state
                .wabas
                .iter()
                .filter_map(|(waba, s)| s.last_error.map(|e| format!("WABA {waba}: {}", e.label())))
                .collect();
            if !state.flows.values().any(Flow::is_polled) && !failing.is_empty() {
                return Readiness::NotReady(format!(
                    "discovery listed no flows to poll; listing failed for {}",
                    failing.join(", ")
                ));
            }
        }
        for g in self.config().granularities.iter().map(|g| g.granularity) {
            if progress.complete.contains(&g) {
                continue;
            }
            return Readiness::NotReady(match progress.stopped.get(&g) {
                Some(halt) => format!(
                    "no {g} poll has tried every flow yet; the last one stopped: {}",
                    halt.describe()
                ),
                None => format!("no {g} poll has tried every flow yet"),
            });
        }
        Readiness::Ready
    }

    /// [`readiness`](Self::readiness) is `Ready`.
    pub fn is_ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }

    /// Start-up: discover, then poll every granularity once, together, under
    /// the one concurrency limit of the Graph client. A job the scheduler
    /// started meanwhile is waited for, then run again, so no granularity is
    /// skipped.
    pub async fn startup(&self) {
        self.run_job_when_free(Job::Discovery).await;
        let polls: Vec<_> = self
            .config()
            .granularities
            .iter()
            .map(|g| self.run_job_when_free(Job::Poll(g.granularity)))
            .collect();
        futures_util::future::join_all(polls).await;
        match self.readiness() {
            Readiness::Ready => info!("first polls finished; ready"),
            Readiness::NotReady(why) => warn!(why = %why, "first polls finished; not ready"),
        }
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
        self.run_with_token_reread(job).await;
        true
    }

    /// Runs a job once the same job is no longer running: after a reload, the
    /// one running works with the configuration from before it.
    pub async fn run_job_when_free(&self, job: Job) {
        let Some(lock) = self.running.get(&job) else {
            return;
        };
        let _guard = lock.lock().await;
        self.run_with_token_reread(job).await;
    }

    /// Runs a job; when Graph rejects the token (190) and the token file holds
    /// a new one, runs it once more with that token rather than leaving the
    /// data stale until the next tick.
    async fn run_with_token_reread(&self, job: Job) {
        // Rejected before: the file may have been rotated since.
        if self.client().token_rejected() {
            self.reread_token_file();
        }
        self.run_once(job).await;
        if self.client().token_rejected() && self.reread_token_file() {
            info!(job = job.label(), "running again with the new token");
            self.run_once(job).await;
        }
    }

    async fn run_once(&self, job: Job) {
        match job {
            Job::Discovery => self.discover().await,
            Job::Poll(g) => self.poll(g).await,
        }
    }

    /// Reads the token file again, if the token comes from one, and swaps the
    /// token in when it changed. Returns whether it did. Never logs the token.
    fn reread_token_file(&self) -> bool {
        let config = self.config();
        let TokenSource::File(path) = &config.graph.token else {
            return false;
        };
        match config.graph.token.load() {
            Ok(token) => {
                let changed = self.client().set_token(token);
                if changed {
                    info!(path = %path.display(), "the access token file holds a new token; using it");
                }
                changed
            }
            Err(e) => {
                warn!(error = %e, "cannot read the access token file again; keeping the token in use");
                false
            }
        }
    }

    /// Reads the configuration file again and applies it whole, or refuses it
    /// whole and keeps the one in use. Jobs running finish with the old one;
    /// the app reschedules and runs a discovery when it sees the new one.
    /// `server.listen` cannot change without a restart: the old address stays.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reload_with(|| Ok(|| ()))
    }

    /// [`reload`](Self::reload) together with another file the service reads
    /// again with it (the server's web config), all or nothing: `check` runs
    /// once the config file has checked out and returns what to swap in; only
    /// when it too succeeds are both applied, under the same one-at-a-time
    /// lock. Either failure is logged and counted as one failed reload. The
    /// exporter does not know what `check` reads: it stays free of HTTP.
    pub fn reload_with<F: FnOnce()>(
        &self,
        check: impl FnOnce() -> Result<F, ReloadError>,
    ) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.check_file().and_then(|checked| {
            let commit = check()?;
            self.apply(checked);
            commit();
            Ok(())
        });
        match &result {
            Ok(()) => {
                self.telemetry
                    .config_loaded(true, self.clock.now().timestamp() as f64);
                info!("configuration reloaded");
            }
            Err(e) => {
                self.telemetry.reload_failed();
                warn!(key = e.key().unwrap_or(""), error = %e, "configuration reload failed; keeping the configuration in use");
            }
        }
        result
    }

    /// Reads and validates the config file, its token and (when `[graph]`
    /// changed) a new Graph client; changes nothing.
    fn check_file(&self) -> Result<Checked, ReloadError> {
        let old = self.config();
        let path = old.path.clone().ok_or(ReloadError::NoFile)?;
        let invalid = |error| ReloadError::Invalid {
            path: path.clone(),
            error,
        };
        let mut config = Config::load(&path).map_err(invalid)?;
        let token = config.graph.token.load().map_err(invalid)?;
        if config.shard_in_file != old.shard_in_file {
            warn!(shard = %old.shard, configured = %config.shard_in_file, "[cluster] changed: that needs a restart; still polling the old shard");
        }
        // The shard in use stays (it may come from --shard.index/--shard.total).
        config.shard = old.shard;
        if config.listen != old.listen {
            warn!(listening = %old.listen, configured = %config.listen, "server.listen changed: that needs a restart; still listening on the old address");
            config.listen = old.listen;
        }
        let client = if config.graph != old.graph {
            let client = self
                .client()
                .rebuilt(&config, token)
                .map_err(|e| ReloadError::Client(format!("{e:#}")))?;
            NewClient::Rebuilt(Box::new(client))
        } else {
            NewClient::Token(token)
        };
        Ok(Checked { config, client })
    }

    /// Swaps in what `check_file` read; cannot fail.
    fn apply(&self, Checked { config, client }: Checked) {
        match client {
            NewClient::Rebuilt(client) => {
                *self.client.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(client);
            }
            NewClient::Token(token) => {
                if self.client().set_token(token) {
                    info!("the access token changed; using the new one");
                }
            }
        }
        // A rebuilt client shares the governor: one call covers both cases.
        self.client().reconfigure(&config);
        let old = self.config();
        if old.webhooks != config.webhooks || old.storage != config.storage {
            warn!(
                "[webhooks] and [storage] changed: they apply at the next start; the receiver keeps its listener, secrets and database until then"
            );
        }
        // Jobs a reload enables start with their series at 0, as at start-up.
        self.telemetry.init(&job_labels(&config));
        // Followers (the app reschedules and runs a discovery) hear of it only
        // when something changed: a reload of the same file costs no Graph call.
        self.config.send_if_modified(|current| {
            let changed = **current != config;
            if changed {
                *current = Arc::new(config);
            }
            changed
        });
        // Series of granularities no longer enabled go now, not at the next poll.
        self.render();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists the flows of every configured WABA and swaps in the new flow set.
    pub async fn discover(&self) {
        let (config, client) = (self.config(), self.client());
        let started = Instant::now();
        // What the listings say is as of when they were asked for: a webhook
        // status newer than this wins over them.
        let listed_at = self.clock.now();
        let wabas = config.owned_wabas();
        let mut results = Vec::with_capacity(wabas.len());
        let mut failed = 0;
        for waba in &wabas {
            let result = client.list_flows(waba).await;
            match &result {
                Ok(listing) => {
                    debug!(waba_id = %waba, flows = listing.flows.len(), "listed flows");
                    for why in listing.skipped.iter().take(5) {
                        warn!(waba_id = %waba, why = %why, "listing entry skipped: not a flow");
                    }
                    if let Some(t) = listing.truncated {
                        warn!(waba_id = %waba, flows = listing.flows.len(), why = %t.describe(), "flow listing cut short; keeping the flows of the pages read");
                    }
                }
                Err(e) => {
                    failed += 1;
                    warn!(waba_id = %waba, class = e.label(), code = ?e.code(), fbtrace_id = ?e.fbtrace_id(), error = %e, "cannot list flows; keeping the flows known before");
                }
            }
            results.push((waba.clone(), result));
        }
        let now = self.clock.now();
        {
            let mut state = self.state();
            state.apply_discovery(&config.owned_flows(), results, listed_at);
            let polled = state.flows.values().filter(|f| f.is_polled()).count();
            info!(flows = state.flows.len(), polled, "discovery finished");
        }
        self.render();
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .discovered = true;
        let result = PollResult::of(failed, wabas.len());
        self.telemetry.poll_finished(
            Job::Discovery.label(),
            result,
            started.elapsed(),
            now.timestamp() as f64,
        );
    }

    /// Polls all five metrics of every polled flow for one granularity, with at
    /// most `max_concurrency` calls in flight, and swaps the result in whole.
    /// What each result means for the calls still to make is the
    /// [`PollPolicy`]'s to say; this loop only asks it before every call and
    /// tells it every result.
    pub async fn poll(&self, granularity: Granularity) {
        // This poll's configuration and client, whatever a reload swaps in meanwhile.
        let (config, client) = (self.config(), self.client());
        let Some(gcfg) = config.granularity(granularity).cloned() else {
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
        if flows.is_empty() {
            warn!(
                granularity = granularity.label(),
                "no flows to poll: discovery has listed none (see whatsapp_flows_exporter_discovery_failing) and no [[flows]] are configured"
            );
        }
        let since = poll::query_since(&gcfg, now);
        let unknown_error_types = config.limits.unknown_error_types;
        let mut policy = PollPolicy::new();
        let mut dispatch = Dispatch::new(flows.len());
        let mut in_flight = FuturesUnordered::new();
        let mut answers: Vec<(&Flow, MetricKind, CallOutcome)> = Vec::new();
        loop {
            // Take in what ended before taking a slot for the next call, so
            // each call is decided on with every result before it.
            let step = if dispatch.may_go() {
                tokio::select! {
                    biased;
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => Step::Ended(done),
                    slot = client.slot() => Step::Slot(slot),
                }
            } else {
                match in_flight.next().await {
                    Some(done) => Step::Ended(done),
                    None => break,
                }
            };
            match step {
                Step::Ended((index, metric, answer)) => {
                    dispatch.done(index);
                    let flow = &flows[index];
                    policy.record(target(flow), answer.as_ref().map(|_| ()));
                    let outcome = match answer {
                        Ok(point) => CallOutcome::Answered(point),
                        Err(e) => CallOutcome::Failed(e),
                    };
                    answers.push((flow, metric, outcome));
                }
                Step::Slot(slot) => {
                    // None: every call left waits for its flow's call in flight.
                    let Some((index, metric)) = dispatch.take() else {
                        continue;
                    };
                    let flow = &flows[index];
                    if let Some(skip) = policy.check(target(flow)) {
                        dispatch.done(index);
                        answers.push((flow, metric, CallOutcome::NotAttempted(skip)));
                        continue;
                    }
                    let client = &client;
                    let telemetry = &self.telemetry;
                    in_flight.push(async move {
                        let answer = client
                            .fetch_metric(slot, &flow.waba_id, &flow.id, metric, granularity, since)
                            .await
                            .and_then(|points| {
                                let chosen = choose_point(
                                    points,
                                    metric,
                                    granularity,
                                    gcfg.trust_after,
                                    now,
                                    unknown_error_types,
                                )
                                .map_err(CallError::from)?;
                                if chosen.folded > 0 {
                                    telemetry.error_types_folded(chosen.folded);
                                    debug!(flow_id = %flow.id, granularity = granularity.label(), folded = chosen.folded, "error types Meta does not document summed into error_type=\"other\"");
                                }
                                Ok(chosen.point)
                            });
                        (index, metric, answer)
                    });
                }
            }
        }

        let mut cells = Cells::new();
        let mut failed = 0usize;
        // Calls the rate limit refused, by (reason, WABA): logged once per poll.
        let mut refused: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (flow, metric, outcome) in &answers {
            let key = (flow.id.clone(), *metric);
            let cell = poll::next_cell(previous.get(&key), outcome, now);
            if let CellStatus::Failed(_) = cell.status {
                failed += 1;
            }
            match outcome {
                // Counted and logged per reason below.
                CallOutcome::NotAttempted(_) => {}
                CallOutcome::Failed(CallError::Refused(r)) => {
                    *refused
                        .entry((r.label(), waba_key(&flow.waba_id)))
                        .or_default() += 1;
                }
                CallOutcome::Failed(CallError::Failed(e))
                    if e.class == ErrorClass::InsufficientData =>
                {
                    debug!(flow_id = %flow.id, metric = metric.api_name(), granularity = granularity.label(), "insufficient data (139006)");
                }
                CallOutcome::Failed(CallError::Failed(e)) => {
                    warn!(flow_id = %flow.id, metric = metric.api_name(), granularity = granularity.label(), class = e.class.label(), code = ?e.code, fbtrace_id = ?e.fbtrace_id, stale = cell.is_stale(), error = %e, "metric poll failed");
                }
                CallOutcome::Answered(_) => {}
            }
            cells.insert(key, cell);
        }
        // One log line per reason (and flow or WABA), next to the counter.
        let mut skipped: BTreeMap<(&str, String), (SkipReason, u64)> = BTreeMap::new();
        for (flow, _, outcome) in &answers {
            if let CallOutcome::NotAttempted(skip) = outcome {
                let whom = match skip {
                    SkipReason::PollHalted(_) => String::new(),
                    SkipReason::FlowTimedOut => format!("flow {}", flow.id),
                    SkipReason::WabaPaused => format!("WABA {}", waba_key(&flow.waba_id)),
                };
                skipped.entry((skip.label(), whom)).or_insert((*skip, 0)).1 += 1;
            }
        }
        for ((_, whom), (skip, n)) in &skipped {
            self.telemetry.calls_not_attempted(*skip, *n);
            match skip {
                SkipReason::PollHalted(halt) => warn!(
                    granularity = granularity.label(),
                    reason = halt.label(),
                    calls_not_made = n,
                    "poll halted early: {}; its other cells keep their last values, marked stale (class not_attempted)",
                    halt.describe()
                ),
                SkipReason::FlowTimedOut => warn!(
                    granularity = granularity.label(),
                    calls_not_made = n,
                    "{whom}: a call ran out of time; its other calls are not made in this poll (class not_attempted)"
                ),
                SkipReason::WabaPaused => warn!(
                    granularity = granularity.label(),
                    calls_not_made = n,
                    "{whom}: Graph throttled this WABA; its other calls are not made in this poll (class not_attempted)"
                ),
            }
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
        let discovered = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .discovered;
        // Nothing to poll because discovery has not listed, or could not list,
        // the flows: the poll tried nothing.
        let nothing_listed = {
            let mut state = self.state();
            state.apply_poll(granularity, cells, now);
            flows.is_empty()
                && (!discovered || state.wabas.values().any(|w| w.last_error.is_some()))
        };
        self.render();
        {
            let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            match policy.halt() {
                Some(halt) => {
                    progress.stopped.insert(granularity, halt);
                }
                // A poll of nothing because discovery failed tried nothing.
                None if nothing_listed => {}
                None => {
                    progress.complete.insert(granularity);
                    progress.stopped.remove(&granularity);
                }
            }
        }
        let result = if nothing_listed {
            PollResult::Failed
        } else {
            PollResult::of(failed, total)
        };
        info!(
            granularity = granularity.label(),
            calls = total,
            failed,
            took_ms = started.elapsed().as_millis() as u64,
            result = result.label(),
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
            .config()
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
            let mut state = self.state();
            // A reload may have disabled a granularity (even while it was polled).
            state.retain_granularities(&granularities);
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
        if let Some(receiver) = self.webhooks.get() {
            receiver.render_into(&mut live);
        }
        self.client().publish_rate_limit_state();
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

    /// Serves the receiver's series on `/metrics` from now on, and shows the
    /// flow statuses it holds. A second receiver is refused.
    pub fn attach_webhooks(&self, receiver: Arc<crate::webhook::Receiver>) -> anyhow::Result<()> {
        let statuses = receiver.statuses();
        self.webhooks
            .set(receiver)
            .map_err(|_| anyhow::anyhow!("a webhook receiver is attached already"))?;
        self.apply_pushed_statuses(&statuses);
        Ok(())
    }

    /// Flow statuses a webhook put in force: shown at once in `flow_info`
    /// for known flows (unless their last listing is newer), and kept so that
    /// a later discovery compares with them.
    pub fn apply_pushed_statuses(
        &self,
        statuses: &[(String, crate::webhook::state::StatusRecord)],
    ) {
        if statuses.is_empty() {
            return;
        }
        let mut changed = false;
        {
            let mut state = self.state();
            for (flow, record) in statuses {
                let at = chrono::DateTime::from_timestamp(record.time, 0).unwrap_or_default();
                if state.apply_pushed_status(
                    flow,
                    crate::model::FlowStatus::parse(&record.status),
                    at,
                ) {
                    info!(flow_id = %flow, status = %record.status, "flow status changed by webhook");
                    changed = true;
                }
            }
        }
        if changed {
            self.render();
        }
    }

    /// The webhook receiver's summary, when there is a receiver.
    pub fn webhook_summary(&self) -> Option<crate::webhook::Summary> {
        self.webhooks.get().map(|r| r.summary())
    }

    /// A copy of the current snapshot, for tests.
    pub fn snapshot(&self) -> Snapshot {
        self.state().clone()
    }

    /// The landing page's rows, read under the lock without copying the snapshot.
    pub fn flow_rows(&self) -> Vec<FlowRow> {
        flow_rows(&self.state())
    }

    /// What discovery last learned of each WABA, for the landing page.
    pub fn waba_rows(&self) -> Vec<(String, crate::snapshot::WabaState)> {
        self.state()
            .wabas
            .iter()
            .map(|(w, s)| (w.clone(), s.clone()))
            .collect()
    }
}

/// A reload's config file, read and validated, not yet applied.
struct Checked {
    config: Config,
    client: NewClient,
}

/// The Graph client after a reload: a new one when `[graph]` changed, else
/// the one in use with (perhaps) a new token.
enum NewClient {
    Rebuilt(Box<GraphClient>),
    Token(Secret),
}

/// The `poll` labels of a configuration's jobs: discovery and each enabled granularity.
fn job_labels(config: &Config) -> Vec<&'static str> {
    std::iter::once(Job::Discovery.label())
        .chain(config.granularities.iter().map(|g| g.granularity.label()))
        .collect()
}

/// What start-up has reached.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// A discovery has finished.
    discovered: bool,
    /// Granularities that had a poll the policy did not stop.
    complete: BTreeSet<Granularity>,
    /// Why the last poll of a granularity was stopped, until one is not.
    stopped: BTreeMap<Granularity, Halt>,
}

/// Whether the exporter is ready (`/-/ready`), and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// One step of a poll's dispatch loop: a call ended, or a slot for the next.
enum Step {
    Ended((usize, MetricKind, Result<Option<DataPoint>, CallError>)),
    Slot(Slot),
}

/// The policy's view of a call for `flow`.
fn target(flow: &Flow) -> Target<'_> {
    Target {
        flow_id: &flow.id,
        waba: waba_key(&flow.waba_id),
    }
}

/// The period an answer shows, and how many error types were folded.
struct Chosen {
    point: Option<DataPoint>,
    folded: usize,
}

/// Picks the period to show from an answer, bounds its error types
/// (`limits.unknown_error_types`) and checks that it can be shown.
fn choose_point(
    points: Vec<DataPoint>,
    metric: MetricKind,
    granularity: Granularity,
    trust_after: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
    unknown_error_types: usize,
) -> Result<Chosen, GraphError> {
    let Some(point) = poll::select_period(&points, granularity, trust_after, now) else {
        return Ok(Chosen {
            point: None,
            folded: 0,
        });
    };
    let mut point = point.clone();
    let mut folded = 0;
    if metric == MetricKind::RequestError {
        let (values, n) = flowdata::fold_error_types(point.values, unknown_error_types);
        point.values = values;
        folded = n;
    }
    // Flattened here as the exposition will, so a point it cannot show is a
    // malformed answer (counted, logged) rather than a silently missing series.
    flowdata::point_samples(metric, &point.values).map_err(GraphError::malformed)?;
    Ok(Chosen {
        point: Some(point),
        folded,
    })
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
