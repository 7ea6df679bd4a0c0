//! Command line: parses arguments, sets up logging, loads the config and hands
//! over to the library. Errors become the exit code here and only here.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use flows_exporter::backfill::progress::{LogWriter, Progress};
use flows_exporter::backfill::sink::{Auth, RemoteWriteConfig};
use flows_exporter::backfill::{self, Output};
use flows_exporter::config::Secret;
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::web::WebConfig;
use flows_exporter::{app, config::Config};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Debug, Parser)]
#[command(
    name = "flows-exporter",
    version,
    about = "Prometheus exporter for the WhatsApp Flows Metrics API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll the Flows Metrics API on a schedule and serve /metrics.
    Serve {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[command(flatten)]
        web: WebArgs,
    },
    /// Run a built-in sandbox Graph API and the exporter against it: no account needed.
    Demo {
        #[arg(long, default_value = flows_exporter::config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[command(flatten)]
        web: WebArgs,
    },
    /// Validate a config file (and a web config file, if given) and exit.
    CheckConfig {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[command(flatten)]
        web: WebArgs,
    },
    /// Load the history Graph still serves (30 days of hour, 90 days of day data)
    /// into an OpenMetrics file or a remote-write receiver, once.
    Backfill(BackfillArgs),
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
#[command(group = clap::ArgGroup::new("target").required(true).args(["output", "remote_write"]))]
struct BackfillArgs {
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// First date (UTC) whose periods are backfilled, YYYY-MM-DD.
    #[arg(long)]
    since: NaiveDate,
    /// Last date (UTC) whose periods are backfilled, YYYY-MM-DD, inclusive.
    #[arg(long)]
    until: NaiveDate,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWS_EXPORTER_LOG").unwrap_or_else(
                |_| tracing_subscriber::EnvFilter::new("info,tokio_cron_scheduler=warn"),
            ),
        )
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli, progress) {
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

fn run(cli: Cli, progress: Option<Arc<Progress>>) -> anyhow::Result<Done> {
    match cli.command {
        Command::CheckConfig { config, web } => {
            let path = config.display().to_string();
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            let web_config = web.load()?.current();
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
                "{path}: OK ({} WABA(s), {} static flow(s), granularities: {})",
                cfg.wabas.len(),
                cfg.flows.len(),
                cfg.granularities
                    .iter()
                    .map(|g| g.granularity.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Err(e) = cfg.graph.token.load() {
                println!("{path}: note: {e} (needed by `serve`)");
            }
            Ok(Done::Complete)
        }
        Command::Serve { config, web } => {
            let path = config.display().to_string();
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            let web = web.load()?;
            runtime()?.block_on(app::serve(cfg, web))?;
            Ok(Done::Complete)
        }
        Command::Demo { listen, web } => {
            let web = web.load()?;
            runtime()?.block_on(app::demo(listen, web))?;
            Ok(Done::Complete)
        }
        Command::Backfill(args) => {
            let path = args.config.display().to_string();
            let cfg = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            let token = cfg
                .graph
                .token
                .load()
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            let allow_partial = args.allow_partial;
            let options = backfill_options(args)?;
            let progress = progress.unwrap_or_else(Progress::hidden);
            let summary = runtime()?.block_on(async {
                tokio::select! {
                    result = backfill::run(&cfg, token, Clock::system(), options, progress.clone()) => result,
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
    Ok(backfill::Options {
        since: args.since,
        until: args.until,
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
