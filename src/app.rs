//! Wires the pieces into the running service: the exporter, its cron jobs
//! (tokio-cron-scheduler, one job per granularity plus discovery), the HTTP
//! server, shutdown on SIGINT/SIGTERM, and reloading on SIGHUP (the config
//! file and the web config file, both or neither, through `server::reload`;
//! this module reschedules the jobs for every configuration the exporter
//! swaps in, however the reload was asked for). Also the `demo` set-up: the sandbox
//! Graph API and an exporter pointed at it, in one process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::config::{Config, Secret};
use crate::exporter::{Exporter, Job};
use crate::model::Clock;
use crate::sandbox::{Sandbox, SandboxFlow, Traffic};
use crate::server;
use crate::web::WebConfig;
use crate::webhook::Receiver;

/// How long in-flight polls get to end after a shutdown signal. They are
/// cancelled at once (what they would fetch dies with the process); this
/// bounds the wait for them to unwind.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the exporter until `shutdown` is cancelled: start-up poll, scheduled
/// jobs, reloads, and the HTTP server on `listener` (plain HTTP, no
/// authentication).
pub async fn run(
    exporter: Arc<Exporter>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_web(exporter, listener, Arc::new(WebConfig::default()), shutdown).await
}

/// [`run`] with the HTTP server secured as the web config says; a reload
/// reads its file again too.
pub async fn run_web(
    exporter: Arc<Exporter>,
    listener: TcpListener,
    web: Arc<WebConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_on(
        exporter,
        vec![listener],
        crate::server::DEFAULT_METRICS_PATH,
        web,
        shutdown,
    )
    .await
}

/// Where the HTTP side serves: the addresses (`--web.listen-address`, else
/// `server.listen`) and the exposition's path (`--web.telemetry-path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addresses: Vec<std::net::SocketAddr>,
    pub metrics_path: String,
}

/// Binds every address of `listen`; the error names the one that failed.
async fn bind(listen: &Listen) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(listen.addresses.len());
    for addr in &listen.addresses {
        listeners.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        );
    }
    Ok(listeners)
}

/// [`run_web`] on every listener, with the exposition at `metrics_path`.
pub async fn run_on(
    exporter: Arc<Exporter>,
    listeners: Vec<TcpListener>,
    metrics_path: &str,
    web: Arc<WebConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(exporter, listeners, metrics_path, web, None, shutdown).await
}

/// The webhook receiver and the listener of its own it serves on.
#[derive(Debug)]
pub struct WebhookListener {
    pub listener: TcpListener,
    pub receiver: Arc<Receiver>,
    /// TLS for this listener (`webhooks.web_config_file`); no basic auth
    /// applies to the webhook route.
    pub web: Arc<WebConfig>,
    pub path: String,
    /// Relays the call-metrics outbox to Graph (when Pages are configured).
    pub relay: Option<crate::relay::Relay>,
}

/// How often raw webhook payloads past the retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often a replica reads the webhook state others wrote to a shared store.
const SHARED_REFRESH: Duration = Duration::from_secs(1);
/// How often calls with no `terminate` are aged out.
const AGE_CALLS_EVERY: Duration = Duration::from_secs(60);

/// Counts nothing: for a listener whose connections no one watches (tests).
#[derive(Debug, Clone, Copy)]
pub struct NoHttpCounters;

impl server::HttpCounters for NoHttpCounters {
    fn set_connections(&self, _: usize) {}
    fn shed(&self, _: server::Shed) {}
    fn auth(&self, _: crate::web::AuthResult) {}
}

/// Counts the webhook listener's connections in the receiver's metrics.
struct WebhookHttp(Arc<Receiver>);

impl server::HttpCounters for WebhookHttp {
    fn set_connections(&self, open: usize) {
        self.0.metrics().set_connections(open);
    }
    fn shed(&self, why: server::Shed) {
        self.0.metrics().shed(why);
    }
    fn auth(&self, result: crate::web::AuthResult) {
        self.0.metrics().auth(result);
    }
}

/// [`run_on`], and the webhook receiver on its own listener when there is
/// one: its series join `/metrics`, and its storage is pruned every hour.
pub async fn run_with(
    exporter: Arc<Exporter>,
    listeners: Vec<TcpListener>,
    metrics_path: &str,
    web: Arc<WebConfig>,
    webhooks: Option<WebhookListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let webhook_server = match webhooks {
        None => None,
        Some(w) => {
            exporter.attach_webhooks(w.receiver.clone())?;
            let receiver = w.receiver.clone();
            let token = shutdown.clone();
            tracker.spawn(async move {
                let mut last_prune: Option<std::time::Instant> = None;
                loop {
                    let r = receiver.clone();
                    let prune = last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY);
                    if prune {
                        last_prune = Some(std::time::Instant::now());
                    }
                    let done = tokio::task::spawn_blocking(move || {
                        if let Err(e) = r.age_calls() {
                            warn!(error = %e, "cannot age out calls");
                        }
                        if prune {
                            if let Err(e) = r.prune() {
                                warn!(error = %e, "cannot prune webhook storage");
                            }
                        }
                    });
                    if let Err(e) = done.await {
                        warn!(error = %e, "webhook storage upkeep failed");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(AGE_CALLS_EVERY) => {}
                        () = token.cancelled() => return,
                    }
                }
            });
            if let Some(relay) = w.relay {
                tracker.spawn(relay.run(shutdown.clone()));
            }
            if w.receiver.store().shared() {
                // What other replicas wrote shows here within seconds.
                let receiver = w.receiver.clone();
                let exporter = exporter.clone();
                let token = shutdown.clone();
                tracker.spawn(async move {
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep(SHARED_REFRESH) => {}
                            () = token.cancelled() => return,
                        }
                        let (r, ex) = (receiver.clone(), exporter.clone());
                        // Flow statuses another replica learned show here too.
                        let refreshed = tokio::task::spawn_blocking(move || {
                            r.refresh()
                                .map(|()| ex.apply_pushed_statuses(&r.statuses()))
                        });
                        match refreshed.await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => warn!(error = %e, "cannot read the shared webhook state"),
                            Err(e) => warn!(error = %e, "shared webhook state refresh failed"),
                        }
                    }
                });
            }
            let routes = Arc::new(server::routes::webhooks(
                w.receiver.clone(),
                exporter.clone(),
                &w.path,
            ));
            let stats: Arc<server::HttpStats> = Arc::new(WebhookHttp(w.receiver.clone()));
            Some(server::serve_routes(
                w.listener,
                routes,
                w.web,
                stats,
                shutdown.clone().cancelled_owned(),
            ))
        }
    };
    let mut scheduler = JobScheduler::new()
        .await
        .context("cannot create the scheduler")?;
    let mut scheduled = Scheduled::default();
    scheduled
        .add(&scheduler, &exporter, &tracker, &shutdown)
        .await?;
    scheduler
        .start()
        .await
        .context("cannot start the scheduler")?;

    {
        let exporter = exporter.clone();
        let token = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = exporter.startup() => {}
                () = token.cancelled() => {}
            }
        });
    }

    let served = {
        let routes = Arc::new(server::routes::exporter(
            exporter.clone(),
            web.clone(),
            metrics_path,
        ));
        let stats: Arc<server::HttpStats> = exporter.telemetry_handle();
        let mut servers: Vec<futures_util::future::BoxFuture<'static, std::io::Result<()>>> =
            listeners
                .into_iter()
                .map(|listener| {
                    Box::pin(server::serve_routes(
                        listener,
                        routes.clone(),
                        web.clone(),
                        stats.clone(),
                        shutdown.clone().cancelled_owned(),
                    )) as futures_util::future::BoxFuture<'static, _>
                })
                .collect();
        if let Some(webhook_server) = webhook_server {
            servers.push(Box::pin(webhook_server));
        }
        let servers = futures_util::future::try_join_all(servers);
        tokio::pin!(servers);
        tokio::select! {
            served = &mut servers => served.map(|_| ()),
            // Returns on shutdown; the servers are stopping then too.
            () = follow_reloads(&exporter, &web, &scheduler, &tracker, &shutdown, scheduled) => servers.await.map(|_| ()),
        }
    };

    if let Err(e) = scheduler.shutdown().await {
        warn!(error = %e, "scheduler did not shut down cleanly");
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("polls still running after the grace period; abandoning them");
    }
    served.context("HTTP server failed")
}

/// The cron jobs in the scheduler: what they run on which schedule, and their ids.
#[derive(Debug, Default)]
struct Scheduled {
    jobs: Vec<(Job, String)>,
    ids: Vec<Uuid>,
}

impl Scheduled {
    /// Schedules the exporter's jobs for its configuration now. Each tick's
    /// job runs in a task owned by `tracker`, so shutdown can wait for it.
    async fn add(
        &mut self,
        scheduler: &JobScheduler,
        exporter: &Arc<Exporter>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        self.jobs = exporter.jobs();
        for (job, schedule) in self.jobs.clone() {
            let exporter = exporter.clone();
            let tracker = tracker.clone();
            let token = shutdown.clone();
            let cron = CronJob::new_async(schedule.as_str(), move |_, _| {
                let exporter = exporter.clone();
                let token = token.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = exporter.run_job(job) => {}
                        () = token.cancelled() => {}
                    }
                });
                Box::pin(async {})
            })
            .with_context(|| format!("invalid schedule `{schedule}` for {}", job.label()))?;
            let id = scheduler
                .add(cron)
                .await
                .with_context(|| format!("cannot schedule {}", job.label()))?;
            self.ids.push(id);
            info!(job = job.label(), schedule = %schedule, "scheduled (UTC)");
        }
        Ok(())
    }

    async fn remove_all(&mut self, scheduler: &JobScheduler) {
        for id in self.ids.drain(..) {
            if let Err(e) = scheduler.remove(&id).await {
                warn!(error = %e, "cannot remove a scheduled job");
            }
        }
    }
}

/// Until shutdown: reloads on SIGHUP (config and web config, as `POST
/// /-/reload` does), and follows every configuration a reload swaps in: reschedules the jobs when
/// they changed, then discovers at once, so new WABAs and flows show without
/// waiting for the schedule, and polls granularities the reload enabled.
async fn follow_reloads(
    exporter: &Arc<Exporter>,
    web: &Arc<WebConfig>,
    scheduler: &JobScheduler,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    mut scheduled: Scheduled,
) {
    let mut configs = exporter.subscribe();
    let mut hangups = Hangups::new();
    // The jobs to run after a reload, by one task: a burst of reloads while it
    // is busy makes one more discovery, not one each.
    let follow_up = Arc::new((
        std::sync::Mutex::new(std::collections::BTreeSet::new()),
        tokio::sync::Notify::new(),
    ));
    {
        let follow_up = follow_up.clone();
        let exporter = exporter.clone();
        let token = shutdown.clone();
        tracker.spawn(async move {
            let (pending, wake) = &*follow_up;
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    () = token.cancelled() => return,
                }
                let jobs = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
                tokio::select! {
                    () = async {
                        for job in jobs {
                            exporter.run_job_when_free(job).await;
                        }
                    } => {}
                    () = token.cancelled() => return,
                }
            }
        });
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hangups.recv() => {
                info!("SIGHUP received; reloading the configuration");
                // `reload` logs and counts its result.
                let _ = server::reload(exporter.clone(), web.clone()).await;
            }
            changed = configs.changed() => {
                if changed.is_err() {
                    return;
                }
                configs.borrow_and_update();
                let before = std::mem::take(&mut scheduled.jobs);
                if exporter.jobs() != before {
                    scheduled.remove_all(scheduler).await;
                    if let Err(e) = scheduled.add(scheduler, exporter, tracker, shutdown).await {
                        error!(error = %format!("{e:#}"), "cannot reschedule after the reload");
                    }
                } else {
                    scheduled.jobs = before.clone();
                }
                // Discovery sorts first (`Job`'s order), then the polls of
                // granularities the reload enabled.
                let (pending, wake) = &*follow_up;
                {
                    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                    pending.insert(Job::Discovery);
                    pending.extend(
                        scheduled
                            .jobs
                            .iter()
                            .map(|(job, _)| *job)
                            .filter(|job| !before.iter().any(|(b, _)| b == job)),
                    );
                }
                wake.notify_one();
            }
        }
    }
}

/// SIGHUP, where there is such a signal.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn new() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(
                    |e| warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload"),
                )
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

/// Cancels the token on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => info!("SIGINT received; shutting down"),
                    _ = term.recv() => info!("SIGTERM received; shutting down"),
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
                info!("SIGINT received; shutting down");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        info!("interrupt received; shutting down");
    }
    token.cancel();
}

/// `flows-exporter serve`.
pub async fn serve(config: Config, web: WebConfig, listen: Listen) -> anyhow::Result<()> {
    let token = config.graph.token.load()?;
    let listeners = bind(&listen).await?;
    let addresses: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    for note in &config.deprecated {
        warn!(config = ?config.path, "{note}");
    }
    info!(address = %addresses.join(","), metrics_path = %listen.metrics_path, wabas = config.wabas.len(), shard = %config.shard, wabas_in_shard = config.owned_wabas().len(), static_flows = config.flows.len(), config = ?config.path, web_config = ?web.path(), tls = web.current().is_tls(), basic_auth_users = web.current().users(), version = crate::version::VERSION, revision = crate::version::REVISION, "serving /metrics");
    let webhooks = open_webhooks(&config).await?;
    let exporter = Exporter::new(config, token, Clock::system())?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = run_with(
        exporter,
        listeners,
        &listen.metrics_path,
        Arc::new(web),
        webhooks,
        shutdown,
    )
    .await;
    signals.abort();
    result
}

/// The webhook receiver `[webhooks]` and `[storage]` describe: its secrets
/// read, its storage opened (schema brought up to date), its listener bound.
/// Errors name the key.
pub async fn open_webhooks(whole: &Config) -> anyhow::Result<Option<WebhookListener>> {
    let Some(config) = &whole.webhooks else {
        return Ok(None);
    };
    let (storage, pages) = (&whole.storage, &whole.pages);
    let secret = config.app_secret.load()?;
    let secrets = crate::webhook::AppSecrets::parse(secret.expose())
        .context("key `webhooks.app_secret_env`: no app secret in it")?;
    let verify_token = match &config.verify_token {
        Some(source) => Some(source.load()?),
        None => {
            warn!(
                "no webhook verify token (set META_WEBHOOK_VERIFY_TOKEN, webhooks.verify_token_env or verify_token_file): subscription checks will be refused; signed payloads are still received"
            );
            None
        }
    };
    let web = match &config.web_config_file {
        Some(path) => WebConfig::load(path).map_err(|e| {
            anyhow::anyhow!("key `webhooks.web_config_file`: {}: {e}", path.display())
        })?,
        None => WebConfig::default(),
    };
    let path = storage.path.clone();
    let url = storage.url.clone();
    let store: Arc<dyn crate::store::Store> = tokio::task::spawn_blocking(
        move || -> Result<Arc<dyn crate::store::Store>, crate::store::StoreError> {
            Ok(match url {
                Some(url) => Arc::new(crate::store::postgres::Postgres::connect(url.expose())?),
                None => Arc::new(crate::store::sqlite::Sqlite::open(&path)?),
            })
        },
    )
    .await
    .context("cannot open the storage")?
    .map_err(|e| {
        let key = if storage.url.is_some() {
            "storage.url"
        } else {
            "storage.path"
        };
        anyhow::anyhow!("key `{key}`: {e}")
    })?;
    let intake_token = match &config.intake_token {
        Some(source) => Some(source.load()?),
        None => {
            if !pages.is_empty() {
                warn!(
                    "no call-metrics intake token (set CALL_METRICS_INTAKE_TOKEN, webhooks.intake_token_env or intake_token_file): the intake refuses every post"
                );
            }
            None
        }
    };
    let receiver = Receiver::new(
        crate::webhook::Settings {
            secrets,
            verify_token,
            retention: storage.retention,
            intake_token,
            pages: pages.iter().map(|p| p.id.clone()).collect(),
            call_timeout: config.call_timeout,
        },
        store,
        Clock::system(),
    )
    .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("key `webhooks.listen`: cannot listen on {}", config.listen))?;
    let mut tokens = std::collections::BTreeMap::new();
    for page in pages {
        tokens.insert(page.id.clone(), page.token.load()?);
    }
    let relay = if pages.is_empty() {
        None
    } else {
        Some(crate::relay::Relay::new(
            receiver.clone(),
            &whole.graph,
            tokens,
        )?)
    };
    info!(address = %listener.local_addr()?, path = %config.path, tls = web.current().is_tls(), storage = %receiver.store().describe(), retention_days = storage.retention.as_secs() / 86400, pages = pages.len(), "receiving webhooks");
    Ok(Some(WebhookListener {
        listener,
        receiver,
        web: Arc::new(web),
        path: config.path.clone(),
        relay,
    }))
}

/// The app secret the demo's sandbox signs webhooks with; it guards nothing real.
pub const DEMO_APP_SECRET: &str = "sandbox-demo-app-secret";
/// The demo's Messenger Page, whose calls the simulated business places.
pub const DEMO_PAGE: &str = "106378625516323";
/// The bearer token of the demo's call-metrics intake.
pub const DEMO_INTAKE_TOKEN: &str = "sandbox-demo-intake-token";
/// The demo receiver's verify token.
pub const DEMO_VERIFY_TOKEN: &str = "sandbox-demo-verify-token";

/// A flow of a WABA the demo does not list: reachable only as a `[[flows]]` entry.
pub const DEMO_STATIC_FLOW: &str = "761204397754120";

/// The sandbox the demo serves: the realistic data set plus the static flow.
pub fn demo_sandbox(clock: Clock) -> Sandbox {
    let sandbox = Sandbox::realistic(DEMO_TOKEN, clock);
    sandbox.add_flow(SandboxFlow {
        id: DEMO_STATIC_FLOW.into(),
        name: "Partner referral".into(),
        waba_id: "109876543210987".into(),
        status: "PUBLISHED".into(),
        data_api_version: "3.0".into(),
        can_send_message: "AVAILABLE".into(),
        traffic: Traffic::Normal { base_per_hour: 45 },
    });
    sandbox
}

/// How often the demo's simulated business places a Messenger call.
pub const DEMO_CALL_EVERY: Duration = Duration::from_secs(15);

/// How often the demo's sandbox plays a round of webhooks.
pub const DEMO_WEBHOOK_ROUND: Duration = Duration::from_secs(60);

/// The token the demo's sandbox accepts; it guards nothing real.
pub const DEMO_TOKEN: &str = "sandbox-demo-token";

/// The configuration `demo` runs with: the sandbox's two WABAs, one static flow,
/// and the default schedules.
pub fn demo_config(listen: std::net::SocketAddr, base_url: String) -> Config {
    // The token is handed to the exporter directly (DEMO_TOKEN); the default
    // token source in here is never read.
    Config::parse(&format!(
        "[server]\nlisten = \"{listen}\"\n[graph]\nbase_url = \"{base_url}\"\n\
         [[wabas]]\nid = \"102290129340398\"\n[[wabas]]\nid = \"104996122399160\"\n\
         [[flows]]\nid = \"{DEMO_STATIC_FLOW}\"\nname = \"Partner referral\"\n"
    ))
    .expect("the built-in demo config is valid")
}

/// `flows-exporter demo`: the sandbox Graph API and an exporter against it.
pub async fn demo(listen: Listen, web: WebConfig) -> anyhow::Result<()> {
    let sandbox_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the sandbox Graph API")?;
    let sandbox_addr = sandbox_listener.local_addr()?;
    let listeners = bind(&listen)
        .await
        .context("choose another address with --web.listen-address")?;
    let first = listeners[0].local_addr()?;
    let config = demo_config(first, format!("http://{sandbox_addr}"));
    let exporter = Exporter::new(config, Secret::new(DEMO_TOKEN), Clock::system())?;

    // The webhook receiver, with a temporary database, on a loopback port.
    let webhook_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the webhook receiver")?;
    let webhook_addr = webhook_listener.local_addr()?;
    let store = tokio::task::spawn_blocking(crate::store::sqlite::Sqlite::temporary)
        .await
        .context("cannot make the demo's storage")??;
    let receiver = Receiver::new(
        crate::webhook::Settings {
            verify_token: Some(Secret::new(DEMO_VERIFY_TOKEN)),
            intake_token: Some(Secret::new(DEMO_INTAKE_TOKEN)),
            pages: [DEMO_PAGE.to_owned()].into(),
            ..crate::webhook::Settings::new(
                crate::webhook::AppSecrets::parse(DEMO_APP_SECRET)
                    .context("the demo app secret")?,
            )
        },
        Arc::new(store),
        Clock::system(),
    )?;
    let webhook_url = format!(
        "http://{webhook_addr}{}",
        crate::config::DEFAULT_WEBHOOK_PATH
    );
    let relay = crate::relay::Relay::new(
        receiver.clone(),
        &exporter.config().graph,
        [(DEMO_PAGE.to_owned(), Secret::new(DEMO_TOKEN))].into(),
    )?;
    let webhooks = WebhookListener {
        listener: webhook_listener,
        receiver,
        web: Arc::new(WebConfig::default()),
        path: crate::config::DEFAULT_WEBHOOK_PATH.to_owned(),
        relay: Some(relay),
    };

    let shutdown = CancellationToken::new();
    let sandbox = demo_sandbox(Clock::system());
    sandbox.add_page(DEMO_PAGE);
    sandbox.set_webhook_target(&webhook_url, DEMO_APP_SECRET);
    let business = crate::sandbox::business::Business {
        graph: format!(
            "http://{sandbox_addr}/{}",
            crate::config::DEFAULT_API_VERSION
        ),
        token: DEMO_TOKEN.to_owned(),
        page_id: DEMO_PAGE.to_owned(),
        intake: format!("http://{webhook_addr}/calls/{DEMO_PAGE}/metrics"),
        intake_token: DEMO_INTAKE_TOKEN.to_owned(),
    };
    let business_task = tokio::spawn(business.play(
        sandbox.clone(),
        Clock::system(),
        DEMO_CALL_EVERY,
        shutdown.clone(),
    ));
    let meta = crate::sandbox::meta::MetaWebhooks::new(webhook_url.clone(), DEMO_APP_SECRET);
    let meta_task = tokio::spawn(meta.play(
        sandbox.clone(),
        Clock::system(),
        DEMO_WEBHOOK_ROUND,
        shutdown.clone(),
    ));
    let sandbox_task =
        tokio::spawn(sandbox.serve(sandbox_listener, shutdown.clone().cancelled_owned()));
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));

    // One write, errors ignored: a closed stdout (say, piped into `head`) must
    // not take the demo down.
    let scheme = if web.current().is_tls() {
        "https"
    } else {
        "http"
    };
    let path = &listen.metrics_path;
    let round = DEMO_WEBHOOK_ROUND.as_secs();
    let calls = DEMO_CALL_EVERY.as_secs();
    let banner = format!(
        "flows-exporter demo: a sandbox Graph API with realistic data, and the exporter polling it.\n\
         \n  metrics:        {scheme}://{first}{path}\n  landing page:   {scheme}://{first}/\n  \
         readiness:      {scheme}://{first}/-/ready\n  sandbox Graph:  \
         http://{sandbox_addr}/v23.0/102290129340398/flows?fields=id,name,status \
         (Authorization: Bearer {DEMO_TOKEN})\n  webhooks:       {webhook_url} \
         (the sandbox posts signed flows events here every {round} s; app secret {DEMO_APP_SECRET})\n  \
         calls:          a simulated business places a Messenger call every {calls} s through the sandbox; \
         its client posts the metrics to http://{webhook_addr}/calls/{DEMO_PAGE}/metrics \
         (Authorization: Bearer {DEMO_INTAKE_TOKEN}), relayed to the sandbox's call_metrics\n\n\
         Backfill the same data into a file: flows-exporter backfill --demo --since -7d --until yesterday --output flows.om\n\
         \nPress Ctrl-C to stop.\n"
    );
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }

    let result = run_with(
        exporter,
        listeners,
        path,
        Arc::new(web),
        Some(webhooks),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    signals.abort();
    let _ = meta_task.await;
    let _ = business_task.await;
    match sandbox_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "sandbox ended with an error"),
        Err(e) => warn!(error = %e, "sandbox task failed"),
    }
    result
}

/// `flows-exporter backfill --demo`: the backfill from the demo's sandbox
/// Graph API, started for the run on a loopback port and stopped after it.
pub async fn backfill_demo(
    options: crate::backfill::Options,
    progress: Arc<crate::backfill::progress::Progress>,
) -> anyhow::Result<crate::backfill::Summary> {
    let sandbox_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the sandbox Graph API")?;
    let sandbox_addr = sandbox_listener.local_addr()?;
    let stop = CancellationToken::new();
    let sandbox = tokio::spawn(
        demo_sandbox(Clock::system()).serve(sandbox_listener, stop.clone().cancelled_owned()),
    );
    let config = demo_config(([127, 0, 0, 1], 0).into(), format!("http://{sandbox_addr}"));
    let result = crate::backfill::run(
        &config,
        Secret::new(DEMO_TOKEN),
        Clock::system(),
        options,
        progress,
    )
    .await;
    stop.cancel();
    let _ = sandbox.await;
    result
}
