//! Command line: parses arguments, sets up logging, loads the config and hands
//! over to the library. Errors become the exit code here and only here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows_exporter::{app, config::Config};

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
    },
    /// Run a built-in sandbox Graph API and the exporter against it: no account needed.
    Demo {
        #[arg(long, default_value = flows_exporter::config::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// Validate a config file and exit.
    CheckConfig {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWS_EXPORTER_LOG").unwrap_or_else(
                |_| tracing_subscriber::EnvFilter::new("info,tokio_cron_scheduler=warn"),
            ),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flows-exporter: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            let path = config.display().to_string();
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
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
            Ok(())
        }
        Command::Serve { config } => {
            let path = config.display().to_string();
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            runtime()?.block_on(app::serve(cfg))
        }
        Command::Demo { listen } => runtime()?.block_on(app::demo(listen)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
