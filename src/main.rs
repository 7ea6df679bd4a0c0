//! Command line: parses arguments, sets up logging, loads the config and hands
//! over to the library. Errors become the exit code here and only here.
//!
//! Flags follow the Prometheus exporters' conventions (`--web.listen-address`,
//! `--web.telemetry-path`, `--web.config.file`, `--log.level`, `--log.format`,
//! `--config.file`). A flag wins over the config file, which wins over the
//! default.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use flows_exporter::app::{self, Listen};
use flows_exporter::backfill::progress::{LogWriter, Progress};
use flows_exporter::backfill::sink::{Auth, RemoteWriteConfig};
use flows_exporter::backfill::{self, DateArg, Output};
use flows_exporter::config::{Config, Secret};
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::version;
use flows_exporter::web::WebConfig;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Debug, Parser)]
#[command(
    name = "flows-exporter",
    version = version::VERSION,
    long_version = version::LONG,
    about = "Prometheus exporter for the WhatsApp Flows Metrics API"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Only log messages at this level or above. Without it,
    /// FLOWS_EXPORTER_LOG (a tracing filter, e.g. `info,flows_exporter::graph=debug`)
    /// if set, else info.
    #[arg(long = "log.level", global = true, value_enum, value_name = "LEVEL")]
    level: Option<LogLevel>,
    /// How log lines are written, on standard error.
    #[arg(
        long = "log.format",
        global = true,
        value_enum,
        default_value = "logfmt",
        value_name = "FORMAT"
    )]
    format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll the Flows Metrics API on a schedule and serve /metrics.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        web: WebArgs,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        shard: ShardArgs,
    },
    /// Run a built-in sandbox Graph API and the exporter against it: no account needed.
    Demo {
        #[command(flatten)]
        web: WebArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Validate a config file (and a web config file, if given): exits non-zero,
    /// saying why on standard error, when something is wrong, including a
    /// token that cannot be read.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        web: WebArgs,
    },
    /// Load the history Graph still serves (30 days of hour, 90 days of day data)
    /// into an OpenMetrics file or a remote-write receiver, once.
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// The config file (TOML).
    #[arg(
        long = "config.file",
        alias = "config",
        default_value = "config.toml",
        value_name = "PATH"
    )]
    path: PathBuf,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        Config::load(&self.path).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }
}

/// Which shard of the WABAs this replica polls (`[cluster]` in the file;
/// these win).
#[derive(Debug, Args)]
struct ShardArgs {
    /// This replica's shard, from 0 (a StatefulSet's ordinal).
    #[arg(long = "shard.index", value_name = "N")]
    index: Option<u32>,
    /// How many replicas share the WABAs.
    #[arg(long = "shard.total", value_name = "M")]
    total: Option<u32>,
}

impl ShardArgs {
    /// Puts the flags' shard in `config`; one flag alone keeps the file's
    /// value of the other.
    fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if self.index.is_none() && self.total.is_none() {
            return Ok(());
        }
        let index = self.index.unwrap_or(config.shard.index);
        let total = self.total.unwrap_or(config.shard.total);
        config.shard = flows_exporter::shard::Shard::new(index, total)
            .map_err(|e| anyhow::anyhow!("--shard.index {index} --shard.total {total}: {e}"))?;
        Ok(())
    }
}

#[derive(Debug, Args)]
struct WebArgs {
    /// Web config file (Prometheus exporter-toolkit format, YAML): TLS, basic
    /// auth, response headers. Without it, plain HTTP without authentication.
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config: Option<PathBuf>,
}

impl WebArgs {
    /// The web config, remembering its file so a reload reads it again.
    fn load(&self) -> anyhow::Result<WebConfig> {
        match &self.web_config {
            None => Ok(WebConfig::default()),
            Some(path) => {
                WebConfig::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            }
        }
    }
}

#[derive(Debug, Args)]
struct ListenArgs {
    /// Address to serve /metrics and the other routes on; repeat it for
    /// several. Wins over the config's server.listen (default 127.0.0.1:9878).
    #[arg(
        long = "web.listen-address",
        alias = "listen",
        value_name = "ADDR:PORT"
    )]
    addresses: Vec<SocketAddr>,
    /// Path of the exposition.
    #[arg(long = "web.telemetry-path", default_value = "/metrics", value_parser = telemetry_path, value_name = "PATH")]
    telemetry_path: String,
}

impl ListenArgs {
    /// What to listen on: the flag's addresses, else `default`.
    fn resolve(self, default: SocketAddr) -> Listen {
        Listen {
            addresses: if self.addresses.is_empty() {
                vec![default]
            } else {
                self.addresses
            },
            metrics_path: self.telemetry_path,
        }
    }
}

fn telemetry_path(s: &str) -> Result<String, String> {
    let reserved = ["/", "/-/healthy", "/-/ready", "/-/reload"];
    if !s.starts_with('/') || s.contains(['?', '#', ' ']) {
        Err(format!("`{s}` is not a path like /metrics"))
    } else if reserved.contains(&s) {
        Err(format!("`{s}` is one of the exporter's own routes"))
    } else {
        Ok(s.to_owned())
    }
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["output", "remote_write"]))]
struct BackfillArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// Backfill from the built-in sandbox Graph API (the demo's data) instead
    /// of the config's: no account needed.
    #[arg(long, conflicts_with = "path")]
    demo: bool,
    /// First date (UTC) whose periods are backfilled: YYYY-MM-DD, `today`,
    /// `yesterday`, or `-Nd` (N days ago).
    #[arg(long, value_parser = backfill::parse_date_arg, allow_hyphen_values = true)]
    since: DateArg,
    /// Last date (UTC) whose periods are backfilled, inclusive; as --since.
    #[arg(long, value_parser = backfill::parse_date_arg, allow_hyphen_values = true)]
    until: DateArg,
    /// Granularities, comma-separated (hour, day). Default: those enabled in the
    /// config, except lifetime.
    #[arg(long, value_delimiter = ',', value_parser = backfill::parse_granularity)]
    granularity: Option<Vec<Granularity>>,
    /// Write OpenMetrics text here, for `promtool tsdb create-blocks-from openmetrics`.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Send to this Prometheus remote-write endpoint (Prometheus:
    /// /api/v1/write, VictoriaMetrics: /api/v1/write, Mimir: /api/v1/push).
    #[arg(long, value_name = "URL")]
    remote_write: Option<String>,
    /// Extra header for remote write, `Name: value` (repeatable), e.g.
    /// `X-Scope-OrgID: tenant-1` for Mimir.
    #[arg(long = "remote-write-header", value_name = "HEADER")]
    remote_write_headers: Vec<String>,
    /// Basic-auth user name for remote write (with --remote-write-password-file).
    #[arg(long, requires = "remote_write_password_file")]
    remote_write_username: Option<String>,
    /// File holding the basic-auth password.
    #[arg(long, value_name = "FILE", requires = "remote_write_username")]
    remote_write_password_file: Option<PathBuf>,
    /// File holding a bearer token for remote write.
    #[arg(long, value_name = "FILE", conflicts_with = "remote_write_username")]
    remote_write_bearer_token_file: Option<PathBuf>,
    /// Most samples in one remote-write request.
    #[arg(long, default_value_t = 5000)]
    remote_write_batch_samples: usize,
    /// Retries of a remote-write request after a network error, 429 or 5xx.
    #[arg(long, default_value_t = 5)]
    remote_write_retries: u32,
    /// First retry backoff in seconds, doubled each retry.
    #[arg(long, default_value_t = 1.0)]
    remote_write_backoff_seconds: f64,
    /// Exit 0 even when windows were lost to errors. Without it a backfill that
    /// lost windows (other than to 139006, fewer than 250 requests) exits 3
    /// after writing what it got; a run that stopped exits 1.
    #[arg(long)]
    allow_partial: bool,
    /// Most periods one Graph call asks for (168 = a week of hours).
    #[arg(long, default_value_t = backfill::DEFAULT_CHUNK_PERIODS, value_parser = clap::value_parser!(u32).range(1..))]
    chunk_periods: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A backfill on a terminal draws a progress bar; log lines go above it.
    let progress = match &cli.command {
        Command::Backfill(_) => Some(Progress::new(std::io::stderr().is_terminal())),
        _ => None,
    };
    let writer = match &progress {
        Some(p) => BoxMakeWriter::new(LogWriter(p.clone())),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let filter = match (cli.log.level, std::env::var("FLOWS_EXPORTER_LOG")) {
        (Some(level), _) => {
            let level = format!("{level:?}").to_ascii_lowercase();
            tracing_subscriber::EnvFilter::new(format!("{level},tokio_cron_scheduler=warn"))
        }
        (None, Ok(filter)) => tracing_subscriber::EnvFilter::new(filter),
        (None, Err(_)) => tracing_subscriber::EnvFilter::new("info,tokio_cron_scheduler=warn"),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cli.log.format {
        LogFormat::Logfmt => logs.event_format(flows_exporter::logfmt::Logfmt).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli.command, progress) {
        Ok(Done::Complete) => ExitCode::SUCCESS,
        Ok(Done::Partial(lost)) => {
            eprintln!(
                "flows-exporter: backfill incomplete: {lost} windows lost to errors (see \"skipped\" above); the output holds the rest. Run again to fill them (the backfill is idempotent), or pass --allow-partial to accept this."
            );
            ExitCode::from(backfill::EXIT_PARTIAL)
        }
        Err(e) => {
            eprintln!("flows-exporter: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How a command that did not fail ended.
enum Done {
    Complete,
    /// A backfill that lost this many windows to errors.
    Partial(u64),
}

fn run(command: Command, progress: Option<Arc<Progress>>) -> anyhow::Result<Done> {
    match command {
        Command::CheckConfig { config, web } => {
            let path = config.path.display().to_string();
            let cfg = config.load()?;
            for note in &cfg.deprecated {
                eprintln!("{path}: warning: {note}");
            }
            let web_config = web.load()?.current();
            // A config whose token cannot be read would make `serve` fail.
            cfg.graph
                .token
                .load()
                .map_err(|e| anyhow::anyhow!("{path}: {e} (serve needs it)"))?;
            // The webhook receiver's secrets and TLS, as serve reads them.
            let webhooks = match &cfg.webhooks {
                None => "webhooks off".to_owned(),
                Some(w) => {
                    let secrets = w
                        .app_secret
                        .load()
                        .map_err(|e| anyhow::anyhow!("{path}: {e} (serve needs it)"))?;
                    let n = flows_exporter::webhook::AppSecrets::parse(secrets.expose())
                        .map_or(0, |s| s.len());
                    let verify = match &w.verify_token {
                        Some(source) => {
                            source
                                .load()
                                .map_err(|e| anyhow::anyhow!("{path}: {e} (serve needs it)"))?;
                            "a verify token"
                        }
                        None => "no verify token: subscription checks refused",
                    };
                    for page in &cfg.pages {
                        page.token
                            .load()
                            .map_err(|e| anyhow::anyhow!("{path}: {e} (serve needs it)"))?;
                    }
                    let intake = match &w.intake_token {
                        Some(source) => {
                            source
                                .load()
                                .map_err(|e| anyhow::anyhow!("{path}: {e} (serve needs it)"))?;
                            "an intake token"
                        }
                        None => "no intake token",
                    };
                    if let Some(p) = &w.web_config_file {
                        flows_exporter::web::WebConfig::load(p).map_err(|e| {
                            anyhow::anyhow!(
                                "{path}: key `webhooks.web_config_file`: {}: {e}",
                                p.display()
                            )
                        })?;
                    }
                    format!(
                        "webhooks on {}{} ({n} app secret(s), {verify}), {} Page(s) with {intake}, storage {}",
                        w.listen,
                        w.path,
                        cfg.pages.len(),
                        cfg.storage.path.display()
                    )
                }
            };
            if let Some(web_path) = &web.web_config {
                println!(
                    "{}: OK ({}, {} basic-auth user(s))",
                    web_path.display(),
                    if web_config.is_tls() {
                        "TLS"
                    } else {
                        "plain HTTP"
                    },
                    web_config.users()
                );
            }
            println!(
                "{path}: OK ({} WABA(s), {} static flow(s), granularities: {}; {webhooks})",
                cfg.wabas.len(),
                cfg.flows.len(),
                cfg.granularities
                    .iter()
                    .map(|g| g.granularity.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(Done::Complete)
        }
        Command::Serve {
            config,
            web,
            listen,
            shard,
        } => {
            let mut cfg = config.load()?;
            shard.apply(&mut cfg)?;
            let web = web.load()?;
            let listen = listen.resolve(cfg.listen);
            runtime()?.block_on(app::serve(cfg, web, listen))?;
            Ok(Done::Complete)
        }
        Command::Demo { web, listen } => {
            let web = web.load()?;
            let listen = listen.resolve(
                flows_exporter::config::DEFAULT_LISTEN
                    .parse()
                    .context("the default listen address")?,
            );
            runtime()?.block_on(app::demo(listen, web))?;
            Ok(Done::Complete)
        }
        Command::Backfill(args) => {
            let allow_partial = args.allow_partial;
            let demo = args.demo;
            let loaded = if demo {
                None
            } else {
                let path = args.config.path.display().to_string();
                let mut cfg = args.config.load()?;
                args.shard.apply(&mut cfg)?;
                let token = cfg
                    .graph
                    .token
                    .load()
                    .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
                Some((cfg, token))
            };
            let options = backfill_options(args)?;
            let progress = progress.unwrap_or_else(Progress::hidden);
            let summary = runtime()?.block_on(async {
                let work = async {
                    match loaded {
                        Some((cfg, token)) => {
                            backfill::run(&cfg, token, Clock::system(), options, progress.clone())
                                .await
                        }
                        None => app::backfill_demo(options, progress.clone()).await,
                    }
                };
                tokio::select! {
                    result = work => result,
                    () = app::cancel_on_signal(tokio_util::sync::CancellationToken::new()) => Err(anyhow::anyhow!("interrupted; nothing was completed (a re-run starts over and writes the same samples)")),
                }
            });
            progress.finish();
            let summary = summary?;
            print!("{summary}");
            Ok(match summary.lost() {
                lost if lost > 0 && !allow_partial => Done::Partial(lost),
                _ => Done::Complete,
            })
        }
    }
}

fn backfill_options(args: BackfillArgs) -> anyhow::Result<backfill::Options> {
    let output = match (args.output, args.remote_write) {
        (Some(path), _) => Output::File(path),
        (None, Some(url)) => {
            let read = |p: &PathBuf| -> anyhow::Result<Secret> {
                let s = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                Ok(Secret::new(s.trim()))
            };
            let auth = match (
                args.remote_write_username,
                args.remote_write_password_file,
                args.remote_write_bearer_token_file,
            ) {
                (Some(username), Some(password), _) => Some(Auth::Basic {
                    username,
                    password: read(&password)?,
                }),
                (_, _, Some(token)) => Some(Auth::Bearer(read(&token)?)),
                _ => None,
            };
            let headers = args
                .remote_write_headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .with_context(|| {
                            format!("--remote-write-header `{h}` is not `Name: value`")
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let retry_backoff = Duration::try_from_secs_f64(args.remote_write_backoff_seconds)
                .ok()
                .filter(|d| *d <= Duration::from_secs(3600))
                .context("--remote-write-backoff-seconds must be 0 to 3600 seconds")?;
            Output::RemoteWrite(RemoteWriteConfig {
                url,
                auth,
                headers,
                batch_samples: args.remote_write_batch_samples.max(1),
                max_retries: args.remote_write_retries,
                retry_backoff,
                timeout: Duration::from_secs(60),
            })
        }
        (None, None) => anyhow::bail!("give --output FILE or --remote-write URL"),
    };
    let today = chrono::Utc::now().date_naive();
    Ok(backfill::Options {
        since: args.since.resolve(today),
        until: args.until.resolve(today),
        granularities: args.granularity,
        chunk_periods: args.chunk_periods,
        output,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
