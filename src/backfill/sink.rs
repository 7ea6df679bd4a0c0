//! Where backfilled series go: an OpenMetrics file, or a remote-write receiver
//! over HTTP. The formats are built by the pure `openmetrics` and
//! `remote_write` modules; this one does the file and network I/O.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::{debug, warn};

use crate::config::Secret;
use crate::flowdata::{self, Family};

use super::openmetrics::Writer;
use super::remote_write::{self, Batcher, TimeSeries};
use super::series::{Flat, History};

/// The unit a family's name ends in, for `# UNIT`.
fn unit(family: &Family) -> Option<&'static str> {
    family.name.ends_with("_seconds").then_some("seconds")
}

const WRITE_BUFFER: usize = 1 << 20;

/// Writes an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics`.
///
/// Families must not be interleaved, but the period-start family gets a series
/// from every history of every other family; its lines go to an anonymous
/// temporary file beside the output and are appended at the end, so nothing of
/// the history is held in memory. The output is written as `FILE.partial` and
/// renamed to `FILE` once complete, so a file named `FILE` always ends in `# EOF`.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    partial: Partial,
    main: Writer<BufWriter<File>>,
    spill: Writer<BufWriter<File>>,
}

/// The `.partial` file, removed if the backfill stops before it is complete.
#[derive(Debug)]
struct Partial(Option<PathBuf>);

impl Partial {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FileSink {
    pub fn create(path: &Path) -> anyhow::Result<FileSink> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let spill_file = tempfile::tempfile_in(&dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        let file = File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let partial = Partial(Some(partial));
        let mut spill = Writer::new(BufWriter::with_capacity(WRITE_BUFFER, spill_file));
        let start = &flowdata::PERIOD_START;
        spill.family(start.name, start.kind, unit(start), start.help)?;
        Ok(FileSink {
            path: path.to_owned(),
            partial,
            main: Writer::new(BufWriter::with_capacity(WRITE_BUFFER, file)),
            spill,
        })
    }

    /// Starts the family of a metric; every history of that metric follows.
    pub fn family(&mut self, family: &Family) -> anyhow::Result<()> {
        self.main
            .family(family.name, family.kind, unit(family), family.help)
            .with_context(|| format!("cannot write {}", self.partial.path().display()))
    }

    /// Writes a history's series; returns the samples written.
    pub fn history(&mut self, h: &History) -> anyhow::Result<u64> {
        let before = self.main.samples() + self.spill.samples();
        let labels = h.labels();
        let result = match h.flatten() {
            Flat::Gauges(series) => series.iter().try_for_each(|s| match &s.extra {
                Some((name, value)) => self
                    .main
                    .gauge(&[labels[0], labels[1], (name, value)], &s.samples),
                None => self.main.gauge(&labels, &s.samples),
            }),
            Flat::Histogram(points) => self.main.histogram(&labels, &points),
        };
        result
            .and_then(|()| {
                self.spill.gauge(
                    &[labels[0], labels[1], ("metric", h.metric.label())],
                    &h.period_starts(),
                )
            })
            .with_context(|| format!("cannot write {}", self.partial.path().display()))?;
        Ok(self.main.samples() + self.spill.samples() - before)
    }

    /// Appends the period-start family and `# EOF`, then renames the file into
    /// place. Returns the samples written.
    pub fn finish(self) -> anyhow::Result<u64> {
        let FileSink {
            path,
            partial,
            mut main,
            spill,
        } = self;
        let context = || format!("cannot write {}", partial.path().display());
        let (spill, spilled) = spill.into_section().with_context(context)?;
        let mut spill = spill.into_inner().map_err(|e| e.into_error())?;
        spill.seek(SeekFrom::Start(0)).with_context(context)?;
        let start = &flowdata::PERIOD_START;
        main.append_family(start.name, start.kind, spilled, &mut spill)
            .with_context(context)?;
        let samples = main.samples();
        let out = main.finish().with_context(context)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().with_context(context)?;
        let partial = partial.keep();
        std::fs::rename(&partial, &path).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), path.display())
        })?;
        Ok(samples)
    }
}

/// How to reach a remote-write receiver.
#[derive(Debug, Clone)]
pub struct RemoteWriteConfig {
    pub url: String,
    pub auth: Option<Auth>,
    /// Extra headers, for example `X-Scope-OrgID` for Mimir.
    pub headers: Vec<(String, String)>,
    /// The most samples in one request.
    pub batch_samples: usize,
    /// Retries of a request that failed with a network error, 429 or 5xx.
    pub max_retries: u32,
    /// First backoff, doubled each retry.
    pub retry_backoff: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Auth {
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

/// What remote write did, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStats {
    pub requests: u64,
    pub retries: u64,
    pub bytes: u64,
    pub samples: u64,
}

/// Remote write failed; the run stops, because every later batch would most
/// likely fail the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteWriteError {
    /// A 4xx other than 429: the receiver refused the batch and says why.
    Rejected {
        status: u16,
        reason: String,
    },
    /// Still failing (network, 429, 5xx) after every retry.
    GaveUp {
        attempts: u32,
        last: String,
    },
    Encode(String),
}

impl fmt::Display for RemoteWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteWriteError::Rejected { status, reason } => {
                write!(
                    f,
                    "the receiver rejected the samples (HTTP {status}): {reason}"
                )?;
                let lower = reason.to_ascii_lowercase();
                if ["out of bounds", "too old", "out of order"]
                    .iter()
                    .any(|s| lower.contains(s))
                {
                    write!(
                        f,
                        " (samples older than the receiver's newest data need an out-of-order window that covers the backfill window; see the README's Backfill section)"
                    )?;
                }
                Ok(())
            }
            RemoteWriteError::GaveUp { attempts, last } => write!(
                f,
                "remote write still failing after {attempts} attempts: {last}"
            ),
            RemoteWriteError::Encode(e) => write!(f, "cannot compress a remote-write batch: {e}"),
        }
    }
}

impl std::error::Error for RemoteWriteError {}

/// Longest part of a receiver's answer quoted in an error.
const MAX_REASON: usize = 1000;
/// Longest wait between two attempts, whatever backoff or `Retry-After` say.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Sends series to a remote-write receiver in batches, one request at a time
/// (so a series' samples arrive in time order).
#[derive(Debug)]
pub struct RemoteSink {
    http: reqwest::Client,
    config: RemoteWriteConfig,
    headers: HeaderMap,
    batcher: Batcher,
    stats: RemoteStats,
}

impl RemoteSink {
    pub fn new(config: RemoteWriteConfig) -> anyhow::Result<RemoteSink> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Url::parse(&config.url)
            .with_context(|| format!("--remote-write {} is not a URL", config.url))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("bad header name `{name}`"))?;
            let v = HeaderValue::from_str(value)
                .with_context(|| format!("bad value for header `{name}`"))?;
            headers.insert(n, v);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("flows-exporter/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(RemoteSink {
            http,
            batcher: Batcher::new(config.batch_samples),
            config,
            headers,
            stats: RemoteStats::default(),
        })
    }

    /// Queues a history's series, sending every batch it fills. Returns the
    /// samples queued.
    pub async fn history(&mut self, h: &History) -> Result<u64, RemoteWriteError> {
        let mut queued = 0;
        for series in h.time_series() {
            queued += series.samples.len() as u64;
            for batch in self.batcher.push(series) {
                self.send(&batch).await?;
            }
        }
        Ok(queued)
    }

    /// Sends what is left; returns what was done.
    pub async fn finish(mut self) -> Result<RemoteStats, RemoteWriteError> {
        if let Some(batch) = self.batcher.flush() {
            self.send(&batch).await?;
        }
        Ok(self.stats)
    }

    async fn send(&mut self, batch: &[TimeSeries]) -> Result<(), RemoteWriteError> {
        let body =
            remote_write::body(batch).map_err(|e| RemoteWriteError::Encode(e.to_string()))?;
        let samples: u64 = batch.iter().map(|s| s.samples.len() as u64).sum();
        let mut attempt = 0u32;
        loop {
            self.stats.requests += 1;
            let mut request = self
                .http
                .post(&self.config.url)
                .headers(self.headers.clone())
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body.clone());
            request = match &self.config.auth {
                Some(Auth::Basic { username, password }) => {
                    request.basic_auth(username, Some(password.expose()))
                }
                Some(Auth::Bearer(token)) => request.bearer_auth(token.expose()),
                None => request,
            };
            let (failure, retry_after) = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    if (200..300).contains(&status) {
                        self.stats.bytes += body.len() as u64;
                        self.stats.samples += samples;
                        debug!(samples, bytes = body.len(), "remote write batch sent");
                        return Ok(());
                    }
                    let text = response.text().await.unwrap_or_default();
                    let reason = reason(&text);
                    if status != 429 && (400..500).contains(&status) {
                        return Err(RemoteWriteError::Rejected { status, reason });
                    }
                    (format!("HTTP {status}: {reason}"), retry_after)
                }
                Err(e) => {
                    let mut message = format!("request failed: {e}");
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        message.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    (message, None)
                }
            };
            if attempt >= self.config.max_retries {
                return Err(RemoteWriteError::GaveUp {
                    attempts: attempt + 1,
                    last: failure,
                });
            }
            let backoff = self
                .config
                .retry_backoff
                .saturating_mul(1 << attempt.min(16));
            let wait = retry_after.unwrap_or(backoff).min(MAX_RETRY_WAIT);
            warn!(attempt = attempt + 1, wait_ms = wait.as_millis() as u64, error = %failure, "remote write failed; retrying");
            self.stats.retries += 1;
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// A receiver's error text, trimmed to one readable line.
fn reason(text: &str) -> String {
    let text = text.trim();
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    if text.chars().count() > MAX_REASON {
        out.push('…');
    }
    if out.is_empty() {
        "(no reason given)".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_reasons_are_quoted_and_explained() {
        let e = RemoteWriteError::Rejected {
            status: 400,
            reason: reason("out of bounds\n"),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("the receiver rejected the samples (HTTP 400): out of bounds"),
            "{text}"
        );
        assert!(text.contains("out-of-order window"), "{text}");
        let plain = RemoteWriteError::Rejected {
            status: 401,
            reason: reason(""),
        };
        assert_eq!(
            plain.to_string(),
            "the receiver rejected the samples (HTTP 401): (no reason given)"
        );
        assert!(reason(&"x".repeat(5000)).chars().count() == MAX_REASON + 1);
    }
}
